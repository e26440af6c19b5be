"""The canary policy: one typed object with the steps, sample minimums, limits and deadline.

Defaults suit the taxi model at a few hundred requests a second; every field can
be overridden from the CLI or a pipeline parameter (:meth:`CanaryPolicy.with_overrides`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from components.errors import TaxiMlopsError


class CanaryPolicyError(TaxiMlopsError, ValueError):
    """A policy value that cannot work (names the field and the rule)."""


@dataclass(frozen=True)
class Step:
    """One traffic step: hold ``percent`` until the canary has answered ``min_requests`` and
    ``min_labelled`` labelled trips have been paired (0: accuracy is not required yet)."""

    percent: int
    min_requests: int
    min_labelled: int


def _default_steps() -> tuple[Step, ...]:
    # Labels land a day or more after the traffic, so the first step judges operations only;
    # the canary reaches half the traffic only once its accuracy has been judged.
    return (
        Step(10, min_requests=1_000, min_labelled=0),
        Step(25, min_requests=1_000, min_labelled=500),
        Step(50, min_requests=1_000, min_labelled=2_000),
    )


@dataclass(frozen=True)
class CanaryPolicy:
    #: The traffic steps below 100%; passing the last one is the promotion.
    steps: tuple[Step, ...] = field(default_factory=_default_steps)
    #: Labelled trip pairs the promotion needs at least (besides the last step's own minimum):
    #: a canary is never promoted before its accuracy has been judged on labelled trips.
    promote_min_labelled: int = 2_000
    #: Fewest labelled pairs on which the accuracy test may reach any outcome (a clear regression
    #: fails from here on, even at a step that does not require accuracy yet).
    min_pairs: int = 200
    #: Event hours the labelled pairs must span before the accuracy check may pass or fail
    #: (0: any span). A day's cycle keeps one part of the day from deciding (see analysis.py).
    min_pair_span_hours: float = 0.0
    #: Non-inferiority margin: the canary's MAE may be at most this much worse (relative) than the champion's.
    mae_margin: float = 0.02
    #: Two-sided confidence of the intervals every check uses.
    confidence: float = 0.95
    #: Largest acceptable share of canary requests answered 5xx or not at all.
    max_error_rate: float = 0.01
    #: Largest acceptable canary p99 latency (ms).
    max_p99_ms: float = 100.0
    #: Largest canary/champion p99 ratio at the same time; not judged while the canary's p99 is
    #: under ``p99_ratio_floor_ms`` (a 2 ms vs 1 ms difference is noise, not a regression).
    max_p99_ratio: float = 2.0
    p99_ratio_floor_ms: float = 10.0
    #: False: the p99 checks are recorded, never decide. For replays, where latency is the wall
    #: clock of a machine shared with the replay's own training, not the model's; judging it
    #: there would make the timeline depend on the machine's speed. Errors are judged always.
    judge_latency: bool = True
    #: Consecutive failed analyses that roll the canary back (1: the first confident failure).
    failure_limit: int = 1
    #: Seconds between analyses (wall clock) when the judge runs in a loop.
    interval_seconds: float = 30.0
    #: Event-time days a canary may stay inconclusive before it is rolled back. The default leaves
    #: room for labels, which land when the month's TLC file does.
    deadline_days: float = 14.0
    resamples: int = 2_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.steps:
            raise CanaryPolicyError("steps: give at least one step below 100%")
        percents = [step.percent for step in self.steps]
        if percents != sorted(set(percents)) or percents[0] <= 0 or percents[-1] >= 100:
            raise CanaryPolicyError(
                f"steps: percents must rise strictly within 1..99 (100% is the promotion), got {percents}"
            )
        if any(step.min_requests < 0 or step.min_labelled < 0 for step in self.steps):
            raise CanaryPolicyError("steps: min_requests and min_labelled must not be negative")
        if self.promote_min_labelled < self.min_pairs or self.min_pairs < 2:
            raise CanaryPolicyError(
                f"promote_min_labelled ({self.promote_min_labelled}) must be at least min_pairs "
                f"({self.min_pairs}, itself at least 2): a canary is never promoted unjudged"
            )
        if not 0 <= self.mae_margin < 1:
            raise CanaryPolicyError(f"mae_margin must be in [0, 1), got {self.mae_margin}")
        if not 0.5 < self.confidence < 1:
            raise CanaryPolicyError(f"confidence must be in (0.5, 1), got {self.confidence}")
        if not 0 <= self.max_error_rate < 1:
            raise CanaryPolicyError(f"max_error_rate must be in [0, 1), got {self.max_error_rate}")
        if self.max_p99_ms <= 0 or self.max_p99_ratio < 1 or self.p99_ratio_floor_ms < 0:
            raise CanaryPolicyError("max_p99_ms > 0, max_p99_ratio >= 1 and p99_ratio_floor_ms >= 0, please")
        if self.failure_limit < 1 or self.interval_seconds <= 0 or self.deadline_days <= 0:
            raise CanaryPolicyError("failure_limit >= 1, interval_seconds > 0 and deadline_days > 0, please")
        if self.min_pair_span_hours < 0:
            raise CanaryPolicyError(
                f"min_pair_span_hours must not be negative, got {self.min_pair_span_hours}"
            )
        if self.resamples < 100:
            raise CanaryPolicyError(f"resamples must be at least 100, got {self.resamples}")

    def step_of(self, percent: int) -> int:
        """Index of the step a canary at ``percent`` is in (the highest step not above it, else the first)."""
        index = 0
        for i, step in enumerate(self.steps):
            if step.percent <= percent:
                index = i
        return index

    def to_dict(self) -> dict[str, Any]:
        document = {f.name: getattr(self, f.name) for f in fields(self)}
        document["steps"] = [vars(step).copy() for step in self.steps]
        return document

    def with_overrides(self, overrides: Mapping[str, Any]) -> CanaryPolicy:
        """A copy with ``overrides``: field name -> value; ``steps`` as "10,25,50,100" or Step rows."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise CanaryPolicyError(f"{name!r} is not a canary policy field ({', '.join(sorted(known))})")
            if name == "steps":
                changes[name] = _steps(value, self.steps)
            else:
                kind = type(getattr(self, name))
                if kind is bool:
                    changes[name] = _flag(name, value)
                    continue
                try:
                    changes[name] = kind(value)
                except (TypeError, ValueError) as exc:
                    raise CanaryPolicyError(f"{name}: {value!r} is not a {kind.__name__}") from exc
        return replace(self, **changes)


