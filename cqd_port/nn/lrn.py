"""`vl_nnnormalize`: MatConvNet's cross-channel local response normalisation.

    y_k = x_k / (kappa + alpha * S_k) ^ beta,
    S_k = sum of x_j^2 over j in [k - floor((N-1)/2), k + ceil((N-1)/2)] clipped to [0, C-1].

Differences from PyTorch's `nn.LocalResponseNorm`: alpha is *not* divided
by N, the window of an even N is asymmetric (one more channel after k than
before), and the window is clipped at the ends (PyTorch zero-pads, which is
the same sum but it averages). Two power functions exist in MatConvNet
1.0-beta18 and both are offered here (see ../shared/parity/FORMAT.md):

- `mode="exact"` (default): `L ** -beta` with a true power, as the GPU kernel
  (`normalize_gpu.cu`, `powf`) that the CQD experiments ran on.
- `mode="matconvnet-cpu"`: the CPU kernel `normalize_cpu.cpp`, compiled with
  `VL_NNNORMALIZE_FAST`, whose `fast_pow(x, y)` approximates `2^(y log2 x)`
  with float32 bit manipulation: the exponent field of x gives the integer
  part of log2 x, a cubic in the mantissa (coefficients 1.442695040888963,
  -0.606737602222409, 0.164042561333445) the fraction; the result's integer
  part goes back into the exponent field and a cubic (0.693147180559945,
  0.227411277760219, 0.079441541679836) gives the mantissa, the sum being
  scaled by 2^23 and truncated to an integer (C cast, toward zero). The
  kernel also accumulates S as a running sum over channels (adding the
  entering and removing the leaving square) and its backward pass uses the
  approximated `L^-beta` and `L^-beta / L` with a running channel integral.
  Everything is reproduced in float32 in the same order (relative error
  about 1e-7 against the MEX output). The channel loops run on a
  channels-first copy (each channel one contiguous block, not a strided
  slice of a channels-last activation) and `fast_pow` runs in cache-sized
  blocks with in-place steps: the same operations on the same values, so
  the same bits (tests/test_lrn_cpu_identical.py), at about the exact
  mode's cost (benchmarks/bench_lrn.py).

Both are `torch.autograd.Function`s with explicit backward passes; the
exact mode's backward is the analytic derivative

    dx_q = g_q L_q^-beta - 2 alpha beta x_q sum_{t : q in window(t)} g_t x_t L_t^(-beta-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from cqd_port.errors import CqdError
from cqd_port.layout import is_channels_last

LRN_MODES = ("exact", "matconvnet-cpu")


def check_lrn_mode(mode: str) -> str:
    """`mode` if it is one of `LRN_MODES`, else `CqdError` naming it and the choices."""
    if mode not in LRN_MODES:
        raise CqdError(f"unknown LRN mode '{mode}' (use one of: {', '.join(LRN_MODES)})")
    return mode


def _window_offsets(depth: int) -> tuple[int, int]:
    """Channels before and after k in the window: floor((N-1)/2) and ceil((N-1)/2)."""
    before = (depth - 1) // 2
    return before, depth - 1 - before


def channel_window_sum(v: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out[:, k] = sum of v[:, j] for j in [k - before, k + after] clipped to the channels.

    A few shifted adds over the channel axis (N - 1 passes for a window of
    N); much cheaper than pooling or a banded matrix product on CPU and free
    of the cancellation a cumulative sum would bring.
    """
    padded = _padded_channels(v, before, after)
    padded[:, before : before + v.shape[1]].copy_(v)
    return _sum_shifted(padded, v.shape[1], before + after + 1)


def _padded_channels(like: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """An N x (before + C + after) x H x W buffer whose extra channels are zero, in `like`'s memory format.

    Mixing NCHW and channels-last operands makes every elementwise pass several times slower.
    """
    n, c, h, w = like.shape
    shape = (n, before + c + after, h, w)
    if is_channels_last(like):
        # the pad channels are short strided runs there: zeroing the whole buffer is cheaper
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last).zero_()
    buf = torch.empty(shape, dtype=like.dtype, device=like.device)
    buf[:, :before].zero_()
    buf[:, before + c :].zero_()
    return buf


def _sum_shifted(padded: torch.Tensor, channels: int, depth: int) -> torch.Tensor:
    # the zero channels of `padded` stand for the clipped part of the window
    if depth == 1:
        return padded[:, :channels].clone()
    out = torch.add(padded[:, :channels], padded[:, 1 : 1 + channels])
    for j in range(2, depth):
        out.add_(padded[:, j : j + channels])
    return out


