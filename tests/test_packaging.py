"""The installed import names are unambiguous (issue: generic top-level `cli` and `parity`).

The folders keep the names of the project's layout (`cli/`, `parity/`); they
install as `cqd_port_cli` and `cqd_port_parity`, and the console script is
unchanged. Checked from a neutral folder, so the checkout itself is not on
`sys.path`: only what the installation provides can be imported.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PROBE = """
import importlib.util, json
names = ["cli", "parity", "cqd_port", "cqd_port_cli", "cqd_port_parity", "matconvnet_weights"]
found = {name: importlib.util.find_spec(name) is not None for name in names}
from cqd_port_parity.runner import PACKAGED_REFERENCE_DIR
found["packaged_references"] = sorted(p.name for p in PACKAGED_REFERENCE_DIR.glob("ops_*.mat"))
print(json.dumps(found))
"""


def test_no_generic_top_level_names_are_installed(tmp_path: Path) -> None:
    import json

    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["cli"] is False and found["parity"] is False
    assert found["cqd_port"] and found["cqd_port_cli"] and found["cqd_port_parity"] and found["matconvnet_weights"]
    assert "ops_pool_ties.mat" in found["packaged_references"] and "ops_conv.mat" in found["packaged_references"]


def test_console_script_is_unchanged() -> None:
    scripts = {ep.name: ep.value for ep in metadata.distribution("cqd-port").entry_points if ep.group == "console_scripts"}
    assert scripts == {"cqd-port": "cqd_port_cli.main:main"}
