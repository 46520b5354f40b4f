"""MatConvNet's computational blocks as PyTorch functions (NCHW tensors).

One function per MatConvNet 1.0-beta18 block (`vl_nnconv`, `vl_nnpool`,
`vl_nnrelu`, `vl_nndropout`, `vl_nnsoftmax`, `vl_nnbnorm`), and the DagNN
blocks of graph networks (`vl_nnconvt`, `dagnn.Crop`, `dagnn.Sum`,
`dagnn.Concat`, `dagnn.Scale`). Every function
works on float32 and float64 tensors and is differentiable by autograd; the
gradients equal MatConvNet's backward mode (checked against
`parity/reference/ops_*.mat`). The LRN block (`vl_nnnormalize`) lives in
`cqd_port.nn.lrn`, the losses in `cqd_port.nn.losses`.

Conventions (MatConvNet's, see ../shared/parity/FORMAT.md): `pad` is
`(top, bottom, left, right)`, `stride`, `dilate` and `pool` are `(y, x)`.
Layout conversions are done by `cqd_port.layout`, never here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cqd_port.errors import CqdError
from cqd_port.layout import memory_format_of

Pair = tuple[int, int]
Quad = tuple[int, int, int, int]


def _expand(value: int | Sequence[int], count: int, what: str, order: str) -> tuple[int, ...]:
    # MatConvNet repeats a single value over every position
    values = [int(v) for v in ([value] if isinstance(value, (int, float)) else list(value))]
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise CqdError(f"{what} must have 1 or {count} values [{order}], got {values}")
    return tuple(values)


def as_pair(value: int | Sequence[int], what: str) -> Pair:
    """MatConvNet accepts a scalar or `[y x]` for stride, dilate and pool sizes."""
    return _expand(value, 2, what, "y x")  # type: ignore[return-value]


def as_quad(value: int | Sequence[int], what: str) -> Quad:
    """MatConvNet accepts a scalar or `[top bottom left right]` for padding."""
    return _expand(value, 4, what, "top bottom left right")  # type: ignore[return-value]


def _check_nchw(x: torch.Tensor, block: str) -> None:
    if x.dim() != 4:
        raise CqdError(f"{block}: expected an N x C x H x W input, got shape {tuple(x.shape)}")


def conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pad: int | Sequence[int] = (0, 0, 0, 0),
    stride: int | Sequence[int] = (1, 1),
    dilate: int | Sequence[int] = (1, 1),
) -> torch.Tensor:
    """`vl_nnconv`: convolution with MatConvNet's padding and grouping rules.

    Reproduces MatConvNet: the number of groups is *inferred* as input
    channels / filter depth (`weight` is OIHW with I the depth per group),
    padding may be asymmetric `(top, bottom, left, right)` (PyTorch's
    `conv2d` only pads symmetrically, so asymmetric padding is applied with
    an explicit zero `F.pad`), and fully connected layers are convolutions
    whose filter covers the whole input. Output size is
    `floor((H + pt + pb - dilated_kh) / sy) + 1`, as in both libraries.

    Speed: when the filter covers the whole unpadded input with stride 1
    and a single group (VGG's fc6 as a 6x6 filter on a 6x6 map, fc7/fc8 as
    1x1 filters on 1x1 maps), the convolution is one matrix product
    (`F.linear` on the flattened input); same numbers, several times faster
    than `conv2d` on CPU.
    """
    _check_nchw(x, "conv")
    if weight.dim() != 4:
        raise CqdError(f"conv: filters must be O x I x H x W, got shape {tuple(weight.shape)}")
    pt, pb, pl, pr = as_quad(pad, "conv pad")
    sy, sx = as_pair(stride, "conv stride")
    dy, dx = as_pair(dilate, "conv dilate")
    n, c, h, w = x.shape
    out_ch, depth, kh, kw = weight.shape
    if depth == 0 or c % depth != 0:
        raise CqdError(
            f"conv: input has {c} channels but the filters have depth {depth}; "
            "the input channels must be a multiple of the filter depth"
        )
    groups = c // depth
    if out_ch % groups != 0:
        raise CqdError(f"conv: {out_ch} filters cannot be split into {groups} groups (input {c} channels / depth {depth})")
    if bias is not None:
        bias = bias.reshape(-1)
        if bias.numel() != out_ch:
            raise CqdError(f"conv: bias has {bias.numel()} elements but there are {out_ch} filters")
    ekh, ekw = (kh - 1) * dy + 1, (kw - 1) * dx + 1
    if h + pt + pb < ekh or w + pl + pr < ekw:
        raise CqdError(
            f"conv: filters of size {kh}x{kw} (dilate {dy}x{dx}) do not fit the padded input "
            f"{h + pt + pb}x{w + pl + pr}; use a larger input image"
        )
    if groups == 1 and (pt, pb, pl, pr) == (0, 0, 0, 0) and (kh, kw) == (h, w) and (dy, dx) == (1, 1):
        # A fully connected layer: one GEMM; the stride does not matter (one output position).
        out = F.linear(x.reshape(n, c * h * w), weight.reshape(out_ch, depth * kh * kw), bias)
        return out.reshape(n, out_ch, 1, 1)
    if pt == pb and pl == pr:
        return F.conv2d(x, weight, bias, stride=(sy, sx), padding=(pt, pl), dilation=(dy, dx), groups=groups)
    x = F.pad(x, (pl, pr, pt, pb))
    return F.conv2d(x, weight, bias, stride=(sy, sx), padding=0, dilation=(dy, dx), groups=groups)


def pool(
    x: torch.Tensor,
    method: str,
    pool: int | Sequence[int],
    stride: int | Sequence[int] = (1, 1),
    pad: int | Sequence[int] = (0, 0, 0, 0),
) -> torch.Tensor:
    """`vl_nnpool`: max or average pooling with MatConvNet's padding rules.

    Reproduces MatConvNet: padding may be asymmetric (VGG-M's pool2 pads
    `[0 1 0 1]`); max pooling treats padding as -inf; average pooling divides
    by the number of *non-padding* pixels in each window (PyTorch's default
    `count_include_pad=True` divides by the full window). Output size
    `floor((H + pt + pb - ph) / sy) + 1` (PyTorch's floor mode, never ceil).
    PyTorch's `max_pool2d` also refuses padding above half the window; here
    any padding smaller than the window works, as in MatConvNet. Max pooling
    padded only at the bottom/right runs as PyTorch's ceil mode when that
    gives the same windows (no padded copy of the input).

    Ties: when a window holds several equal maxima, MatConvNet's backward
    sends the whole gradient to the FIRST of them in column-major order
    (y varies fastest: down a column, then right), while PyTorch's
    `max_pool2d` picks the first in row-major order (x fastest). Real images
    (saturated sky, black borders, flat walls) tie all the time. When a
    gradient is needed, the max pool therefore runs PyTorch's own kernel on a
    copy of the input with H and W swapped (window, stride and padding swapped
    to match) and swaps the result back: PyTorch's row-major scan of the
    swapped map is MatConvNet's column-major scan of the original, so the
    gradient lands on MatConvNet's pixel (checked by `ops_pool_ties.mat` and
    `ref_vggm_tiny_flat.mat`). A layout change only, no custom kernel: the
    swapped copies keep the input's memory format (channels-last stays
    channels-last), costing a copy of the input and of its gradient (see
    `_ColumnMajorMaxPool`; `benchmarks/bench_vggm_speed.py` measures the
    network). The forward values are the same either way, so without
    autograd (evaluation, teacher logits) the plain kernel runs, with no copy.
    """
    _check_nchw(x, "pool")
    ph, pw = as_pair(pool, "pool size")
    sy, sx = as_pair(stride, "pool stride")
    pt, pb, pl, pr = as_quad(pad, "pool pad")
    if method not in ("max", "avg"):
        raise CqdError(f"pool: unknown method '{method}' (use 'max' or 'avg')")
    if max(pt, pb) >= ph or max(pl, pr) >= pw:
        raise CqdError(f"pool: padding {[pt, pb, pl, pr]} must be smaller than the pooling window {[ph, pw]}")
    h, w = x.shape[2:]
    if h + pt + pb < ph or w + pl + pr < pw:
        raise CqdError(f"pool: window {ph}x{pw} larger than the padded input {h + pt + pb}x{w + pl + pr}")
    symmetric = pt == pb and pl == pr and 2 * pt <= ph and 2 * pl <= pw
    if method == "max":
        # Without a backward, which of several equal maxima wins cannot change the output.
        column_major = torch.is_grad_enabled() and x.requires_grad
        return _max_pool(x, (ph, pw), (sy, sx), (pt, pb, pl, pr), symmetric, column_major)
    if symmetric:
        return F.avg_pool2d(x, (ph, pw), (sy, sx), (pt, pl), count_include_pad=False)
    # Asymmetric: window sums over zero padding, divided by the count of real pixels in each window.
    sums = F.avg_pool2d(F.pad(x, (pl, pr, pt, pb)), (ph, pw), (sy, sx), divisor_override=1)
    ones = F.pad(x.new_ones(1, 1, h, w), (pl, pr, pt, pb))
    counts = F.avg_pool2d(ones, (ph, pw), (sy, sx), divisor_override=1)
    return sums / counts


class _ColumnMajorMaxPool(torch.autograd.Function):
    """PyTorch's max pool whose ties go to the first maximum in column-major order (MatConvNet's).

    PyTorch's kernel runs on a copy of the input with H and W swapped in
    memory: its row-major scan of that copy is the original's column-major
    scan. The copy keeps the input's memory format (channels-last stays
    channels-last, so the vectorised channels-last kernel still runs and the
    copy moves whole channel vectors); the backward scatters with PyTorch's
    own max-pool backward in the swapped layout and swaps the gradient back
    into the input's layout, so the layers around see the tensors they would
    see with a plain `max_pool2d`. `pool`, `stride`, `pad` are `(y, x)`;
    `pad` is symmetric (PyTorch's), asymmetric padding is applied by the caller.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: Pair, stride: Pair, pad: Pair, ceil_mode: bool) -> torch.Tensor:  # type: ignore[override]
        memory_format = memory_format_of(x)
        swapped = x.transpose(2, 3).contiguous(memory_format=memory_format)
        out, index = torch.ops.aten.max_pool2d_with_indices(swapped, pool[::-1], stride[::-1], pad[::-1], (1, 1), ceil_mode)
        ctx.save_for_backward(index)
        ctx.swapped_shape, ctx.memory_format = swapped.shape, memory_format
        ctx.pool, ctx.stride, ctx.pad, ctx.ceil_mode = pool[::-1], stride[::-1], pad[::-1], ceil_mode
        return out.transpose(2, 3).contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        fmt = ctx.memory_format
        # the backward kernel reads only the input's shape and memory format, never its values
        like = torch.empty(ctx.swapped_shape, dtype=grad.dtype, device=grad.device, memory_format=fmt)
        grad_swapped = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.transpose(2, 3).contiguous(memory_format=fmt), like, ctx.pool, ctx.stride, ctx.pad, (1, 1), ctx.ceil_mode, index
        )
        return grad_swapped.transpose(2, 3).contiguous(memory_format=fmt), None, None, None, None


