"""The CLI's one error boundary: a user's problem is one ``error:`` line and exit 1; a bug stays a bug."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from components.errors import IngestError, StorageError, TaxiMlopsError
from pipelines.cli import ErrorBoundary, main


def _group_raising(error: BaseException) -> click.Group:
    @click.group(cls=ErrorBoundary)
    def cli() -> None:
        pass

    @cli.command()
    def act() -> None:
        raise error

    return cli


@pytest.mark.parametrize(
    "error",
    [
        IngestError("/data/green_tripdata_2021-01.parquet", "file_not_found", "no such file"),
        StorageError("environment", "S3 access needs AWS_ACCESS_KEY_ID to be set"),
        TaxiMlopsError("nothing to serve yet"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_user_errors_become_one_line_and_exit_1(error: TaxiMlopsError) -> None:
    result = CliRunner().invoke(_group_raising(error), ["act"])
    assert result.exit_code == 1
    assert result.output == f"error: {error}\n"
    assert "Traceback" not in result.output


def test_a_bug_is_not_dressed_up_as_a_user_error() -> None:
    result = CliRunner().invoke(_group_raising(KeyError("oops")), ["act"])
    assert result.exit_code == 1
    assert isinstance(result.exception, KeyError)
    assert "error:" not in result.output


def test_serve_with_nothing_registered_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 1
    # (MLflow may announce creating the empty sqlite registry before that.)
    assert result.output.splitlines()[-1] == "error: nothing to serve yet: run `taxi-mlops run` first"
    assert "Traceback" not in result.output