def _flag(name: str, value: Any) -> bool:
    # bool("false") is True: a flag from the command line is read by its words.
    if isinstance(value, bool):
        return value
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    flag = words.get(str(value).strip().lower())
    if flag is None:
        raise CanaryPolicyError(f"{name}: {value!r} is not true or false")
    return flag


def _steps(value: Any, current: tuple[Step, ...]) -> tuple[Step, ...]:
    if isinstance(value, str):
        try:
            percents = [int(part) for part in value.split(",") if part.strip()]
        except ValueError as exc:
            raise CanaryPolicyError(f"steps: {value!r} is not a list of percents like 10,25,50,100") from exc
        if percents and percents[-1] == 100:
            percents.pop()  # "10,25,50,100": the 100 is the promotion, which every policy ends with
        # New percents keep the sample minimums of the step at the same position (or the last one's).
        return tuple(
            Step(
                p,
                current[min(i, len(current) - 1)].min_requests,
                current[min(i, len(current) - 1)].min_labelled,
            )
            for i, p in enumerate(percents)
        )
    try:
        return tuple(step if isinstance(step, Step) else Step(**step) for step in value)
    except TypeError as exc:
        raise CanaryPolicyError(
            f"steps: {value!r} is not a list of {{percent, min_requests, min_labelled}}"
        ) from exc