def _max_pool(x: torch.Tensor, pool: Pair, stride: Pair, pad: Quad, symmetric: bool, column_major: bool) -> torch.Tensor:
    """PyTorch's max pooling with MatConvNet's padding; ties to the first maximum in column-major
    order (MatConvNet's, `_ColumnMajorMaxPool`) or in row-major order (PyTorch's, no copy)."""
    (ph, pw), (sy, sx), (pt, pb, pl, pr) = pool, stride, pad
    h, w = x.shape[2:]

    def run(x: torch.Tensor, padding: Pair, ceil_mode: bool) -> torch.Tensor:
        if column_major:
            return _ColumnMajorMaxPool.apply(x, (ph, pw), (sy, sx), padding, ceil_mode)
        return F.max_pool2d(x, (ph, pw), (sy, sx), padding, ceil_mode=ceil_mode)

    if symmetric:
        return run(x, (pt, pl), False)
    if pt == 0 and pl == 0 and h >= ph and w >= pw and _ceil_mode_matches(h, w, (ph, pw), (sy, sx), (pb, pr)):
        # Padding only at the bottom/right (VGG-M's pool2): PyTorch's ceil mode adds the same
        # border windows, clipped to the input (= -inf padding), without copying the input.
        return run(x, (0, 0), True)
    return run(F.pad(x, (pl, pr, pt, pb), value=float("-inf")), (0, 0), False)


