"""A stable id for every TLC trip: one function of the record, the same whoever reads the file.

The replay client sends each trip with its id as the request id; the labels step
reads the same month file later and joins the actual durations to the logged
predictions by that id. So the id must depend on nothing but the trip record
itself: colour, pickup time, zones, distance and duration (the dropoff time,
given the pickup). Real files hold exact duplicates (67 in green 2021-01), which
get ``-2``, ``-3``, ... in file order, so ids are unique within a month.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from components.features.trip_features import TARGET_COLUMN

#: Hex digits of the hash kept in an id: 64 bits, no collisions among a month's ~100k trips.
ID_HEX_DIGITS = 16


def trip_ids(trips: pd.DataFrame, color: str) -> np.ndarray:
    """One id per row of cleaned ``trips`` (ingest's frame), e.g. ``green-3f2a...``."""
    keys = (
        color
        + "|"
        + trips["pickup_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S").astype(str)
        + "|"
        + trips["PULocationID"].astype(str)
        + "|"
        + trips["DOLocationID"].astype(str)
        + "|"
        + trips["trip_distance"].map(repr)
        + "|"
        + trips[TARGET_COLUMN].round(6).map(repr)
    )
    digests = [
        hashlib.blake2b(key.encode(), digest_size=ID_HEX_DIGITS // 2).hexdigest() for key in keys.to_numpy()
    ]
    ids = pd.Series([f"{color}-{digest}" for digest in digests], index=trips.index)
    occurrence = ids.groupby(ids).cumcount().to_numpy()
    suffix = np.where(occurrence > 0, "-" + (occurrence + 1).astype(str), "")
    return (ids.to_numpy().astype(str) + suffix).astype(object)
