"""parity.runner: the whole suite passes on MatConvNet's data, and can fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import scipy.io

from cqd_port.errors import CqdError
from parity.runner import PACKAGED_REFERENCE_DIR, REPOSITORY_ROOT, default_reference_dirs, run_parity


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
    assert [(r.case, r.quantity) for r in report.failures()] == [("05 pool1", "y")]
    assert report.failures()[0].rel == pytest.approx(1e-2, rel=1e-3)


def test_network_missing_beside_reference_is_a_user_error(tmp_path, parity_dir):
    shutil.copy(parity_dir / "ref_vggvd16_tiny.mat", tmp_path)
    with pytest.raises(CqdError, match="net_vggvd16_tiny.mat"):
        run_parity([tmp_path])


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
    import parity.train_reference as train_reference

    def crash(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(train_reference, "run_train_reference", crash)
    report = run_parity(reference=parity_dir / "train_vggm_tiny.mat")
    assert not report.passed and report.not_run == []
    assert len(report.rows) == 1 and not report.rows[0].passed
    assert "boom" in report.rows[0].note
