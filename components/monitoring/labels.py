"""Ground truth: the actual durations of a month's trips, joined to the logged predictions by trip id.

Trips are labelled when their month's TLC file lands: the file holds every trip's
duration, and the replay client sent each trip with its stable id as the request
id (``components/data/trip_ids.py``), so the join is exact. A request retried by
the splitter may be logged twice under one id; the first record counts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.features.trip_features import TARGET_COLUMN
from components.storage.atomic_write import write_atomically


@dataclass(frozen=True)
class LabelCoverage:
    month_trips: int
    logged: int  # distinct request ids in the log
    labelled: int  # logged predictions that got their trip's duration

    @property
    def coverage(self) -> float:
        return self.labelled / self.logged if self.logged else 0.0

    def line(self) -> str:
        return (
            f"labelled {self.labelled} of {self.logged} logged predictions ({self.coverage:.1%}); "
            f"{self.month_trips - self.labelled} of the month's {self.month_trips} trips were not served"
        )


def month_labels(trips: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    """``request_id`` -> actual minutes for every trip of a month (ingest's cleaned frame and its ids)."""
    return pd.DataFrame({"request_id": ids.astype(str), TARGET_COLUMN: trips[TARGET_COLUMN].to_numpy()})


def join_labels(log: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The log (first record per request id) with ``trip_duration_minutes`` where labelled (else NaN)."""
    first = log.drop_duplicates("request_id", keep="first")
    joined = first.merge(labels, on="request_id", how="left", validate="one_to_one")
    return joined, int(joined[TARGET_COLUMN].notna().sum())


def label_month(
    log: pd.DataFrame, trips: pd.DataFrame, ids: np.ndarray
) -> tuple[pd.DataFrame, LabelCoverage]:
    """The labels of the logged trips of one month, and how many of the log they cover."""
    joined, labelled = join_labels(log, month_labels(trips, ids))
    found = joined.loc[joined[TARGET_COLUMN].notna(), ["request_id", TARGET_COLUMN]].reset_index(drop=True)
    return found, LabelCoverage(month_trips=len(trips), logged=len(joined), labelled=labelled)


def write_labels(labels: pd.DataFrame, path: str | Path) -> None:
    """Write a labels file all at once (a reader never sees half of one)."""
    buffer = io.BytesIO()
    labels.to_parquet(buffer, index=False)
    write_atomically(path, buffer.getvalue())


def read_labels(folder: str | Path) -> pd.DataFrame:
    """Every labels file in ``folder`` (one per month), as one ``request_id`` -> minutes frame."""
    files = sorted(Path(folder).glob("*.parquet")) if Path(folder).is_dir() else []
    if not files:
        return pd.DataFrame({"request_id": pd.Series(dtype=str), TARGET_COLUMN: pd.Series(dtype=float)})
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).drop_duplicates("request_id")
