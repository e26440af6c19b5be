"""The reference profile: what monitoring needs to judge new traffic without the raw training set.

Saved with every registered model version (``reference_profile.json``, an MLflow
artifact beside the model file). Plain JSON, never pickle: it is read back by the
monitor, the canary judge and the retraining policy, which may run anywhere.

It holds, for the training month (what the model learned from) and for the
validation month (what it was judged on, the closest thing to live traffic under
"no drift"):

- per-zone trip counts, pickup and dropoff (index = TLC zone id 1..265);
- trip distance: quantiles and a histogram on fixed bins (the same bins in every
  profile, so windows and versions compare bin for bin);
- for the validation month, the model's predictions (quantiles, histogram), its
  RMSE/MAE and residual distribution (prediction - actual);

plus the set of pickup/dropoff pairs seen in training (as ``pickup * 1000 +
dropoff``; a window's share of unseen pairs is a drift signal of its own) and a
seeded sample of validation rows (zones, distance, actual and predicted minutes)
from which a monitor can bootstrap what its statistics look like without drift.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from components.errors import TaxiMlopsError
from components.features.trip_domain import MAX_LOCATION_ID, MAX_TRIP_DISTANCE_MILES
from components.features.trip_features import TARGET_COLUMN
from components.models.duration_model import TripDurationModel
from components.models.metrics import regression_metrics
from components.storage.atomic_write import write_atomically

PROFILE_FILE_NAME: Final = "reference_profile.json"
PROFILE_FORMAT: Final = "taxi-mlops/reference-profile"
PROFILE_FORMAT_VERSION: Final = 1
#: Distance bins (miles): fine (0.25 mi) up to 20 mi, where city trips end, then coarse to the domain's end.
_FINE_MILES: Final = np.round(np.arange(0.0, 20.0, 0.25), 2).tolist()
DISTANCE_EDGES: Final = (*_FINE_MILES, 20.0, 30.0, 50.0, MAX_TRIP_DISTANCE_MILES)
#: Minute bins for predictions (the training target is 1..60 min; predictions may stray a little beyond).
MINUTE_EDGES: Final = (*range(0, 61), 90, 1_000)
#: Residual bins (prediction - actual, minutes).
RESIDUAL_EDGES: Final = (-1_000, *range(-60, 61, 2), 1_000)
QUANTILES: Final = tuple(np.round(np.linspace(0.0, 1.0, 101), 2).tolist())
DEFAULT_SAMPLE_ROWS: Final = 5_000
# Pickup/dropoff pair as one integer: zone ids are at most 3 digits.
PAIR_BASE: Final = 1_000


class ProfileError(TaxiMlopsError, ValueError):
    """A reference profile that cannot be built or read (names the file and the field)."""


@dataclass(frozen=True)
class Distribution:
    """Quantiles (at ``QUANTILES``) and counts per bin of one numeric column."""

    quantiles: list[float]
    edges: list[float]
    counts: list[int]
    n: int


@dataclass(frozen=True)
class MonthProfile:
    """One month's trips as the model's inputs see them."""

    rows: int
    pickup_counts: list[int]  # index = zone id (0 unused)
    dropoff_counts: list[int]
    distance: Distribution


@dataclass(frozen=True)
class Validation:
    """The model's answers on the validation month and how far they were off."""

    rmse: float
    mae: float
    predictions: Distribution
    residuals: Distribution  # prediction - actual, minutes


