"""Write a file so that readers see all of it or none of it: a temp file beside it, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def temp_file_beside(dest: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """An open temp file in ``dest``'s folder; the caller renames it onto ``dest`` when complete.

    Same folder as ``dest``, so ``os.replace`` is a rename on one filesystem (atomic).
    Whatever is left at the temp path when the block ends (a failure) is removed.
    """
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp_path = Path(name)
    try:
        with os.fdopen(fd, "wb") as tmp:
            yield tmp, tmp_path
    finally:
        tmp_path.unlink(missing_ok=True)
