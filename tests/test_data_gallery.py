"""Gallery (Figure 3 style): a readable PNG, Sobel stand-in labelled, SED used when given, CLI."""

from __future__ import annotations

import cv2
import pytest

from cqd_port.data.degrade import DegradationConfig
from cqd_port.data.gallery import CUB_PANELS, make_gallery, pick_examples
from cqd_port.data.cub import read_cub
from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.errors import CqdError

SMALL = DegradationConfig(out_size=48, lowres_size=11, distortion_grid_start=2, distortion_grid_step=4, distortion_sigma=0.9)


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("g") / "birds", classes=3, train_per_class=1, test_per_class=1, size=64)


def test_gallery_png_and_examples(birds, tmp_path):
    out = make_gallery(birds, tmp_path / "fig" / "gallery.png", n=2, config=SMALL)
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 300
    assert image.std() > 10  # not blank
    assert not [p for p in out.parent.iterdir() if p != out]  # atomic: no temporary left
    examples = pick_examples(read_cub(birds), 2)
    assert [r.label for r in examples] == [0, 1] and not any(r.train for r in examples)
    assert [p.b[0] for p in CUB_PANELS] == ["original", "lowres", "edges", "distorted", "lowres"]


def test_gallery_with_sed_model_and_cars(birds, shared_dir, tmp_path):
    model = shared_dir / "release-parity" / "sed" / "sed_model_synth.mat"  # the toolbox's model format
    out = make_gallery(birds, tmp_path / "sed.png", n=1, config=SMALL, sed_model=model)
    assert cv2.imread(str(out)) is not None
    with pytest.raises(CqdError, match="SED model file not found"):
        make_gallery(birds, tmp_path / "x.png", n=1, config=SMALL, sed_model=tmp_path / "missing.yml.gz")
    assert not (tmp_path / "x.png").exists()
    out = make_gallery(birds, tmp_path / "cars.png", dataset="cars", n=1, config=SMALL)
    assert cv2.imread(str(out)) is not None


def test_cli_gallery(birds, tmp_path, cli):
    result = cli("gallery", "--data-root", birds, "--out", tmp_path / "g.png", "--n", "1")
    assert result.exit_code == 0, result.stderr
    assert str(tmp_path / "g.png") in result.stdout and "SYNTHETIC" in result.stdout
    assert cv2.imread(str(tmp_path / "g.png")) is not None
    bad = cli("gallery", "--data-root", tmp_path / "nothing", "--out", tmp_path / "h.png")
    assert bad.exit_code == 2 and "does not exist" in bad.stderr
