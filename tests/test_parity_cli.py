"""`cqd-port parity`: table, summary and exit codes 0 / 1 / 2."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def ops_dir(tmp_path, parity_dir):
    folder = tmp_path / "refs"
    folder.mkdir()
    for name in ("ops_conv.mat", "ops_pool.mat", "ops_normalize.mat"):
        shutil.copy(parity_dir / name, folder)
    return folder


def test_passing_suite_exits_0(cli, ops_dir):
    result = cli("parity", "--reference-dir", ops_dir)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "k3_s1_p1" in result.stdout and "max_3_s2_vggm_pool2" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "59 passed, 0 failed"


def test_failing_comparison_exits_1(cli, ops_dir):
    result = cli("parity", "--reference-dir", ops_dir, "--lrn", "exact")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "49 passed, 10 failed"


def test_model_and_reference_pair(cli, parity_dir):
    result = cli("parity", "--model", parity_dir / "net_vggvd16_tiny.mat",
                 "--reference", parity_dir / "ref_vggvd16_tiny.mat", "--failures-only")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("passed, 0 failed")


@pytest.mark.parametrize(
    "args, culprit",
    [
        (("--reference-dir", "MISSING_DIR"), "MISSING_DIR"),
        (("--model", "net.mat"), "--reference"),
        (("--lrn", "fast"), "--lrn"),
    ],
)
def test_user_errors_exit_2_with_one_line(cli, tmp_path, args, culprit):
    args = tuple(str(tmp_path / a) if a == "MISSING_DIR" else a for a in args)
    result = cli("parity", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0]
    assert "Traceback" not in result.stderr


def test_converted_checkpoint_against_reference(cli, parity_dir, tmp_path):
    # The user's check of their own conversion: convert-weights, then parity on the .pt.
    checkpoint = tmp_path / "vggm.pt"
    converted = cli("convert-weights", parity_dir / "net_vggm_tiny_dag.mat", "-o", checkpoint)
    assert converted.exit_code == 0, converted.stderr
    good = cli("parity", "--model", checkpoint, "--reference", parity_dir / "ref_vggm_tiny.mat")
    assert good.exit_code == 0, good.stdout
    # 59 end-to-end rows and 37 local ones (21 layers' dzdx, 8 convs' dzdw and dzdb)
    assert good.stdout.strip().splitlines()[-1] == "96 passed, 0 failed"
    # the same checkpoint against another network's reference: failures, exit 1, no crash
    wrong = cli("parity", "--model", checkpoint, "--reference", parity_dir / "ref_vggvd16_tiny.mat")
    assert wrong.exit_code == 1
    assert "layer missing from the model" in wrong.stdout
