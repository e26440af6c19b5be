"""A record history that survives a kill: JSON lines appended and fsync'd, plus the newest one alone.

Used for every decision the system makes by itself (monitor verdicts, canary
analyses): ``history.jsonl`` keeps all of them in order, ``latest.json`` the
newest, replaced atomically. A writer killed mid-append leaves a torn last
line; the next append starts on a fresh line, and readers skip a line that is
not JSON rather than lose the history before it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from components.storage.atomic_write import write_atomically

T = TypeVar("T")


def append_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line and fsync it; creates the folder."""
    append_records(path, [record])


def append_records(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Append ``records`` in one write, one JSON line each, and fsync them; creates the folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n" for record in records)
    with open(target, "a+b") as history:
        if history.tell() > 0:
            history.seek(-1, os.SEEK_END)
            if history.read(1) != b"\n":
                text = "\n" + text  # end a torn last line first, so these records are lines of their own
        history.write(text.encode("utf-8"))
        history.flush()
        os.fsync(history.fileno())


def read_records(path: str | os.PathLike[str], parse: Callable[[str, str], T]) -> list[T]:
    """The lines ``parse(text, "file:line")`` accepts, in order (it raises ValueError to skip one)."""
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(parse(line, f"{source}:{number}"))
        except ValueError:
            continue
    return records


def write_latest(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``record`` (indented JSON) in one step."""
    write_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
