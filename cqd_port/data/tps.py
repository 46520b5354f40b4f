"""The paper's thin-plate-spline distortion (Section 4.1.4, Figure 3d), as the released code made it.

`save_images.m` of the release (case 'distort') does, per image:

1. `im = imresize(im, 'scale', max(224/h, 224/w), 'method', 'bilinear')`:
   the shorter side becomes 224 (MATLAB's output size is
   `ceil(scale * size)`, so the longer side keeps the aspect);
2. a 14 x 14 grid of control points at `8:16:224` in both directions,
   `center = [Y(:) X(:)]` (row, column; MATLAB column-major order of
   `meshgrid`, so the row index runs fastest), and
   `target = [Y(:) + 4*randn, X(:) + 4*randn]` (the column offsets were drawn
   first, then the row offsets);
3. `tpswarp(im, [224 224], center, target, interp)` with `interp.method =
   'nearest'`, `interp.radius = 8` (F. J. Archibald's tpsWarp, 2009);
4. `imwrite(uint8(imresize(imgw, [224 224])), ...)`: the resize is a no-op
   on a 224 x 224 image, so what is written is `uint8(imgw)` (JPEG q75,
   written by `cqd_port.data.prepare`).

What `tpswarp` does (pinned down by `../shared/release-parity/tps_release.mat`,
reproduced here to 0 error):

- a thin-plate spline (Bookstein: `U(r) = r^2 log r^2`, written
  `2 r^2 log r` with `log(realmin)` at r = 0, plus an affine part, solved
  as `inv(L) * [target; 0]`) is fitted from `center` to `target` and
  evaluated at EVERY SOURCE PIXEL: a forward map. The function's own
  documentation calls the first column X, but it pairs it with the image's
  rows (`meshgrid(1:imgH, 1:imgW)`), so `center` and `target` are
  `[row col]`, which is how `save_images.m` passes them;
- each mapped position is rounded (half away from zero) and clamped to the
  224 x 224 canvas. The canvas is aligned with the image's top-left corner:
  a non-square image keeps its top/left part, and the pixels of its rest
  pile up on the last row or column. Where several source pixels land on
  one canvas pixel, the last one in the release's order wins; that order
  is `meshgrid(1:imgH, 1:imgW)(:)`, the column index running fastest (the
  image's row-major order);
- every canvas pixel nobody landed on (a hole) takes, per channel, the
  MEDIAN of the landed pixels in the smallest square window of half-width
  `h = 1 .. fix((radius - 1) / 2)` (3 for radius 8), clipped to the canvas,
  that holds any; the median of an even count is the mean of the middle
  two (so x.5 values occur). A hole with none within half-width 3 stays 0:
  the black borders of the paper's Figure 3d. Only original landed pixels
  feed the medians (filled holes never feed other holes).

How it differs from the usual tools: `cv2.remap` and
`scipy.ndimage.map_coordinates` warp backwards (every output pixel samples
the input), which leaves no holes, never piles pixels on the border, and
interpolates; `np.round` rounds halves to even.

Randomness: MATLAB drew the offsets from its global `randn` stream, which
cannot be replayed. cqd-port draws them per image from
`numpy.random.default_rng(image_seed)` (the column offsets first, then the
row offsets, each 14 x 14 in column-major order, times `sigma` = 4), where
`image_seed` is derived from the dataset seed and the image's relative path
(`cqd_port.data.prepare.image_seed`): the same image always gets the same
distortion, whatever the order or the worker.

`placement="center"` (not the release) puts the centre of the resized image
on the canvas instead of its top-left corner (the source coordinates are
shifted before the spline); everything else is the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from cqd_port.errors import CqdError
from cqd_port.imresize import imresize, output_shape
from cqd_port.matlab import matlab_uint8, round_half_away

__all__ = [
    "PLACEMENTS",
    "TpsConfig",
    "TpsWarp",
    "control_points",
    "draw_offsets",
    "tps_coefficients",
    "tps_map",
    "tpswarp",
    "resize_for_distortion",
    "distortion_origin",
    "distortion_window",
    "warp_with_offsets",
    "distort",
]

PLACEMENTS = ("topleft", "center")


@dataclass(frozen=True)
class TpsConfig:
    """Parameters of the distortion; the defaults are the release's (`save_images.m`)."""

    out_size: int = 224
    grid_start: int = 8  # first control point, MATLAB 1-based pixel coordinate
    grid_step: int = 16
    sigma: float = 4.0  # each control point's row and column offset is sigma * randn
    hole_radius: int = 8  # tpswarp's interp.radius: holes look up to fix((radius-1)/2) pixels away
    placement: str = "topleft"  # where the canvas sits on the resized image: "topleft" (release) or "center"
    resize_method: str = "bilinear"

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise CqdError(f"TPS placement must be 'topleft' (the release) or 'center', got {self.placement!r}")
        if self.out_size < 1 or self.grid_step < 1 or not 1 <= self.grid_start <= self.out_size:
            raise CqdError(f"TPS grid does not fit the output: {self}")
        if len(_grid_1d(self)) < 2:
            raise CqdError(f"TPS grid needs at least 2 x 2 control points: {self}")
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise CqdError(f"TPS sigma must be a non-negative number, got {self.sigma!r}")
        if self.hole_radius < 1:
            raise CqdError(f"TPS hole_radius must be at least 1, got {self.hole_radius!r}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TpsWarp:
    """What `tpswarp` returns: `[imgw, imgwr, map]` of the release (float64 arrays)."""

    warped: np.ndarray  # holes filled (imgw), out_h x out_w (x C)
    warped_with_holes: np.ndarray  # imgwr: 0 where no source pixel landed
    mapped: np.ndarray  # map: 1.0 where a source pixel landed, 0.0 in the holes


def _grid_1d(config: TpsConfig) -> np.ndarray:
    # MATLAB's start:step:stop, 1-based.
    return np.arange(config.grid_start, config.out_size + 1, config.grid_step, dtype=np.float64)


def control_points(config: TpsConfig = TpsConfig()) -> np.ndarray:
    """The release's `center`: (K, 2) as [row col], 1-based, row index fastest (K = 196 for 14 x 14).

    `[X, Y] = meshgrid(x_c, y_c); center = [Y(:), X(:)]`.
    """
    g = _grid_1d(config)
    cols, rows = np.meshgrid(g, g)  # MATLAB meshgrid(x_c, y_c): X varies along a row, Y down a column
    return np.stack([rows.ravel(order="F"), cols.ravel(order="F")], axis=1)


def draw_offsets(image_seed: int, config: TpsConfig = TpsConfig()) -> np.ndarray:
    """The control points' offsets (K, 2) as [d_row d_col], `sigma * randn` from `default_rng(image_seed)`.

    Drawn in the release's order: all column offsets (`X + 4*randn(size(X))`)
    first, then all row offsets, each grid in column-major order.
    """
    n = len(_grid_1d(config))
    rng = np.random.default_rng(int(image_seed))
    d_col = config.sigma * rng.standard_normal((n, n))
    d_row = config.sigma * rng.standard_normal((n, n))
    return np.stack([d_row.ravel(order="F"), d_col.ravel(order="F")], axis=1)


def _radial_basis(r: np.ndarray) -> np.ndarray:
    # tpsWarp's radialBasis: 2 r^2 log r, with r = 0 replaced by realmin inside the log (so U(0) = 0).
    safe = np.where(r == 0, np.finfo(np.float64).tiny, r)
    return 2.0 * (r * r) * np.log(safe)


def _check_points(name: str, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
        raise CqdError(f"TPS {name} must be a (K, 2) array of finite [row col] points with K >= 3, got shape {points.shape}")
    return points


@lru_cache(maxsize=8)
def _inverse_system(center_bytes: bytes, k: int) -> np.ndarray:
    # inv(L) depends on the control points only (the same 14 x 14 grid for every image): computed once.
    center = np.frombuffer(center_bytes, dtype=np.float64).reshape(k, 2)
    diff = center[:, None, :] - center[None, :, :]
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = _radial_basis(np.sqrt((diff**2).sum(-1)))
    system[:k, k] = 1.0
    system[:k, k + 1 :] = center
    system[k, :k] = 1.0
    system[k + 1 :, :k] = center.T
    try:
        inverse = np.linalg.inv(system)
    except np.linalg.LinAlgError:
        raise CqdError("TPS control points are degenerate (repeated, or all on one line): the spline has no solution") from None
    inverse.setflags(write=False)
    return inverse


def tps_coefficients(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The spline from `center` to `target` (both (K, 2) [row col]): (K + 3, 2) = [W; a1; a_row; a_col].

    tpsWarp's `computeWl` and `inv(wL) * wY`, `L = [[U(|c_i - c_j|), P]; [P', 0]]`,
    `P = [1 row col]`, `wY = [target; 0 0 0]` (the explicit inverse, as the release).
    """
    center = _check_points("center", center)
    target = _check_points("target", target)
    if center.shape != target.shape:
        raise CqdError(f"TPS center and target must have the same shape, got {center.shape} and {target.shape}")
    k = len(center)
    rhs = np.zeros((k + 3, 2))
    rhs[:k] = target
    return _inverse_system(np.ascontiguousarray(center).tobytes(), k) @ rhs


def tps_map(coefficients: np.ndarray, center: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spline at every (row, col) of the grid `rows` x `cols`: two (len(rows), len(cols)) float64 arrays.

    `f(p) = a1 + a_row * row + a_col * col + sum_i W_i U(|p - c_i|)` (tpsWarp's
    `tpsMap`). When the control points and the grid are integers (the release's
    case), `U` depends only on the integer offset, so it is tabulated once and
    each control point adds a shifted view of the table (no per-pixel log);
    otherwise it is evaluated densely.
    """
    center = _check_points("center", center)
    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    k = len(center)
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.shape != (k + 3, 2):
        raise CqdError(f"TPS coefficients must have shape ({k + 3}, 2) for {k} control points, got {coefficients.shape}")
    weights, affine = coefficients[:k], coefficients[k:]
    out = np.empty((2, len(rows), len(cols)))
    for axis in range(2):
        out[axis] = affine[0, axis] + affine[1, axis] * rows[:, None] + affine[2, axis] * cols[None, :]
    on_lattice = all(np.array_equal(v, np.round(v)) for v in (center, rows, cols))
    if on_lattice and len(rows) and len(cols) and np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1):
        # Offsets row - c_row span [rows[0] - max c_row, rows[-1] - min c_row]; same for columns.
        r0 = rows[0] - center[:, 0].max()
        c0 = cols[0] - center[:, 1].max()
        dr = np.arange(r0, rows[-1] - center[:, 0].min() + 1)
        dc = np.arange(c0, cols[-1] - center[:, 1].min() + 1)
        table = _radial_basis(np.sqrt(dr[:, None] ** 2 + dc[None, :] ** 2))
        h, w = len(rows), len(cols)
        term = np.empty((h, w))
        for i in range(k):
            top = int(rows[0] - center[i, 0] - r0)
            left = int(cols[0] - center[i, 1] - c0)
            view = table[top : top + h, left : left + w]
            for axis in range(2):
                np.multiply(view, weights[i, axis], out=term)
                out[axis] += term
    else:
        grid_r, grid_c = np.meshgrid(rows, cols, indexing="ij")
        points = np.stack([grid_r.ravel(), grid_c.ravel()], axis=1)
        flat = out.reshape(2, -1)
        for start in range(0, len(points), 8192):  # keeps the (chunk x K) basis near 13 MB
            chunk = points[start : start + 8192]
            basis = _radial_basis(np.sqrt(((chunk[:, None, :] - center[None, :, :]) ** 2).sum(-1)))
            flat[:, start : start + len(chunk)] += (basis @ weights).T
    return out[0], out[1]


def _window_counts(mapped: np.ndarray, h: int) -> np.ndarray:
    # Number of landed pixels in the (2h+1)^2 window around each pixel, clipped to the canvas.
    padded = np.pad(mapped.astype(np.int64), ((h + 1, h), (h + 1, h)))
    integral = padded.cumsum(0).cumsum(1)
    n = 2 * h + 1
    return integral[n:, n:] - integral[:-n, n:] - integral[n:, :-n] + integral[:-n, :-n]


def _fill_holes(with_holes: np.ndarray, mapped: np.ndarray, max_half_width: int) -> np.ndarray:
    """tpsWarp's `nearestInterp`: each hole gets the per-channel median of the landed pixels in its smallest window."""
    out = with_holes.copy()
    hole = ~mapped
    if not hole.any() or max_half_width < 1:
        return out
    channels = with_holes.shape[2]
    pad = max_half_width
    values = np.pad(with_holes, ((pad, pad), (pad, pad), (0, 0)))
    valid = np.pad(mapped, pad)  # outside the canvas counts as a hole: the window is clipped
    pending = hole.copy()
    for h in range(1, max_half_width + 1):
        here = pending & (_window_counts(mapped, h) > 0)
        if not here.any():
            continue
        pending &= ~here
        yi, xi = np.nonzero(here)
        dy, dx = np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1), indexing="ij")
        wy = yi[:, None] + pad + dy.ravel()[None, :]
        wx = xi[:, None] + pad + dx.ravel()[None, :]
        ok = valid[wy, wx]  # (n, window)
        count = ok.sum(axis=1)
        window = np.where(ok[:, :, None], values[wy, wx], np.inf)  # (n, window, C); holes sort last
        window.sort(axis=1)
        low = np.take_along_axis(window, ((count - 1) // 2)[:, None, None].repeat(channels, 2), axis=1)[:, 0]
        high = np.take_along_axis(window, (count // 2)[:, None, None].repeat(channels, 2), axis=1)[:, 0]
        out[yi, xi] = (low + high) / 2.0  # MATLAB median: the mean of the middle two of an even count
    return out


def tpswarp(
    image: np.ndarray,
    out_hw: tuple[int, int],
    center: np.ndarray,
    target: np.ndarray,
    hole_radius: int = 8,
    source_origin: tuple[int, int] = (0, 0),
) -> TpsWarp:
    """The release's `[imgw, imgwr, map] = tpswarp(img, [W H], center, target, interp)`, method 'nearest'.

    `image` HxW or HxWxC (any numeric type, computed in float64); `center`,
    `target` (K, 2) as [row col], 1-based (the order `save_images.m` passes);
    `out_hw` the canvas (rows, cols); `hole_radius` tpsWarp's `interp.radius`.
    `source_origin` (0-based row, col of the source pixel that sits on the
    canvas's first pixel before warping) is (0, 0) in the release; `distort`
    moves it for `placement="center"`. See the module docstring for the
    behaviour, reproduced exactly.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise CqdError(f"tpswarp expects an HxW or HxWxC image, got shape {image.shape}")
    out_h, out_w = (int(v) for v in out_hw)
    if out_h < 1 or out_w < 1:
        raise CqdError(f"tpswarp canvas must be positive, got {out_hw}")
    img = image.reshape(image.shape[0], image.shape[1], -1).astype(np.float64)
    h, w, channels = img.shape
    coefficients = tps_coefficients(center, target)
    rows = np.arange(1, h + 1, dtype=np.float64) - source_origin[0]
    cols = np.arange(1, w + 1, dtype=np.float64) - source_origin[1]
    to_row, to_col = tps_map(coefficients, center, rows, cols)
    canvas_row = np.clip(round_half_away(to_row), 1, out_h).astype(np.int64) - 1
    canvas_col = np.clip(round_half_away(to_col), 1, out_w).astype(np.int64) - 1
    landing = (canvas_row * out_w + canvas_col).ravel()  # source pixels in the release's order (row-major)
    winner = np.full(out_h * out_w, -1, dtype=np.int64)
    np.maximum.at(winner, landing, np.arange(h * w, dtype=np.int64))  # the last source pixel wins
    mapped = (winner >= 0).reshape(out_h, out_w)
    with_holes = np.zeros((out_h * out_w, channels))
    with_holes[winner >= 0] = img.reshape(h * w, channels)[winner[winner >= 0]]
    with_holes = with_holes.reshape(out_h, out_w, channels)
    warped = _fill_holes(with_holes, mapped, (int(hole_radius) - 1) // 2)
    if image.ndim == 2:
        warped, with_holes = warped[:, :, 0], with_holes[:, :, 0]
    return TpsWarp(warped, with_holes, mapped.astype(np.float64))


def resize_for_distortion(image: np.ndarray, config: TpsConfig = TpsConfig()) -> np.ndarray:
    """Step 1: `imresize(im, 'scale', max(out/h, out/w), 'method', 'bilinear')` (MATLAB's `ceil(scale * size)` output)."""
    h, w = image.shape[:2]
    return imresize(image, scale=_scale(h, w, config), method=config.resize_method)


def _scale(h: int, w: int, config: TpsConfig) -> float:
    return max(config.out_size / h, config.out_size / w)


def distortion_origin(resized_hw: tuple[int, int], config: TpsConfig = TpsConfig()) -> tuple[int, int]:
    """The 0-based (top, left) pixel of a resized (h, w) image that sits on the canvas's corner.

    (0, 0) for the release's "topleft"; the centred window's corner for "center".
    """
    h, w = resized_hw
    n = config.out_size
    return (max(0, (h - n) // 2), max(0, (w - n) // 2)) if config.placement == "center" else (0, 0)


def distortion_window(image_hw: tuple[int, int], config: TpsConfig = TpsConfig()) -> tuple[tuple[int, int], tuple[int, int]]:
    """For an `image_hw` = (h, w) image: the resized (h, w) and the 0-based (top, left) the canvas starts at.

    (The spline then moves pixels by a few pixels around that window.)
    """
    (rh, rw), _ = output_shape(image_hw, scale=_scale(image_hw[0], image_hw[1], config))
    return (rh, rw), distortion_origin((rh, rw), config)


def warp_with_offsets(resized: np.ndarray, offsets: np.ndarray, config: TpsConfig = TpsConfig()) -> np.ndarray:
    """Steps 2-4 on an already resized uint8 image: `uint8(tpswarp(...))`, out x out (x C).

    `offsets` (K, 2) [d_row d_col] move the control points: `target = center + offsets`.
    """
    if resized.dtype != np.uint8 or resized.ndim not in (2, 3):
        raise CqdError(f"TPS warp expects a uint8 HxW or HxWxC image, got {resized.dtype} {resized.shape}")
    center = control_points(config)
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.shape != center.shape:
        raise CqdError(f"TPS offsets must have shape {center.shape}, got {offsets.shape}")
    n = config.out_size
    result = tpswarp(resized, (n, n), center, center + offsets, config.hole_radius, distortion_origin(resized.shape[:2], config))
    return matlab_uint8(result.warped)


def distort(image: np.ndarray, image_seed: int, config: TpsConfig = TpsConfig()) -> np.ndarray:
    """The release's distortion of one uint8 image (HxW or HxWxC) -> out x out (x C) uint8, reproducible per seed."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise CqdError(f"TPS distortion expects a uint8 HxW or HxWxC image, got {image.dtype} {image.shape}")
    return warp_with_offsets(resize_for_distortion(image, config), draw_offsets(image_seed, config), config)