class _ExactLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, depth: int, kappa: float, alpha: float, beta: float, needs_grad: bool) -> torch.Tensor:  # type: ignore[override]
        before, after = _window_offsets(depth)
        channels = x.shape[1]
        squares = _padded_channels(x, before, after)
        torch.mul(x, x, out=squares[:, before : before + channels])
        window = _sum_shifted(squares, channels, depth)
        del squares
        scale = torch.add(torch.tensor(kappa, dtype=x.dtype), window, alpha=alpha)  # L = kappa + alpha S, one pass
        del window
        lb = torch.pow(scale, -beta)  # L^-beta (a vectorised pow beat rsqrt/sqrt chains for beta = 0.75 here)
        if needs_grad:
            ctx.save_for_backward(x, lb, torch.div(lb, scale))  # L^-beta, L^-beta / L
            ctx.params = (depth, alpha, beta)
        return x * lb

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, lb, lb_over_l = ctx.saved_tensors
        depth, alpha, beta = ctx.params
        before, after = _window_offsets(depth)
        channels = x.shape[1]
        # sum over the windows that contain q: the transposed window [q - after, q + before]
        inner = _padded_channels(x, after, before)
        middle = inner[:, after : after + channels]
        torch.mul(grad, x, out=middle)
        middle.mul_(lb_over_l)
        spread = _sum_shifted(inner, channels, depth)
        del inner, middle
        dx = torch.mul(grad, lb)
        dx.addcmul_(spread, x, value=-2.0 * alpha * beta)
        return dx, None, None, None, None, None


_FAST_POW_FORMATS = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}
_BLOCK = 30_000
"""Elements per block of the fast_pow pass: its few temporaries stay in the CPU's L2 cache, and below
ATen's parallel grain (32,768) each step runs on one thread, with no OpenMP barrier per step (on a
shared 2-core machine thousands of barriers cost more than the second thread gains)."""


def _fast_pow_format(dtype: torch.dtype) -> tuple[torch.dtype, int, int]:
    if dtype not in _FAST_POW_FORMATS:
        raise CqdError(f"LRN matconvnet-cpu mode needs float32 or float64 input, got {dtype}")
    return _FAST_POW_FORMATS[dtype]


def fast_pow(x: torch.Tensor, y: float) -> torch.Tensor:
    """MatConvNet 1.0-beta18's `fast_pow(x, y)` (VL_NNNORMALIZE_FAST), operation by operation.

    float32 for float32 input (23-bit mantissa, exponent bias 127), the
    double variant (52 bits, bias 1023) for float64. x must be positive.
    Every step is rounded to the working precision as the C code's float
    arithmetic is (the MEX build's fast-math may fuse a multiply-add here
    and there; the result then differs in the last bit at most).
    """
    _fast_pow_format(x.dtype)
    flat = x.detach().contiguous().reshape(-1)
    out = torch.empty_like(flat)
    _fast_pow_into(flat, y, out)
    return out.view(x.shape)


def _fast_pow_into(x: torch.Tensor, y: float, out: torch.Tensor) -> None:
    """`out = fast_pow(x, y)` on 1-D contiguous tensors, block by block, each step in place on a few buffers.

    The same elementwise operations in the same order as the C code (no
    fused multiply-add), so the bits equal an unblocked evaluation's.
    """
    dt = x.dtype
    int_dtype, bits, bias = _fast_pow_format(dt)

    def c(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=dt)

    plog3, plog2, plog1 = c(0.164042561333445), c(-0.606737602222409), c(1.442695040888963)
    pexp3, pexp2, pexp1 = c(0.079441541679836), c(0.227411277760219), c(0.693147180559945)
    cy, one = c(y), c(1.0)
    offset, mask = bias << bits, (1 << bits) - 1
    block = min(_BLOCK, x.numel())
    ix, imx, fx, mx2, mx3 = (torch.empty(block, dtype=int_dtype), torch.empty(block, dtype=int_dtype), *(torch.empty(block, dtype=dt) for _ in range(3)))
    for start in range(0, x.numel(), block):
        n = min(block, x.numel() - start)
        xs, zs = x[start : start + n], out[start : start + n]
        i1, i2, f1, f2, f3 = ix[:n], imx[:n], fx[:n], mx2[:n], mx3[:n]
        torch.sub(xs.view(int_dtype), offset, out=i1)  # ix
        torch.bitwise_and(i1, mask, out=i2).add_(offset)  # imx
        f1.copy_(i1.bitwise_right_shift_(bits))  # fx: arithmetic shift, floor of log2 x
        mx = i2.view(dt).sub_(one)
        torch.mul(mx, mx, out=f2)
        torch.mul(f2, mx, out=f3)
        # t = y * (((fx + mx plog1) + mx2 plog2) + mx3 plog3)
        f1.add_(mx.mul_(plog1)).add_(f2.mul_(plog2)).add_(f3.mul_(plog3)).mul_(cy)
        fz = torch.floor(f1, out=mx)
        rz = f1.sub_(fz)
        torch.mul(rz, rz, out=f2)
        torch.mul(f2, rz, out=f3)
        # tz = ((fz + rz pexp1) + rz2 pexp2) + rz3 pexp3
        fz.add_(rz.mul_(pexp1)).add_(f2.mul_(pexp2)).add_(f3.mul_(pexp3)).mul_(float(1 << bits))
        zs.view(int_dtype).copy_(fz).add_(offset)  # C cast: truncation toward zero


