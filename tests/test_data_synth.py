"""Synthetic dataset: CUB layout, deterministic per seed, marked SYNTHETIC, true boxes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cqd_port.data.cub import read_cub
from cqd_port.data.synth import is_synthetic, make_synthetic_dataset
from cqd_port.errors import CqdError

SMALL = dict(classes=3, train_per_class=2, test_per_class=1, size=64)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_markers(tmp_path):
    root = make_synthetic_dataset(tmp_path / "birds", seed=0, **SMALL)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt", "README.txt"):
        assert (root / name).is_file()
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["synthetic"] is True and meta["images"] == 9
    assert is_synthetic(root) and not is_synthetic(tmp_path)
    attrs = [tuple(sorted(c["attributes"].items())) for c in meta["classes"]]
    assert len(set(attrs)) == 3  # classes are distinct attribute combinations
    index = read_cub(root)
    assert index.num_classes == 3 and len(index.records) == 9
    assert [r.label for r in index.records] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sum(r.train for r in index.records) == 6
    index.check_images_exist()
    for record in index.records:
        image = cv2.imread(str(index.resolve(record)))
        h, w = image.shape[:2]
        assert h == 64 and 64 <= w <= 86
        x1, y1, x2, y2 = record.box
        assert 1 <= x1 < x2 <= w and 1 <= y1 < y2 <= h
        assert 0.03 < (x2 - x1 + 1) * (y2 - y1 + 1) / (w * h) < 1.0


def test_cars_fill_most_of_a_wide_frame(tmp_path):
    root = make_synthetic_dataset(tmp_path / "cars", style="cars", seed=1, classes=2, train_per_class=2, test_per_class=0, size=96)
    index = read_cub(root)
    for record in index.records:
        image = cv2.imread(str(index.resolve(record)))
        x1, y1, x2, y2 = record.box
        h, w = image.shape[:2]
        assert (x2 - x1) > 0.55 * w  # cars fill most of the frame
        assert (x2 - x1) > (y2 - y1)  # and are wider than tall


def test_deterministic_per_seed(tmp_path):
    a = _files(make_synthetic_dataset(tmp_path / "a", seed=5, **SMALL))
    b = _files(make_synthetic_dataset(tmp_path / "b", seed=5, **SMALL))
    c = _files(make_synthetic_dataset(tmp_path / "c", seed=6, **SMALL))
    assert a == b
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == 9
    assert [a[k] for k in sorted(a) if k.startswith("images/")] != [c[k] for k in sorted(c) if k.startswith("images/")]


def test_styles_look_different(tmp_path):
    birds = read_cub(make_synthetic_dataset(tmp_path / "b", style="birds", **SMALL))
    cars = read_cub(make_synthetic_dataset(tmp_path / "c", style="cars", **SMALL))
    area = lambda ix: np.mean([(r.box[2] - r.box[0] + 1) * (r.box[3] - r.box[1] + 1) for r in ix.records])  # noqa: E731
    assert area(cars) > 1.5 * area(birds)
    assert "Synth_" in birds.class_names[0] and "lights" in cars.class_names[0] and "wing" in birds.class_names[0]


def test_png_option_and_rerun_over_interrupted_run(tmp_path):
    root = make_synthetic_dataset(tmp_path / "p", image_format="png", **SMALL)
    index = read_cub(root)
    assert index.records[0].path.endswith(".png")
    (root / "synthetic.json").unlink()  # as an interrupted run leaves it
    make_synthetic_dataset(root, image_format="png", **SMALL)
    assert is_synthetic(root)


def test_refuses_foreign_folder_and_bad_options(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(CqdError, match="thesis.tex"):
        make_synthetic_dataset(foreign, **SMALL)
    with pytest.raises(CqdError, match="--style"):
        make_synthetic_dataset(tmp_path / "x", style="fish", **SMALL)
    with pytest.raises(CqdError, match="at most 108"):
        make_synthetic_dataset(tmp_path / "y", classes=500, train_per_class=1, test_per_class=0, size=64)


def test_cli_synth(tmp_path, cli):
    result = cli("synth", "--out", tmp_path / "s", "--classes", "2", "--train-per-class", "1", "--test-per-class", "1", "--size", "48", "--style", "cars")
    assert result.exit_code == 0, result.stderr
    assert "SYNTHETIC" in result.stdout and str(tmp_path / "s") in result.stdout
    assert len(read_cub(tmp_path / "s").records) == 4
    bad = cli("synth", "--out", tmp_path / "t", "--style", "fish")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_classes_come_in_sister_groups_that_differ_only_in_fine_details(tmp_path):
    from cqd_port.data.synth import _class_attributes

    for style, coarse in (("birds", ("body", "head")), ("cars", ("body",))):
        classes = _class_attributes(style, 12, seed=3)
        assert len({tuple(sorted(c.items())) for c in classes}) == 12
        groups: dict[tuple, list] = {}
        for c in classes:
            groups.setdefault(tuple(c[k] for k in coarse), []).append(c)
        assert sorted(len(g) for g in groups.values()) == [4, 4, 4]  # colour tells the group, details the class
        assert _class_attributes(style, 12, seed=3) == classes
        assert _class_attributes(style, 12, seed=4) != classes
