"""`cqd-port convert-weights` and `cqd-port inspect` through the real entry point."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

NETWORKS = {
    "net_vggm_tiny.mat": ("vgg-m", "simplenn", "416,602"),
    "net_vggm_tiny_oldformat.mat": ("vgg-m", "simplenn-pre-beta17", "416,602"),
    "net_vggm_tiny_dag.mat": ("vgg-m", "dagnn", "416,602"),
    "net_vggvd16_tiny.mat": ("vgg-vd-16", "simplenn", None),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_convert_then_inspect(cli, tmp_path: Path, parity_dir: Path, name: str) -> None:
    model, layout, total = NETWORKS[name]
    out = tmp_path / "model.pt"
    result = cli("convert-weights", parity_dir / name, "-o", out, "--model", model)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert "fc8" in result.stdout and f"layout: {layout}" in result.stdout
    if total:
        assert total in result.stdout
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "cqd-port-checkpoint/1"

    from_pt = cli("inspect", out)
    from_mat = cli("inspect", parity_dir / name)
    assert from_pt.exit_code == 0 and from_mat.exit_code == 0, from_pt.stderr + from_mat.stderr
    assert from_pt.stdout == from_mat.stdout  # the checkpoint describes the same network
    assert "image size: 224x224x3" in from_pt.stdout
    assert "classes: 10" in from_pt.stdout or "classes: 6" in from_pt.stdout
    average = "224x224x3" if "vggm" in name else "1x1x3"
    assert f"average image: {average}" in from_pt.stdout


def test_default_output_is_next_to_the_input(cli, tmp_path: Path, parity_dir: Path) -> None:
    source = tmp_path / "imagenet-vgg-m.mat"
    shutil.copy(parity_dir / "net_vggm_tiny.mat", source)
    result = cli("convert-weights", source)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "imagenet-vgg-m.pt").exists()


def test_wrong_model_name_is_refused_cleanly(cli, tmp_path: Path, parity_dir: Path) -> None:
    out = tmp_path / "x.pt"
    result = cli("convert-weights", parity_dir / "net_vggvd16_tiny.mat", "-o", out, "--model", "vgg-m")
    _assert_clean_error(result, "not a vgg-m network")
    assert not out.exists()


# ----------------------------------------------------------------------------- bad input


def _assert_clean_error(result, culprit: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def _cell(*items):
    array = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        array[0, i] = item
    return array


def _bad_input(kind: str, tmp_path: Path, parity_dir: Path) -> tuple[Path, str]:
    path = tmp_path / "in" / "model.mat"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    filters = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    if kind == "missing":
        return path, "no such file"
    if kind == "truncated":
        data = (parity_dir / "net_vggm_tiny.mat").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated"
    if kind == "random-bytes":
        path.write_bytes(rng.bytes(10000))
        return path, "not a readable"
    if kind == "no-network":
        scipy.io.savemat(path, {"x": np.eye(3)})
        return path, "holds no MatConvNet network"
    if kind == "unknown-layer":
        layers = _cell({"name": "c1", "type": "conv", "weights": _cell(filters, np.zeros((4, 1), np.float32))},
                       {"name": "mystery", "type": "SubP"}, {"name": "r", "type": "relu"})
        scipy.io.savemat(path, {"layers": layers, "meta": {}})
        return path, "'mystery' (SubP)"
    if kind == "bias-shape":
        layers = _cell({"name": "c1", "type": "conv", "weights": _cell(filters, np.zeros((7, 1), np.float32))})
        scipy.io.savemat(path, {"layers": layers, "meta": {}})
        return path, "layer 'c1': has 7 biases for 4 filters"
    raise AssertionError(kind)


_BAD_KINDS = ["missing", "truncated", "random-bytes", "no-network", "unknown-layer", "bias-shape"]


# inspect shows a network with unknown layers (exit 0); only its conversion is refused
@pytest.mark.parametrize(
    "kind, command",
    [(k, c) for c in ("convert-weights", "inspect") for k in _BAD_KINDS if (k, c) != ("unknown-layer", "inspect")],
)
def test_bad_input_files(cli, tmp_path: Path, parity_dir: Path, kind: str, command: str) -> None:
    path, message = _bad_input(kind, tmp_path, parity_dir)
    before = sorted(p.name for p in path.parent.iterdir())
    out = tmp_path / "out" / "model.pt"
    args = (command, path, "-o", out) if command == "convert-weights" else (command, path)
    result = cli(*args)
    _assert_clean_error(result, message)
    assert str(path) in result.stderr  # the culprit file is named
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing written beside the input
    assert not out.exists() and not out.parent.exists()


def test_output_path_is_a_directory(cli, tmp_path: Path, parity_dir: Path) -> None:
    result = cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", tmp_path)
    _assert_clean_error(result, f"{tmp_path}: is a directory")
    assert list(tmp_path.iterdir()) == []


def test_output_path_under_a_file(cli, tmp_path: Path, parity_dir: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    out = blocker / "sub" / "model.pt"
    result = cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", out)
    _assert_clean_error(result, "is not a directory")
    assert str(out) in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_inspect_rejects_a_foreign_checkpoint(cli, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"model": torch.zeros(3)}, path)
    _assert_clean_error(cli("inspect", path), "not a cqd-port checkpoint")


def test_convert_weights_refuses_a_checkpoint_as_input(cli, tmp_path: Path, parity_dir: Path) -> None:
    converted = tmp_path / "model.pt"
    assert cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", converted).exit_code == 0
    out = tmp_path / "again.pt"
    _assert_clean_error(cli("convert-weights", converted, "-o", out), f"{converted}: is a zip archive")
    assert not out.exists()


def test_existing_output_needs_force(cli, tmp_path: Path, parity_dir: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"keep me")
    _assert_clean_error(cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", out), "already exists; pass --force")
    assert out.read_bytes() == b"keep me"
    assert cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", out, "--force").exit_code == 0
    assert torch.load(out, weights_only=True)["format"] == "cqd-port-checkpoint/1"


def test_a_refused_checkpoint_never_suggests_the_unsafe_option(cli, tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module: weights_only refuses it
    result = cli("inspect", path)
    _assert_clean_error(result, "not a cqd-port checkpoint: it holds Python objects other than tensors")
    assert "weights_only" not in result.stderr
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:200])
    result = cli("inspect", broken)
    _assert_clean_error(result, "not a readable checkpoint")
    assert "weights_only" not in result.stderr


def test_model_check_is_named_topology_and_says_widths_differ(cli, tmp_path: Path, parity_dir: Path) -> None:
    result = cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", tmp_path / "m.pt", "--model", "vgg-m")
    assert result.exit_code == 0, result.stderr
    assert "--model vgg-m: the topology (layer types, kernels, strides, padding, LRN) matches" in result.stdout
    assert "the widths differ from MatConvNet's vgg-m (conv1 has 12 filters, vgg-m 96" in result.stdout
    refused = cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", tmp_path / "x.pt", "--model", "vgg-vd-16")
    _assert_clean_error(refused, "topology check failed: not a vgg-vd-16 network")


def test_disk_full_is_one_line_and_leaves_nothing(cli, tmp_path: Path, parity_dir: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(3 << 20, (3 << 20) - 4096, 4096))
    out = tmp_path / "full" / "a.pt"
    result = cli("convert-weights", parity_dir / "net_vggm_tiny.mat", "-o", out)
    _assert_clean_error(result, f"{out}: disk full: writing it needs about 2.")
    assert "4.0 KiB free" in result.stderr
    assert not out.exists() and list(out.parent.glob("*")) == []


def test_inspect_and_export_mat_on_a_torchvision_run_say_what_it_is(tmp_path, cli):
    """A torchvision run's final.pt is described by inspect, and refused plainly by export-mat (not 'convert it')."""
    from cqd_port.models.torchvision_nets import build_torchvision, save_torchvision

    model, _ = build_torchvision("squeezenet1_1", 3, None, 32, 0)
    final = tmp_path / "final.pt"
    save_torchvision(final, model)
    result = cli("inspect", final)
    assert result.exit_code == 0, result.stderr
    assert "squeezenet1_1 (torchvision)" in result.stdout and "3 classes" in result.stdout and "3x32x32" in result.stdout
    result = cli("export-mat", final, "-o", tmp_path / "net.mat")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "does not support torchvision runs" in result.stderr and "convert-weights" not in result.stderr
    assert not (tmp_path / "net.mat").exists()
