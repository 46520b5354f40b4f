"""Thin-plate-spline distortion: identity, reproducibility, interpolation at the control points."""

from __future__ import annotations

import numpy as np
import pytest

from cqd_port.data.tps import (
    TpsConfig,
    control_points,
    displacement_field,
    distort,
    draw_offsets,
    resize_for_distortion,
    warp_with_offsets,
)
from cqd_port.errors import CqdError
from cqd_port.imresize import imresize


def _image(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    # Smooth structure plus noise, so a warp visibly moves content.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    img = np.dstack([base, base[::-1], base[:, ::-1]]) + rng.normal(0, 5, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_paper_grid_is_14_by_14_at_8_16_224():
    pts = control_points()
    assert pts.shape == (196, 2)
    assert sorted(set(pts[:, 0])) == list(range(8, 225, 16))
    assert sorted(set(pts[:, 1])) == list(range(8, 225, 16))


def test_offsets_are_seeded_gaussian_with_sigma_4():
    a, b = draw_offsets(11), draw_offsets(11)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, draw_offsets(12))
    many = np.concatenate([draw_offsets(s) for s in range(50)])
    assert abs(many.mean()) < 0.2
    assert 3.8 < many.std() < 4.2


def test_field_equals_offsets_at_control_points():
    offsets = draw_offsets(3)
    field = displacement_field(offsets)
    pts = control_points().astype(int) - 1  # to 0-based (x, y)
    assert np.abs(field[pts[:, 1], pts[:, 0]] - offsets).max() < 1e-4
    # ...and is a smooth interpolant between them: bounded by a few times the largest offset.
    assert np.abs(field).max() < 3 * np.abs(offsets).max()


def test_affine_offsets_give_the_affine_field():
    # A thin-plate spline reproduces affine maps exactly (zero bending energy).
    pts = control_points()
    offsets = np.stack([0.01 * pts[:, 0] - 0.02 * pts[:, 1] + 1.5, 0.03 * pts[:, 1] - 2.0], axis=1)
    field = displacement_field(offsets)
    yy, xx = np.mgrid[1:225, 1:225].astype(np.float64)
    expected = np.stack([0.01 * xx - 0.02 * yy + 1.5, 0.03 * yy - 2.0], axis=-1)
    assert np.abs(field - expected).max() < 1e-3


def test_zero_offsets_are_the_identity_on_the_central_window():
    img = _image(150, 200)
    resized = resize_for_distortion(img)
    assert resized.shape == (224, 299, 3)  # the shorter side is exactly 224
    out = warp_with_offsets(resized, np.zeros((196, 2)))
    left = (299 - 224) // 2
    assert np.array_equal(out, resized[:, left : left + 224])
    top_left = warp_with_offsets(resized, np.zeros((196, 2)), TpsConfig(region="topleft"))
    assert np.array_equal(top_left, resized[:, :224])


def test_resize_step_is_matlab_bilinear_by_the_larger_ratio():
    img = _image(300, 250)
    resized = resize_for_distortion(img)
    assert resized.shape[:2] == (269, 224)
    assert np.array_equal(resized, imresize(img, scale=224 / 250, method="bilinear"))


def test_integer_shift_moves_content_by_that_shift():
    resized = resize_for_distortion(_image(150, 200))
    shifted = warp_with_offsets(resized, np.tile([3.0, -2.0], (196, 1)))
    left = (299 - 224) // 2
    # Output (r, c) samples the source at (r - 2, c + 3): compare away from the replicated top border.
    assert np.array_equal(shifted[2:, :], resized[0:222, left + 3 : left + 227])


def test_distort_is_reproducible_per_seed():
    img = _image()
    a, b, c = distort(img, 7), distort(img, 7), distort(img, 8)
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # A distortion, not noise: the picture stays close to the undistorted window on average.
    resized = resize_for_distortion(img)
    left = (resized.shape[1] - 224) // 2
    identity = resized[:, left : left + 224].astype(float)
    assert 0 < np.abs(a.astype(float) - identity).mean() < 40


def test_grayscale_and_bad_input():
    gray = _image()[:, :, 0]
    assert distort(gray, 1).shape == (224, 224)
    with pytest.raises(CqdError):
        distort(gray.astype(np.float32), 1)
    with pytest.raises(CqdError):
        TpsConfig(region="middle")
    with pytest.raises(CqdError):
        displacement_field(np.zeros((10, 2)))
