"""The command line tunes OpenMP's waiting and glibc's malloc before torch loads, unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cqd_port.cpuruntime import MALLOC_VARIABLES, OPT_OUT, SPIN_COUNT

# In a fresh interpreter: what libgomp will read must be in the environment before torch is imported.
PROBE = (
    "import os, sys; assert 'torch' not in sys.modules; import cqd_port_cli; "
    "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'), '|', cqd_port_cli.CPU_RUNTIME['malloc'])"
)
PROBE_MAIN = "import os, sys; import cqd_port_cli.main; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"


def _env(**given: str) -> dict[str, str]:
    dropped = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", OPT_OUT, *MALLOC_VARIABLES}
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, **given}


def _run(probe: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(
    "given, expected_openmp",
    [({}, f"{SPIN_COUNT} None"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "None PASSIVE"), ({"GOMP_SPINCOUNT": "7"}, "7 None")],
)
def test_cli_bounds_the_openmp_spin_before_torch_loads_unless_the_user_chose(given, expected_openmp):
    printed = _run(PROBE, _env(**given))
    openmp, malloc = printed.split(" | ")
    assert openmp == expected_openmp
    assert malloc.startswith("no mmap for large blocks, trim threshold 1024 MiB"), malloc
    # the CLI does load torch: the setting was made before it did
    assert _run(PROBE_MAIN, _env(**given)).split() == [expected_openmp.split()[0], "True"]


def test_user_malloc_settings_and_the_opt_out_are_left_alone():
    printed = _run(PROBE, _env(MALLOC_ARENA_MAX="2", MALLOC_TRIM_THRESHOLD_="1000"))
    assert printed.endswith("left alone (the environment sets MALLOC_TRIM_THRESHOLD_)")
    printed = _run(PROBE, _env(**{OPT_OUT: "default"}))
    assert printed == "None None | left alone (CQD_PORT_CPU_RUNTIME=default)"
