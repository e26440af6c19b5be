"""Which columns of a DictVectorizer matrix are one-hot groups, and which are numeric.

DictVectorizer names a one-hot column ``<field>=<value>`` and a numeric one
``<field>``. Both estimators that look inside the one-hot groups (the
target-encoded booster, and the xgboost candidate's categorical fit) read the
groups from those names through this one class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneHotLayout:
    """Which columns form each categorical group, and which are numeric."""

    group_names: list[str]
    group_of_column: np.ndarray  # column -> group index, -1 for numeric columns
    level_of_column: np.ndarray  # column -> level index inside its group
    group_sizes: list[int]
    numeric_columns: np.ndarray

    @classmethod
    def from_feature_names(cls, names: Sequence[str], separator: str = "=") -> OneHotLayout:
        groups: dict[str, int] = {}
        sizes: list[int] = []
        group_of = np.full(len(names), -1, dtype=np.int64)
        level_of = np.full(len(names), -1, dtype=np.int64)
        for column, name in enumerate(names):
            prefix, sep, _ = name.partition(separator)
            if not sep:
                continue
            group = groups.setdefault(prefix, len(groups))
            if group == len(sizes):
                sizes.append(0)
            group_of[column] = group
            level_of[column] = sizes[group]
            sizes[group] += 1
        return cls(list(groups), group_of, level_of, sizes, np.flatnonzero(group_of < 0))
