"""MATLAB's `imresize`, exactly, for numpy images and torch batches.

The original CQD pipeline prepared every image with MATLAB's `imresize`
(bicubic by default, antialiased when shrinking). Its numbers differ from
`cv2.resize` and `torch.nn.functional.interpolate`, so this module reproduces
MATLAB's algorithm (R2019b `imresize`, which the reference cases in
`../shared/matlab-imresize` pin down):

- output pixel `k` (1-based) of a dimension of length `out` sits at source
  coordinate `u = k/scale + 0.5*(1 - 1/scale)` (pixel centres, 1-based);
- the separable kernel is evaluated at `u - j` for the `ceil(width) + 2`
  source pixels `j` starting at `floor(u - width/2)`; when shrinking with
  antialiasing the kernel is stretched, `h(x) = scale*kernel(scale*x)`, and
  its support widened to `width/scale`;
- each output pixel's weights are normalised to sum to one;
- source indices outside `1..n` are mirrored (`[1..n, n..1]` repeated);
- the dimension with the smaller scale factor is resized first (rows first
  on ties);
- a `uint8` (`uint16`) image is rounded half away from zero and clipped to
  its range after EACH dimension pass; a floating image is never clipped.

Every pass is a dense weight matrix (`out x in`, built once per
(in, out, scale, method, antialiasing) and cached) applied along one axis
with a matrix product, which is exact and fast.

Differences from the usual libraries: `cv2.resize(INTER_CUBIC)` uses the
a=-0.75 cubic kernel with no antialiasing when shrinking (and fixed-point
weights for uint8); `INTER_AREA` is a box average. `F.interpolate(mode=
"bicubic")` also uses a=-0.75; with `antialias=True` it switches to a=-0.5
and the same stretched support, and then agrees with MATLAB in the interior
(to 1e-12 on 224 -> 50), but near the borders it truncates and renormalises
the kernel instead of mirroring the image, and it has no MATLAB per-pass
uint8 rounding. `benchmarks/bench_imresize.py` measures the differences.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from cqd_port.errors import CqdError
from cqd_port.matlab import matlab_uint8, round_saturate

__all__ = ["imresize", "imresize_torch", "resize_weights", "output_shape", "matlab_uint8", "METHODS"]


def _cubic(x: np.ndarray) -> np.ndarray:
    # MATLAB's cubic(): Keys' kernel with a = -0.5.
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))


def _triangle(x: np.ndarray) -> np.ndarray:
    # MATLAB's triangle(): (x+1) on [-1,0), (1-x) on [0,1].
    return (x + 1.0) * ((x >= -1) & (x < 0)) + (1.0 - x) * ((x >= 0) & (x <= 1))


def _box(x: np.ndarray) -> np.ndarray:
    # MATLAB's box(): half-open [-0.5, 0.5), so exactly one source pixel wins a tie.
    return ((x >= -0.5) & (x < 0.5)).astype(np.float64)


def _lanczos2(x: np.ndarray) -> np.ndarray:
    eps = np.finfo(np.float64).eps
    return (np.sin(np.pi * x) * np.sin(np.pi * x / 2) + eps) / (np.pi**2 * x * x / 2 + eps) * (np.abs(x) < 2)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    eps = np.finfo(np.float64).eps
    return (np.sin(np.pi * x) * np.sin(np.pi * x / 3) + eps) / (np.pi**2 * x * x / 3 + eps) * (np.abs(x) < 3)


# method -> (kernel, kernel width), as MATLAB's imresize names them.
METHODS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bicubic": (_cubic, 4.0),
    "bilinear": (_triangle, 2.0),
    "nearest": (_box, 1.0),
    "lanczos2": (_lanczos2, 4.0),
    "lanczos3": (_lanczos3, 6.0),
}


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise CqdError(f"unknown imresize method {method!r}: use one of {', '.join(METHODS)}")


def _default_antialiasing(method: str, antialiasing: bool | None) -> bool:
    # MATLAB: antialiasing defaults to true, except for 'nearest'.
    if antialiasing is None:
        return method != "nearest"
    return bool(antialiasing)


@lru_cache(maxsize=256)
def _weights_cached(in_len: int, out_len: int, scale: float, method: str, antialiasing: bool) -> np.ndarray:
    kernel, width = METHODS[method]
    if scale < 1 and antialiasing:
        def h(x: np.ndarray) -> np.ndarray:
            return scale * kernel(scale * x)
        width = width / scale
    else:
        h = kernel
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    ind = left[:, None] + np.arange(taps)[None, :]  # 1-based source indices
    w = h(u[:, None] - ind)
    w = w / w.sum(axis=1, keepdims=True)
    # Mirror out-of-range indices like MATLAB: aux = [1:n, n:-1:1].
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = aux[np.mod(ind.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), idx.ravel()), w.ravel())
    mat.setflags(write=False)
    return mat


def resize_weights(in_len: int, out_len: int, scale: float, method: str = "bicubic", antialiasing: bool = True) -> np.ndarray:
    """The `out_len x in_len` float64 matrix of one MATLAB imresize pass (read-only, cached).

    Row `k` holds the normalised kernel weights of output pixel `k`, with
    mirrored indices folded in (MATLAB's `contributions()`).
    """
    _check_method(method)
    return _weights_cached(int(in_len), int(out_len), float(scale), method, bool(antialiasing))


def output_shape(
    in_shape: Sequence[int], size: Sequence[float] | int | None = None, scale: float | Sequence[float] | None = None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """MATLAB's output size and per-dimension scale for `imresize(A, scale)` or `imresize(A, [rows cols])`.

    - `scale` (a number or a pair): output = `ceil(scale * input)`, and the
      kernel positions use `scale` itself;
    - `size` `[rows, cols]`: scale = `size / input` per dimension; one entry
      may be NaN (or None) to keep the aspect ratio, as in MATLAB: that
      dimension gets `ceil(scale * input)` with the other dimension's scale.
    """
    in_h, in_w = int(in_shape[0]), int(in_shape[1])
    if (size is None) == (scale is None):
        raise CqdError("imresize: give exactly one of size=[rows, cols] or scale=")
    if scale is not None:
        sc = (float(scale), float(scale)) if np.isscalar(scale) else tuple(float(s) for s in scale)  # type: ignore[arg-type]
        if len(sc) != 2 or min(sc) <= 0 or not all(math.isfinite(s) for s in sc):
            raise CqdError(f"imresize: scale must be a positive number or pair, got {scale!r}")
        out = (int(math.ceil(sc[0] * in_h)), int(math.ceil(sc[1] * in_w)))
        return out, (sc[0], sc[1])
    if np.isscalar(size):
        raise CqdError(f"imresize: size must be [rows, cols], got {size!r}; use scale= for a factor")
    vals = [float("nan") if s is None else float(s) for s in size]  # type: ignore[union-attr]
    if len(vals) != 2 or all(math.isnan(v) for v in vals):
        raise CqdError(f"imresize: size must be [rows, cols] with at most one NaN, got {size!r}")
    for v in vals:
        if not math.isnan(v) and (v < 1 or v != int(v)):
            raise CqdError(f"imresize: size entries must be positive integers, got {size!r}")
    if math.isnan(vals[0]):
        s = vals[1] / in_w
        return (int(math.ceil(s * in_h)), int(vals[1])), (s, s)
    if math.isnan(vals[1]):
        s = vals[0] / in_h
        return (int(vals[0]), int(math.ceil(s * in_w))), (s, s)
    return (int(vals[0]), int(vals[1])), (vals[0] / in_h, vals[1] / in_w)


def _pass_order(scale: tuple[float, float]) -> tuple[int, int]:
    # MATLAB's getResizeDimOrder: the dimension shrunk the most first, rows on ties.
    return (0, 1) if scale[0] <= scale[1] else (1, 0)


_INT_RANGES = {np.dtype(np.uint8): (0.0, 255.0), np.dtype(np.uint16): (0.0, 65535.0)}


def imresize(
    image: np.ndarray,
    size: Sequence[float] | None = None,
    scale: float | Sequence[float] | None = None,
    method: str = "bicubic",
    antialiasing: bool | None = None,
) -> np.ndarray:
    """MATLAB `imresize(image, size_or_scale, method, 'Antialiasing', antialiasing)` on a numpy image.

    `image` is HxW or HxWxC (any trailing channels), dtype uint8/uint16
    (rounded and clipped after each pass, returned in the same dtype) or
    float32/float64 (computed in float64, never clipped, returned in the
    input's float dtype). `antialiasing=None` is MATLAB's default: on,
    except for `nearest`. See the module docstring for the exact semantics
    and how they differ from `cv2.resize` / `F.interpolate`.
    """
    _check_method(method)
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise CqdError(f"imresize: image must be HxW or HxWxC, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise CqdError(f"imresize: empty image of shape {img.shape}")
    dtype = img.dtype
    if dtype in _INT_RANGES:
        rng: tuple[float, float] | None = _INT_RANGES[dtype]
    elif dtype in (np.float32, np.float64):
        rng = None
    else:
        raise CqdError(f"imresize: unsupported dtype {dtype}; use uint8, uint16, float32 or float64")
    aa = _default_antialiasing(method, antialiasing)
    out_hw, sc = output_shape(img.shape, size=size, scale=scale)
    # Work as C x H x W so both passes are plain (batched) matrix products: w @ x and x @ w.T.
    x = np.ascontiguousarray(np.moveaxis(img.reshape(img.shape[0], img.shape[1], -1), 2, 0), dtype=np.float64)
    for dim in _pass_order(sc):
        w = resize_weights(img.shape[dim], out_hw[dim], sc[dim], method, aa)
        x = np.matmul(w, x) if dim == 0 else np.matmul(x, w.T)
        if rng is not None:
            x = round_saturate(x, *rng)
    out = np.moveaxis(x, 0, 2).astype(dtype)
    return np.ascontiguousarray(out if img.ndim == 3 else out[:, :, 0])


# ------------------------------------------------------------------ torch ---

_TORCH_CACHE: dict[tuple, "object"] = {}


def _torch_weights(in_len: int, out_len: int, scale: float, method: str, aa: bool, dtype, device):
    import torch

    key = (in_len, out_len, scale, method, aa, dtype, str(device))
    mat = _TORCH_CACHE.get(key)
    if mat is None:
        if len(_TORCH_CACHE) > 256:  # bounded, like the numpy lru_cache
            _TORCH_CACHE.clear()
        mat = torch.as_tensor(np.array(resize_weights(in_len, out_len, scale, method, aa)), dtype=dtype, device=device)
        _TORCH_CACHE[key] = mat
    return mat


def imresize_torch(
    batch: "torch.Tensor",
    size: Sequence[float] | None = None,
    method: str = "bicubic",
    antialiasing: bool | None = None,
    scale: float | Sequence[float] | None = None,
) -> "torch.Tensor":
    """MATLAB `imresize` on an N x C x H x W torch batch (CPU or CUDA), same numbers as `imresize`.

    float32/float64 batches are computed in their own dtype (float64 matches
    MATLAB to rounding error, float32 to ~1e-5 relative); uint8 batches are
    computed in float64 and rounded half away from zero and clipped to
    [0, 255] after each pass, as MATLAB does, and returned as uint8. Each
    pass is a cached `out x in` weight matrix applied with `matmul`.
    Unlike `F.interpolate(mode="bicubic", antialias=True)` it mirrors
    out-of-range pixels (the two differ only near the borders) and rounds
    uint8 between passes.
    """
    import torch

    _check_method(method)
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
        raise CqdError(f"imresize_torch: expected an N x C x H x W tensor, got {getattr(batch, 'shape', type(batch))}")
    aa = _default_antialiasing(method, antialiasing)
    out_hw, sc = output_shape(batch.shape[2:], size=size, scale=scale)
    if batch.dtype == torch.uint8:
        work_dtype, quantise = torch.float64, True
    elif batch.dtype in (torch.float32, torch.float64):
        work_dtype, quantise = batch.dtype, False
    else:
        raise CqdError(f"imresize_torch: unsupported dtype {batch.dtype}; use uint8, float32 or float64")
    x = batch.to(work_dtype)
    in_hw = (batch.shape[2], batch.shape[3])
    for dim in _pass_order(sc):
        w = _torch_weights(in_hw[dim], out_hw[dim], sc[dim], method, aa, work_dtype, batch.device)
        x = torch.matmul(w, x) if dim == 0 else torch.matmul(x, w.t())
        if quantise:
            x = round_saturate(x, 0.0, 255.0)
    return x.to(batch.dtype).contiguous()
