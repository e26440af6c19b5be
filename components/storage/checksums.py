"""sha256 of files: data lineage (which bytes were trained on) and model integrity."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex digest of the file's bytes, read in 1 MiB blocks (TLC months reach ~50 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
