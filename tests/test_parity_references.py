"""cqd_port_parity.references: reading ops_/ref_/train_*.mat into PyTorch layout."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from cqd_port.errors import CqdError
from cqd_port_parity.references import (
    find_reference_files,
    load_mat,
    read_network_reference,
    read_ops_file,
    read_train_provenance,
)


def test_ops_conv_layout_matches_a_plain_torch_convolution(parity_dir):
    ops = read_ops_file(parity_dir / "ops_conv.mat")
    case = next(c for c in ops.cases if c.name == "k3_s1_p1")
    t = case.tensors
    # Layouts right (NCHW input, OIHW filters) <=> MatConvNet's own output is reproduced.
    y = F.conv2d(t["x"], t["w"], t["b"], padding=1)
    assert y.shape == t["y"].shape
    assert torch.allclose(y, t["y"], rtol=1e-5, atol=1e-5)
    assert case.params["pad"] == [1, 1, 1, 1] and case.params["stride"] == [1, 1]


def test_trailing_singleton_batch_and_empty_bias_are_restored(parity_dir):
    ops = read_ops_file(parity_dir / "ops_conv.mat")
    case = next(c for c in ops.cases if c.name == "no_bias")
    assert case.tensors["x"].shape == (1, 3, 7, 7)  # saved by MATLAB as 7x7x3
    assert case.tensors["b"].numel() == 0


def test_loss_labels_become_zero_based(parity_dir):
    ops = read_ops_file(parity_dir / "ops_misc.mat")
    case = next(c for c in ops.cases if c.op == "loss_softmaxlog")
    assert case.params["labels"].tolist() == [4, 8, 3]  # c = [5 9 4] in the file
    assert case.tensors["x"].shape == (3, 9, 1, 1)
    assert case.tensors["y"].dim() == 0


def test_provenance_lrn(parity_dir):
    assert read_ops_file(parity_dir / "ops_normalize.mat").provenance.lrn == "matconvnet-cpu"
    assert read_ops_file(parity_dir / "ops_normalize_exactpow.mat").provenance.lrn == "exact"
    assert read_train_provenance(parity_dir / "train_vggm_tiny.mat").lrn == "matconvnet-cpu"


def test_network_reference_structure(parity_dir):
    ref = read_network_reference(parity_dir / "ref_vggvd16_tiny.mat")
    assert ref.provenance.network == "net_vggvd16_tiny.mat"
    n = len(ref.names)
    assert n == 37 and len(ref.x) == n + 1 and len(ref.dzdx) == n + 1
    assert torch.equal(ref.x[0], ref.input)
    assert torch.equal(ref.dzdx[-1], ref.dzdy)  # res(L+1).dzdx is the projection
    assert ref.input.shape == (1, 3, 224, 224)
    assert set(ref.dzdw[0]) == {"weight", "bias"} and ref.dzdw[0]["weight"].shape == (4, 3, 3, 3)
    assert ref.dzdw[1] == {}  # relu: no parameters


def test_missing_and_corrupt_files_are_user_errors(tmp_path, parity_dir):
    with pytest.raises(CqdError, match="not found"):
        load_mat(tmp_path / "ops_nothing.mat")
    broken = tmp_path / "ops_broken.mat"
    broken.write_bytes((parity_dir / "ops_pool.mat").read_bytes()[:300])
    with pytest.raises(CqdError, match="ops_broken.mat"):
        read_ops_file(broken)


def test_find_reference_files_takes_each_name_once(tmp_path, parity_dir):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    shutil.copy(parity_dir / "ops_pool.mat", first)
    shutil.copy(parity_dir / "ops_pool.mat", second)
    shutil.copy(parity_dir / "ops_misc.mat", second)
    (second / "net_unrelated.mat").write_bytes(b"")  # not a reference file: ignored
    found = find_reference_files([first, second])
    assert [p.parent.name + "/" + p.name for p in found.ops] == ["b/ops_misc.mat", "a/ops_pool.mat"]
    assert found.refs == [] and found.trains == []
    with pytest.raises(CqdError, match="reference directory not found"):
        find_reference_files([tmp_path / "missing"])


def test_find_reference_files_searches_subfolders_and_tells_kinds_apart(tmp_path, parity_dir):
    release = tmp_path / "release-parity"
    (release / "sed").mkdir(parents=True)
    shutil.copy(parity_dir / "ops_pool.mat", tmp_path)
    for name in ("train_epochs_release.mat", "tps_release.mat", "sed/sed_synth_1.mat", "sed/sed_model_synth.mat"):
        (release / name).write_bytes(b"")
    shutil.copy(parity_dir / "train_vggm_tiny.mat", release)
    found = find_reference_files([tmp_path])
    names = {kind: [p.name for p in paths] for kind, paths in found.by_kind.items()}
    assert names == {
        "ops": ["ops_pool.mat"], "ref": [], "train": ["train_vggm_tiny.mat"],
        "train_epochs": ["train_epochs_release.mat"], "tps": ["tps_release.mat"],
        "sed": ["sed_synth_1.mat"],  # sed_model_*.mat is the model for the sed_* files, not a reference
    }
