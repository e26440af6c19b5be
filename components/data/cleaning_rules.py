"""The names and limits of ingest's cleaning rules, importable without pandas.

``components.data.ingest`` applies them; the pipeline, the local runner and the
CLI take their ``min_rows`` default from here (a CLI option's default is needed
when the command line is built, before anything heavy is imported).
"""

from __future__ import annotations

from typing import Final

#: The counted cleaning rules, in the order they are applied (see ``components.data.ingest``).
RULES: Final[tuple[str, ...]] = (
    "missing_values",
    "zone_out_of_range",
    "distance_out_of_range",
    "pickup_outside_month",
    "duration_out_of_range",
)
#: The course's label rule: keep trips of 1..60 minutes.
MIN_DURATION_MINUTES: Final = 1.0
MAX_DURATION_MINUTES: Final = 60.0
#: Rows a month must keep after cleaning before anything trains on it or is judged on it
#: (``too_few_rows``); the default of the pipeline parameter ``min_rows``, set only here.
#: Real months keep far more (green 2021-01 and -02: 73,906 and 61,920; a yellow month
#: millions). Below 1,000 trips most of the ~13,000 pickup/dropoff pairs of the one-hot
#: features are never seen, and a validation RMSE over so few trips is too noisy for the
#: gate's 1% margin to mean anything: a 4-trip month once trained, passed the gate
#: against no champion and was deployed.
DEFAULT_MIN_ROWS: Final = 1_000
