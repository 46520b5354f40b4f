"""The channels-first, blocked `matconvnet-cpu` LRN gives exactly the bits of the first, channel-slice implementation.

`_reference_lrn` below is the implementation the parity references were
first matched with (MatConvNet 1.0-beta18's `normalize_cpu.cpp`, loop for
loop on NCHW channel slices), kept here verbatim as the yardstick: the
faster one in `cqd_port.nn.lrn` must equal it with `torch.equal`, forward
and backward, in float32 and float64, NCHW and channels-last (output and
gradient strides included: the next layer's kernels may depend on them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from cqd_port.layout import mcn_to_nchw
from cqd_port.nn.lrn import fast_pow, lrn

PACKAGED = Path(__file__).resolve().parents[1] / "parity" / "reference"


def _reference_fast_pow(x: torch.Tensor, y: float) -> torch.Tensor:
    int_dtype, bits, bias = (torch.int32, 23, 127) if x.dtype == torch.float32 else (torch.int64, 52, 1023)
    dt = x.dtype

    def c(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=dt)

    plog3, plog2, plog1 = c(0.164042561333445), c(-0.606737602222409), c(1.442695040888963)
    pexp3, pexp2, pexp1 = c(0.079441541679836), c(0.227411277760219), c(0.693147180559945)
    offset = bias << bits
    ix = x.contiguous().view(int_dtype) - offset
    imx = (ix & ((1 << bits) - 1)) + offset
    fx = (ix >> bits).to(dt)
    mx = imx.view(dt) - 1
    mx2 = mx * mx
    mx3 = mx2 * mx
    t = c(y) * (((fx + mx * plog1) + mx2 * plog2) + mx3 * plog3)
    fz = torch.floor(t)
    rz = t - fz
    rz2 = rz * rz
    rz3 = rz2 * rz
    tz = ((fz + rz * pexp1) + rz2 * pexp2) + rz3 * pexp3
    zi = (tz * float(1 << bits)).to(int_dtype) + offset
    return zi.view(dt)


def _reference_window_sum(sq: torch.Tensor, before: int, after: int) -> torch.Tensor:
    channels = sq.shape[1]
    acc = torch.zeros_like(sq[:, 0])
    out = torch.empty_like(sq)
    for t in range(-after, channels):
        tm, tp = t - before - 1, t + after
        if tm >= 0 and tp < channels:
            acc = acc + (sq[:, tp] - sq[:, tm])
        elif tm < 0 and tp < channels:
            acc = acc + sq[:, tp]
        elif tm >= 0 and tp >= channels:
            acc = acc - sq[:, tm]
        if t >= 0:
            out[:, t] = acc
    return out


class _ReferenceLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, depth, kappa, alpha, beta):  # type: ignore[override]
        dt = x.dtype
        kappa_t, alpha_t, beta_t = (torch.tensor(v, dtype=dt) for v in (kappa, alpha, beta))
        before = (depth - 1) // 2
        after = depth - 1 - before
        acc = _reference_window_sum(x * x, before, after)
        scale = kappa_t + alpha_t * acc
        lb = _reference_fast_pow(scale, float(-beta_t))
        ctx.save_for_backward(x, scale, lb)
        ctx.params = (depth, alpha_t, beta_t)
        return x * lb

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, lb = ctx.saved_tensors
        depth, alpha_t, beta_t = ctx.params
        before = (depth - 1) // 2
        after = depth - 1 - before
        channels = x.shape[1]
        ab2 = (2 * alpha_t) * beta_t
        temp1 = grad * lb
        temp2 = ((x * ab2) * temp1) / scale
        integral = temp2.clone()
        for t in range(1, channels):
            integral[:, t] += integral[:, t - 1]
        dx = torch.empty_like(x)
        for t in range(channels):
            q1 = t - after - 1
            q2 = min(t + before, channels - 1)
            window = integral[:, q2] - integral[:, q1] if q1 >= 0 else integral[:, q2]
            dx[:, t] = temp1[:, t] - window * x[:, t]
        return dx, None, None, None, None


def _both(x: torch.Tensor, param: list[float], grad: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    ours_in, ref_in = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ours = lrn(ours_in, param, "matconvnet-cpu")
    ref = _ReferenceLRN.apply(ref_in, int(param[0]), *param[1:])
    ours.backward(grad)
    ref.backward(grad)
    return (ours, ours_in.grad), (ref, ref_in.grad)


def _assert_identical(ours: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> None:
    for got, want in zip(ours, ref):
        assert torch.equal(got, want), float((got.double() - want.double()).abs().max())
        assert got.stride() == want.stride()


PARAMS = [[5, 2.0, 1e-4, 0.75], [4, 1.0, 0.3, 0.5], [1, 1.0, 0.5, 0.75], [7, 0.5, 0.1, 1.2], [9, 1.0, 2e-2, 0.75]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (3, 13, 6, 5), (1, 1, 4, 4), (4, 3, 1, 1), (2, 96, 9, 7)])
def test_matconvnet_cpu_lrn_bits_equal_the_reference(shape, channels_last, dtype) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen, dtype=dtype) * 20
    grad = torch.randn(shape, generator=gen, dtype=dtype)
    if channels_last:
        x, grad = x.contiguous(memory_format=torch.channels_last), grad.contiguous(memory_format=torch.channels_last)
    for param in PARAMS:
        ours, ref = _both(x, param, grad)
        _assert_identical(ours, ref)


def test_matconvnet_cpu_lrn_bits_on_a_block_boundary(monkeypatch) -> None:
    # several fast_pow blocks, the last one partial
    monkeypatch.setattr(sys.modules["cqd_port.nn.lrn"], "_BLOCK", 100)
    x = torch.randn(2, 11, 7, 5, generator=torch.Generator().manual_seed(3)) * 50
    ours, ref = _both(x, [5, 2.0, 1e-4, 0.75], torch.ones_like(x))
    _assert_identical(ours, ref)


@pytest.mark.parametrize("name", ["ops_normalize.mat", "ops_normalize_exactpow.mat"])
def test_matconvnet_cpu_lrn_bits_on_the_parity_references(parity_dir, name) -> None:
    files = [f for f in (parity_dir / name, PACKAGED / name) if f.exists()]
    assert files, f"{name} missing"
    for path in files:
        cases = [c[0, 0] for c in scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)["cases"].ravel()]
        assert len(cases) >= 5
        for case in cases:
            x = mcn_to_nchw(case.x)
            param = [float(v) for v in np.asarray(case.param).ravel()]
            ours, ref = _both(x, param, mcn_to_nchw(case.dzdy))
            _assert_identical(ours, ref)


def test_fast_pow_bits_equal_the_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(1000, generator=gen, dtype=dtype) * 1e3 + 1e-3
        for y in (-0.75, -0.5, -1.2, 0.3):
            assert torch.equal(fast_pow(x, y), _reference_fast_pow(x, y))
