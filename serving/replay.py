"""Replay a TLC month's real trips through a served endpoint, as live traffic would arrive.

Each trip is one v1 request carrying its stable trip id as ``x-request-id`` (see
``components/data/trip_ids.py``) and its pickup time as ``x-event-time``, so the
prediction log can later be joined to the month's actual durations and judged in
event time: a month of traffic replays in minutes. TLC timestamps are New York
local times without a zone; they are sent as they are, ISO 8601 without an offset.

Bounded: at most ``limit`` trips, at most ``rate`` requests a second, at most
``concurrency`` in flight, each with a timeout. It sends only to the URL it is
given (the local stack's by default).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import pandas as pd

from components.errors import TaxiMlopsError
from components.names import EVENT_TIME_HEADER, REQUEST_ID_HEADER

PREDICT_PATH = "/v1/models/duration:predict"


class ReplayError(TaxiMlopsError, ValueError):
    """A replay that cannot start (bad rate, limit or URL)."""


@dataclass
class ReplaySummary:
    """How a replay went: requests sent and answers by kind and by HTTP status (0: no answer)."""

    sent: int = 0
    ok: int = 0
    refused: int = 0  # 4xx: the endpoint said the trip is not one it serves
    failed: int = 0  # 5xx or no answer
    by_status: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self) -> str:
        statuses = ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(self.by_status.items()))
        rate = self.sent / self.seconds if self.seconds else 0.0
        return (
            f"sent {self.sent}, ok {self.ok}, refused {self.refused}, failed {self.failed} "
            f"in {self.seconds:.1f} s ({rate:.0f}/s; by status {statuses or '-'})"
        )


def replay_trips(
    url: str,
    trips: pd.DataFrame,
    ids: Sequence[str],
    *,
    rate: float = 200.0,
    limit: int | None = None,
    concurrency: int = 32,
    timeout: float = 10.0,
    progress: Callable[[ReplaySummary, int], None] | None = None,
    progress_every: float = 5.0,
) -> ReplaySummary:
    """Send ``trips`` (ingest's cleaned frame) to ``url``, trip ``i`` with id ``ids[i]``."""
    if rate <= 0:
        raise ReplayError(f"rate must be positive, got {rate}")
    if limit is not None and limit < 1:
        raise ReplayError(f"limit must be at least 1, got {limit}")
    if len(ids) != len(trips):
        raise ReplayError(f"{len(ids)} ids for {len(trips)} trips")
    if not url.startswith(("http://", "https://")):
        raise ReplayError(f"{url!r} is not an http(s) URL")
    chosen = trips.head(limit) if limit is not None else trips
    return asyncio.run(
        _replay(
            url.rstrip("/"),
            chosen,
            list(ids[: len(chosen)]),
            rate,
            concurrency,
            timeout,
            progress,
            progress_every,
        )
    )


async def _replay(
    url: str,
    trips: pd.DataFrame,
    ids: list[str],
    rate: float,
    concurrency: int,
    timeout: float,
    progress: Callable[[ReplaySummary, int], None] | None,
    progress_every: float,
) -> ReplaySummary:
    summary = ReplaySummary()
    total = len(trips)
    in_flight = asyncio.Semaphore(concurrency)
    pickups = trips["pickup_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S").to_numpy()
    rows = zip(
        ids,
        pickups,
        pd.to_numeric(trips["PULocationID"]).to_numpy(),
        pd.to_numeric(trips["DOLocationID"]).to_numpy(),
        trips["trip_distance"].to_numpy(),
        strict=True,
    )
    # aiohttp, not httpx: httpx's async pool rescans every connection for each queued request
    # (and retries a missing optional import per request), which made the client, not the server,
    # the bottleneck of a replay -- most of its CPU in a profile of the autopilot's replay.
    connector = aiohttp.TCPConnector(limit=concurrency)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))
    endpoint = url + PREDICT_PATH  # whole, so a URL with a path prefix works too
    async with session as client:

        async def send(trip_id: str, event_time: str, pickup: int, dropoff: int, miles: float) -> None:
            body = {"instances": [{"PULocationID": pickup, "DOLocationID": dropoff, "trip_distance": miles}]}
            headers = {REQUEST_ID_HEADER: trip_id, EVENT_TIME_HEADER: event_time}
            try:
                async with client.post(endpoint, json=body, headers=headers) as answer:
                    await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            finally:
                in_flight.release()
            summary.by_status[status] += 1
            if 200 <= status < 300:
                summary.ok += 1
            elif 400 <= status < 500:
                summary.refused += 1
            else:
                summary.failed += 1

        started = time.monotonic()
        next_report = started + progress_every
        tasks = []
        for number, (trip_id, event_time, pickup, dropoff, miles) in enumerate(rows):
            # On schedule at `rate`; when `concurrency` answers are outstanding, wait for one.
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            tasks.append(
                asyncio.create_task(send(trip_id, event_time, int(pickup), int(dropoff), float(miles)))
            )
            summary.sent += 1
            if progress is not None and time.monotonic() >= next_report:
                summary.seconds = time.monotonic() - started
                progress(summary, total)
                next_report += progress_every
        await asyncio.gather(*tasks)
        summary.seconds = time.monotonic() - started
    return summary
