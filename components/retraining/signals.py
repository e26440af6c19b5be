"""What the retraining policy decides from, gathered the same way by the local loop and the cluster's step.

* :func:`champion_evidence` -- the champion's monitor verdicts as the policy counts them;
* :func:`labelled_since` -- how far labels reach in event time, and how many landed after a moment;
* :func:`trained_until` -- the end of the data a run summary says a version saw.

Event time is naive (the TLC's New York wall clock, which the prediction log stores as UTC):
every moment here has its zone dropped, so comparisons never mix aware and naive values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from components.features.trip_features import TARGET_COLUMN

#: Verdicts that are evidence either way; "insufficient_data" windows are neither.
EVIDENCE = ("ok", "drift", "degraded")


def event_moment(text: str | datetime | pd.Timestamp) -> datetime:
    """An ISO 8601 moment (or a datetime) as naive event time."""
    moment = pd.Timestamp(text)
    if moment.tzinfo is not None:
        moment = moment.tz_convert("UTC").tz_localize(None)
    return moment.to_pydatetime()


def champion_evidence(
    verdicts: Iterable[Mapping[str, Any]], champion_version: str
) -> list[Mapping[str, Any]]:
    """The champion's verdicts that are evidence, oldest window first, one per window (the newest kept).

    Another version's verdicts say nothing about this one; a window judged twice (a re-run)
    counts once, so a repeated monitor run can never make "N windows in a row" by itself.
    """
    by_window: dict[tuple[str, str], Mapping[str, Any]] = {}
    for verdict in verdicts:
        if (
            str(verdict.get("model_version")) != str(champion_version)
            or verdict.get("verdict") not in EVIDENCE
        ):
            continue
        window = verdict.get("window") or {}
        by_window[(str(window.get("start")), str(window.get("end")))] = verdict
    return [by_window[key] for key in sorted(by_window, key=lambda key: (key[1], key[0]))]


def labelled_since(
    log: pd.DataFrame, labels: pd.DataFrame, since: datetime | None
) -> tuple[datetime | None, int]:
    """The newest labelled trip's event time, and how many labelled trips have event times after ``since``.

    ``log`` is the prediction log (``request_id``, ``event_time``), ``labels`` the landed labels
    (``request_id`` -> minutes): a trip counts once, whichever revision answered it.
    """
    if log.empty or labels.empty:
        return None, 0
    first = log.drop_duplicates("request_id", keep="first")[["request_id", "event_time"]]
    joined = first.merge(labels[["request_id", TARGET_COLUMN]], on="request_id", how="inner")
    if joined.empty:
        return None, 0
    times = pd.to_datetime(joined["event_time"])
    if times.dt.tz is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    newest = times.max().to_pydatetime()
    count = int((times > pd.Timestamp(since)).sum()) if since is not None else len(times)
    return newest, count


def trained_until(summary: Mapping[str, Any]) -> datetime | None:
    """The end of the newest data a run saw (its validation window's end), from the run summary's ``data``."""
    data = summary.get("data") or {}
    ends = [side.get("end") for side in (data.get("train") or {}, data.get("val") or {}) if side.get("end")]
    return max(event_moment(end) for end in ends) if ends else None
