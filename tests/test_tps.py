"""The release's thin-plate-spline distortion: the reference file, the forward map, hole filling, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from cqd_port.data.tps import (
    TpsConfig,
    control_points,
    distort,
    distortion_window,
    draw_offsets,
    resize_for_distortion,
    tps_coefficients,
    tps_map,
    tpswarp,
    warp_with_offsets,
)
from cqd_port.errors import CqdError
from cqd_port.imresize import imresize
from cqd_port_parity.release_tps import check_tps_reference


def _image(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    # Smooth structure plus noise, so a warp visibly moves content.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    img = np.dstack([base, base[::-1], base[:, ::-1]]) + rng.normal(0, 5, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the release's reference


@pytest.fixture(scope="module")
def tps_reference(release_parity_dir):
    path = release_parity_dir / "tps_release.mat"
    if not path.is_file():
        pytest.fail(f"reference data missing: {path}", pytrace=False)
    return path


def test_every_case_of_the_release_reference_passes(tps_reference):
    rows = check_tps_reference(tps_reference)
    failed = [(r.case, r.quantity, r.max_abs, r.note) for r in rows if not r.passed]
    assert not failed
    cases = {r.case for r in rows}
    assert len(cases) >= 3  # landscape, portrait, square
    for case in cases:
        assert {r.quantity for r in rows if r.case == case} >= {"warped", "warped_with_holes", "map", "saved"}
    assert all(r.tol == 0.0 for r in rows if r.quantity in ("saved", "map", "warped_with_holes", "center"))
    assert max(r.rel for r in rows if r.quantity == "warped") <= 1e-9


def test_centred_placement_fails_the_release_reference(tps_reference):
    # What cqd-port did before (the canvas on the centre of a non-square image): the reference rejects it.
    rows = check_tps_reference(tps_reference, placement="center")
    failed_cases = {r.case for r in rows if not r.passed and r.quantity == "saved"}
    assert len(failed_cases) >= 2  # both non-square cases
    assert all(r.max_abs > 100 for r in rows if not r.passed and r.quantity == "saved")
    with pytest.raises(CqdError):
        check_tps_reference(tps_reference, placement="middle")


def test_missing_reference_is_a_cqd_error(tmp_path):
    with pytest.raises(CqdError, match="not found"):
        check_tps_reference(tmp_path / "tps_missing.mat")


# --------------------------------------------------------------------------- the grid and the offsets


def test_grid_is_the_releases_center_row_fastest():
    pts = control_points()
    assert pts.shape == (196, 2)
    assert sorted(set(pts[:, 0])) == list(range(8, 225, 16)) == sorted(set(pts[:, 1]))
    # [X, Y] = meshgrid(x_c, y_c); center = [Y(:) X(:)]: the row coordinate runs fastest.
    assert pts[:3].tolist() == [[8, 8], [24, 8], [40, 8]]
    assert pts[14].tolist() == [8, 24]


def test_offsets_are_seeded_4_randn_columns_first():
    a, b = draw_offsets(11), draw_offsets(11)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, draw_offsets(12))
    rng = np.random.default_rng(11)
    d_col = 4.0 * rng.standard_normal((14, 14))
    d_row = 4.0 * rng.standard_normal((14, 14))
    assert np.array_equal(a[:, 1], d_col.ravel(order="F")) and np.array_equal(a[:, 0], d_row.ravel(order="F"))
    many = np.concatenate([draw_offsets(s) for s in range(50)])
    assert abs(many.mean()) < 0.2 and 3.8 < many.std() < 4.2


# --------------------------------------------------------------------------- the spline


def test_tabulated_spline_equals_the_dense_evaluation():
    center = control_points()
    target = center + draw_offsets(3)
    coef = tps_coefficients(center, target)
    rows, cols = np.arange(1, 231, dtype=float), np.arange(1, 241, dtype=float)
    fast = tps_map(coef, center, rows, cols)  # integer lattice: tabulated U, shifted views
    dense = tps_map(coef, center + 1e-13, rows, cols)  # off the lattice: the dense path, same spline up to 1e-13
    assert np.abs(fast[0] - dense[0]).max() < 1e-7 and np.abs(fast[1] - dense[1]).max() < 1e-7
    # It interpolates: control points land on their targets.
    r, c = center[:, 0].astype(int) - 1, center[:, 1].astype(int) - 1
    assert np.abs(fast[0][r, c] - target[:, 0]).max() < 1e-9 and np.abs(fast[1][r, c] - target[:, 1]).max() < 1e-9


def test_affine_targets_give_the_affine_map():
    center = control_points()
    target = np.stack([1.02 * center[:, 0] - 0.01 * center[:, 1] + 1.5, 0.97 * center[:, 1] + 2.0], axis=1)
    rows, cols = np.arange(1, 225, dtype=float), np.arange(1, 225, dtype=float)
    to_row, to_col = tps_map(tps_coefficients(center, target), center, rows, cols)
    assert np.abs(to_row - (1.02 * rows[:, None] - 0.01 * cols[None, :] + 1.5)).max() < 1e-9
    assert np.abs(to_col - (0.97 * cols[None, :] + 2.0 + 0 * rows[:, None])).max() < 1e-9


# --------------------------------------------------------------------------- the forward warp


def _slow_tpswarp(image: np.ndarray, out: int, to_row: np.ndarray, to_col: np.ndarray, max_hw: int) -> tuple[np.ndarray, np.ndarray]:
    """tpsWarp's interp2d + nearestInterp written as plain loops over a given forward map (the test's oracle)."""
    h, w, channels = image.shape
    holes = np.zeros((out, out, channels))
    landed = np.zeros((out, out), dtype=bool)
    for r in range(h):  # meshgrid(1:imgH, 1:imgW)(:): the column index runs fastest
        for c in range(w):
            rr = int(min(max(np.floor(to_row[r, c] + 0.5), 1), out)) - 1
            cc = int(min(max(np.floor(to_col[r, c] + 0.5), 1), out)) - 1
            holes[rr, cc] = image[r, c]
            landed[rr, cc] = True
    filled = holes.copy()
    for r, c in zip(*np.nonzero(~landed)):
        for hw in range(1, max_hw + 1):
            win = (slice(max(r - hw, 0), min(r + hw, out - 1) + 1), slice(max(c - hw, 0), min(c + hw, out - 1) + 1))
            if landed[win].any():
                for ch in range(channels):
                    filled[r, c, ch] = np.median(holes[win][:, :, ch][landed[win]])
                break
    return filled, holes


def test_vectorised_warp_equals_the_loop_oracle():
    out = 40
    cfg = TpsConfig(out_size=out, grid_start=4, grid_step=8)
    center = control_points(cfg)
    target = center * 1.15 + 6 + np.random.default_rng(5).normal(0, 1.5, center.shape)  # stretched: holes, pile-ups
    img = _image(40, 52, seed=2)
    result = tpswarp(img, (out, out), center, target, hole_radius=8)
    to_row, to_col = tps_map(tps_coefficients(center, target), center, np.arange(1, 41.0), np.arange(1, 53.0))
    filled, holes = _slow_tpswarp(img, out, to_row, to_col, 3)
    assert (result.mapped == 0).sum() > 20 and (filled == 0).all(axis=2).sum() > 0  # holes, some left black
    assert np.array_equal(result.warped_with_holes, holes)
    assert np.array_equal(result.warped, filled)
    assert np.any(result.warped % 1 == 0.5)  # medians of even counts


def test_identity_keeps_the_top_left_and_piles_the_rest_on_the_border():
    img = _image(224, 300)
    center = control_points()
    result = tpswarp(img, (224, 224), center, center)
    assert (result.mapped == 1).all()
    assert np.array_equal(result.warped[:, :223], img[:, :223])
    # Columns 224..300 all land on the last column; the last one (column 300) is written last and wins.
    assert np.array_equal(result.warped[:, 223], img[:, 299])
    # placement="center": the centred window instead (not the release).
    left = (300 - 224) // 2
    centred = tpswarp(img, (224, 224), center, center, source_origin=(0, left))
    assert np.array_equal(centred.warped[:, 1:223], img[:, left + 1 : left + 223])
    assert np.array_equal(centred.warped[:, 0], img[:, left])  # columns before the window land on column 1; the last wins


def test_distort_is_the_resize_then_the_warp_and_reproducible_per_seed():
    img = _image()
    a, b, c = distort(img, 7), distort(img, 7), distort(img, 8)
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    resized = resize_for_distortion(img)
    assert np.array_equal(a, warp_with_offsets(resized, draw_offsets(7)))
    # A distortion, not noise: close to the undistorted top-left window on average.
    assert 0 < np.abs(a.astype(float) - resized[:, :224].astype(float)).mean() < 40
    assert np.array_equal(warp_with_offsets(resized, np.zeros((196, 2))), np.concatenate([resized[:, :223], resized[:, -1:]], axis=1))


def test_resize_step_is_matlab_bilinear_by_scale():
    img = _image(300, 250)
    resized = resize_for_distortion(img)
    assert resized.shape[:2] == (269, 224)  # ceil(300 * 224/250)
    assert np.array_equal(resized, imresize(img, scale=224 / 250, method="bilinear"))
    assert distortion_window((300, 250)) == ((269, 224), (0, 0))
    assert distortion_window((300, 250), TpsConfig(placement="center")) == ((269, 224), (22, 0))


def test_grayscale_and_bad_input():
    gray = _image()[:, :, 0]
    assert np.array_equal(distort(gray, 1), distort(_image(), 1)[:, :, 0])
    with pytest.raises(CqdError):
        distort(gray.astype(np.float32), 1)
    with pytest.raises(CqdError):
        TpsConfig(placement="middle")
    with pytest.raises(CqdError):
        warp_with_offsets(resize_for_distortion(gray), np.zeros((10, 2)))
    with pytest.raises(CqdError, match="degenerate"):
        tps_coefficients(np.zeros((5, 2)), np.zeros((5, 2)))
