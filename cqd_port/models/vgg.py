"""The paper's two networks: VGG-M and VGG-VD-16, as MatConvNet shipped them.

`check_topology` compares a layer list with the layer sequence of
MatConvNet's pretrained `imagenet-vgg-m.mat` / `imagenet-vgg-verydeep-16.mat`
(types, kernel sizes, strides, paddings, pooling, LRN parameters; not the
widths, so reduced-width copies such as ../shared/parity/net_*_tiny.mat
pass). The builders produce the same sequences with a width multiplier, any
number of classes and any input size (fc6's kernel covers the last feature
map: 6x6 for VGG-M and 7x7 for VGG-VD-16 at 224x224); `init_state` gives
MatConvNet-style random weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cqd_port.errors import CqdError
from cqd_port.models.layers import LayerSpec, conv_filter_shape, scalar_attr
from cqd_port.nn.functional import as_pair, as_quad

TOPOLOGIES = ("vgg-m", "vgg-vd-16")
VGGM_LRN = [5.0, 2.0, 1e-4, 0.75]  # imagenet-vgg-m.mat's norm1/norm2


@dataclass(frozen=True)
class _Layer:
    """One step of a reference topology (widths left out)."""

    name: str
    type: str
    kernel: tuple[int, int] | None = None  # conv: filter h w (None: fc6, follows the input size)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    pool: tuple[int, int] | None = None
    param: tuple[float, ...] | None = None
    width: int = 0  # output channels of the full-size network


def _vggm_layers() -> list[_Layer]:
    lrn = tuple(VGGM_LRN)
    return [
        _Layer("conv1", "conv", (7, 7), (2, 2), (0, 0, 0, 0), width=96),
        _Layer("relu1", "relu"),
        _Layer("norm1", "lrn", param=lrn),
        _Layer("pool1", "pool", stride=(2, 2), pool=(3, 3)),
        _Layer("conv2", "conv", (5, 5), (2, 2), (1, 1, 1, 1), width=256),
        _Layer("relu2", "relu"),
        _Layer("norm2", "lrn", param=lrn),
        _Layer("pool2", "pool", stride=(2, 2), pad=(0, 1, 0, 1), pool=(3, 3)),
        _Layer("conv3", "conv", (3, 3), (1, 1), (1, 1, 1, 1), width=512),
        _Layer("relu3", "relu"),
        _Layer("conv4", "conv", (3, 3), (1, 1), (1, 1, 1, 1), width=512),
        _Layer("relu4", "relu"),
        _Layer("conv5", "conv", (3, 3), (1, 1), (1, 1, 1, 1), width=512),
        _Layer("relu5", "relu"),
        _Layer("pool5", "pool", stride=(2, 2), pool=(3, 3)),
        *_classifier_layers(),
    ]


def _vgg16_layers() -> list[_Layer]:
    layers: list[_Layer] = []
    for block, (count, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, count + 1):
            layers.append(_Layer(f"conv{block}_{i}", "conv", (3, 3), (1, 1), (1, 1, 1, 1), width=width))
            layers.append(_Layer(f"relu{block}_{i}", "relu"))
        layers.append(_Layer(f"pool{block}", "pool", stride=(2, 2), pool=(2, 2)))
    return layers + _classifier_layers()


def _classifier_layers() -> list[_Layer]:
    return [
        _Layer("fc6", "conv", None, width=4096),
        _Layer("relu6", "relu"),
        _Layer("fc7", "conv", (1, 1), width=4096),
        _Layer("relu7", "relu"),
        _Layer("fc8", "conv", (1, 1), width=1000),
    ]


def _reference(topology: str) -> list[_Layer]:
    if topology == "vgg-m":
        return _vggm_layers()
    if topology == "vgg-vd-16":
        return _vgg16_layers()
    raise CqdError(f"unknown topology '{topology}' (use one of: {', '.join(TOPOLOGIES)})")


def _out_size(size: int, kernel: int, stride: int, pad_a: int, pad_b: int) -> int:
    # MatConvNet's (and PyTorch's floor-mode) output size
    return (size + pad_a + pad_b - kernel) // stride + 1


def feature_size(topology: str, input_size: int = 224) -> int:
    """Side of the last feature map (pool5's output) for a square input: 6 (VGG-M) / 7 (VGG-VD-16) at 224."""
    size = input_size
    for layer in _reference(topology):
        if layer.name == "fc6":
            break
        if layer.type == "conv":
            assert layer.kernel is not None
            size = _out_size(size, layer.kernel[0], layer.stride[0], layer.pad[0], layer.pad[1])
        elif layer.type == "pool":
            assert layer.pool is not None
            size = _out_size(size, layer.pool[0], layer.stride[0], layer.pad[0], layer.pad[1])
        if size < 1:
            raise CqdError(f"input size {input_size} is too small for {topology} (the feature map vanishes at {layer.name})")
    return size


def _build(
    topology: str,
    num_classes: int,
    width: float,
    input_size: int,
    dropout: float,
    softmax: bool,
) -> list[LayerSpec]:
    if num_classes < 1:
        raise CqdError(f"num_classes must be positive, got {num_classes}")
    if width <= 0:
        raise CqdError(f"width multiplier must be positive, got {width}")
    fc6_kernel = feature_size(topology, input_size)
    specs: list[LayerSpec] = []
    depth = 3
    for layer in _reference(topology):
        if layer.type == "conv":
            kernel = layer.kernel or (fc6_kernel, fc6_kernel)
            count = num_classes if layer.name == "fc8" else max(1, int(round(layer.width * width)))
            specs.append(
                LayerSpec(
                    layer.name,
                    "conv",
                    {
                        "size": [kernel[0], kernel[1], depth, count],
                        "pad": list(layer.pad),
                        "stride": list(layer.stride),
                        "dilate": [1, 1],
                        "has_bias": True,
                    },
                )
            )
            depth = count
        elif layer.type == "relu":
            specs.append(LayerSpec(layer.name, "relu", {"leak": 0.0}))
            if dropout > 0 and layer.name in ("relu6", "relu7"):
                # cnn_imagenet_init's training networks: dropout after relu6 and relu7
                specs.append(LayerSpec(f"dropout{layer.name[-1]}", "dropout", {"rate": float(dropout)}))
        elif layer.type == "lrn":
            specs.append(LayerSpec(layer.name, "lrn", {"param": list(layer.param or ())}))
        elif layer.type == "pool":
            specs.append(
                LayerSpec(layer.name, "pool", {"method": "max", "pool": list(layer.pool or ()), "pad": list(layer.pad), "stride": list(layer.stride)})
            )
    if softmax:
        specs.append(LayerSpec("prob", "softmax", {}))
    return specs


def vgg_m_specs(
    num_classes: int = 1000,
    width: float = 1.0,
    input_size: int = 224,
    dropout: float = 0.0,
    softmax: bool = True,
) -> list[LayerSpec]:
    """VGG-M as `imagenet-vgg-m.mat`: conv1 ... fc8 and `prob`, widths scaled by `width` (fc8 = num_classes).

    `dropout > 0` inserts dropout6/dropout7 after relu6/relu7 (the released
    model has none); `softmax=False` drops `prob` (the training network).
    """
    return _build("vgg-m", num_classes, width, input_size, dropout, softmax)


def vgg_vd16_specs(
    num_classes: int = 1000,
    width: float = 1.0,
    input_size: int = 224,
    dropout: float = 0.0,
    softmax: bool = True,
) -> list[LayerSpec]:
    """VGG-VD-16 as `imagenet-vgg-verydeep-16.mat` (conv1_1 ... conv5_3, fc6 ... fc8, prob); options as `vgg_m_specs`."""
    return _build("vgg-vd-16", num_classes, width, input_size, dropout, softmax)


def init_state(specs: Sequence[LayerSpec], seed: int = 0, method: str = "gaussian") -> dict[str, torch.Tensor]:
    """Random float32 parameters for every conv layer with a `size` attribute, reproducibly from `seed`.

    MatConvNet's `cnn_imagenet_init` weight initialisations: "gaussian"
    (default there: N(0, 0.01^2)), "xavier" (uniform, scale sqrt(3 / (h w in)))
    and "xavierimproved" (N(0, 2 / (h w out))); biases zero. Drawn with
    PyTorch's generator, so the numbers differ from MATLAB's `randn`.
    """
    from cqd_port.seeds import check_seed

    generator = torch.Generator().manual_seed(check_seed(seed))
    state: dict[str, torch.Tensor] = {}
    for spec in specs:
        if spec.type == "bnorm":
            raise CqdError(f"layer '{spec.name}': init_state does not initialise bnorm layers (give their parameters in the state)")
        if spec.type != "conv":
            continue
        shape = conv_filter_shape(spec)
        if shape is None:
            raise CqdError(f"layer '{spec.name}': init_state needs the conv attribute 'size' [h w depth count]")
        count, depth, h, w = shape
        if method == "gaussian":
            weight = torch.randn(shape, generator=generator) * 0.01
        elif method == "xavier":
            weight = (torch.rand(shape, generator=generator) * 2 - 1) * math.sqrt(3.0 / (h * w * depth))
        elif method == "xavierimproved":
            weight = torch.randn(shape, generator=generator) * math.sqrt(2.0 / (h * w * count))
        else:
            raise CqdError(f"unknown init method '{method}' (use gaussian, xavier or xavierimproved)")
        state[f"{spec.name}.weight"] = weight
        if spec.attrs.get("has_bias", True):
            state[f"{spec.name}.bias"] = torch.zeros(count)
    return state


def _kernel_of(spec: LayerSpec, state: Mapping[str, Any] | None) -> tuple[int, int] | None:
    shape = conv_filter_shape(spec)
    if shape is not None:
        return shape[2], shape[3]
    if state is not None and f"{spec.name}.weight" in state:
        shape = tuple(state[f"{spec.name}.weight"].shape)
        if len(shape) == 4:
            return int(shape[2]), int(shape[3])
    return None


def _attribute_checks(spec: LayerSpec, ref: _Layer) -> list[tuple[str, Any, Any]]:
    """(attribute, the layer's value, the reference's value) for every attribute `check_topology` compares."""
    a = spec.attrs
    if ref.type == "conv":
        return [
            ("stride", as_pair(a.get("stride", 1), "conv stride"), ref.stride),
            ("pad", as_quad(a.get("pad", 0), "conv pad"), ref.pad),
            ("dilate", as_pair(a.get("dilate", 1), "conv dilate"), (1, 1)),
        ]
    if ref.type == "pool":
        return [
            ("method", a.get("method", "max"), "max"),
            ("pool", as_pair(a.get("pool", 1), "pool size"), ref.pool),
            ("stride", as_pair(a.get("stride", 1), "pool stride"), ref.stride),
            ("pad", as_quad(a.get("pad", 0), "pool pad"), ref.pad),
        ]
    if ref.type == "relu":
        return [("leak", scalar_attr(a.get("leak", 0.0)), 0.0)]
    # lrn
    param = [float(v) for v in a.get("param", [])]
    same = len(param) == 4 and all(math.isclose(p, q, rel_tol=1e-6) for p, q in zip(param, ref.param or ()))
    return [("param", param if not same else list(ref.param or ()), list(ref.param or ()))]


def check_topology(
    specs: Sequence[LayerSpec],
    topology: str,
    state: Mapping[str, Any] | None = None,
    input_size: int = 224,
) -> None:
    """Raise `CqdError` naming the first layer where `specs` departs from MatConvNet's `topology`.

    Compared: layer types in order, conv kernel sizes (from the `size`
    attribute, else from `state[<layer>.weight]`; fc6's must cover the
    feature map of an `input_size` input), strides, paddings, dilation,
    pooling method/size, ReLU leak and LRN parameters. Not compared: widths,
    layer names, dropout layers (identity at test time) and a final softmax
    (the training networks drop `prob`).
    """
    reference = _reference(topology)
    fc6_kernel = feature_size(topology, input_size)
    layers = [s for s in specs if s.type != "dropout"]
    if layers and layers[-1].type == "softmax":
        layers = layers[:-1]
    for i, ref in enumerate(reference):
        if i >= len(layers):
            raise CqdError(f"not a {topology} network: it ends after {len(layers)} layers, expected '{ref.name}' ({ref.type}) next")
        spec = layers[i]
        where = f"not a {topology} network: layer '{spec.name}' (position {i + 1}, expected '{ref.name}')"
        if spec.type != ref.type:
            raise CqdError(f"{where} is of type {spec.type}, expected {ref.type}")
        if ref.type == "conv":
            expected_kernel = ref.kernel or (fc6_kernel, fc6_kernel)
            kernel = _kernel_of(spec, state)
            if kernel is not None and kernel != expected_kernel:
                raise CqdError(f"{where} has a {kernel[0]}x{kernel[1]} filter, expected {expected_kernel[0]}x{expected_kernel[1]}")
        try:
            checks = _attribute_checks(spec, ref)
        except CqdError as exc:  # an attribute with the wrong number of values
            raise CqdError(f"{where}: {exc}") from None
        for what, got, expected in checks:
            if got != expected:
                raise CqdError(f"{where} has {what} {list(got) if isinstance(got, tuple) else got}, expected {list(expected) if isinstance(expected, tuple) else expected}")
    if len(layers) > len(reference):
        extra = layers[len(reference)]
        raise CqdError(f"not a {topology} network: unexpected layer '{extra.name}' ({extra.type}) after fc8")


def identify_topology(specs: Sequence[LayerSpec], state: Mapping[str, Any] | None = None, input_size: int = 224) -> str | None:
    """'vgg-m', 'vgg-vd-16' or None: which of the paper's networks `specs` is."""
    for topology in TOPOLOGIES:
        try:
            check_topology(specs, topology, state, input_size)
        except CqdError:
            continue
        return topology
    return None
