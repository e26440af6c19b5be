"""Errors a pipeline step raises when its input is unusable.

Every message names the offending file (or URI) and the rule that failed, so a
failed KFP task can be diagnosed from its log line alone.
"""

from __future__ import annotations


class TaxiMlopsError(Exception):
    """Base class: a problem the user can fix (bad input, bad configuration)."""


class IngestError(TaxiMlopsError):
    """TLC data could not be read or cleaned into a usable training set."""

    def __init__(self, source: str, rule: str, detail: str) -> None:
        self.source = source
        self.rule = rule
        self.detail = detail
        super().__init__(f"{source}: [{rule}] {detail}")


class StorageError(TaxiMlopsError):
    """An S3 location or connection is misconfigured, or an object could not be moved."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class ModelIntegrityError(TaxiMlopsError):
    """A model file does not match the checksum recorded for it, or is not a model file."""


class CandidateConfigError(TaxiMlopsError):
    """A candidate model name or hyperparameter is not known."""
