"""Piotr Dollar's Structured Edge Detector (`edgesDetect`), as the released CQD code ran it.

Reproduces `edgesDetect.m` of pdollar/edges (Structured Edge Detection
Toolbox 3.01) with the channel code of pdollar/toolbox (`rgbConvert`,
`imResample`, `convTri`, `gradientMag`, `gradientHist`, `imPad`), reading the
toolbox's own model file (`modelBsds.mat`, the struct `model` that
`edgesTrain` saves; MAT v7 or v7.3). `save_images.m` made the paper's edge
images with it (multiscale 0, sharpen 2, nTreesEval 4, nms 0). Steps:

1. `imPad(I, [r r+dh r r+dw], 'symmetric')`, r = imWidth/2, the bottom and
   right padded further so both sides are multiples of 4 (exact).
2. `edgesChns`: LUV colour (`rgbConvert`), shrunk by 2 (`imResample`);
   gradient magnitude, normalised by its `convTri(., normRad)` smoothing,
   and 4 orientation histograms (orientation-interpolated, spatially binned)
   at full and half resolution; 13 channels, smoothed by `convTri` with
   chnSmooth/shrink (the split features) and simSmooth/shrink (the
   self-similarity features).
3. The random forest on every stride-2 patch, trees alternating in a
   checkerboard: `inds`, the leaf reached by each (patch, tree).
4. Each leaf's segmentation mask, re-labelled pixel by pixel towards the
   nearest segment mean colour of the patch in `convTri(rgb, 1)` (sharpen
   1 or 2: the first 1 or 2 boundary bands), adds 1 at every pixel of the
   first sharpen+1 bands whose label differs from a 4-neighbour's
   (sharpen 0: the leaf's stored boundary pixels, `eBins`/`eBnds`).
5. Crop the padding, multiply by t = stride^2/gtWidth^2/nTreesEval *
   (2, 1.8, 1.66 for sharpen 0, 1, 2), `convTri(E, 1)`.

Every step is vectorised over all patches and trees (numpy fancy indexing;
the forest descends level by level, sharpening walks the boundary pixels
position by position for all patches at once). The float32 operations are
the toolbox's, in its order (the recursive `convTri` included), except
where the toolbox uses the processor's approximate SSE instructions
(`rcpps` for 1/x in `rgbConvert` and the gradient normalisation, `rsqrtps`
for 1/sqrt(x) in `gradientMag`, whose results differ between Intel and
AMD) and libm's `acosf` for the orientation table: there this module uses
IEEE float32 division and square root, and arccos rounded to float32. So
the gradient channels differ at float level, about 1% of tree lookups take
the other branch, and E matches the toolbox statistically (see
`parity/release_sed.py`), not bit for bit. Not implemented: multiscale=1,
nms=1, the orientation output O, RGB-D models, shrink other than 2 (the
BSDS model and the toolbox's defaults use shrink 2).

Differences from OpenCV's `ximgproc` StructuredEdgeDetection (the
`edges_opencv` degradation): OpenCV has no sharpening step and computes its
channels differently (own colour conversion, gradient and smoothing code),
so its maps are not these.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cqd_port.errors import CqdError

__all__ = [
    "SED_MAT_HELP",
    "SedModel",
    "read_sed_model",
    "edges_detect",
    "edges_channels",
    "edges_pad",
    "sharpen_image",
    "conv_tri",
    "rgb_to_luv",
]

F32 = np.float32

SED_MAT_HELP = (
    "pass --sed-model modelBsds.mat (the Structured Edge Detection Toolbox's BSDS forest, "
    "pdollar/edges models/forest/modelBsds.mat, the struct 'model' that edgesTrain saves), "
    "or use 'edges_opencv' (OpenCV's detector, not the paper's maps) or 'edges_sobel'"
)

_REQUIRED_FIELDS = ("opts", "thrs", "fids", "child", "segs", "nSegs", "eBins", "eBnds")
_REQUIRED_OPTS = (
    "imWidth", "gtWidth", "nTrees", "nOrients", "grdSmooth", "chnSmooth", "simSmooth", "normRad", "shrink",
    "nCells", "stride", "nTreesEval", "nChns", "nChnFtrs",
)  # fmt: skip


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class SedModel:
    """An `edgesTrain` forest, flattened: node k (0-based) = tree * n_nodes + node, as edgesDetectMex counts.

    `left[k]` is the global index of node k's left child (the right child is
    `left[k] + 1`); `is_leaf[k]` marks leaves. `segs[k]` is the leaf's
    gtWidth x gtWidth segmentation, pixels in column-major order (pixel
    i = col * gtWidth + row), as `eBins` counts them.
    """

    path: str
    opts: dict
    thrs: np.ndarray  # (K,) float32
    fids: np.ndarray  # (K,) int64
    left: np.ndarray  # (K,) int64
    is_leaf: np.ndarray  # (K,) bool
    segs: np.ndarray  # (K, g*g) uint8
    n_segs: np.ndarray  # (K,) int64
    e_bins: np.ndarray  # (N,) int64
    e_bnds: np.ndarray  # (K*n_bands+1,) int64
    n_nodes: int
    n_trees: int
    n_bands: int

    def opt(self, name: str) -> float:
        return self.opts[name]


def _bad(path: Path, why: str) -> CqdError:
    return CqdError(f"SED model {path}: {why}; {SED_MAT_HELP}")


def _scalar(path: Path, opts: dict, name: str) -> float:
    value = opts.get(name)
    arr = np.asarray(value) if value is not None and not isinstance(value, (str, list, dict)) else None
    if arr is None or arr.size != 1 or arr.dtype.kind not in "biuf" or not np.isfinite(arr).all():
        raise _bad(path, f"option opts.{name} missing or not a number")
    return float(arr.reshape(-1)[0])


def _as_2d(path: Path, model: dict, name: str, kinds: str) -> np.ndarray:
    value = model.get(name)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
        raise _bad(path, f"field '{name}' missing or of the wrong type")
    return value


@lru_cache(maxsize=4)
def _read(path_str: str, _mtime_ns: int, _size: int) -> SedModel:
    from matconvnet_weights.matfile import load_mat

    path = Path(path_str)
    variables = load_mat(path)
    model = variables.get("model")
    if not isinstance(model, dict):
        names = ", ".join(sorted(variables)) or "none"
        raise _bad(path, f"no struct variable 'model' (variables: {names})")
    missing = [f for f in _REQUIRED_FIELDS if f not in model]
    if missing:
        raise _bad(path, f"the struct 'model' lacks {', '.join(missing)}")
    raw_opts = model["opts"]
    if not isinstance(raw_opts, dict):
        raise _bad(path, "model.opts is not a struct")
    opts = {name: _scalar(path, raw_opts, name) for name in _REQUIRED_OPTS}
    for name, default in (("sharpen", 0.0), ("multiscale", 0.0), ("nms", 0.0), ("rgbd", 0.0)):
        opts[name] = _scalar(path, raw_opts, name) if name in raw_opts else default
    for name in ("imWidth", "gtWidth", "nTrees", "nOrients", "shrink", "nCells", "stride", "nTreesEval", "nChns"):
        if opts[name] < 1 or opts[name] != int(opts[name]):
            raise _bad(path, f"opts.{name}={opts[name]:g} must be a positive integer")
    if opts["shrink"] != 2:
        raise _bad(path, f"opts.shrink={opts['shrink']:g} is not supported (only 2, the toolbox's default)")
    if opts["rgbd"]:
        raise _bad(path, "RGB-D models (opts.rgbd > 0) are not supported")
    if opts["nChns"] != 3 + 2 * (1 + opts["nOrients"]):
        raise _bad(path, f"opts.nChns={opts['nChns']:g} does not match an RGB model with nOrients={opts['nOrients']:g}")

    thrs = _as_2d(path, model, "thrs", "f")
    fids = _as_2d(path, model, "fids", "iuf")
    child = _as_2d(path, model, "child", "iuf")
    segs = _as_2d(path, model, "segs", "iuf")
    n_segs = _as_2d(path, model, "nSegs", "iuf")
    e_bins = _as_2d(path, model, "eBins", "iuf")
    e_bnds = _as_2d(path, model, "eBnds", "iuf")
    if thrs.ndim != 2 or fids.shape != thrs.shape or child.shape != thrs.shape or n_segs.shape != thrs.shape:
        raise _bad(path, f"thrs/fids/child/nSegs must all be nNodes x nTrees (got {thrs.shape}, {fids.shape}, {child.shape}, {n_segs.shape})")
    n_nodes, n_trees = thrs.shape
    if n_trees != int(opts["nTrees"]):
        raise _bad(path, f"thrs has {n_trees} trees but opts.nTrees={opts['nTrees']:g}")
    g = int(opts["gtWidth"])
    k_total = n_nodes * n_trees
    if segs.size != g * g * k_total:
        raise _bad(path, f"segs has {segs.size} elements, expected gtWidth^2 * nNodes * nTrees = {g * g * k_total}")
    e_bnds_flat = np.asarray(e_bnds, dtype=np.int64).reshape(-1, order="F")
    if (e_bnds_flat.size - 1) % k_total or e_bnds_flat.size < k_total + 1:
        raise _bad(path, f"eBnds has {e_bnds_flat.size} entries, not nNodes*nTrees*nBands+1")
    n_bands = (e_bnds_flat.size - 1) // k_total
    e_bins_flat = np.asarray(e_bins, dtype=np.int64).reshape(-1, order="F")
    if np.any(np.diff(e_bnds_flat) < 0) or e_bnds_flat[0] < 0 or e_bnds_flat[-1] > e_bins_flat.size:
        raise _bad(path, "eBnds is not a non-decreasing list of offsets into eBins")
    if e_bins_flat.size and (e_bins_flat.min() < 0 or e_bins_flat.max() >= g * g):
        raise _bad(path, "eBins holds pixel indices outside the gtWidth x gtWidth patch")

    child_flat = np.asarray(child, dtype=np.int64).reshape(-1, order="F")
    tree_base = np.repeat(np.arange(n_trees, dtype=np.int64) * n_nodes, n_nodes)
    is_leaf = child_flat == 0
    if np.any(child_flat[~is_leaf] < 1) or np.any(child_flat[~is_leaf] >= n_nodes):
        raise _bad(path, "child holds indices outside the tree")
    left = np.where(is_leaf, np.arange(k_total, dtype=np.int64), child_flat - 1 + tree_base)
    fids_flat = np.asarray(fids, dtype=np.int64).reshape(-1, order="F")
    n_total_ftrs = _n_channel_features(opts) + _n_sim_features(opts)
    if np.any(fids_flat[~is_leaf] < 0) or np.any(fids_flat[~is_leaf] >= n_total_ftrs):
        raise _bad(path, f"fids holds feature ids outside 0..{n_total_ftrs - 1}")
    segs_flat = np.ascontiguousarray(np.asarray(segs, dtype=np.uint8).reshape(g * g, k_total, order="F").T)
    return SedModel(
        path=str(path),
        opts=opts,
        thrs=np.asarray(thrs, dtype=F32).reshape(-1, order="F"),
        fids=np.where(is_leaf, 0, fids_flat),
        left=left,
        is_leaf=is_leaf,
        segs=segs_flat,
        n_segs=np.asarray(n_segs, dtype=np.int64).reshape(-1, order="F"),
        e_bins=e_bins_flat,
        e_bnds=e_bnds_flat,
        n_nodes=int(n_nodes),
        n_trees=int(n_trees),
        n_bands=int(n_bands),
    )


def read_sed_model(model_path: str | os.PathLike[str] | None) -> SedModel:
    """The toolbox's `model` struct from `modelBsds.mat` (MAT v7 via scipy, v7.3 via h5py), checked and cached.

    Every problem (no path, missing file, not a MAT file, no `model`, a
    missing field, inconsistent sizes) is a one-line `CqdError` naming the
    file and the fix.
    """
    if model_path is None:
        raise CqdError(f"the 'edges' degradation needs the Structured Edge Detection model: {SED_MAT_HELP}")
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        raise CqdError(f"SED model file not found: {path}; {SED_MAT_HELP}")
    if path.name.lower().endswith((".yml", ".yml.gz", ".yaml", ".yaml.gz", ".xml", ".xml.gz")):
        raise CqdError(
            f"SED model {path} is an OpenCV FileStorage file, not the toolbox's MAT model: the paper's 'edges' need "
            f"modelBsds.mat; OpenCV's detector (not the paper's maps) is the 'edges_opencv' degradation"
        )
    st = path.stat()
    return _read(str(path), st.st_mtime_ns, st.st_size)


def _n_channel_features(opts: dict) -> int:
    w = int(opts["imWidth"]) // int(opts["shrink"])
    return w * w * int(opts["nChns"])


def _n_sim_features(opts: dict) -> int:
    m2 = int(opts["nCells"]) ** 2
    return m2 * (m2 - 1) // 2 * int(opts["nChns"])


# ----------------------------------------------------------------------------- channels


def edges_pad(image: np.ndarray, image_width: int) -> np.ndarray:
    """edgesDetect's `imPad(I, p, 'symmetric')`: r = imWidth/2 on every side, bottom/right up to a multiple of 4.

    'symmetric' repeats the border pixel (`[b a | a b c | c b]`), mirrored
    again for pads longer than the image, like imPadMex's lookup table.
    """
    h, w = image.shape[:2]
    r = image_width // 2
    extra_h = (4 - (h + 2 * r) % 4) % 4
    extra_w = (4 - (w + 2 * r) % 4) % 4
    pad = ((r, r + extra_h), (r, r + extra_w)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="symmetric")


@lru_cache(maxsize=1)
def _luv_table() -> np.ndarray:
    # rgb2luv_setup: y -> L lookup on 1025 steps of y, padded to 1064 entries.
    y0 = F32((6.0 / 29) ** 3)
    a = F32((29.0 / 3) ** 3)
    maxi = F32(1.0) / F32(270)
    table = np.empty(1064, dtype=F32)
    for i in range(1025):
        y = F32(i / 1024.0)
        if y > y0:
            l_val = F32(116) * F32(math.pow(float(y), 1.0 / 3.0)) - F32(16)
        else:
            l_val = y * a
        table[i] = F32(l_val) * maxi
    table[1025:] = table[1024]
    return table


def rgb_to_luv(image: np.ndarray) -> np.ndarray:
    """`rgbConvert(I, 'luv')` of a uint8 HxWx3 image: HxWx3 float32, L in ~[0, .37], u, v in ~[0, 1].

    The toolbox's constants, lookup table for L and float32 order of
    operations; 1/(x + 15y + 3z) is an IEEE division where the toolbox's SSE
    path uses the approximate `rcpps` (so u and v differ at float level).
    """
    nrm = F32(1.0) / F32(255)
    mr = [F32(0.430574) * nrm, F32(0.222015) * nrm, F32(0.020183) * nrm]
    mg = [F32(0.341550) * nrm, F32(0.706655) * nrm, F32(0.129553) * nrm]
    mb = [F32(0.178325) * nrm, F32(0.071330) * nrm, F32(0.939180) * nrm]
    rgb = image.astype(F32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    x = (r * mr[0] + g * mg[0]) + b * mb[0]
    y = (r * mr[1] + g * mg[1]) + b * mb[1]
    z = (r * mr[2] + g * mg[2]) + b * mb[2]
    maxi = F32(1.0) / F32(270)
    minu, minv = F32(-88) * maxi, F32(-134) * maxi
    un, vn = F32(0.197833), F32(0.468331)
    lum = _luv_table()[(y * F32(1024)).astype(np.int64)]
    inv = F32(1) / (x + (F32(1e-35) + (F32(15) * y + F32(3) * z)))
    u = lum * ((F32(52) * x) * inv - F32(13) * un) - minu
    v = lum * ((F32(117) * y) * inv - F32(13) * vn) - minv
    return np.stack([lum, u, v], axis=-1)


def _resample_half(x: np.ndarray) -> np.ndarray:
    # imResample(A, 1/2) (bilinear, exact halves): column pairs summed, then row
    # pairs, times (1/2)/(1+1e-6)/2, in imResampleMex's float order.
    r = F32(0.5) / F32(1 + 1e-6)
    r2 = r / F32(2)
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    cols = x[:h, 0:w:2] + x[:h, 1:w:2]
    return (cols[0:h:2] + cols[1:h:2]) * r2


def _conv_tri1(x: np.ndarray, p: float) -> np.ndarray:
    # convConst's convTri1: [1 p 1] along the columns (scaled by 1/(p+2)^2), then along the rows.
    p = F32(p)
    nrm = F32(1.0) / ((p + F32(2)) * (p + F32(2)))
    left = np.concatenate([x[:, :1], x[:, :-1]], axis=1)
    right = np.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    t = nrm * ((left + p * x) + right)
    out = np.empty_like(t)
    out[1:-1] = (t[:-2] + p * t[1:-1]) + t[2:]
    out[0] = (F32(1) + p) * t[0] + t[1]
    out[-1] = t[-2] + (F32(1) + p) * t[-1]
    return out


def _conv_tri_recursive(x: np.ndarray, r: int) -> np.ndarray:
    # convConst's convTri for an integer radius r >= 2: running sums along the
    # columns (T, U), then along each column (convTriY), float32 in its order.
    h, w = x.shape[:2]
    big = r + 1
    nrm = F32(1.0) / F32(big * big * big * big)
    two = F32(2)
    t = x[:, 0].copy()
    u = x[:, 0].copy()
    for i in range(1, big):
        t = t + x[:, i]
        u = u + t
    u = nrm * (two * u - t)
    t = np.zeros_like(t)
    horizontal = np.empty_like(x)
    horizontal[:, 0] = u
    for i in range(1, w):
        if i <= big:
            il, ir = big - i, big - 1 + i
        elif i <= w - big:
            il, ir = i - big - 1, big - 1 + i
        else:
            il, ir = i - big - 1, 2 * w - big - i
        t = t + ((x[:, il] + x[:, ir]) - two * x[:, i - 1])
        u = u + nrm * t
        horizontal[:, i] = u
    col = horizontal
    out = np.empty_like(x)
    r0, r1, r2, h0, h1 = big - 1, big + 1, 2 * h - big, big + 1, h - big + 1
    t = col[0].copy()
    u = col[0].copy()
    for j in range(1, big):
        t = t + col[j]
        u = u + t
    u = two * u - t
    t = np.zeros_like(t)
    out[0] = u
    for j in range(1, h):
        if j < h0:
            a, b = big - j, r0 + j
        elif j < h1:
            a, b = j - r1, r0 + j
        else:
            a, b = j - r1, r2 - j
        t = t + ((col[a] + col[b]) - two * col[j - 1])
        u = u + t
        out[j] = u
    return out


def _conv_tri_direct(x: np.ndarray, r: float) -> np.ndarray:
    # convTri.m's fallback for images smaller than the filter: symmetric pad, separable filter.
    if r <= 1:
        p = 12.0 / r / (r + 2) - 2
        f = np.array([1.0, p, 1.0]) / (2 + p)
        rad = 1
    else:
        rad = int(r)
        f = np.concatenate([np.arange(1, rad + 1), [rad + 1], np.arange(rad, 0, -1)]) / (rad + 1) ** 2
    pad = ((rad, rad), (rad, rad)) + ((0, 0),) * (x.ndim - 2)
    xp = np.pad(x.astype(np.float64), pad, mode="symmetric")
    h, w = x.shape[:2]
    rows = sum(f[i] * xp[i : i + h] for i in range(len(f)))
    out = sum(f[i] * rows[:, i : i + w] for i in range(len(f)))
    return out.astype(F32)


def conv_tri(x: np.ndarray, r: float) -> np.ndarray:
    """`convTri(I, r)` of a float32 HxW or HxWxC array: the triangle filter [1..r+1..1]/(r+1)^2, symmetric borders.

    The toolbox's convConst algorithms in float32: `convTri1` ([1 p 1],
    p = 12/r/(r+2)-2) for 0 < r <= 1, the recursive running-sum `convTri`
    for integer r >= 2 (its rounding, not that of a direct convolution);
    r = 0 returns the input. Like convTri.m, an image with 2r+1 >= min(h, w)
    takes the direct (padded) convolution instead.
    """
    x = np.asarray(x, dtype=F32)
    if r == 0:
        return x
    if 2 * r + 1 >= min(x.shape[0], x.shape[1]):
        return _conv_tri_direct(x, r)
    if 0 < r <= 1:
        return _conv_tri1(x, 12.0 / r / (r + 2) - 2)
    if r != int(r):
        raise CqdError(f"convTri radius {r} must be an integer above 1")
    return _conv_tri_recursive(x, int(r))


def _gradients(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # gradientMex's grad1: central differences times .5, one-sided (times 1) at the borders.
    gx = np.empty_like(channel)
    gy = np.empty_like(channel)
    half = F32(0.5)
    gx[:, 1:-1] = (channel[:, 2:] - channel[:, :-2]) * half
    gx[:, 0] = channel[:, 1] - channel[:, 0]
    gx[:, -1] = channel[:, -1] - channel[:, -2]
    gy[1:-1] = (channel[2:] - channel[:-2]) * half
    gy[0] = channel[1] - channel[0]
    gy[-1] = channel[-1] - channel[-2]
    return gx, gy


@lru_cache(maxsize=1)
def _acos_table() -> tuple[np.ndarray, int]:
    # gradientMex's acosTable: a[i] ~ acos(i/10000) for i in [-10010, 10010), clamped below pi.
    n, b = 10000, 10
    pi = F32(3.14159265)
    i = np.arange(-n - b, n + b)
    table = np.empty(i.size, dtype=F32)
    inside = (i >= -n) & (i < n)
    table[i < -n] = pi
    table[i >= n] = 0
    table[inside] = np.arccos((i[inside].astype(F32) / F32(n)).astype(np.float64)).astype(F32)
    clamp = (i < n // 10) & (table > pi - F32(1e-6))
    table[clamp] = pi - F32(1e-6)
    return table, n + b


def gradient_mag(image: np.ndarray, norm_rad: float, norm_const: float) -> tuple[np.ndarray, np.ndarray]:
    """`gradientMag(I, 0, normRad, normConst)` of an HxWxC float32 image: magnitude M and orientation O in [0, pi).

    Per pixel the channel with the largest squared gradient wins (the first
    on ties). 1/sqrt and 1/x are IEEE float32 where the toolbox uses
    `rsqrtps`/`rcpps`; O comes from the toolbox's 20020-entry acos table
    (index truncated towards zero). Then M = M / (convTri(M, normRad) + normConst).
    """
    best_m2 = best_gx = best_gy = None
    for c in range(image.shape[2]):
        gx, gy = _gradients(image[:, :, c])
        m2 = gx * gx + gy * gy
        if best_m2 is None:
            best_m2, best_gx, best_gy = m2, gx, gy
            continue
        better = m2 > best_m2
        best_m2 = np.where(better, m2, best_m2)
        best_gx = np.where(better, gx, best_gx)
        best_gy = np.where(better, gy, best_gy)
    with np.errstate(divide="ignore"):
        inv = np.minimum(F32(1) / np.sqrt(best_m2), F32(1e10))
    mag = F32(1) / inv
    cosine = (best_gx * inv) * F32(10000)
    cosine = np.where(np.signbit(best_gy), -cosine, cosine)
    table, offset = _acos_table()
    orient = table[np.trunc(cosine).astype(np.int64) + offset]
    if norm_rad == 0:
        return mag, orient
    smooth = conv_tri(mag, norm_rad)
    return mag / (smooth + F32(norm_const)), orient


def gradient_hist(mag: np.ndarray, orient: np.ndarray, bin_size: int, n_orients: int) -> np.ndarray:
    """`gradientHist(M, O, bin, nOrients, 0)`: h/bin x w/bin x nOrients, linear in orientation, hard spatial bins.

    Each pixel's M/bin^2 is split between its two nearest orientation bins
    and summed over the bin x bin block in the toolbox's order (down each
    column, then the next column).
    """
    s = F32(bin_size)
    norm = F32(1) / s / s
    o = orient * (F32(n_orients) / F32(3.14159265))
    o0 = np.trunc(o).astype(np.int64)
    od = o - o0.astype(F32)
    o0[o0 >= n_orients] = 0
    o1 = o0 + 1
    o1[o1 >= n_orients] = 0
    m = mag * norm
    m1 = od * m
    m0 = m - m1
    zero = F32(0)
    planes = [np.where(o0 == k, m0, zero) + np.where(o1 == k, m1, zero) for k in range(n_orients)]
    per_pixel = np.stack(planes, axis=-1)
    hb, wb = mag.shape[0] // bin_size, mag.shape[1] // bin_size
    out = np.zeros((hb, wb, n_orients), dtype=F32)
    for dx in range(bin_size):
        for dy in range(bin_size):
            out = out + per_pixel[dy : hb * bin_size : bin_size, dx : wb * bin_size : bin_size]
    return out


def edges_channels(padded: np.ndarray, opts: dict) -> tuple[np.ndarray, np.ndarray]:
    """`[chnsReg, chnsSim] = edgesChns(Ipad, opts)` for a uint8 HxWx3 padded image (H, W multiples of 4).

    13 channels at half resolution (L, u, v; gradient magnitude and
    nOrients histograms at full resolution binned by 2; the same at half
    resolution), smoothed by convTri with chnSmooth/shrink and
    simSmooth/shrink (rounded when above 1).
    """
    shrink = int(opts["shrink"])
    n_orients = int(opts["nOrients"])
    luv = rgb_to_luv(padded)
    luv_small = _resample_half(luv)
    channels = [luv_small]
    for scale in (1, 2):
        img = luv if scale == 1 else luv_small
        img = conv_tri(img, opts["grdSmooth"])
        mag, orient = gradient_mag(img, opts["normRad"], 0.01)
        hist = gradient_hist(mag, orient, max(1, shrink // scale), n_orients)
        channels.append((_resample_half(mag) if scale == 1 else mag)[:, :, None])
        channels.append(hist)
    chns = np.concatenate(channels, axis=2)
    if chns.shape[2] != int(opts["nChns"]):
        raise CqdError(f"edgesChns made {chns.shape[2]} channels but the model expects nChns={opts['nChns']:g}")
    chn_sm = opts["chnSmooth"] / shrink
    sim_sm = opts["simSmooth"] / shrink
    chn_sm = round(chn_sm) if chn_sm > 1 else chn_sm
    sim_sm = round(sim_sm) if sim_sm > 1 else sim_sm
    return conv_tri(chns, chn_sm), conv_tri(chns, sim_sm)


def sharpen_image(padded: np.ndarray) -> np.ndarray:
    """`convTri(rgbConvert(Ipad, 'rgb'), 1)`: the float32 RGB image the sharpen step compares colours in."""
    return conv_tri(padded.astype(F32) * (F32(1) / F32(255)), 1)


# ----------------------------------------------------------------------------- forest


def _feature_offsets(model: SedModel, chn_h: int, chn_w: int, n_chns: int) -> tuple[np.ndarray, np.ndarray]:
    # Flat offsets (into [chnsReg | chnsSim | zeros], each chn_h x chn_w x n_chns, C order)
    # of each feature's two reads relative to the patch corner: a channel
    # feature is reg - 0, a self-similarity feature sim[cell i] - sim[cell j].
    opts = model.opts
    w = int(opts["imWidth"]) // int(opts["shrink"])
    m = int(opts["nCells"])
    n_reg = chn_h * chn_w * n_chns
    n_chn_ftrs = w * w * n_chns
    f = np.arange(n_chn_ftrs)
    z, rest = np.divmod(f, w * w)
    col, row = np.divmod(rest, w)
    reg = (row * chn_w + col) * n_chns + z
    first = [reg]
    second = [2 * n_reg + reg]
    s = int(w / m / 2.0 + 0.5)
    locs = np.array([int((i + 1) * (w + 2 * s - 1) / (m + 1.0) - s + 0.5) for i in range(m)])
    cells_i, cells_j = np.triu_indices(m * m, k=1)
    zz = np.repeat(np.arange(n_chns), cells_i.size)
    ci = np.tile(cells_i, n_chns)
    cj = np.tile(cells_j, n_chns)
    first.append(n_reg + (locs[ci % m] * chn_w + locs[ci // m]) * n_chns + zz)
    second.append(n_reg + (locs[cj % m] * chn_w + locs[cj // m]) * n_chns + zz)
    return np.concatenate(first), np.concatenate(second)


def _apply_forest(model: SedModel, chns_reg: np.ndarray, chns_sim: np.ndarray, h1: int, w1: int, n_trees_eval: int) -> np.ndarray:
    # edgesDetectMex's first loop, for all (patch, tree) pairs at once, one tree level per pass.
    chn_h, chn_w, n_chns = chns_reg.shape
    stride = int(model.opts["stride"])
    shrink = int(model.opts["shrink"])
    first, second = _feature_offsets(model, chn_h, chn_w, n_chns)
    node_first = first[model.fids]
    node_second = second[model.fids]
    values = np.concatenate([chns_reg.ravel(), chns_sim.ravel(), np.zeros(chns_reg.size, dtype=F32)])
    rows = np.arange(h1)[:, None, None]
    cols = np.arange(w1)[None, :, None]
    slots = np.arange(n_trees_eval)[None, None, :]
    tree = ((rows + cols) % 2 * n_trees_eval + slots) % model.n_trees
    node = (tree * model.n_nodes).astype(np.int64).ravel()
    corner = np.broadcast_to((rows * stride // shrink) * chn_w * n_chns + (cols * stride // shrink) * n_chns, tree.shape)
    corner = corner.astype(np.int64).ravel()
    active = np.flatnonzero(~model.is_leaf[node])
    while active.size:
        k = node[active]
        base = corner[active]
        ftr = values[node_first[k] + base] - values[node_second[k] + base]
        k = model.left[k] + (~(ftr < model.thrs[k])).astype(np.int64)
        node[active] = k
        active = active[~model.is_leaf[k]]
    return node.reshape(h1, w1, n_trees_eval)


# ----------------------------------------------------------------------------- edge maps


def _neighbours(g: int) -> np.ndarray:
    # edgesDetectMex's N: per pixel (column-major in g x g) its left, right, up, down neighbour, itself at the border.
    i = np.arange(g * g)
    col, row = np.divmod(i, g)
    return np.stack(
        [np.where(col > 0, i - g, i), np.where(col < g - 1, i + g, i), np.where(row > 0, i - 1, i), np.where(row < g - 1, i + 1, i)],
        axis=1,
    )


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # (owner, position) of every element of the concatenated ranges [start, start+length).
    owner = np.repeat(np.arange(starts.size), lengths)
    offsets = np.cumsum(lengths) - lengths
    position = np.arange(owner.size) - offsets[owner] + starts[owner]
    return owner, position


def _edges_plain(model: SedModel, leaves: np.ndarray, out_base: np.ndarray, out_w: int, out_size: int) -> np.ndarray:
    # sharpen = 0: +1 at each boundary pixel (band 0) of each leaf's segmentation.
    g = int(model.opts["gtWidth"])
    nb = model.n_bands
    starts = model.e_bnds[leaves * nb]
    lengths = model.e_bnds[leaves * nb + 1] - starts
    owner, position = _ragged(starts, lengths)
    pix = model.e_bins[position]
    col, row = np.divmod(pix, g)
    target = out_base[owner] + row * out_w + col
    return np.bincount(target, minlength=out_size).astype(F32)


_SHARPEN_CHUNK = 4096  # (patch, tree) lookups relabelled together: their arrays stay in the CPU cache


@dataclass(frozen=True)
class _Walks:
    """The relabelling walk of each distinct leaf of an image (a property of the leaf).

    Leaf `leaves[u]` walks entries `start[u] .. start[u] + length[u]` (its first
    `sharpen` bands, eBins order). Per entry: its pixel, its 4 neighbours' pixels
    (left, right, up, down), their original labels, whether each is walked
    earlier (then it shows its relabelled value), and its level: 1 + the highest
    level among its earlier-walked neighbours (0 without any), so that all
    entries of one level can be relabelled at once, in increasing level.
    """

    leaves: np.ndarray
    start: np.ndarray
    length: np.ndarray
    pix: np.ndarray  # (W,)
    nbr: np.ndarray  # (W,) 4 x uint8 packed in a uint32 (one take gathers all four)
    original: np.ndarray  # (W,) 4 x uint8 packed
    earlier: np.ndarray  # (W,) 4 x bool packed
    level: np.ndarray  # (W,) int16


def _leaf_walks(model: SedModel, leaves: np.ndarray, sharpen: int) -> _Walks:
    g = int(model.opts["gtWidth"])
    nb = model.n_bands
    b0 = model.e_bnds[leaves * nb]
    length = model.e_bnds[leaves * nb + sharpen] - b0
    owner, position = _ragged(b0, length)
    pix = model.e_bins.take(position)
    start = np.cumsum(length) - length
    step = np.arange(owner.size) - start.take(owner)
    step_map = np.full(leaves.size * g * g, -1, dtype=np.int64)
    step_map[owner * (g * g) + pix] = step
    nbr = _neighbours(g).T[:, pix]
    nbr_step = step_map.take(owner * (g * g) + nbr)
    earlier = (nbr_step >= 0) & (nbr_step < step)
    original = model.segs.reshape(-1).take(leaves.take(owner) * (g * g) + nbr)
    dep = np.where(earlier, start.take(owner) + nbr_step, -1)
    level = np.zeros(owner.size, dtype=np.int64)
    order = np.argsort(step, kind="stable")
    ends = np.cumsum(np.bincount(step)) if step.size else np.zeros(0, dtype=np.int64)
    for j in range(1, ends.size):  # walk order is a topological order: one pass over the steps
        at = order[ends[j - 1] : ends[j]]
        deps = dep[:, at]
        level[at] = np.where(deps >= 0, level.take(np.maximum(deps, 0)), -1).max(axis=0) + 1
    def packed(four: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(four.T.astype(np.uint8)).view(np.uint32).ravel()

    return _Walks(leaves, start, length, pix, packed(nbr), packed(original), packed(earlier), level.astype(np.int16))


def _unpack(packed: np.ndarray) -> np.ndarray:
    # uint32 entries -> a 4 x P uint8 view (one row per neighbour)
    return packed.view(np.uint8).reshape(-1, 4).T


def _edges_sharpened(
    model: SedModel, leaves: np.ndarray, img_base: np.ndarray, out_base: np.ndarray, image: np.ndarray, out_w: int, out_size: int, sharpen: int
) -> np.ndarray:
    # edgesDetectMex's sharpening for every (patch, tree) whose leaf has more than one segment.
    keep = model.n_segs[leaves] > 1
    leaves, img_base, out_base = leaves[keep], img_base[keep], out_base[keep]
    if leaves.size == 0:
        return np.zeros(out_size, dtype=F32)
    walks = _leaf_walks(model, np.unique(leaves), sharpen)
    targets = [
        _sharpen_chunk(model, walks, leaves[i : i + _SHARPEN_CHUNK], img_base[i : i + _SHARPEN_CHUNK], out_base[i : i + _SHARPEN_CHUNK], image, out_w, sharpen)
        for i in range(0, leaves.size, _SHARPEN_CHUNK)
    ]
    return np.bincount(np.concatenate(targets), minlength=out_size).astype(F32)


def _segment_means(labels: np.ndarray, colour_at, g: int, slots: int, n_colours: int) -> list[np.ndarray]:
    # Each segment's mean colour over every other pixel of the patch, summed in
    # float32 column by column as edgesDetectMex does (so equal colours give equal
    # means); one flat (lookup * slots + segment) array per colour channel. An empty
    # segment (0/0: NaN in C, never the nearest) and the spare slot standing for
    # label 255 get +inf.
    n = labels.shape[0]
    row = np.arange(n) * slots
    sums = [np.zeros(n * slots, dtype=F32) for _ in range(n_colours)]
    counts = np.zeros(n * slots, dtype=F32)
    for ci in range(0, g, 2):
        for ri in range(0, g, 2):
            p = ci * g + ri
            at = row + labels[:, p]  # distinct per lookup: plain += is exact here
            counts[at] += F32(1)
            for z in range(n_colours):
                sums[z][at] += colour_at(p, z)
    means = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for z in range(n_colours):
            mean = sums[z] / counts
            mean[~np.isfinite(mean)] = np.inf
            mean[row + slots - 1] = np.inf
            means.append(mean)
    return means


def _sharpen_chunk(
    model: SedModel, walks: _Walks, leaves: np.ndarray, img_base: np.ndarray, out_base: np.ndarray, image: np.ndarray, out_w: int, sharpen: int
) -> np.ndarray:
    # The toolbox walks the first `sharpen` bands of each leaf's mask pixel by pixel
    # (eBins order); each pixel takes the label, among its 4 neighbours' (left,
    # right, up, down: the first on ties), whose segment mean colour is nearest,
    # seeing the neighbours already relabelled. Every band pixel is relabelled once,
    # so a neighbour shows its FINAL label if it comes earlier in the walk and its
    # original one otherwise: a recursion over a DAG. It is solved exactly here by
    # levels: a pixel's level is 1 + the highest level among its earlier walked
    # neighbours (0 without any), a property of the leaf; all pixels of one level, in
    # every patch of the chunk, are relabelled at once, in increasing level. Returns
    # the flat output indices of the pixels of the first sharpen+1 bands that end up
    # on a segment boundary. Arrays over the 4 neighbours are 4 x P (one row each).
    g = int(model.opts["gtWidth"])
    nb = model.n_bands
    n = leaves.size
    n_colours = image.shape[2]
    img_w = image.shape[1]
    channels = [np.ascontiguousarray(image[:, :, z]).ravel() for z in range(n_colours)]
    pix_ids = np.arange(g * g)
    pix_col, pix_row = np.divmod(pix_ids, g)
    pix_offset = pix_row * img_w + pix_col  # offset of each patch pixel from the patch corner in one channel
    neighbours = _neighbours(g).T.copy()  # (4, g*g)
    corner = img_base // n_colours  # the patch corner in one channel

    labels = model.segs[leaves]  # (n, g*g) uint8, a copy
    flat_labels = labels.reshape(-1)
    n_seg = int(model.n_segs[leaves].max())
    slots = n_seg + 1
    means = _segment_means(labels, lambda p, z: channels[z].take(corner + pix_offset[p]), g, slots, n_colours)
    label_base = np.arange(n) * (g * g)
    mean_base = np.arange(n) * slots
    # a lookup with an empty segment can hit the -1 (label 255) case even with equal candidates
    in_leaf = np.arange(n_seg) < model.n_segs[leaves][:, None]
    has_empty = (~np.isfinite(means[0].reshape(n, slots)[:, :n_seg]) & in_leaf).any(axis=1)

    b0 = model.e_bnds[leaves * nb]
    row = np.searchsorted(walks.leaves, leaves)
    owner, entry = _ragged(walks.start.take(row), walks.length.take(row))  # (lookup, walk entry) pairs
    # All per-pair arrays in level order, so that each level is a contiguous slice.
    # A pixel reads an earlier-walked neighbour's label as it is now in `flat_labels`
    # (final: relabelled at a lower level) and any other neighbour's original label.
    level = walks.level.take(entry)
    order = np.argsort(level, kind="stable")  # a radix sort
    ends = np.cumsum(np.bincount(level))
    entry = entry.take(order)
    owner_sorted = owner.take(order)
    pix_sorted = walks.pix.take(entry)
    nbr_sorted = _unpack(walks.nbr.take(entry))
    original = _unpack(walks.original.take(entry))
    earlier = _unpack(walks.earlier.take(entry)).view(bool)
    lookup_labels = label_base.take(owner_sorted)
    own_at = lookup_labels + pix_sorted
    pixel_at = corner.take(owner_sorted) + pix_offset.take(pix_sorted)
    colour = [channels[z].take(pixel_at) for z in range(n_colours)]  # each walked pixel's colour
    owner_means = mean_base.take(owner_sorted)
    empty_sorted = has_empty.take(owner_sorted)
    big = F32(1e10)

    def choose(lo: int, hi: int, cand: np.ndarray) -> np.ndarray:
        # equal candidates (most pixels away from the boundary) need no colour distance
        best = cand[0].copy()
        mixed = (cand[1] != best) | (cand[2] != best) | (cand[3] != best) | empty_sorted[lo:hi]
        sel = np.flatnonzero(mixed)
        if sel.size == 0:
            return best
        c = np.minimum(cand[:, sel], n_seg).astype(np.int64)
        where = owner_means[lo:hi].take(sel) + c  # (4, m)
        err = None
        for z in range(n_colours):
            d = means[z].take(where) - colour[z][lo:hi].take(sel)
            err = d * d if err is None else err + d * d
        best_err, pick = err[0], c[0]
        for q in range(1, 4):  # the first of equal distances wins, like the toolbox's strict <
            better = err[q] < best_err
            best_err = np.minimum(err[q], best_err)
            pick = np.where(better, c[q], pick)
        best[sel] = np.where(best_err < big, pick, 255)
        return best

    lo = 0
    for hi in ends:
        current = flat_labels.take(lookup_labels[lo:hi] + nbr_sorted[:, lo:hi])
        cand = np.where(earlier[:, lo:hi], current, original[:, lo:hi])
        flat_labels[own_at[lo:hi]] = choose(lo, hi, cand)
        lo = hi

    out_len = model.e_bnds[leaves * nb + sharpen + 1] - b0
    owner, position = _ragged(b0, out_len)
    pix = model.e_bins.take(position)
    at = label_base.take(owner) + pix
    mine = flat_labels.take(at)
    edge = np.zeros(pix.size, dtype=bool)
    for q in range(4):
        edge |= flat_labels.take(at + (neighbours[q] - pix_ids).take(pix)) != mine
    out_offset = pix_row * out_w + pix_col
    return out_base.take(owner[edge]) + out_offset.take(pix[edge])


def _detect_single_scale(image: np.ndarray, model: SedModel, sharpen: int, n_trees_eval: int) -> tuple[np.ndarray, np.ndarray]:
    opts = model.opts
    image_width, g, stride = int(opts["imWidth"]), int(opts["gtWidth"]), int(max(opts["stride"], opts["shrink"]))
    h, w = image.shape[:2]
    padded = edges_pad(image, image_width)
    chns_reg, chns_sim = edges_channels(padded, opts)
    hp, wp = padded.shape[:2]
    h1 = math.ceil((hp - image_width) / stride)
    w1 = math.ceil((wp - image_width) / stride)
    h2, w2 = h1 * stride + g, w1 * stride + g
    inds = _apply_forest(model, chns_reg, chns_sim, h1, w1, n_trees_eval)
    rows = np.arange(h1)[:, None, None] * stride
    cols = np.arange(w1)[None, :, None] * stride
    shape = (h1, w1, n_trees_eval)
    out_base = np.broadcast_to(rows * w2 + cols, shape).ravel()
    leaves = inds.ravel()
    if sharpen == 0:
        raw = _edges_plain(model, leaves, out_base, w2, h2 * w2)
    else:
        isharp = sharpen_image(padded)
        off = (image_width - g) // 2
        img_base = np.broadcast_to(((rows + off) * wp + (cols + off)) * 3, shape).ravel()
        raw = _edges_sharpened(model, leaves, img_base, out_base, isharp, w2, h2 * w2, sharpen)
    raw = raw.reshape(h2, w2)
    r = g // 2
    t = stride**2 / g**2 / n_trees_eval * {0: 2.0, 1: 1.8}.get(sharpen, 1.66)
    edges = conv_tri(raw[r : r + h, r : r + w] * F32(t), 1)
    return edges, inds


def edges_detect(
    image: np.ndarray,
    model: SedModel,
    sharpen: int | None = None,
    n_trees_eval: int | None = None,
    return_inds: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """`E = edgesDetect(I, model)` (multiscale 0, nms 0) of a uint8 HxWx3 RGB image: HxW float32 edge strength.

    `sharpen` and `n_trees_eval` default to the model's options (the
    release set sharpen 2, nTreesEval 4). With `return_inds`, also the leaf
    indices `inds` (h1 x w1 x nTreesEval, global node index tree*nNodes +
    node), as edgesDetectMex returns them.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise CqdError(f"edges_detect needs a uint8 HxWx3 RGB image, got {img.dtype} {img.shape}")
    sharpen = int(model.opts["sharpen"] if sharpen is None else sharpen)
    n_eval = int(model.opts["nTreesEval"] if n_trees_eval is None else n_trees_eval)
    n_eval = min(n_eval, model.n_trees)
    if sharpen < 0 or n_eval < 1:
        raise CqdError(f"edges_detect: sharpen={sharpen} must be >= 0 and nTreesEval={n_eval} >= 1")
    sharpen = min(sharpen, model.n_bands - 1)  # edgesDetectMex: "Model supports sharpening of at most ..."
    edges, inds = _detect_single_scale(img, model, sharpen, n_eval)
    return (edges, inds) if return_inds else edges
