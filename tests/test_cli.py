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


# --------------------------------------------------------------------------- --train-window / --val-window


@pytest.fixture
def captured_run(monkeypatch: pytest.MonkeyPatch) -> list:
    """What `run` would hand the local runner: the parse under test, without a pipeline run behind it."""
    import pipelines.local_run

    requests: list = []

    def capture(settings: object, request: object, **_: object) -> dict:
        requests.append(request)
        raise TaxiMlopsError("captured")

    monkeypatch.setattr(pipelines.local_run, "run_pipeline_locally", capture)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return requests


def test_run_parses_the_windows_into_the_request(tmp_path: Path, captured_run: list) -> None:
    from datetime import datetime

    from components.data.event_window import EventWindow

    args = ["run", "--state-dir", str(tmp_path), "--train-window", "2021-02-01:2021-03-03"]
    args += ["--val-window", "2021-03-03T00:00:00/2021-03-10", "--allow-missing-months"]
    result = CliRunner().invoke(main, args)
    assert result.output.splitlines()[-1] == "error: captured"
    (request,) = captured_run
    assert request.train_window == EventWindow(datetime(2021, 2, 1), datetime(2021, 3, 3))
    assert request.val_window == EventWindow(datetime(2021, 3, 3), datetime(2021, 3, 10))
    assert request.allow_missing_months is True


def test_run_without_windows_is_the_months_as_before(tmp_path: Path, captured_run: list) -> None:
    CliRunner().invoke(main, ["run", "--state-dir", str(tmp_path), "--val-month", "2021-03"])
    (request,) = captured_run
    assert (request.train_month, request.val_month) == ("2021-01", "2021-03")
    assert request.train_window is None and request.val_window is None
    assert request.allow_missing_months is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-window", "2021-02"], "a window is START:END"),
        (["--val-window", "2021-03-01:2021-02-30"], "not a real date or time"),
        (["--train-window", "2021-03-03:2021-02-01"], "a window's start must be before its end"),
    ],
)
def test_a_malformed_window_is_a_usage_error_naming_the_option(
    tmp_path: Path, captured_run: list, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["run", "--state-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert f"Invalid value for '{args[0]}'" in result.output and message in result.output
    assert captured_run == []


@pytest.mark.parametrize("side", ["train", "val"])
def test_a_month_and_a_window_for_the_same_side_are_refused(
    tmp_path: Path, captured_run: list, side: str
) -> None:
    args = ["run", "--state-dir", str(tmp_path), f"--{side}-month", "2021-02", f"--{side}-window"]
    result = CliRunner().invoke(
        main, [*args, "2021-02-01:2021-02-15" if side == "train" else "2021-03-01:2021-03-09"]
    )
    assert result.exit_code == 2
    assert f"give --{side}-month or --{side}-window, not both" in result.output
    assert captured_run == []


@pytest.fixture
def captured_submission(monkeypatch: pytest.MonkeyPatch) -> list:
    """The KFP API cannot run here: the Submission `submit` would send is captured instead."""
    import pipelines.submit

    submissions: list = []

    def capture(submission: object) -> object:
        submissions.append(submission)
        return pipelines.submit.Submitted("run", "run-1", "http://kfp/#/runs/details/run-1")

    monkeypatch.setattr(pipelines.submit, "submit", capture)
    return submissions


def test_submit_sends_the_windows_as_pipeline_parameters(captured_submission: list) -> None:
    args = ["submit", "--train-window", "2021-02-01:2021-03-03", "--val-window", "2021-03-03:2021-03-10"]
    result = CliRunner().invoke(main, [*args, "--candidates", "ridge", "--allow-missing-months"])
    assert result.exit_code == 0, result.output
    (submission,) = captured_submission
    arguments = submission.arguments
    assert {key: arguments[key] for key in ("train_start", "train_end", "val_start", "val_end")} == {
        "train_start": "2021-02-01T00:00:00",
        "train_end": "2021-03-03T00:00:00",
        "val_start": "2021-03-03T00:00:00",
        "val_end": "2021-03-10T00:00:00",
    }
    assert arguments["allow_missing_months"] is True


def test_submit_without_windows_sends_no_window_parameter(captured_submission: list) -> None:
    result = CliRunner().invoke(main, ["submit", "--candidates", "ridge"])
    assert result.exit_code == 0, result.output
    (submission,) = captured_submission
    assert not {"train_start", "train_end", "val_start", "val_end", "allow_missing_months"} & set(
        submission.arguments
    )


def test_submit_refuses_validation_that_is_not_newer_before_sending(captured_submission: list) -> None:
    args = ["submit", "--train-window", "2021-02-01:2021-03-03", "--val-month", "2021-02"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert (
        "error: training window 2021-02-01:2021-03-03 and validation month 2021-02: [bad_window]"
        in result.output
    )
    assert captured_submission == []


def test_window_options_belong_to_the_training_pipeline(captured_submission: list) -> None:
    result = CliRunner().invoke(
        main, ["submit", "--pipeline", "monitoring", "--train-window", "2021-02-01:2021-03-03"]
    )
    assert result.exit_code == 2
    assert "--train-window is not an option of the monitoring pipeline" in result.output


def test_two_replays_started_in_the_same_second_get_workspaces_of_their_own(tmp_path: Path) -> None:
    from pipelines.cli_autopilot import _new_workspace

    folders = {_new_workspace(tmp_path / "autopilot-replays") for _ in range(3)}
    assert len(folders) == 3 and all(folder.is_dir() for folder in folders)
