"""The one way this project writes a file that others read: all of it or none of it.

Write to a temp file in the destination's folder, flush it to disk, then
``os.replace`` it onto the destination: a rename within one filesystem, which
is atomic. A reader (or a process started after a crash) sees the old file or
the new one, never half of one; a failure leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: Readable by the other users of the machine (mkstemp's 0600 would hide a state file from them).
DEFAULT_MODE = 0o644


@contextlib.contextmanager
def temp_file_beside(dest: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """An open temp file in ``dest``'s folder; the caller renames it onto ``dest`` when complete.

    For writers that must check what they wrote before it becomes ``dest``
    (a download's checksum). Whatever is left at the temp path when the block
    ends (a failure) is removed.
    """
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp_path = Path(name)
    try:
        with os.fdopen(fd, "wb") as tmp:
            yield tmp, tmp_path
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomically(dest: str | os.PathLike[str], data: bytes | str, *, mode: int = DEFAULT_MODE) -> Path:
    """Replace ``dest`` with ``data`` (text is written as UTF-8) in one step; creates its folder."""
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with temp_file_beside(target) as (tmp, tmp_path):
        os.fchmod(tmp.fileno(), mode)
        tmp.write(payload)
        tmp.flush()
        os.fsync(tmp.fileno())
        tmp.close()
        os.replace(tmp_path, target)
    return target
