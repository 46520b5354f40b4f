"""cqd_port_parity.runner: the whole suite passes on MatConvNet's data, and can fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import scipy.io

from cqd_port.errors import CqdError
from cqd_port_parity.runner import PACKAGED_REFERENCE_DIR, REPOSITORY_ROOT, default_reference_dirs, run_parity


@pytest.fixture(scope="module")
def full_report(parity_dir):
    return run_parity([parity_dir])


def test_every_reference_file_passes(full_report, parity_dir):
    report = full_report
    failures = [(r.group, r.case, r.quantity, r.rel, r.note) for r in report.failures()]
    assert failures == []
    assert report.passed and report.not_run == []
    groups = {r.group.split(" / ")[0] for r in report.rows}
    expected = {p.name for p in parity_dir.glob("ops_*.mat")} | {p.name for p in parity_dir.glob("ref_*.mat")}
    assert expected <= groups
    assert any(r.group.startswith("train_vggm_tiny") for r in report.rows)  # the training replay ran


def test_all_three_network_layouts_are_checked(full_report):
    networks = {r.group for r in full_report.rows if r.group.startswith("ref_vggm_tiny.mat")}
    assert networks == {
        "ref_vggm_tiny.mat / net_vggm_tiny.mat",
        "ref_vggm_tiny.mat / net_vggm_tiny_oldformat.mat",
        "ref_vggm_tiny.mat / net_vggm_tiny_dag.mat",
    }
    for group in networks:
        rows = [r for r in full_report.rows if r.group == group]
        # every layer's output and input derivative, 8 parameter derivatives, the normalization
        assert len([r for r in rows if r.quantity == "y"]) == 21
        assert len([r for r in rows if r.quantity == "dzdx"]) == 21
        assert len([r for r in rows if r.quantity in ("dzdw", "dzdb")]) == 16
        assert any(r.case == "input" for r in rows)


def test_every_network_reference_has_passing_local_rows(full_report, parity_dir):
    for reference in sorted(parity_dir.glob("ref_*.mat")):
        layers = len(scipy.io.loadmat(reference, variable_names=["names"])["names"].ravel())
        groups = {r.group for r in full_report.rows if r.group.startswith(f"{reference.name} / ")}
        assert groups
        for group in groups:
            local = [r for r in full_report.rows if r.group == group and r.quantity.startswith("local ")]
            assert len([r for r in local if r.quantity == "local dzdx"]) == layers
            assert local and all(r.passed for r in local), [(r.case, r.quantity, r.rel) for r in local if not r.passed]


def test_lrn_mode_follows_provenance(full_report):
    modes = full_report.lrn_modes
    assert modes["ops_normalize.mat"] == "matconvnet-cpu"
    assert modes["ops_normalize_exactpow.mat"] == "exact"
    assert modes["ref_vggm_tiny_exactpow.mat / net_vggm_tiny_dag.mat"] == "exact"


def test_forcing_exact_lrn_on_fast_pow_reference_fails(parity_dir):
    report = run_parity(reference=parity_dir / "ops_normalize.mat", lrn="exact")
    assert not report.passed and report.n_failed == len(report.rows) == 10

    net = run_parity(model=parity_dir / "net_vggm_tiny.mat", reference=parity_dir / "ref_vggm_tiny.mat", lrn="exact")
    by_key = {(r.case, r.quantity): r for r in net.rows}
    assert by_key[("01 conv1", "y")].passed and by_key[("02 relu1", "y")].passed  # before the first LRN
    assert not by_key[("03 norm1", "y")].passed and not by_key[("21 prob", "y")].passed


def test_a_perturbed_activation_fails_exactly_there(tmp_path, parity_dir):
    data = scipy.io.loadmat(parity_dir / "ref_vggvd16_tiny.mat", squeeze_me=False, struct_as_record=False)
    data = {k: v for k, v in data.items() if not k.startswith("__")}
    pool1 = data["x"][0, 5].copy()  # x{6}: the output of layer 5, pool1
    pool1.flat[123] += 1e-2 * abs(pool1).max()
    data["x"][0, 5] = pool1
    corrupted = tmp_path / "ref_vggvd16_tiny.mat"
    scipy.io.savemat(corrupted, data)
    report = run_parity(model=parity_dir / "net_vggvd16_tiny.mat", reference=corrupted)
    # the corrupted output, and the local filter derivative of the one layer that reads it as input
    assert [(r.case, r.quantity) for r in report.failures()] == [("05 pool1", "y"), ("06 conv2_1", "local dzdw")]
    assert report.failures()[0].rel == pytest.approx(1e-2, rel=1e-3)


def test_network_missing_beside_reference_is_a_failed_row_or_a_user_error(tmp_path, parity_dir):
    shutil.copy(parity_dir / "ref_vggvd16_tiny.mat", tmp_path)
    report = run_parity([tmp_path])  # in a folder run, one file that cannot be checked must not hide the others
    assert not report.passed and len(report.rows) == 1
    assert report.rows[0].group == "ref_vggvd16_tiny.mat" and "net_vggvd16_tiny.mat" in report.rows[0].note
    with pytest.raises(CqdError, match="net_vggvd16_tiny.mat"):  # named alone: the user's error, one line
        run_parity(reference=tmp_path / "ref_vggvd16_tiny.mat")


def test_network_is_found_in_a_sibling_parity_folder(tmp_path, parity_dir):
    (tmp_path / "release-parity").mkdir()
    (tmp_path / "parity").mkdir()
    shutil.copy(parity_dir / "ref_vggvd16_tiny.mat", tmp_path / "release-parity")
    shutil.copy(parity_dir / "net_vggvd16_tiny.mat", tmp_path / "parity")
    report = run_parity([tmp_path / "release-parity"])
    assert report.passed and {r.group for r in report.rows} == {"ref_vggvd16_tiny.mat / net_vggvd16_tiny.mat"}


def test_missing_default_folders_are_reported_never_a_smaller_all_passed(tmp_path, monkeypatch, cli):
    import cqd_port_parity.runner as runner

    # an installed package run from elsewhere: no ../shared beside the current folder or the package
    (tmp_path / "site" / "pkg").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.setattr(runner, "REPOSITORY_ROOT", tmp_path / "site" / "pkg")
    monkeypatch.chdir(tmp_path / "work")
    report = run_parity()
    assert [m.label for m in report.missing] == ["../shared/parity", "../shared/release-parity"]
    assert report.passed and not report.complete  # the packaged operators pass, but that is not everything
    assert "not found: ../shared/parity" in report.missing[0].message()

    result = cli("parity")
    assert result.exit_code == 3, result.stdout + result.stderr
    assert "NOT RUN" in result.stdout and "INCOMPLETE" in result.stdout
    assert "not found: ../shared/parity" in result.stdout and "not found: ../shared/release-parity" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def _write_tps_reference(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "tps_case.mat"
    scipy.io.savemat(path, {"cases": [[1.0]]})
    return path


@pytest.mark.parametrize("checker", [("cqd_port_parity.no_such_checker", "check"), ("json", "no_such_function")])
def test_missing_release_checker_is_a_failed_row(tmp_path, monkeypatch, checker):
    import cqd_port_parity.runner as runner

    path = _write_tps_reference(tmp_path)
    monkeypatch.setitem(runner.RELEASE_CHECKERS, "tps", checker)
    report = run_parity([tmp_path])
    assert not report.passed and len(report.rows) == 1
    row = report.rows[0]
    assert row.group == path.name and checker[0] in row.note and "not available" in row.note


def test_crashing_release_checker_is_a_failed_row(tmp_path, monkeypatch):
    import types

    import cqd_port_parity.runner as runner

    def check(path):
        raise ZeroDivisionError("boom in the checker")

    module = types.ModuleType("parity_fake_checker")
    module.check = check
    monkeypatch.setitem(__import__("sys").modules, "parity_fake_checker", module)
    monkeypatch.setitem(runner.RELEASE_CHECKERS, "tps", ("parity_fake_checker", "check"))
    _write_tps_reference(tmp_path)
    shutil.copy(PACKAGED_REFERENCE_DIR / "ops_misc.mat", tmp_path)
    report = run_parity([tmp_path])
    failures = report.failures()
    assert len(failures) == 1 and "ZeroDivisionError: boom in the checker" in failures[0].note
    assert any(r.group == "ops_misc.mat" and r.passed for r in report.rows)  # the other file still ran


def test_sed_reference_gets_the_model_beside_it(tmp_path, monkeypatch):
    import types

    import cqd_port_parity.runner as runner
    from cqd_port_parity.compare import compare

    seen = []

    def check(path, model_path):
        seen.append((path.name, model_path.name))
        return [compare("c", "E", 1.0, 1.0, group=path.name)]

    module = types.ModuleType("parity_fake_sed")
    module.check = check
    monkeypatch.setitem(__import__("sys").modules, "parity_fake_sed", module)
    monkeypatch.setitem(runner.RELEASE_CHECKERS, "sed", ("parity_fake_sed", "check"))
    (tmp_path / "sed").mkdir()
    for name in ("sed_a.mat", "sed_b.mat", "sed_model_synth.mat"):
        (tmp_path / "sed" / name).write_bytes(b"")
    report = run_parity([tmp_path])
    assert report.passed and seen == [("sed_a.mat", "sed_model_synth.mat"), ("sed_b.mat", "sed_model_synth.mat")]
    (tmp_path / "sed" / "sed_model_synth.mat").unlink()
    report = run_parity([tmp_path])
    assert not report.passed and all("sed_model_*.mat" in r.note for r in report.rows)


def test_a_crashing_backward_is_a_failed_row(parity_dir, monkeypatch):
    import torch

    def boom(self, *args, **kwargs):
        raise RuntimeError("backward exploded")

    monkeypatch.setattr(torch.Tensor, "backward", boom)
    report = run_parity(model=parity_dir / "net_vggvd16_tiny.mat", reference=parity_dir / "ref_vggvd16_tiny.mat")
    by_quantity = {}
    for row in report.rows:
        by_quantity.setdefault(row.quantity, []).append(row)
    assert any("backward exploded" in r.note for r in by_quantity["backward"])
    assert all(r.passed for r in by_quantity["y"])  # the forward rows are still there
    assert by_quantity["dzdx"] and not any(r.passed for r in by_quantity["dzdx"])


def test_parity_suite_fails_loudly_without_shared_data(tmp_path):
    # CI without ../shared must go red, not skip the parity tests
    import os
    import subprocess
    import sys

    env = {**os.environ, "CQD_SHARED": str(tmp_path / "no-shared")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{Path(__file__).resolve()}::test_option_errors"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPOSITORY_ROOT,
    )
    assert result.returncode == 1, result.stdout
    assert "reference data missing" in result.stdout and "skipped" not in result.stdout


def test_option_errors(tmp_path, parity_dir):
    with pytest.raises(CqdError, match="--reference"):
        run_parity(model=parity_dir / "net_vggvd16_tiny.mat")
    with pytest.raises(CqdError, match="--lrn"):
        run_parity([parity_dir], lrn="fast")
    with pytest.raises(CqdError, match="no reference files"):
        run_parity([tmp_path])


def test_default_reference_dirs_include_packaged_and_shared(parity_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ../shared here: it is still found from the repository root
    dirs = [Path(d).resolve() for d in default_reference_dirs()]
    beside_checkout = REPOSITORY_ROOT.parent / "shared" / "parity"
    assert beside_checkout.is_dir() == (beside_checkout.resolve() in dirs)
    assert PACKAGED_REFERENCE_DIR.is_dir() == (PACKAGED_REFERENCE_DIR.resolve() in dirs)
    assert len(dirs) == len(set(dirs))


def test_training_replay_that_crashes_fails(parity_dir, monkeypatch):
    import cqd_port_parity.train_reference as train_reference

    def crash(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(train_reference, "run_train_reference", crash)
    report = run_parity(reference=parity_dir / "train_vggm_tiny.mat")
    assert not report.passed and report.not_run == []
    assert len(report.rows) == 1 and not report.rows[0].passed
    assert "boom" in report.rows[0].note
