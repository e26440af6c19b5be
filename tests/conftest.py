"""Shared pytest fixtures: where the real TLC files are, and a small synthetic data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.s3_server import moto_s3
from support.tlc_fixtures import write_tlc_dir

from components.storage.s3 import S3Connection

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_TLC_DIR = REPO_ROOT.parent / "shared" / "data" / "tlc"


@pytest.fixture(scope="session")
def shared_tlc_dir() -> Path:
    """The read-only real TLC files (../shared/data/tlc); skips the test when absent."""
    if not (SHARED_TLC_DIR / "green_tripdata_2021-01.parquet").is_file():
        pytest.skip(f"real TLC data not found in {SHARED_TLC_DIR}")
    return SHARED_TLC_DIR


@pytest.fixture
def tlc_data_dir(tmp_path: Path) -> Path:
    """Synthetic green 2021-01 (train) and 2021-02 (val) files, 500 rows each, 2021 schema."""
    return write_tlc_dir(tmp_path / "tlc")


@pytest.fixture(scope="module")
def s3_conn() -> Iterator[S3Connection]:
    """A real S3-compatible server (moto) on 127.0.0.1, one per test module."""
    with moto_s3() as connection:
        yield connection
