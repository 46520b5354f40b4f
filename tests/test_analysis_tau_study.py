"""`cqd-port analyze gradients` end to end: synthetic CUB-layout data, two tiny trained-format checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from cqd_port.analysis.gradients import gradient_maps, preprocessing_from_meta
from cqd_port.analysis.tau import TauStudyConfig, read_tau_csv, run_tau_study, tau_for_box
from cqd_port.data.batches import ImageFolderDataset
from cqd_port.data.cub import read_cub
from cqd_port.data.records import clip_box
from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.errors import CqdError
from cqd_port.models.layers import LayerSpec

IMAGE_SIZE = 24
CLASSES = 3


def _checkpoint(path: Path, seed: int, softmax: bool) -> Path:
    """A tiny chain network in the final.pt format (conv-relu-pool-fc[-softmax]), random weights."""
    from matconvnet_weights.convert import save_checkpoint

    generator = torch.Generator().manual_seed(seed)
    specs = [
        LayerSpec("conv1", "conv", {"pad": [1, 1, 1, 1], "stride": [2, 2]}),
        LayerSpec("relu1", "relu", {}),
        LayerSpec("pool1", "pool", {"method": "max", "pool": [2, 2], "stride": [2, 2]}),
        LayerSpec("fc", "conv", {}),
    ] + ([LayerSpec("prob", "softmax", {})] if softmax else [])
    state = {
        "conv1.weight": torch.randn(4, 3, 3, 3, generator=generator) * 0.05,
        "conv1.bias": torch.zeros(4),
        "fc.weight": torch.randn(CLASSES, 4, 6, 6, generator=generator) * 0.1,
        "fc.bias": torch.zeros(CLASSES),
    }
    meta = {"normalization": {"imageSize": [IMAGE_SIZE, IMAGE_SIZE, 3], "averageImage": [120.0, 115.0, 100.0]},
            "classes": {"name": [f"c{i}" for i in range(CLASSES)]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, specs, state, meta)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("tau_study")
    root = make_synthetic_dataset(base / "cub", classes=CLASSES, train_per_class=1, test_per_class=4, size=40, seed=3)
    run_b = base / "runs" / "local_cub" / "fine_tuning"
    _checkpoint(run_b / "final.pt", seed=0, softmax=False)
    cqd_file = _checkpoint(base / "cqd.pt", seed=1, softmax=True)
    return base, root, run_b, cqd_file


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_csv_and_figures(setup, cli):
    base, root, run_b, cqd_file = setup
    out = base / "out_cli"
    result = cli("analyze", "gradients", "--model-b", run_b, "--model-cqd", cqd_file, "--data-root", root,
                 "--n", "7", "--out", out, "--panel", "2", "--batch-size", "3")
    assert result.exit_code == 0, result.stderr
    rows = _read_csv(out / "tau.csv")
    assert list(rows[0]) == ["image", "label", "tau_b", "tau_cqd"]
    assert [(r.image, r.label) for r in read_tau_csv(out / "tau.csv")] == [(r["image"], int(r["label"])) for r in rows]
    assert len(rows) == 7 and len({r["image"] for r in rows}) == 7
    taus = np.array([[float(r["tau_b"]), float(r["tau_cqd"])] for r in rows])
    assert ((taus >= 0) & (taus <= 1)).all()
    assert f"{taus[:, 0].mean():.4f}" in result.stdout and f"{taus[:, 1].mean():.4f}" in result.stdout
    higher = 100 * float((taus[:, 1] > taus[:, 0]).mean())
    assert f"{higher:.1f}% of the images" in result.stdout
    scatter = mpimg.imread(out / "tau_scatter.png")
    assert scatter.shape[:2] == (550, 550)
    panel = mpimg.imread(out / "gradient_maps.png")
    assert panel.shape[:2] == (600, 900)  # 2 rows x 3 inches, 9 inches wide, 100 dpi
    assert sorted(p.name for p in out.iterdir()) == ["gradient_maps.png", "tau.csv", "tau_scatter.png"]


def test_taus_match_an_independent_computation(setup):
    """Each CSV row is the named test image's tau under that model's own preprocessing, label and box."""
    from matconvnet_weights.convert import load_model

    base, root, run_b, cqd_file = setup
    result = run_tau_study(TauStudyConfig(run_b, cqd_file, root, out=base / "out_check", n=5, seed=11, panel_images=1))
    index = read_cub(root)
    by_path = {r.path: r for r in index.records}
    rows = _read_csv(result.csv_path)
    assert len(rows) == 5
    records = [by_path[r["image"]] for r in rows]
    assert all(not r.train for r in records)
    for tag, checkpoint in (("tau_b", run_b / "final.pt"), ("tau_cqd", cqd_file)):
        model = load_model(checkpoint)
        spec = preprocessing_from_meta(model.meta)
        dataset = ImageFolderDataset(index, records, spec.image_size, spec.average_image)
        for position, (row, record) in enumerate(zip(rows, records)):
            image, label, _ = dataset[position]
            assert int(row["label"]) == record.label == label
            values = gradient_maps(model, image[None], torch.tensor([label]))[0]
            height, width = mpimg.imread(index.resolve(record)).shape[:2]
            expected = tau_for_box(values, clip_box(record.box, width, height), (height, width))
            assert float(row[tag]) == pytest.approx(expected, abs=2e-6)
    # Another seed draws other images; the same seed the same ones.
    other = run_tau_study(TauStudyConfig(run_b, cqd_file, root, out=base / "out_seed", n=5, seed=12, panel_images=0))
    again = run_tau_study(TauStudyConfig(run_b, cqd_file, root, out=base / "out_same", n=5, seed=11, panel_images=0))
    assert [r.image for r in other.rows] != [r["image"] for r in rows]
    assert [r.image for r in again.rows] == [r["image"] for r in rows]


def test_interrupted_study_resumes(setup):
    base, root, run_b, cqd_file = setup
    out = base / "out_resume"
    config = TauStudyConfig(run_b, cqd_file, root, out=out, n=6, batch_size=2, panel_images=1)
    advanced: dict[str, int] = {"b": 0, "cqd": 0}

    def interrupt(tag: str, advance: int, total: int) -> None:
        advanced[tag] += advance
        if tag == "cqd" and advance and advanced["cqd"] >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_tau_study(config, progress=interrupt)
    saved = json.loads((out / ".tau-progress.json").read_text())
    assert len(saved["b"]) == 6 and len(saved["cqd"]) == 2
    assert not (out / "tau.csv").exists()

    calls: list[tuple[str, int]] = []
    result = run_tau_study(config, progress=lambda tag, advance, total: calls.append((tag, advance)))
    # Per model: a first call reports what was already done; then one call per batch computed.
    # The B model had everything; of the CQD model only the 4 missing images (2 batches) are computed.
    assert calls == [("b", 0), ("b", 6), ("cqd", 0), ("cqd", 2), ("cqd", 2), ("cqd", 2)]
    assert len(result.rows) == 6 and not (out / ".tau-progress.json").exists()
    fresh = run_tau_study(TauStudyConfig(run_b, cqd_file, root, out=base / "out_fresh", n=6, batch_size=2, panel_images=0))
    np.testing.assert_allclose([(r.tau_b, r.tau_cqd) for r in fresh.rows], [(r.tau_b, r.tau_cqd) for r in result.rows], rtol=1e-12)


def test_cli_errors_are_one_line(setup, cli, tmp_path):
    base, root, run_b, cqd_file = setup
    common = ["--data-root", root, "--n", "2", "--out", tmp_path / "o"]
    cases = [
        (["--model-b", tmp_path / "missing_run", "--model-cqd", cqd_file], "--model-b"),
        (["--model-b", run_b, "--model-cqd", tmp_path], "final.pt"),  # a folder without final.pt
        (["--model-b", run_b, "--model-cqd", cqd_file, "--data-root", tmp_path / "nodata"], "--data-root"),
        (["--model-b", run_b, "--model-cqd", cqd_file, "--n", "0"], "--n"),
        (["--model-b", run_b, "--model-cqd", cqd_file, "--device", "tpu"], "device"),
    ]
    for args, culprit in cases:
        result = cli("analyze", "gradients", *common, *args)
        assert result.exit_code == 2, (args, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert culprit in result.stderr
    assert not (tmp_path / "o").exists()


def test_a_dataset_without_test_boxes_is_refused(setup, tmp_path):
    base, root, run_b, cqd_file = setup
    index = read_cub(root)
    for record in index.records:
        object.__setattr__(record, "box", None)
    from cqd_port.analysis.tau import select_records

    with pytest.raises(CqdError, match="bounding box"):
        select_records(index, 3, 0)


def test_undefined_tau_is_reported_not_dropped_silently(setup, cli):
    """A model whose scores ignore the image has an all-zero gradient: tau is 0/0. The output says how many, and
    what the means and the percentage are computed on."""
    from matconvnet_weights.convert import load_model, save_checkpoint

    base, root, run_b, _ = setup
    blind = base / "blind.pt"
    model = load_model(run_b / "final.pt")
    state = {k: (torch.zeros_like(v) if k == "fc.weight" else v) for k, v in model.state_dict().items()}
    save_checkpoint(blind, model.specs, state, model.meta)
    out = base / "out_blind"
    result = cli("analyze", "gradients", "--model-b", run_b, "--model-cqd", blind, "--data-root", root, "--n", "5", "--out", out, "--panel", "2")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "images: 5 test images with a box" in lines
    assert any(line.startswith("tau undefined (gradient map zero everywhere) on 5 of them (B model: 0, CQD model: 5)") for line in lines)
    assert any("over the images compared: 0 of 5 images: both taus defined" in line for line in lines)
    assert [r["tau_cqd"] for r in _read_csv(out / "tau.csv")] == ["nan"] * 5


def test_torchvision_runs_are_analysed_too(setup, cli):
    """A torchvision run's final.pt (e.g. from `cqd-port train` with a resnet) is read as such, not refused."""
    from cqd_port.models.torchvision_nets import build_torchvision, save_torchvision

    base, root, _, _ = setup
    paths = []
    for seed in (0, 1):
        model, _ = build_torchvision("squeezenet1_1", CLASSES, None, 32, seed)
        paths.append(base / f"tv{seed}" / "final.pt")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        save_torchvision(paths[-1], model)
    out = base / "out_tv"
    result = cli("analyze", "gradients", "--model-b", paths[0].parent, "--model-cqd", paths[1], "--data-root", root, "--n", "3", "--out", out, "--panel", "1")
    assert result.exit_code == 0, result.stderr
    taus = [(float(r["tau_b"]), float(r["tau_cqd"])) for r in _read_csv(out / "tau.csv")]
    assert len(taus) == 3 and all(0 <= t <= 1 for pair in taus for t in pair)
