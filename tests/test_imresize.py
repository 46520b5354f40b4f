"""MATLAB imresize: every reference case, uint8 per-pass rounding, the torch port."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io as sio
import torch

from cqd_port.errors import CqdError
from cqd_port.imresize import imresize, imresize_torch, output_shape, resize_weights

CASE_NAMES = [
    "down_down_small_aa", "down_down_small_noaa", "down_down_aa", "down_down_noaa",
    "down_down_irregular_aa", "down_down_irregular_noaa", "up_up_topleft_noaa",
    "up_up_bottomright_noaa", "up_up_irregular_noaa", "up_up_irregular_aa",
    "down_down_x2_aa", "down_down_x4_aa",
    "up_bilinear_double_50x50x3_to_224x224", "up_bicubic_double_50x50x3_to_224x224",
    "up_nearest_double_50x50x3_to_224x224", "up_bilinear_double_50x50x1_to_224x224",
    "up_bicubic_double_50x50x1_to_224x224", "up_nearest_double_50x50x1_to_224x224",
    "up_bilinear_double_13x9x3_to_40x31", "up_bicubic_double_13x9x3_to_40x31",
    "up_nearest_double_13x9x3_to_40x31",
]  # fmt: skip


@pytest.fixture(scope="module")
def cases(imresize_cases_path):
    mat = sio.loadmat(imresize_cases_path, squeeze_me=False, struct_as_record=False)
    out = {}
    for cell in mat["cases"].ravel():
        s = cell[0, 0]
        out[str(s.name[0])] = dict(
            input=np.asarray(s.input, dtype=np.float64),
            size=[int(v) for v in np.asarray(s.size).ravel()],
            method=str(s.method[0]),
            antialiasing=bool(np.asarray(s.antialiasing).ravel()[0]),
            output=np.asarray(s.output, dtype=np.float64),
        )
    return out


def test_every_reference_case_is_tested(cases):
    # If the reference file gains a case, this list (and so the parametrisation) must follow.
    assert sorted(cases) == sorted(CASE_NAMES)


def _nchw(img: np.ndarray) -> torch.Tensor:
    img = img if img.ndim == 3 else img[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).cpu().numpy()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_numpy_matches_matlab(cases, name):
    c = cases[name]
    out = imresize(c["input"], size=c["size"], method=c["method"], antialiasing=c["antialiasing"])
    assert out.dtype == np.float64
    assert out.shape == c["output"].shape
    assert np.abs(out - c["output"]).max() < 1e-9


@pytest.mark.parametrize("name", CASE_NAMES)
def test_torch_matches_matlab(cases, name):
    c = cases[name]
    ref = c["output"] if c["output"].ndim == 3 else c["output"][:, :, None]
    batch = _nchw(c["input"])
    out64 = imresize_torch(batch, c["size"], method=c["method"], antialiasing=c["antialiasing"])
    assert out64.dtype == torch.float64
    assert np.abs(_hwc(out64) - ref).max() < 1e-9
    out32 = imresize_torch(batch.float(), c["size"], method=c["method"], antialiasing=c["antialiasing"])
    assert out32.dtype == torch.float32
    assert np.abs(_hwc(out32).astype(np.float64) - ref).max() < 1e-4


# --- an independent, loop-based transcription of MATLAB's contributions() ---


def _loop_resize_1d(signal: np.ndarray, out_len: int, scale: float, kernel, width: float, aa: bool) -> np.ndarray:
    n = len(signal)
    if scale < 1 and aa:
        h = lambda x: scale * kernel(scale * x)  # noqa: E731
        width = width / scale
    else:
        h = kernel
    result = np.zeros(out_len)
    for k in range(1, out_len + 1):
        u = k / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        js = [left + t for t in range(int(math.ceil(width)) + 2)]
        ws = [h(u - j) for j in js]
        total = sum(ws)
        for j, w in zip(js, ws):
            m = (j - 1) % (2 * n)  # mirror: [1..n, n..1] repeated
            src = m if m < n else 2 * n - 1 - m
            result[k - 1] += w / total * signal[src]
    return result


def _lanczos3(x):
    if x == 0:
        return 1.0
    return (math.sin(math.pi * x) * math.sin(math.pi * x / 3) + 2.220446049250313e-16) / (
        math.pi**2 * x * x / 3 + 2.220446049250313e-16
    ) * (abs(x) < 3)


def _cubic(x):
    a = abs(x)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


@pytest.mark.parametrize(
    "method,kernel,width,in_len,out_len,aa",
    [
        ("lanczos3", _lanczos3, 6.0, 17, 7, True),
        ("lanczos3", _lanczos3, 6.0, 9, 23, True),
        ("bicubic", _cubic, 4.0, 5, 2, True),  # support wider than the signal: mirrored twice
        ("bicubic", _cubic, 4.0, 31, 13, False),
    ],
)
def test_weights_match_loop_transcription(method, kernel, width, in_len, out_len, aa):
    rng = np.random.default_rng(in_len * 100 + out_len)
    signal = rng.random(in_len)
    scale = out_len / in_len
    expected = _loop_resize_1d(signal, out_len, scale, kernel, width, aa)
    got = resize_weights(in_len, out_len, scale, method, aa) @ signal
    assert np.abs(got - expected).max() < 1e-12
    assert np.allclose(resize_weights(in_len, out_len, scale, method, aa).sum(axis=1), 1.0)


# --- uint8: round and clip after each pass ---


def _overshoot_image() -> np.ndarray:
    # Hard 0/255 stripes: bicubic enlargement overshoots above 255 and below 0
    # in the first pass, so clipping before the second pass changes the result.
    img = np.zeros((6, 7), dtype=np.uint8)
    img[:, 1::3] = 255
    img[1::3, :] = 255 - img[1::3, :]
    return img


def test_uint8_rounds_and_clips_after_each_pass():
    img = _overshoot_image()
    out = imresize(img, size=[13, 17])
    assert out.dtype == np.uint8 and out.shape == (13, 17)
    # Per-pass semantics written out with the (MATLAB-validated) pass matrices; rows first (smaller scale).
    wr = resize_weights(6, 13, 13 / 6, "bicubic", True)
    wc = resize_weights(7, 17, 17 / 7, "bicubic", True)
    step1 = np.clip(np.floor(wr @ img.astype(np.float64) + 0.5), 0, 255)
    step2 = np.clip(np.floor(step1 @ wc.T + 0.5), 0, 255)
    assert np.array_equal(out, step2.astype(np.uint8))
    # Rounding/clipping only at the end gives a different image: the test has teeth.
    final_only = np.clip(np.floor(imresize(img.astype(np.float64), size=[13, 17]) + 0.5), 0, 255).astype(np.uint8)
    assert not np.array_equal(out, final_only)


def test_uint8_rounds_half_away_from_zero():
    # Two pixels 0 and 1 averaged by a 2x bilinear shrink give exactly 0.5: MATLAB rounds it to 1 (numpy's round gives 0).
    img = np.array([[0, 1]], dtype=np.uint8)
    assert imresize(img, size=[1, 1], method="bilinear")[0, 0] == 1


def test_torch_uint8_matches_numpy_uint8():
    rng = np.random.default_rng(3)
    imgs = [np.dstack([_overshoot_image(), rng.integers(0, 256, (6, 7), dtype=np.uint8)]) for _ in range(2)]
    batch = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    for size in ([13, 17], [3, 4], [5, 11]):
        got = imresize_torch(batch, size)
        assert got.dtype == torch.uint8
        for i, img in enumerate(imgs):
            assert np.array_equal(got[i].permute(1, 2, 0).numpy(), imresize(img, size=size))


def test_double_is_not_clipped():
    out = imresize(_overshoot_image().astype(np.float64), size=[13, 17])
    assert out.max() > 255 and out.min() < 0


# --- size/scale semantics ---


def test_size_with_nan_keeps_aspect_like_matlab():
    assert output_shape((375, 500), size=[224, float("nan")]) == ((224, 299), (224 / 375, 224 / 375))
    assert output_shape((375, 500), size=[None, 224])[0] == (168, 224)
    img = np.random.default_rng(0).random((30, 40))
    a = imresize(img, size=[15, float("nan")])
    assert a.shape == (15, 20)
    # Same numbers as the explicit scale, because the scale is out/in of the given dimension.
    assert np.abs(a - imresize(img, scale=0.5)).max() < 1e-12


def test_scale_argument_uses_ceil_for_the_size():
    assert imresize(np.zeros((10, 7)), scale=0.5).shape == (5, 4)
    assert imresize(np.zeros((10, 7, 3), dtype=np.uint8), scale=(2, 1)).shape == (20, 7, 3)


def test_smaller_scale_dimension_goes_first():
    # Shrinking columns 8 -> 2 while enlarging rows 3 -> 9: columns go first. Visible on uint8 via per-pass rounding.
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    wr = resize_weights(3, 9, 3.0, "bicubic", True)
    wc = resize_weights(8, 2, 0.25, "bicubic", True)
    q = lambda x: np.clip(np.floor(x + 0.5), 0, 255)  # noqa: E731
    cols_first = q(wr @ q(img @ wc.T))
    rows_first = q(q(wr @ img) @ wc.T)
    assert not np.array_equal(cols_first, rows_first)  # the order is observable here
    assert np.array_equal(imresize(img, size=[9, 2]), cols_first.astype(np.uint8))


def test_nearest_defaults_to_no_antialiasing_like_matlab():
    img = np.arange(16, dtype=np.float64).reshape(4, 4)
    out = imresize(img, size=[2, 2], method="nearest")
    # Centres at u = 1.5, 3.5 -> the box picks source pixels 2 and 4 (1-based): pure selection.
    assert np.array_equal(out, img[np.ix_([1, 3], [1, 3])])
    smoothed = imresize(img, size=[2, 2], method="nearest", antialiasing=True)
    assert not np.array_equal(smoothed, out)


def test_float32_and_channels_preserved():
    img = np.random.default_rng(1).random((9, 11, 4)).astype(np.float32)
    out = imresize(img, size=[5, 6], method="bilinear")
    assert out.dtype == np.float32 and out.shape == (5, 6, 4)
    ref = imresize(img.astype(np.float64), size=[5, 6], method="bilinear")
    assert np.abs(out - ref).max() < 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=[4, 4], method="cubic-spline"),
        dict(size=None),
        dict(size=[4, 4], scale=0.5),
        dict(size=[float("nan"), float("nan")]),
        dict(size=[0, 3]),
        dict(scale=-1.0),
    ],
)
def test_bad_arguments_raise_cqd_error(kwargs):
    with pytest.raises(CqdError):
        imresize(np.zeros((8, 8)), **kwargs)


def test_bad_dtype_and_shape_raise_cqd_error():
    with pytest.raises(CqdError, match="dtype"):
        imresize(np.zeros((8, 8), dtype=np.int64), size=[4, 4])
    with pytest.raises(CqdError, match="HxW"):
        imresize(np.zeros((2, 8, 8, 3)), size=[4, 4])
    with pytest.raises(CqdError, match="N x C x H x W"):
        imresize_torch(torch.zeros(8, 8), [4, 4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_cuda_matches_cpu(cases):
    c = cases["down_down_irregular_aa"]
    batch = _nchw(c["input"])
    cpu = imresize_torch(batch, c["size"])
    gpu = imresize_torch(batch.cuda(), c["size"])
    assert gpu.is_cuda
    assert torch.abs(gpu.cpu() - cpu).max().item() < 1e-9
    u8 = torch.from_numpy(_overshoot_image())[None, None].repeat(2, 3, 1, 1)
    assert torch.equal(imresize_torch(u8.cuda(), [13, 17]).cpu(), imresize_torch(u8, [13, 17]))
