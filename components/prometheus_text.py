"""Small pieces of Prometheus' text exposition format that several exporters of ours share."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def escape_label(value: Any) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def unix_seconds(value: Any) -> float | None:
    """An ISO 8601 timestamp as Unix seconds; None when it is missing or not a timestamp."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
