"""Shared fixtures: where ../shared lies, and running the CLI in-process."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CQD_SHARED", ROOT.parent / "shared"))


def _require(path: Path) -> Path:
    # The parity suite must fail loudly, never skip, when its reference data is missing.
    if not path.exists():
        pytest.fail(f"reference data missing: {path} (CI needs ../shared beside the checkout)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _require(SHARED / "parity")


@pytest.fixture(scope="session")
def real_models_dir() -> Path:
    return _require(SHARED / "real-models")


@pytest.fixture(scope="session")
def release_parity_dir() -> Path:
    return _require(SHARED / "release-parity")


@pytest.fixture(scope="session")
def imresize_cases_path() -> Path:
    return _require(SHARED / "matlab-imresize" / "imresize_cases.mat")


@pytest.fixture(scope="session")
def cars_devkit_dir() -> Path:
    return _require(SHARED / "stanford-cars-devkit")


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    return _require(SHARED / "paper")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Run `cqd-port ARGS...` in-process through the real entry point (`cqd_port_cli.main.main`).

    Goes through the same error handling as the console script, so exit codes
    and the one-line error messages are what a user sees.
    """
    from cqd_port_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = ["cqd-port", *map(str, args)]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli
