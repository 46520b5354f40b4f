"""Per-image degradations: each one against its definition, the registry and the config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_edges import tiny_model_text  # the hand-written SED forest (same tests folder)

from cqd_port.data.degrade import DEGRADATIONS, DegradationConfig, crop_to_box, degrade, rgb2gray
from cqd_port.data.edges import sed_edges, sobel_edges
from cqd_port.data.sed import edges_detect, read_sed_model
from cqd_port.data.tps import distort
from cqd_port.errors import CqdError
from cqd_port.imresize import imresize
from cqd_port.matlab import matlab_uint8

BOX = (31, 21, 150, 100)  # 1-based inclusive x1 y1 x2 y2


def _image(h: int = 120, w: int = 170, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(xx / 1.2) * np.cos(yy / 1.5)  # fine detail that low resolution must remove
    img = np.dstack([base, 255 - base, base[:, ::-1]]) + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _check(out: np.ndarray, size: int = 224) -> np.ndarray:
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    return out


def test_registry_names_and_flags():
    assert set(DEGRADATIONS) == {
        "original", "localized", "lowres", "localized_lowres", "edges", "edges_opencv", "edges_sobel", "distorted", "gray",
    }  # fmt: skip
    assert {n for n, d in DEGRADATIONS.items() if d.needs_box} == {"localized", "localized_lowres"}
    assert {n for n, d in DEGRADATIONS.items() if d.random} == {"distorted"}
    assert all(d.name == n and d.description for n, d in DEGRADATIONS.items())


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(CqdError, match="unknown degradation 'blurry'.*original.*localized_lowres.*gray"):
        degrade("blurry", _image())


def test_original_is_bicubic_imresize_to_224():
    img = _image()
    out = _check(degrade("original", img))
    assert np.array_equal(out, imresize(img, size=[224, 224], method="bicubic"))


def test_gray_input_is_made_three_channel_first():
    img = _image()[:, :, 1]
    out = _check(degrade("original", img))
    assert np.array_equal(out[:, :, 0], out[:, :, 2])
    assert np.array_equal(out[:, :, 0], imresize(img, size=[224, 224]))


def test_localized_crops_the_1_based_inclusive_box():
    img = _image()
    out = _check(degrade("localized", img, BOX))
    crop = img[20:100, 30:150]
    assert crop.shape == (80, 120, 3)
    assert np.array_equal(out, imresize(crop, size=[224, 224]))
    # Fractional boxes are rounded like MATLAB's round; boxes past the border are clipped.
    assert np.array_equal(degrade("localized", img, (30.5, 20.6, 149.6, 99.5)), out)
    assert np.array_equal(crop_to_box(img, (-5, -5, 500, 500)), img)
    with pytest.raises(CqdError, match="needs the image's bounding box"):
        degrade("localized", img, None)
    with pytest.raises(CqdError, match="does not overlap"):
        degrade("localized", img, (200, 10, 260, 50))


def test_lowres_code_path_is_straight_to_50_and_back():
    img = _image()
    out = _check(degrade("lowres", img))
    small = imresize(img, size=[50, 50], method="bilinear")
    assert np.array_equal(out, imresize(small, size=[224, 224], method="bilinear"))
    # The fine sinusoid is gone: much less high-frequency energy than the full-resolution resize.
    def hf(x):
        return np.abs(np.diff(x.astype(float), axis=1)).mean()

    assert hf(out) < 0.5 * hf(degrade("original", img))


def test_lowres_paper_path_and_method_are_selectable():
    img = _image()
    paper = _check(degrade("lowres", img, config=DegradationConfig(lowres_path="paper")))
    via224 = imresize(imresize(img, size=[224, 224], method="bicubic"), size=[50, 50], method="bilinear")
    assert np.array_equal(paper, imresize(via224, size=[224, 224], method="bilinear"))
    assert not np.array_equal(paper, degrade("lowres", img))
    bicubic = degrade("lowres", img, config=DegradationConfig(lowres_kernel="bicubic"))
    small = imresize(img, size=[50, 50], method="bicubic")
    assert np.array_equal(bicubic, imresize(small, size=[224, 224], method="bicubic"))


def test_localized_lowres_is_crop_then_lowres():
    img = _image()
    out = _check(degrade("localized_lowres", img, BOX))
    assert np.array_equal(out, degrade("lowres", img[20:100, 30:150]))


def test_edges_needs_the_sed_model():
    with pytest.raises(CqdError, match="--sed-model"):
        degrade("edges", _image())


def test_edges_opencv_runs_opencv_sed_on_the_resized_image(tmp_path):
    model = tmp_path / "model.yml"
    model.write_text(tiny_model_text())
    img = np.zeros((90, 130, 3), dtype=np.uint8)
    img[:, 65:] = 255
    cfg = DegradationConfig(sed_model=model)
    out = _check(degrade("edges_opencv", img, config=cfg))
    assert out.max() > 0
    assert np.array_equal(out, sed_edges(imresize(img, size=[224, 224]), model))
    assert isinstance(cfg.as_dict()["sed_model"], str)
    with pytest.raises(CqdError, match="OpenCV FileStorage.*edges_opencv"):
        degrade("edges", img, config=cfg)  # the paper's edges never run OpenCV's model


def test_edges_is_save_images_sed_at_native_size_then_resized(shared_dir):
    model_path = shared_dir / "release-parity" / "sed" / "sed_model_synth.mat"
    img = np.zeros((70, 96, 3), dtype=np.uint8)
    img[:, 48:] = (200, 120, 40)
    img[30:40, 10:30] = 255
    out = _check(degrade("edges", img, config=DegradationConfig(sed_model=model_path)))
    # the release: E = edgesDetect(im, model) (sharpen 2, nTreesEval 4), imresize(E*255, [224 224]), uint8
    strength = edges_detect(img, read_sed_model(model_path), sharpen=2, n_trees_eval=4)
    expected = matlab_uint8(imresize(strength * np.float32(255), size=[224, 224]))
    assert np.array_equal(out[:, :, 0], expected) and np.array_equal(out[:, :, 2], expected)
    assert out[:, 100:124].mean() > 4 * out[:, 180:210].mean() + 1  # the vertical step is an edge, the flat right half not


def test_edges_sobel_is_model_free():
    img = _image()
    out = _check(degrade("edges_sobel", img))
    assert out.max() == 255
    assert np.array_equal(out, sobel_edges(imresize(img, size=[224, 224])))


def test_distorted_uses_the_image_seed():
    img = _image()
    a = _check(degrade("distorted", img, image_seed=5))
    assert np.array_equal(a, degrade("distorted", img, image_seed=5))
    assert not np.array_equal(a, degrade("distorted", img, image_seed=6))
    assert np.array_equal(a, distort(img, 5))
    still = degrade("distorted", img, image_seed=5, config=DegradationConfig(distortion_sigma=0.0))
    assert not np.array_equal(a, still)


def test_gray_uses_matlab_rgb2gray_weights():
    img = np.empty((4, 4, 3), dtype=np.uint8)
    img[...] = (200, 100, 50)  # 0.298936021293775*200 + 0.587043074451121*100 + 0.114020904255103*50 = 124.19
    assert np.all(rgb2gray(img) == 124)
    img[...] = (1, 0, 2)  # 0.5269... -> 1 (MATLAB rounds; truncation would give 0)
    assert np.all(rgb2gray(img) == 1)
    out = _check(degrade("gray", _image()))
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])
    assert np.array_equal(out[:, :, 0], imresize(rgb2gray(_image()), size=[224, 224]))


def test_out_size_is_configurable():
    cfg = DegradationConfig(out_size=64, lowres_size=16)
    for name in ("original", "lowres", "edges_sobel", "distorted", "gray"):
        _check(degrade(name, _image(), config=cfg, image_seed=1), size=64)


def test_config_records_every_parameter_and_validates():
    d = DegradationConfig().as_dict()
    json.dumps(d)
    assert d["lowres_size"] == 50 and d["lowres_kernel"] == "bilinear" and d["lowres_path"] == "code"
    assert d["distortion_sigma"] == 4.0 and d["out_size"] == 224 and d["sed_model"] is None
    for bad in (dict(lowres_path="matlab"), dict(lowres_kernel="area"), dict(out_size=0), dict(distortion_placement="x")):
        with pytest.raises(CqdError):
            DegradationConfig(**bad)


def test_bad_images_are_cqd_errors():
    with pytest.raises(CqdError, match="uint8"):
        degrade("original", _image().astype(np.float64))
    with pytest.raises(CqdError, match="shape"):
        degrade("original", np.zeros((5, 5, 2), np.uint8))
