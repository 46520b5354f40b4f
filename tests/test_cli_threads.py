"""The command line makes OpenMP threads wait passively (a shared, loaded CPU), unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# In a fresh interpreter: the policy libgomp will read must be in the environment before torch is imported.
PROBE = "import os, sys; import cqd_port_cli.main; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_sets_a_passive_openmp_wait_policy_before_torch_loads(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    probe = "import os, sys; assert 'torch' not in sys.modules; import cqd_port_cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    printed = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert printed == [expected]
    printed = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert printed == [expected, "True"]  # the CLI does load torch: the policy was set before it did
