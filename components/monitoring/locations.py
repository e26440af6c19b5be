"""The prediction log and the labels as folders, wherever they live: a local folder or an ``s3://`` prefix.

Their readers (``prediction_log.read_prediction_log``, ``labels.read_labels``) read
folders. On a cluster both live in MinIO (``names.PREDICTION_LOG_URI``, ``LABELS_URI``):
the complete files are downloaded into a scratch folder first, each checked like any
download (``components.storage.object_transfer``), and read from there. The monitor
step and the cluster canary judge both read them this way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from components.monitoring.prediction_log import SEGMENT_PREFIX, SEGMENT_SUFFIX
from components.storage.object_transfer import connection_for, download_prefix
from components.storage.s3 import SCHEME, S3Connection

SEGMENT_PATTERN: Final = f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"  # complete segments, never .tmp
LABELS_PATTERN: Final = "*.parquet"  # one labels file per month


def is_remote(location: str) -> bool:
    """An ``s3://`` prefix rather than a local folder."""
    return location.startswith(SCHEME)


@contextlib.contextmanager
def local_folder(
    location: str,
    scratch: Path,
    pattern: str,
    s3: S3Connection | None,
    note: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """``location`` itself when it is a folder; from ``s3://`` its files matching ``pattern``, downloaded
    into ``scratch`` (``s3``: how to reach the store, default from the environment)."""
    if not is_remote(location):
        yield Path(location)
        return
    fetched = download_prefix(connection_for(location, s3), location, scratch, pattern=pattern)
    if note is not None:
        note(f"{location}: {len(fetched)} files downloaded")
    yield scratch
