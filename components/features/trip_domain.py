"""The trip domain: which zone ids and distances describe a real taxi trip.

One definition for both ends of the model's life: ingest drops (and counts) the
training rows outside it, and the predictor refuses requests outside it, so a
model is never trained on a trip it would refuse to answer, nor asked about a
kind of trip it never saw. ``features`` is the room both ``components.data``
and ``serving`` may import.

The scalar limits are for messages and per-value checks (the predictor names the
field and the row); the masks are their vectorized form, for whole columns.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

#: TLC taxi zones are numbered 1..265 (264 and 265 are "Unknown"/"Outside of NYC"),
#: the range the real 2021 green files hold.
MIN_LOCATION_ID: Final = 1
MAX_LOCATION_ID: Final = 265
#: Longer than any taxi trip within reach of NYC; larger values are meter glitches.
MAX_TRIP_DISTANCE_MILES: Final = 500.0


def location_ids_in_domain(ids: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where an id is a whole number in ``MIN_LOCATION_ID..MAX_LOCATION_ID``.

    ``ids`` is numeric (any int or float dtype); NaN, infinities and fractional
    values are outside the domain.
    """
    values = np.asarray(ids, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        whole = values == np.floor(values)
        return whole & (values >= MIN_LOCATION_ID) & (values <= MAX_LOCATION_ID)


def distances_in_domain(miles: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where a distance is finite and within ``0..MAX_TRIP_DISTANCE_MILES`` (both included).

    NaN and infinities are outside the domain (every comparison with NaN is false).
    """
    values = np.asarray(miles, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (values >= 0.0) & (values <= MAX_TRIP_DISTANCE_MILES)
