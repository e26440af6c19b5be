"""Click options more than one command module of the CLI shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def state_dir_option(command: Any) -> Any:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Local state folder [env TAXI_MLOPS_STATE_DIR; default ./.taxi-mlops].",
    )(command)