def _channels_first(t: torch.Tensor) -> torch.Tensor:
    """A new C x N x H x W contiguous tensor (never `t` itself): every channel one contiguous block."""
    out = torch.empty((t.shape[1], t.shape[0], *t.shape[2:]), dtype=t.dtype, device=t.device)
    return out.copy_(t.transpose(0, 1))


def _running_window_sum(sq: torch.Tensor, before: int, after: int, out: torch.Tensor) -> torch.Tensor:
    """S as normalize_cpu.cpp accumulates it: acc += x_{t+after}^2 - x_{t-before-1}^2, in order.

    `sq` and `out` are channels-first (`_channels_first`): each step is one
    or two passes over a contiguous channel.
    """
    channels = sq.shape[0]
    acc = torch.zeros_like(sq[0])
    diff = torch.empty_like(sq[0])
    for t in range(-after, channels):
        tm, tp = t - before - 1, t + after
        target = out[t] if t >= 0 else acc
        if tm >= 0 and tp < channels:
            torch.add(acc, torch.sub(sq[tp], sq[tm], out=diff), out=target)
        elif tm < 0 and tp < channels:
            torch.add(acc, sq[tp], out=target)
        elif tm >= 0 and tp >= channels:
            torch.sub(acc, sq[tm], out=target)
        elif t >= 0:
            target.copy_(acc)
        acc = target
    return out


class _MatConvNetCpuLRN(torch.autograd.Function):
    """normalize_cpu.cpp's loops over channels, run channels-first so that every step is a contiguous pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, depth: int, kappa: float, alpha: float, beta: float) -> torch.Tensor:  # type: ignore[override]
        dt = x.dtype
        _fast_pow_format(dt)
        kappa_t, alpha_t, beta_t = (torch.tensor(v, dtype=dt) for v in (kappa, alpha, beta))
        before, after = _window_offsets(depth)
        xc = _channels_first(x)
        sq = xc * xc
        scale = _running_window_sum(sq, before, after, out=torch.empty_like(sq))  # S, then L in place
        scale.mul_(alpha_t).add_(kappa_t)  # kappa + alpha S
        lb = sq  # reused: x^2 is no longer needed
        _fast_pow_into(scale.view(-1), float(-beta_t), lb.view(-1))
        ctx.save_for_backward(x, xc, scale, lb)
        ctx.params = (depth, alpha_t, beta_t)
        y = torch.empty_like(x)
        torch.mul(x, lb.transpose(0, 1), out=y)  # in x's memory format, as before
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, xc, scale, lb = ctx.saved_tensors
        depth, alpha_t, beta_t = ctx.params
        before, after = _window_offsets(depth)
        channels = xc.shape[0]
        ab2 = (2 * alpha_t) * beta_t
        temp1 = _channels_first(grad).mul_(lb)  # grad * L^-beta
        integral = torch.mul(xc, ab2).mul_(temp1).div_(scale)  # temp2
        # running integral over channels, in float as the C loop does (torch.cumsum accumulates in double)
        for t in range(1, channels):
            integral[t].add_(integral[t - 1])
        dxc = torch.empty_like(xc)
        window = torch.empty_like(xc[0])
        for t in range(channels):
            q1 = t - after - 1
            q2 = min(t + before, channels - 1)
            w = torch.sub(integral[q2], integral[q1], out=window) if q1 >= 0 else integral[q2]
            torch.sub(temp1[t], torch.mul(w, xc[t], out=window), out=dxc[t])
        dx = torch.empty_like(x)  # in x's memory format, as before
        dx.copy_(dxc.transpose(0, 1))
        return dx, None, None, None, None


def lrn(x: torch.Tensor, param: Sequence[float], mode: str = "exact") -> torch.Tensor:
    """`vl_nnnormalize(x, [N kappa alpha beta])` on an NCHW tensor.

    `mode="exact"` uses a true power (MatConvNet's GPU kernel);
    `mode="matconvnet-cpu"` reproduces the CPU kernel's `fast_pow`
    approximation and its backward formula (see the module docstring).
    PyTorch's `LocalResponseNorm(N, alpha * N, beta, kappa)` equals the exact
    mode for odd N.
    """
    values = [float(v) for v in param]
    if len(values) != 4:
        raise CqdError(f"LRN param must be [N kappa alpha beta], got {values}")
    depth = int(values[0])
    if depth < 1 or depth != values[0]:
        raise CqdError(f"LRN window size N must be a positive integer, got {values[0]}")
    if x.dim() != 4:
        raise CqdError(f"LRN: expected an N x C x H x W input, got shape {tuple(x.shape)}")
    kappa, alpha, beta = values[1:]
    if check_lrn_mode(mode) == "exact":
        return _ExactLRN.apply(x, depth, kappa, alpha, beta, x.requires_grad)
    return _MatConvNetCpuLRN.apply(x, depth, kappa, alpha, beta)
