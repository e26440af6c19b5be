"""Which process owns a pipeline run or a registration in flight, and whether it is still alive.

A process that is SIGKILLed runs no ``finally``: the MLflow run it opened stays
RUNNING and a version it was registering stays half done. So the writer records
itself (host, pid and, on Linux, the kernel's start time of that pid) in a tag,
and the next command can tell a dead owner from a live one. Only a process on
this host can be judged: another host's pids mean nothing here, so their runs
and versions are left alone (``alive`` is None).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

OWNER_TAG = "taxi_mlops.owner"


@dataclass(frozen=True)
class ProcessOwner:
    host: str
    pid: int
    # Clock ticks after boot at which the pid started ("" where /proc is absent): a pid the
    # kernel reused for another process after ours died has another start time.
    started: str = ""

    def text(self) -> str:
        """The tag value: ``host:pid:started``."""
        return f"{self.host}:{self.pid}:{self.started}"

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    @classmethod
    def parse(cls, text: str | None) -> ProcessOwner | None:
        """Inverse of ``text``; None for a missing or unreadable tag (nothing can be judged then)."""
        parts = (text or "").split(":")
        if len(parts) < 3 or not parts[-2].isdigit():
            return None
        host = ":".join(parts[:-2])  # the last two fields are ours; a host name has no ":" anyway
        return cls(host, int(parts[-2]), parts[-1]) if host else None

    def alive(self) -> bool | None:
        """True or False for an owner on this host; None for another host's (not ours to judge)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        stat = _proc_stat(self.pid)
        if stat is None:
            return True  # no /proc to look closer: the pid exists
        state, started = stat
        # A zombie (killed, not yet reaped by its parent) runs nothing any more.
        return state != "Z" and (not self.started or started == self.started)


def process_owner(pid: int | None = None) -> ProcessOwner:
    """This process (or ``pid`` on this host) as an owner to record."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return ProcessOwner(socket.gethostname(), pid, stat[1] if stat else "")


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) from ``/proc/<pid>/stat``, or None where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid ..." - comm may hold spaces and parentheses: split after the last ")".
    fields = text.rpartition(")")[2].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]
