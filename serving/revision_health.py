"""Which predictors the splitter can reach right now, and probing the others until they are ready again.

A revision whose predictor refuses connections (killed, crashed, restarting) is
marked unhealthy by the first request that finds it so. From then on the splitter
sends that revision's share to the other live revision, and a probe asks the
predictor's ``/v2/health/ready`` every ``probe_interval`` seconds; its first 200
puts the revision back. On a cluster Knative and the readiness probe do this;
locally the supervisor restarts a dead predictor, and this keeps the requests of
those seconds from failing meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

READY_PATH = "/v2/health/ready"


@dataclass
class Health:
    """One predictor URL's health as the splitter has seen it."""

    healthy: bool = True
    since: float = field(default_factory=time.time)  # wall clock of the last change
    last_error: str = ""
    failovers: int = 0  # requests it failed that another revision answered
    probe: asyncio.Task[None] | None = None

    def report(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "since": round(self.since, 3),
            "last_error": self.last_error,
            "failovers": self.failovers,
        }


class RevisionHealth:
    """Health per predictor URL; lives on the splitter's event loop (no locking needed)."""

    def __init__(self, probe_interval: float = 0.25, probe_timeout: float = 1.0) -> None:
        self.probe_interval = probe_interval
        self.probe_timeout = aiohttp.ClientTimeout(total=probe_timeout)
        self._by_url: dict[str, Health] = {}

    def of(self, url: str) -> Health:
        health = self._by_url.get(url)
        if health is None:
            health = self._by_url[url] = Health()
        return health

    def is_healthy(self, url: str) -> bool:
        health = self._by_url.get(url)
        return health is None or health.healthy

    def mark_down(self, url: str, problem: str, session: aiohttp.ClientSession) -> None:
        """Route around ``url`` until its readiness probe answers 200."""
        health = self.of(url)
        health.last_error = problem
        if health.healthy:
            health.healthy = False
            health.since = time.time()
        if health.probe is None or health.probe.done():
            health.probe = asyncio.get_running_loop().create_task(self._probe(url, session))

    def forget_except(self, urls: set[str]) -> None:
        """Drop what is known of predictors no longer routed (their probes stop)."""
        for url in list(self._by_url):
            if url not in urls:
                health = self._by_url.pop(url)
                if health.probe is not None:
                    health.probe.cancel()

    async def close(self) -> None:
        for health in self._by_url.values():
            if health.probe is not None:
                health.probe.cancel()
        self._by_url.clear()

    async def _probe(self, url: str, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            health = self._by_url.get(url)
            if health is None:
                return  # no longer routed
            try:
                async with session.get(url + READY_PATH, timeout=self.probe_timeout) as answer:
                    await answer.read()
                    ready = answer.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ready = False
            if ready:
                health.healthy = True
                health.since = time.time()
                return
