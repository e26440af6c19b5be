"""Windows of event time to train and validate on, and the rule that keeps them apart.

Importable without pandas: the CLI parses ``--train-window`` when the command line
is built, and every ingest task checks the whole plan before it reads a byte.

Event time is a trip's pickup time, as the TLC publishes it: New York wall-clock
time with no zone. The replay sends that wall-clock time unchanged, and the
predictor stamps a time without a zone as UTC, so the prediction log's UTC event
times *are* the TLC's wall-clock times read as UTC. A window here uses the same
convention, so the trips a window selects from a month file are exactly the trips
whose logged event time falls in the same window (``monitor --since/--until``):

- a time without an offset is compared with the pickup time as it is;
- a time with an offset (``Z``, ``+00:00``, ``-05:00``) is converted to UTC first,
  as the prediction log converts its own bounds, then compared the same way.

No daylight-saving arithmetic happens anywhere: converting New York wall-clock
times to a real UTC instant would shift the prediction log's own clock by 4-5 h
and make train windows disagree with monitoring windows.

A window is ``[start, end)``: start inclusive, end exclusive, so consecutive
windows (``2021-02-01:2021-03-03``, ``2021-03-03:2021-03-10``) share no trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Final, Literal

from components.errors import IngestError

Side = Literal["train", "val"]
SIDES: Final[tuple[Side, ...]] = ("train", "val")
_SIDE_NAMES: Final = {"train": "training", "val": "validation"}
_MONTH_RE: Final = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# "START:END" or "START/END" (ISO 8601's interval); START may hold colons itself
# (2021-02-01T06:00:00), so the separator is the one followed by END's date.
_WINDOW_RE: Final = re.compile(r"^\s*(?P<start>.+?)\s*[:/]\s*(?P<end>\d{4}-\d{2}-\d{2}\S*)\s*$")
_DATE_RE: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}"  # the date
    r"([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?"  # the time of day, to the microsecond
    r"(Z|[+-]\d{2}:?\d{2})?)?$"  # and its offset, if any
)


def parse_event_time(text: str, what: str) -> datetime:
    """An ISO 8601 date or date-time as a naive event time (see the module docstring).

    ``what`` names the field in the error (``train_start``, ``--val-window``).
    """
    source = f"{what}={text!r}"
    value = text.strip() if isinstance(text, str) else text
    if not isinstance(value, str) or not _DATE_RE.match(value):
        raise IngestError(
            source,
            "bad_window",
            "an event time is an ISO 8601 date or date-time, e.g. 2021-02-01 or 2021-02-01T06:30:00 "
            "(a whole month is train_month/val_month)",
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise IngestError(source, "bad_window", f"not a real date or time: {exc}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _month_start(month: str) -> datetime:
    match = _MONTH_RE.match(month)
    if not match:
        # The words of tlc_schema.check_request, which ingest applies to a month it reads.
        raise IngestError(
            f"request(month={month!r})", "bad_request", f"month must be YYYY-MM (e.g. 2021-01), not {month!r}"
        )
    return datetime(int(match[1]), int(match[2]), 1)


def _next_month(moment: datetime) -> datetime:
    return datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1)


def _text(moment: datetime) -> str:
    """A bound as it is shown: the date alone at midnight, else the full ISO date-time."""
    return moment.date().isoformat() if moment.time() == time(0) else moment.isoformat()


@dataclass(frozen=True)
class EventWindow:
    """``[start, end)`` of event time (naive: see the module docstring)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for bound in (self.start, self.end):
            if not isinstance(bound, datetime) or bound.tzinfo is not None:
                raise IngestError(repr(self), "bad_window", "window bounds are naive datetimes (event time)")
        if not self.start < self.end:
            raise IngestError(str(self), "bad_window", "a window's start must be before its end")

    @classmethod
    def parse(cls, text: str, what: str = "window") -> EventWindow:
        """``2021-02-01:2021-03-03`` or ``2021-02-01T06:00:00/2021-02-02``; start inclusive, end exclusive."""
        match = _WINDOW_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise IngestError(
                f"{what}={text!r}", "bad_window", "a window is START:END, e.g. 2021-02-01:2021-03-03"
            )
        return cls.from_bounds(match["start"], match["end"], what)

    @classmethod
    def from_bounds(cls, start: str, end: str, what: str = "window") -> EventWindow:
        """A window from its two bounds as text (the pipeline's ``train_start``/``train_end``)."""
        return cls(parse_event_time(start, f"{what} start"), parse_event_time(end, f"{what} end"))

    @classmethod
    def of_month(cls, month: str) -> EventWindow:
        """The whole of a YYYY-MM month."""
        start = _month_start(month)
        return cls(start, _next_month(start))

    def months(self) -> tuple[str, ...]:
        """The YYYY-MM months the window touches, oldest first (the files it reads)."""
        cursor = datetime(self.start.year, self.start.month, 1)
        found: list[str] = []
        while cursor < self.end:
            found.append(f"{cursor.year:04d}-{cursor.month:02d}")
            cursor = _next_month(cursor)
        return tuple(found)

    def overlaps(self, other: EventWindow) -> bool:
        return self.start < other.end and other.start < self.end

    def to_dict(self) -> dict[str, str]:
        """``{"start": ..., "end": ...}`` as full ISO date-times (what the pipeline parameters take)."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    def __str__(self) -> str:
        # The CLI's own syntax, so a message can be pasted back as --train-window.
        return f"{_text(self.start)}:{_text(self.end)}"


@dataclass(frozen=True)
class DataSelection:
    """The trips one side of a run reads: a whole month, or a window of event time."""

    side: Side
    span: EventWindow  # the month's own bounds when the side is a month
    month: str | None = None  # set when the side is a whole month (read as load_month does)

    @property
    def is_window(self) -> bool:
        return self.month is None

    def describe(self) -> str:
        kind = f"month {self.month}" if self.month else f"window {self.span}"
        return f"{_SIDE_NAMES[self.side]} {kind}"

    def to_dict(self) -> dict[str, str | None]:
        """``{"month": "2021-01" | None, "start": ISO, "end": ISO}`` (for summaries and reports)."""
        return {"month": self.month, **self.span.to_dict()}


@dataclass(frozen=True)
class TrainingData:
    """What a run trains on and what it validates on."""

    train: DataSelection
    val: DataSelection

    def side(self, side: str) -> DataSelection:
        if side not in SIDES:
            raise IngestError(f"side={side!r}", "bad_request", f"side must be one of {', '.join(SIDES)}")
        return self.train if side == "train" else self.val

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"train": self.train.to_dict(), "val": self.val.to_dict()}


def plan_training_data(
    train_month: str,
    val_month: str,
    train_window: EventWindow | None = None,
    val_window: EventWindow | None = None,
) -> TrainingData:
    """The run's two sides; a window replaces the month of its side.

    With a window on either side, validation must begin at or after the end of
    training: held-out data that overlaps, or precedes, what was trained on would
    flatter the challenger (and the gate compares it with the champion on exactly
    these trips). Two whole months are taken as given, as they always were.
    """
    train = _selection("train", train_month, train_window)
    val = _selection("val", val_month, val_window)
    if (train.is_window or val.is_window) and val.span.start < train.span.end:
        how = "overlaps" if val.span.overlaps(train.span) else "comes before"
        raise IngestError(
            f"{train.describe()} and {val.describe()}",
            "bad_window",
            f"the validation data {how} the training data: it must start at or after "
            f"{_text(train.span.end)}, the end of the training data (validation is newer, held-out data)",
        )
    return TrainingData(train, val)


def plan_from_parameters(
    train_month: str, val_month: str, train_start: str, train_end: str, val_start: str, val_end: str
) -> TrainingData:
    """``plan_training_data`` from the pipeline's text parameters (empty bounds: no window)."""
    return plan_training_data(
        train_month,
        val_month,
        _window_from(train_start, train_end, "train"),
        _window_from(val_start, val_end, "val"),
    )


def _window_from(start: str, end: str, side: Side) -> EventWindow | None:
    if not start and not end:
        return None
    if not (start and end):
        given, missing = ("start", "end") if start else ("end", "start")
        raise IngestError(
            f"{side}_{given}={start or end!r}", "bad_window", f"a window needs {side}_{missing} too"
        )
    return EventWindow.from_bounds(start, end, f"{side}_window")


def _selection(side: Side, month: str, window: EventWindow | None) -> DataSelection:
    if window is not None:
        return DataSelection(side, window)
    return DataSelection(side, EventWindow.of_month(month), month)
