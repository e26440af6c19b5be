"""This process's resident memory from /proc, for the benches' fresh-process measurements.

Stdlib only: ``evidently_drift.py`` imports it inside Evidently's own virtualenv too (a script's
own folder is first on ``sys.path``, so every bench in ``bench/`` finds it).
"""

from __future__ import annotations


def status_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in KiB; -1 if absent."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reset_peak() -> bool:
    """Reset VmHWM, the peak resident set (what ru_maxrss reports), to the current one."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
