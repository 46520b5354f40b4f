"""Thin `nn.Module` wrappers over `cqd_port.nn.functional`, one per MatConvNet block.

Each holds its block's attributes (MatConvNet conventions: pad `(t, b, l, r)`,
stride/dilate/pool `(y, x)`) and, for conv and bnorm, its parameters, so
that a module's state dict keys are `weight`, `bias`, `moments` and a
network's are `<layer>.weight` etc.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cqd_port.errors import CqdError
from cqd_port.nn import functional as MF
from cqd_port.nn.lrn import check_lrn_mode, lrn


class Conv(nn.Module):
    """`vl_nnconv` layer: OIHW `weight` (I = depth per group), optional `bias`."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        pad: Sequence[int] | int = 0,
        stride: Sequence[int] | int = 1,
        dilate: Sequence[int] | int = 1,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias.reshape(-1)) if bias is not None else None
        self.pad = MF.as_quad(pad, "conv pad")
        self.stride = MF.as_pair(stride, "conv stride")
        self.dilate = MF.as_pair(dilate, "conv dilate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.conv(x, self.weight, self.bias, self.pad, self.stride, self.dilate)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, pad={self.pad}, stride={self.stride}, dilate={self.dilate}, bias={self.bias is not None}"


class Pool(nn.Module):
    """`vl_nnpool` layer: max or average pooling with MatConvNet padding."""

    def __init__(self, method: str, pool: Sequence[int] | int, stride: Sequence[int] | int = 1, pad: Sequence[int] | int = 0) -> None:
        super().__init__()
        self.method = method
        self.pool = MF.as_pair(pool, "pool size")
        self.stride = MF.as_pair(stride, "pool stride")
        self.pad = MF.as_quad(pad, "pool pad")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.pool(x, self.method, self.pool, self.stride, self.pad)

    def extra_repr(self) -> str:
        return f"{self.method}, pool={self.pool}, stride={self.stride}, pad={self.pad}"


class LRN(nn.Module):
    """`vl_nnnormalize` layer; `mode` picks the exact or MatConvNet-CPU power."""

    def __init__(self, param: Sequence[float], mode: str = "exact") -> None:
        super().__init__()
        self.param = tuple(float(v) for v in param)
        self.mode = check_lrn_mode(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn(x, self.param, self.mode)

    def extra_repr(self) -> str:
        return f"param={list(self.param)}, mode={self.mode}"


class ReLU(nn.Module):
    """`vl_nnrelu` layer (`leak` > 0: leaky). `inplace` is set by the runner when safe."""

    def __init__(self, leak: float = 0.0) -> None:
        super().__init__()
        self.leak = float(leak)
        self.inplace = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.relu(x, self.leak, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"leak={self.leak}"


class Dropout(nn.Module):
    """`vl_nndropout` layer: active only in `.train()` mode."""

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.dropout(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Softmax(nn.Module):
    """`vl_nnsoftmax` layer: softmax over channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.softmax(x)


class BatchNormTest(nn.Module):
    """`vl_nnbnorm` in test mode: `weight` (gain), `bias`, and the `moments` buffer `[mean sigma]`.

    `epsilon` only enters the backward: `bnorm_backward="matconvnet"` (the
    default) differentiates with batch statistics as beta18's `vl_simplenn`
    and `dagnn.BatchNorm` do (see `cqd_port.nn.functional.bnorm`; a moments
    buffer that requires grad then receives the batch moments times the number
    of images, what those layers return as the moments' derivative);
    "consistent" differentiates the test-mode output itself.
    """

    def __init__(
        self,
        gain: torch.Tensor,
        bias: torch.Tensor,
        moments: torch.Tensor,
        epsilon: float = MF.BETA18_BNORM_EPSILON,
        bnorm_backward: str = "matconvnet",
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(gain.reshape(-1))
        self.bias = nn.Parameter(bias.reshape(-1))
        self.register_buffer("moments", moments.reshape(-1, 2))
        self.epsilon = float(epsilon)
        self.bnorm_backward = check_bnorm_backward(bnorm_backward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.bnorm(x, self.weight, self.bias, self.moments, self.epsilon, self.bnorm_backward)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, bnorm_backward={self.bnorm_backward!r}"


def check_bnorm_backward(mode: str) -> str:
    """`mode` if it is one of `cqd_port.nn.functional.BNORM_BACKWARDS`, else a CqdError naming them."""
    if mode not in MF.BNORM_BACKWARDS:
        raise CqdError(f"unknown bnorm backward '{mode}' (use one of {', '.join(MF.BNORM_BACKWARDS)})")
    return mode


class ConvTranspose(nn.Module):
    """`vl_nnconvt` layer (`dagnn.ConvTranspose`): `weight` FD x K x FH x FW, optional `bias`."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        upsample: Sequence[int] | int = 1,
        crop: Sequence[int] | int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias.reshape(-1)) if bias is not None else None
        self.upsample = MF.as_pair(upsample, "convt upsample")
        self.crop = MF.as_quad(crop, "convt crop")
        self.groups = int(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.conv_transpose(x, self.weight, self.bias, self.upsample, self.crop, self.groups)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, upsample={self.upsample}, crop={self.crop}, groups={self.groups}"


class Scale(nn.Module):
    """`dagnn.Scale` layer: `weight` (multiplier) and optional `bias`, NCHW with singleton dims."""

    def __init__(self, multiplier: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(multiplier)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MF.scale(x, self.weight, self.bias)


class Sum(nn.Module):
    """`dagnn.Sum`: takes a list of inputs."""

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return MF.sum_inputs(inputs)


class Concat(nn.Module):
    """`dagnn.Concat` along MATLAB dimension `dim` (3: channels): takes a list of inputs."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return MF.concat(inputs, self.dim)


class Crop(nn.Module):
    """`dagnn.Crop`: crops its first input to the size of its second, from offset `crop` [y x]."""

    def __init__(self, offset: Sequence[int] | int = 0) -> None:
        super().__init__()
        self.offset = MF.as_pair(offset, "crop offset")

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        if len(inputs) != 2:
            raise MF.CqdError(f"crop: needs 2 inputs (the tensor and the reference), got {len(inputs)}")
        return MF.crop_to(inputs[0], inputs[1].shape[2:], self.offset)