@dataclass(frozen=True)
class ReferenceProfile:
    candidate: str
    training: MonthProfile
    validation: MonthProfile
    scores: Validation
    seen_pairs: list[int]  # sorted pickup * 1000 + dropoff of every pair in the training month
    sample: dict[str, list[float]]  # seeded validation rows: PULocationID, DOLocationID, trip_distance, ...
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, "format_version": PROFILE_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], source: str = "reference profile") -> ReferenceProfile:
        if document.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source}: not a reference profile (format {document.get('format')!r})")
        if document.get("format_version") != PROFILE_FORMAT_VERSION:
            raise ProfileError(
                f"{source}: reference profile format_version {document.get('format_version')!r} "
                f"is not supported (this code reads {PROFILE_FORMAT_VERSION})"
            )
        try:
            return cls(
                candidate=str(document["candidate"]),
                training=_month(document["training"]),
                validation=_month(document["validation"]),
                scores=Validation(
                    rmse=float(document["scores"]["rmse"]),
                    mae=float(document["scores"]["mae"]),
                    predictions=Distribution(**document["scores"]["predictions"]),
                    residuals=Distribution(**document["scores"]["residuals"]),
                ),
                seen_pairs=[int(pair) for pair in document["seen_pairs"]],
                sample={str(k): [float(v) for v in values] for k, values in document["sample"].items()},
                seed=int(document["seed"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(
                f"{source}: reference profile is missing or has a bad field ({exc!r})"
            ) from exc

    def is_seen_pair(self, pickup: np.ndarray, dropoff: np.ndarray) -> np.ndarray:
        """True where a pickup/dropoff pair occurred in the training month."""
        pairs = np.asarray(pickup, dtype=np.int64) * PAIR_BASE + np.asarray(dropoff, dtype=np.int64)
        return np.isin(pairs, np.asarray(self.seen_pairs, dtype=np.int64))


def _month(document: Mapping[str, Any]) -> MonthProfile:
    return MonthProfile(
        rows=int(document["rows"]),
        pickup_counts=[int(c) for c in document["pickup_counts"]],
        dropoff_counts=[int(c) for c in document["dropoff_counts"]],
        distance=Distribution(**document["distance"]),
    )


def distribution(values: np.ndarray, edges: Sequence[float]) -> Distribution:
    """Quantiles and fixed-bin counts; values beyond the outer edges count in the outer bins."""
    finite = np.asarray(values, dtype=np.float64)
    if finite.size == 0:
        raise ProfileError("cannot profile an empty column")
    clipped = np.clip(finite, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=np.asarray(edges, dtype=np.float64))
    quantiles = np.quantile(finite, QUANTILES)
    return Distribution(
        quantiles=[round(float(q), 6) for q in quantiles],
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        n=int(finite.size),
    )


def _zones(trips: pd.DataFrame, column: str) -> tuple[np.ndarray, list[int]]:
    ids = pd.to_numeric(trips[column], errors="raise").to_numpy(dtype=np.int64)
    return ids, np.bincount(ids, minlength=MAX_LOCATION_ID + 1).tolist()


def month_profile(trips: pd.DataFrame) -> MonthProfile:
    if trips.empty:
        raise ProfileError("cannot profile a month without trips")
    _, pickup_counts = _zones(trips, "PULocationID")
    _, dropoff_counts = _zones(trips, "DOLocationID")
    distance = distribution(trips["trip_distance"].to_numpy(dtype=np.float64), DISTANCE_EDGES)
    return MonthProfile(len(trips), pickup_counts, dropoff_counts, distance)


def build_reference_profile(
    model: TripDurationModel,
    train_trips: pd.DataFrame,
    val_trips: pd.DataFrame,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    seed: int = 0,
) -> ReferenceProfile:
    """The profile of ``model`` trained on ``train_trips`` and validated on ``val_trips`` (cleaned trips)."""
    if TARGET_COLUMN not in val_trips.columns:
        raise ProfileError(f"validation trips have no {TARGET_COLUMN!r} column")
    predictions = np.asarray(model.predict(val_trips), dtype=np.float64)
    actual = val_trips[TARGET_COLUMN].to_numpy(dtype=np.float64)
    scores = regression_metrics(actual, predictions)
    pickup, _ = _zones(train_trips, "PULocationID")
    dropoff, _ = _zones(train_trips, "DOLocationID")
    seen_pairs = np.unique(pickup * PAIR_BASE + dropoff)

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(val_trips), size=min(sample_rows, len(val_trips)), replace=False))
    val_pickup, _ = _zones(val_trips, "PULocationID")
    val_dropoff, _ = _zones(val_trips, "DOLocationID")
    sample = {
        "PULocationID": val_pickup[chosen].astype(float).tolist(),
        "DOLocationID": val_dropoff[chosen].astype(float).tolist(),
        "trip_distance": val_trips["trip_distance"].to_numpy(dtype=np.float64)[chosen].tolist(),
        TARGET_COLUMN: actual[chosen].tolist(),
        "prediction": predictions[chosen].tolist(),
    }
    return ReferenceProfile(
        candidate=model.candidate,
        training=month_profile(train_trips),
        validation=month_profile(val_trips),
        scores=Validation(
            rmse=float(scores["rmse"]),
            mae=float(scores["mae"]),
            predictions=distribution(predictions, MINUTE_EDGES),
            residuals=distribution(predictions - actual, RESIDUAL_EDGES),
        ),
        seen_pairs=seen_pairs.tolist(),
        sample=sample,
        seed=seed,
    )


def save_profile(profile: ReferenceProfile, path: str | Path) -> None:
    write_atomically(path, json.dumps(profile.to_dict(), separators=(",", ":")).encode())


def load_profile(path: str | Path) -> ReferenceProfile:
    source = Path(path)
    try:
        document = json.loads(source.read_bytes())
    except OSError as exc:
        raise ProfileError(f"{source}: cannot read the reference profile ({exc.strerror})") from exc
    except (ValueError, RecursionError) as exc:
        raise ProfileError(f"{source}: the reference profile is not JSON ({exc})") from exc
    if not isinstance(document, Mapping):
        raise ProfileError(f"{source}: not a reference profile (a JSON {type(document).__name__})")
    return ReferenceProfile.from_dict(document, str(source))