def _ceil_mode_matches(h: int, w: int, pool: Pair, stride: Pair, pad_end: Pair) -> bool:
    """True when PyTorch's ceil-mode output size equals MatConvNet's with end padding `pad_end`."""
    for size, k, s, p in ((h, pool[0], stride[0], pad_end[0]), (w, pool[1], stride[1], pad_end[1])):
        matconvnet = (size + p - k) // s + 1
        ceil = -(-(size - k) // s) + 1
        if (ceil - 1) * s >= size:  # PyTorch drops a last window that starts past the input
            ceil -= 1
        if ceil != matconvnet:
            return False
    return True


def relu(x: torch.Tensor, leak: float = 0.0, inplace: bool = False) -> torch.Tensor:
    """`vl_nnrelu`: `max(x, 0)`, or `x * leak` for negative x when `leak > 0`.

    Same as PyTorch's `relu`/`leaky_relu`, including the backward at x == 0
    (zero gradient for leak 0). `inplace` is a speed option for callers that
    know the input is not needed afterwards.
    """
    if leak == 0:
        return F.relu_(x) if inplace else F.relu(x)
    return F.leaky_relu(x, float(leak), inplace=inplace)


def dropout(
    x: torch.Tensor,
    rate: float,
    training: bool,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`vl_nndropout`: inverted dropout, identity in test mode.

    MatConvNet draws `mask = (rand >= rate) / (1 - rate)` and returns `x .* mask`
    in training, `x` in test mode (same as PyTorch's `F.dropout`). An explicit
    `mask` is MatConvNet's `vl_nndropout(x, 'mask', mask)`: the mask is taken
    as already scaled by `1 / (1 - rate)` (as MatConvNet returns and stores
    it) and `x .* mask` is returned whatever the mode, so a recorded pass can
    be replayed exactly.
    """
    if not 0 <= rate < 1:
        raise CqdError(f"dropout: rate must be in [0, 1), got {rate}")
    if mask is not None:
        if mask.shape != x.shape:
            raise CqdError(f"dropout: mask shape {tuple(mask.shape)} differs from input shape {tuple(x.shape)}")
        return x * mask.to(x.dtype)
    if not training or rate == 0:
        return x
    keep = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) >= rate
    return x * (keep.to(x.dtype) * (1.0 / (1.0 - rate)))


def softmax(x: torch.Tensor) -> torch.Tensor:
    """`vl_nnsoftmax`: softmax over the channel dimension (dim 1 of NCHW), at every pixel."""
    _check_nchw(x, "softmax")
    return torch.softmax(x, dim=1)


BETA18_BNORM_EPSILON = 1e-3
"""The epsilon of MatConvNet 1.0-beta18's `vl_nnbnorm` when none is passed (`vl_nnbnorm.cu`:
`epsilon = 10E-4`): beta18's `vl_simplenn` and `dagnn.BatchNorm` pass none. Later versions store
the layer's own `epsilon` in the model file, and their layers pass it."""

BNORM_BACKWARDS = ("matconvnet", "consistent")
"""How the test-mode (given moments) bnorm is differentiated: "matconvnet" as beta18's
`vl_simplenn` and `dagnn.BatchNorm.backward` do (batch statistics), "consistent" through the
given moments (the true derivative of the test-mode output)."""


def _bnorm_shapes(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, moments: torch.Tensor | None) -> torch.Tensor | None:
    c = x.shape[1]
    if moments is not None:
        moments = moments.reshape(c, 2) if moments.numel() == 2 * c else moments
    if (moments is not None and moments.shape != (c, 2)) or gain.numel() != c or bias.numel() != c:
        raise CqdError(
            f"bnorm: input has {c} channels but gain has {gain.numel()}, bias {bias.numel()} "
            f"and moments shape {None if moments is None else tuple(moments.shape)} (expected {c} x 2)"
        )
    return moments


def batch_moments(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """`vl_nnbnorm`'s batch moments: C x 2 `[mean sigma]` over images and positions, with
    `sigma = sqrt(biased variance + epsilon)`."""
    mean = x.mean(dim=(0, 2, 3))
    variance = ((x - mean.reshape(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
    return torch.stack([mean, torch.sqrt(variance + epsilon)], dim=1)


def _normalize(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    mean = moments[:, 0].reshape(1, c, 1, 1)
    sigma = moments[:, 1].reshape(1, c, 1, 1)
    return gain.reshape(1, c, 1, 1) * (x - mean) / sigma + bias.reshape(1, c, 1, 1)


def bnorm(
    x: torch.Tensor,
    gain: torch.Tensor,
    bias: torch.Tensor,
    moments: torch.Tensor | None = None,
    epsilon: float = BETA18_BNORM_EPSILON,
    backward: str = "matconvnet",
) -> torch.Tensor:
    """`vl_nnbnorm`: `y = gain * (x - mean) / sigma + bias`, per channel.

    With `moments` (MatConvNet's C x 2 `[mean sigma]`, test mode), sigma is
    used as stored: it is already `sqrt(var + epsilon)`, so MatConvNet does not
    add `epsilon` again (checked against `ops_misc.mat`, where adding it misses
    the reference by 1e-4); PyTorch's `batch_norm` instead takes a variance and
    adds `eps` itself. Without `moments`, the batch's own moments
    (`batch_moments`, with `epsilon`) are used, as `vl_nnbnorm(x, g, b)`.

    The derivative in test mode (`backward`): beta18 back-propagates bnorm
    with BATCH statistics even when the forward used the stored moments
    (`vl_simplenn` calls `vl_nnbnorm(x, g, b, dzdy)` without moments, and so
    does `dagnn.BatchNorm.backward`); `backward="matconvnet"` (the default)
    does the same: dzdx, dzdgain and dzdbias are those of batch normalization
    with the batch's moments and `epsilon`, and the moments' "derivative" is
    what those layers hand to the solver, the batch moments times the number
    of images (`dzdw{3} = moments * size(x, 4)`). `backward="consistent"` is
    the true derivative of the test-mode output (through the given moments,
    which get their true derivative if they require one). Without `moments` both are the true derivative.
    `epsilon` defaults to beta18's (`BETA18_BNORM_EPSILON`).
    """
    _check_nchw(x, "bnorm")
    if backward not in BNORM_BACKWARDS:
        raise CqdError(f"bnorm: unknown backward '{backward}' (use one of {', '.join(BNORM_BACKWARDS)})")
    moments = _bnorm_shapes(x, gain, bias, moments)
    if moments is None:
        return _normalize(x, gain, bias, batch_moments(x, float(epsilon)))
    if backward == "consistent" or not torch.is_grad_enabled():
        return _normalize(x, gain, bias, moments)
    return _BnormBatchStatisticsBackward.apply(x, gain, bias, moments, float(epsilon))


class _BnormBatchStatisticsBackward(torch.autograd.Function):
    """Test-mode bnorm forward (given moments) with beta18's backward (batch statistics).

    The backward is batch normalization's closed form (MatConvNet's
    `nnbnorm_backward`), per channel over images and positions, with
    `xhat = (x - mean_b) / sigma_b`, `sigma_b = sqrt(var_b + epsilon)` and m
    the number of values per channel: `dzdbias = sum(dzdy)`, `dzdgain =
    sum(dzdy * xhat)`, `dzdx = gain / sigma_b * (dzdy - dzdbias / m - xhat *
    dzdgain / m)`; the moments get `[mean_b sigma_b] * N`.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, moments: torch.Tensor, epsilon: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, gain)
        ctx.epsilon, ctx.bias_shape = epsilon, bias.shape
        return _normalize(x, gain, bias, moments)

    @staticmethod
    def backward(ctx, dzdy: torch.Tensor):  # type: ignore[override]
        x, gain = ctx.saved_tensors
        c = x.shape[1]
        axes = (0, 2, 3)
        moments = batch_moments(x, ctx.epsilon)
        mean, sigma = moments[:, 0].reshape(1, c, 1, 1), moments[:, 1].reshape(1, c, 1, 1)
        xhat = (x - mean) / sigma
        dzdbias = dzdy.sum(axes)
        dzdgain = (dzdy * xhat).sum(axes)
        m = x.numel() // c
        dzdx = gain.reshape(1, c, 1, 1) / sigma * (dzdy - (dzdbias / m).reshape(1, c, 1, 1) - xhat * (dzdgain / m).reshape(1, c, 1, 1))
        needs = ctx.needs_input_grad
        return (
            dzdx if needs[0] else None,
            dzdgain.reshape(gain.shape) if needs[1] else None,
            dzdbias.reshape(ctx.bias_shape) if needs[2] else None,
            moments * x.shape[0] if needs[3] else None,
            None,
        )


# ----------------------------------------------------------------------------- DagNN blocks


def conv_transpose(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    upsample: int | Sequence[int] = (1, 1),
    crop: int | Sequence[int] = (0, 0, 0, 0),
    groups: int = 1,
) -> torch.Tensor:
    """`vl_nnconvt` (`dagnn.ConvTranspose`): the adjoint of `vl_nnconv`, then an output crop.

    Reproduces MatConvNet: `weight` is the filter bank `FH x FW x K x FD`
    brought to `FD x K x FH x FW` by `cqd_port.layout.filters_to_oihw` (FD the
    input depth, K the outputs per group: PyTorch's `conv_transpose2d`
    layout); the output is `upsample * (H - 1) + FH - crop_top - crop_bottom`
    high. MatConvNet crops each side separately (`[top bottom left right]`,
    LapSRN uses `[0 1 0 1]`); PyTorch's `padding` crops both sides equally and
    `output_padding` adds at the end only, so an asymmetric crop is applied
    here by slicing the full output.
    """
    _check_nchw(x, "convt")
    if weight.dim() != 4:
        raise CqdError(f"convt: filters must be FD x K x FH x FW, got shape {tuple(weight.shape)}")
    uy, ux = as_pair(upsample, "convt upsample")
    ct, cb, cl, cr = as_quad(crop, "convt crop")
    depth, per_group, kh, kw = weight.shape
    if x.shape[1] != depth or groups < 1 or depth % groups != 0:
        raise CqdError(
            f"convt: input has {x.shape[1]} channels but the filter bank depth is {depth} "
            f"({groups} groups); the filters do not fit the input"
        )
    out_ch = per_group * groups
    if bias is not None:
        bias = bias.reshape(-1)
        if bias.numel() != out_ch:
            raise CqdError(f"convt: bias has {bias.numel()} elements but there are {out_ch} outputs")
    full_h = uy * (x.shape[2] - 1) + kh
    full_w = ux * (x.shape[3] - 1) + kw
    if full_h - ct - cb < 1 or full_w - cl - cr < 1:
        raise CqdError(f"convt: crop {[ct, cb, cl, cr]} removes the whole {full_h}x{full_w} output")
    if ct == cb and cl == cr:
        return F.conv_transpose2d(x, weight, bias, stride=(uy, ux), padding=(ct, cl), groups=groups)
    y = F.conv_transpose2d(x, weight, bias, stride=(uy, ux), groups=groups)
    return y[:, :, ct : full_h - cb, cl : full_w - cr]


def crop_to(x: torch.Tensor, reference_size: Sequence[int], offset: int | Sequence[int] = (0, 0)) -> torch.Tensor:
    """`dagnn.Crop` (FCN's crop layer): crop `x` to the height and width of a second input.

    Reproduces MatConvNet's `getAdaptedCrops`: with `d` the size difference
    and `offset` the layer's `crop` `[y x]`, the top crop is `min(d, offset)`
    (never more than the difference) and the rest comes off the bottom; the
    same for left/right. There is no PyTorch equivalent (`torchvision`'s
    `center_crop` centres instead of using a fixed offset). A negative
    difference (the reference larger than `x`) is an error, where MatConvNet
    would index out of range.
    """
    _check_nchw(x, "crop")
    oy, ox = as_pair(offset, "crop offset")
    th, tw = int(reference_size[0]), int(reference_size[1])
    dv, du = x.shape[2] - th, x.shape[3] - tw
    if dv < 0 or du < 0:
        raise CqdError(f"crop: input {x.shape[2]}x{x.shape[3]} is smaller than the reference {th}x{tw}")
    top = dv - max(0, dv - oy)
    left = du - max(0, du - ox)
    return x[:, :, top : top + th, left : left + tw]


def sum_inputs(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """`dagnn.Sum`: the element-wise sum of all inputs, which must have one shape.

    MatConvNet adds the inputs in order (`y = x1 + x2 + ...`); so does this
    (float addition is not associative, so the order is kept). Unlike
    PyTorch's `+`, shapes are not broadcast: a mismatch is an error, as in
    MATLAB's `+` on arrays of different sizes.
    """
    if not inputs:
        raise CqdError("sum: no inputs")
    out = inputs[0]
    for other in inputs[1:]:
        if other.shape != out.shape:
            raise CqdError(f"sum: inputs have shapes {tuple(out.shape)} and {tuple(other.shape)}; they must match")
        out = out + other
    return out


# MATLAB dimension (1-based, H x W x C x N) -> NCHW dimension.
_MCN_TO_NCHW_DIM = {1: 2, 2: 3, 3: 1, 4: 0}


def concat(inputs: Sequence[torch.Tensor], dim: int = 3) -> torch.Tensor:
    """`dagnn.Concat` / `vl_nnconcat`: concatenate along MATLAB dimension `dim` (3 = channels).

    `dim` is MatConvNet's 1-based dimension of an `H x W x C x N` array
    (default 3, the channels), mapped here to the NCHW dimension; PyTorch's
    `torch.cat` takes the 0-based NCHW dimension instead.
    """
    if not inputs:
        raise CqdError("concat: no inputs")
    if int(dim) not in _MCN_TO_NCHW_DIM:
        raise CqdError(f"concat: dim must be 1..4 (MATLAB H x W x C x N), got {dim}")
    axis = _MCN_TO_NCHW_DIM[int(dim)]
    try:
        return torch.cat(list(inputs), dim=axis)
    except RuntimeError:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise CqdError(f"concat: inputs {shapes} differ outside dimension {dim}") from None


def scale(x: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`dagnn.Scale`: `bsxfun(@times, x, multiplier)` then `bsxfun(@plus, ., bias)`.

    `multiplier` and `bias` are given in NCHW order with MATLAB's singleton
    dimensions kept (a `1 x 1 x C` MatConvNet parameter is `1 x C x 1 x 1`,
    brought over by `cqd_port.layout.mcn_to_nchw`), and broadcast exactly as
    `bsxfun` broadcasts their MatConvNet shapes. PyTorch would broadcast a
    1-D bias over the last (width) dimension instead.
    """
    _check_nchw(x, "scale")
    try:
        y = x * multiplier
        return y + bias if bias is not None else y
    except RuntimeError:
        raise CqdError(
            f"scale: parameters of shapes {tuple(multiplier.shape)}"
            f"{'' if bias is None else ', ' + str(tuple(bias.shape))} do not broadcast to the input {tuple(x.shape)}"
        ) from None
