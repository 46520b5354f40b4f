"""Edges: the REAL OpenCV SED path with a tiny forest written here, missing-model errors, Sobel."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cqd_port.data.edges import load_sed_model, sed_edge_strength, sed_edges, sobel_edges
from cqd_port.errors import CqdError

# Geometry of the tiny forest (the usual SED options, one tree, one evaluated).
PATCH, INNER, SHRINK, ORIENTS = 32, 16, 2, 4
CHANNELS = 2 * (ORIENTS + 1) + 3  # 3 LUV + 2 scales x (magnitude + 4 orientation bins)
CELLS = (PATCH // SHRINK) ** 2
# Feature id = channel * CELLS + y * (PATCH/SHRINK) + x: the gradient magnitude (channel 3) at the patch centre.
CENTRE_MAGNITUDE = 3 * CELLS + 8 * (PATCH // SHRINK) + 8
# The right leaf draws a 16-pixel line: predicted-patch bins with column offset 8, rows 0..15.
LINE_BINS = [8 * INNER + r for r in range(INNER)]


def tiny_model_text(threshold: float = 0.05) -> str:
    """A valid SED model in OpenCV FileStorage YAML: one depth-1 tree.

    Root (node 0) tests the centre gradient magnitude against `threshold`:
    below -> node 1 (leaf, no edge pixels), otherwise -> node 2 (leaf, a
    vertical line). `childs[k]` is the 1-based index of the right child
    relative to the tree's base (left child is `childs[k] - 1`), 0 for a
    leaf; `edgeBoundaries` are cumulative offsets into `edgeBins` per node.
    """
    return f"""%YAML:1.0
options:
   numberOfTrees: 1
   numberOfTreesToEvaluate: 1
   selfsimilarityGridSize: 5
   stride: 2
   shrinkNumber: {SHRINK}
   patchSize: {PATCH}
   patchInnerSize: {INNER}
   numberOfGradientOrientations: {ORIENTS}
   gradientSmoothingRadius: 0
   regFeatureSmoothingRadius: 2
   ssFeatureSmoothingRadius: 8
   gradientNormalizationRadius: 4
childs:
   - [ 2, 0, 0 ]
featureIds:
   - [ {CENTRE_MAGNITUDE}, 0, 0 ]
thresholds:
   - [ {threshold}, 0., 0. ]
edgeBoundaries:
   - [ 0, 0, 0, {len(LINE_BINS)} ]
edgeBins:
   - [ {", ".join(map(str, LINE_BINS))} ]
"""


@pytest.fixture
def tiny_model(tmp_path):
    # Gzipped like the real model.yml.gz: FileStorage reads either.
    path = tmp_path / "model.yml.gz"
    path.write_bytes(gzip.compress(tiny_model_text().encode()))
    return path


def _step_image(vertical: bool = True) -> np.ndarray:
    img = np.zeros((64, 96, 3), dtype=np.uint8)
    if vertical:
        img[:, 48:] = 255
    else:
        img[32:, :] = 255
    return img


def test_sed_runs_the_tiny_forest_and_responds_to_a_step(tiny_model):
    strength = sed_edge_strength(_step_image(), tiny_model)
    assert strength.shape == (64, 96) and strength.dtype == np.float32
    assert strength.max() > 0.05
    columns = strength.max(axis=0)
    # The response is a band around the step (column 48), nothing far from it.
    assert columns[36:60].max() == columns.max()
    assert columns[:20].max() == 0 and columns[80:].max() == 0
    # A flat image never reaches the edge leaf.
    assert sed_edge_strength(np.full((64, 96, 3), 128, np.uint8), tiny_model).max() == 0


def test_sed_is_deterministic_and_threshold_matters(tiny_model, tmp_path):
    a = sed_edges(_step_image(), tiny_model)
    b = sed_edges(_step_image(), tiny_model)
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(a[:, :, 0], a[:, :, 2])
    assert np.array_equal(a[:, :, 0], np.clip(np.floor(sed_edge_strength(_step_image(), tiny_model) * 255.0 + 0.5), 0, 255))
    # Raising the root threshold above any gradient sends every patch to the empty leaf: the model is really used.
    high = tmp_path / "high.yml"
    high.write_text(tiny_model_text(threshold=1e6))
    assert sed_edges(_step_image(), high).max() == 0


def test_sed_accepts_gray_input(tiny_model):
    gray = _step_image()[:, :, 0]
    assert np.array_equal(sed_edges(gray, tiny_model), sed_edges(_step_image(), tiny_model))


def test_missing_model_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(CqdError, match=r"--sed-model model\.yml\.gz.*opencv_extra"):
        sed_edges(_step_image(), None)
    with pytest.raises(CqdError, match="not found.*nowhere.yml.gz"):
        sed_edges(_step_image(), tmp_path / "nowhere.yml.gz")


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a model\n",
        gzip.compress(b"%YAML:1.0\nfoo: 1\n"),
        tiny_model_text().replace("   numberOfTrees: 1\n", "").encode(),
        tiny_model_text().replace("numberOfTrees: 1", "numberOfTrees: 0").encode(),
        tiny_model_text().replace("edgeBins:\n   - [", "edgeBinz:\n   - [").encode(),
    ],
    ids=["garbage", "no-options", "missing-option", "zero-trees", "missing-edgeBins"],
)
def test_corrupt_model_is_a_cqd_error(tmp_path, content):
    path = tmp_path / "bad.yml"
    path.write_bytes(content)
    with pytest.raises(CqdError, match="bad.yml"):
        load_sed_model(path)


def test_sobel_edges_mark_the_step_and_are_normalised():
    e = sobel_edges(_step_image())
    assert e.shape == (64, 96, 3) and e.dtype == np.uint8
    assert e.max() == 255
    assert e[:, 47:49, 0].min() == 255  # both sides of the step
    assert e[:, :40].max() == 0 and e[:, 56:].max() == 0
    horizontal = sobel_edges(_step_image(vertical=False))
    assert horizontal[31:33].min() == 255 and horizontal[:24].max() == 0
    assert sobel_edges(np.full((8, 8, 3), 77, np.uint8)).max() == 0


def test_bad_image_is_a_cqd_error():
    with pytest.raises(CqdError, match="uint8"):
        sobel_edges(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(CqdError, match="shape"):
        sobel_edges(np.zeros((8, 8, 2), np.uint8))
