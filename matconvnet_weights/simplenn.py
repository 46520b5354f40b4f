"""MatConvNet SimpleNN model files -> the layer list, and the layout auto-detection.

Two SimpleNN layouts exist in the wild:

- current (1.0-beta17 and later, e.g. `imagenet-vgg-m.mat` as distributed
  today): `layers{i}.weights = {filters, biases}`, `meta.normalization`,
  `meta.classes`, `meta.inputs`;
- pre-1.0-beta17: `layers{i}.filters` / `layers{i}.biases`, top-level
  `normalization` and `classes`.

`vl_simplenn_tidy` upgrades the old layout and fills in missing fields with
defaults; `read_network` does the same (defaults below are tidy's), so all
layouts and the DagNN `saveobj` layout (`dagnn.py`) yield the same
`ImportedNetwork`. A model saved as a single variable (`save(f, 'net')`, as
`cnn_train`/`cnn_train_dag` do) is unwrapped.

Memory: the arrays of the loaded file are converted one layer at a time and
their references dropped as soon as the tensor exists, and filters go
through `torch.from_numpy` on MATLAB's column-major data (no copy) before
`layout.filters_to_oihw` makes the one contiguous OIHW copy; so at most the
file's arrays plus the converted tensors (two copies of the weights) are
alive at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.layout import bias_vector, filters_to_oihw, pad_trailing_dims
from cqd_port.models.layers import LayerSpec
from matconvnet_weights.matfile import OpaqueValue, load_mat

LAYOUT_SIMPLENN = "simplenn"
LAYOUT_SIMPLENN_OLD = "simplenn-pre-beta17"
LAYOUT_DAGNN = "dagnn"

# SimpleNN types this reader converts (MatConvNet name -> LayerSpec type).
SIMPLENN_TYPES = {
    "conv": "conv",
    "pool": "pool",
    "normalize": "lrn",
    "lrn": "lrn",
    "relu": "relu",
    "dropout": "dropout",
    "softmax": "softmax",
    "bnorm": "bnorm",
}
# Loss layers end a training network; the converted network is for inference.
SIMPLENN_LOSS_TYPES = ("softmaxloss", "loss")

# vl_simplenn_tidy's defaults for fields a layer may omit (1.0-beta18).
DEFAULT_LRN_PARAM = [5.0, 1.0, 0.0001 / 5, 0.75]
DEFAULT_DROPOUT_RATE = 0.5
DEFAULT_BNORM_EPSILON = 1e-5


@dataclass
class ImportedNetwork:
    """A MatConvNet chain network, read from any of the three file layouts.

    `specs`: the layer list; `state`: float32 tensors `<layer>.weight`
    (filters OIHW / bnorm gain), `<layer>.bias`, `<layer>.moments` (C x 2,
    `[mean sigma]`); `meta`: plain Python (see `read_meta`) plus
    `normalization.averageImage` as an HxWx3 (or 1x1x3) float32 numpy array;
    `layout`: which file layout it came from.
    """

    specs: list[LayerSpec]
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    layout: str = LAYOUT_SIMPLENN
    source: str = ""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state


def read_network(path: str | os.PathLike[str]) -> ImportedNetwork:
    """Read a MatConvNet model file (SimpleNN current or pre-beta17, or DagNN `saveobj`).

    The layout is detected from the variables the file holds. Raises
    `CqdError` naming the file (and the layer, when one is at fault) for a
    file that is not a MAT file, holds no network, has an unknown layer type
    or inconsistent parameter shapes.
    """
    path = Path(path)
    top = load_mat(path)
    top = unwrap_network_variable(top, path)
    if _looks_like_dagnn(top):
        from matconvnet_weights.dagnn import read_dagnn

        return read_dagnn(top, path)
    return read_simplenn(top, path)


def unwrap_network_variable(top: dict[str, Any], path: Path) -> dict[str, Any]:
    """The struct holding `layers`: the file itself, or its one variable (`save(f, 'net')`)."""
    if "layers" in top:
        return top
    candidates = [v for v in top.values() if isinstance(v, dict) and "layers" in v]
    if len(candidates) == 1:
        return candidates[0]
    opaque = [name for name, v in top.items() if isinstance(v, OpaqueValue)]
    if opaque:
        raise CqdError(
            f"{path}: variable '{opaque[0]}' is a MATLAB object; save the network as a struct "
            "(net = net.saveobj() for DagNN, or a SimpleNN struct) and convert that file"
        )
    found = ", ".join(sorted(top)) or "nothing"
    raise CqdError(
        f"{path}: holds no MatConvNet network (no 'layers' variable; found: {found}); "
        "pass a SimpleNN or DagNN model file such as imagenet-vgg-m.mat"
    )


def _looks_like_dagnn(top: dict[str, Any]) -> bool:
    layers = top.get("layers")
    first = layers if isinstance(layers, dict) else (layers[0] if isinstance(layers, list) and layers else None)
    return ("vars" in top or "params" in top) and isinstance(first, dict) and "block" in first


# ----------------------------------------------------------------------------- SimpleNN


def read_simplenn(top: dict[str, Any], path: Path) -> ImportedNetwork:
    """Convert the plain contents of a SimpleNN file (either layout) to an `ImportedNetwork`."""
    layers = top["layers"]
    if isinstance(layers, dict):
        layers = [layers]
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise CqdError(f"{path}: 'layers' is not a cell array of layer structs; not a MatConvNet SimpleNN file")
    legacy = _is_legacy(top, layers)
    meta = read_meta(top, path)
    builder = NetworkBuilder(path, input_channels(meta))
    types = [str(layer.get("type", "")) for layer in layers]

    # Trailing loss layers are dropped (the converted network is for inference).
    end = len(layers)
    while end > 0 and types[end - 1] in SIMPLENN_LOSS_TYPES:
        end -= 1
    dropped = [{"name": _layer_name(layers[i], i), "type": types[i]} for i in range(end, len(layers))]

    for index in range(end):
        layer = layers[index]
        _simplenn_layer(builder, index, layer, types[index])
        layers[index] = None  # let the file's arrays go as soon as they are converted
    note_dropped_layers(meta, dropped)
    return builder.finish(meta, LAYOUT_SIMPLENN_OLD if legacy else LAYOUT_SIMPLENN)


def note_dropped_layers(meta: dict[str, Any], dropped: list[dict[str, str]]) -> None:
    """Record the dropped trailing loss layers (`{"name", "type"}` each) in `meta`, with a note."""
    if not dropped:
        return
    meta["dropped_layers"] = dropped
    meta.setdefault("notes", []).append(
        "dropped the trailing loss layer(s) "
        + ", ".join(f"'{d['name']}' ({d['type']})" for d in dropped)
        + ": the converted network is for inference"
    )


def _is_legacy(top: dict[str, Any], layers: list[dict[str, Any]]) -> bool:
    if "meta" in top:
        return False
    if "normalization" in top or "classes" in top:
        return True
    return any("filters" in layer and "weights" not in layer for layer in layers)


def _layer_name(layer: dict[str, Any], index: int) -> str:
    # vl_simplenn_tidy names unnamed layers layer1, layer2, ...
    name = layer.get("name")
    return name if isinstance(name, str) and name else f"layer{index + 1}"


def _simplenn_layer(builder: "NetworkBuilder", index: int, layer: dict[str, Any], mtype: str) -> None:
    name = _layer_name(layer, index)
    if mtype in SIMPLENN_LOSS_TYPES:
        raise CqdError(
            f"{builder.path}: layer '{name}' is a '{mtype}' loss layer in the middle of the network; "
            "only trailing loss layers can be dropped"
        )
    if mtype not in SIMPLENN_TYPES:
        raise CqdError(
            f"{builder.path}: layer '{name}' has unknown type '{mtype}' "
            f"(supported: {', '.join(SIMPLENN_TYPES)}); remove it or convert a network without it"
        )
    kind = SIMPLENN_TYPES[mtype]
    if kind == "conv":
        filters, biases, _ = _weights(layer)
        builder.conv(
            name,
            filters,
            biases,
            pad=layer.get("pad", 0),
            stride=layer.get("stride", 1),
            dilate=layer.get("dilate", 1),
        )
    elif kind == "pool":
        builder.pool(
            name,
            method=layer.get("method", "max"),
            size=layer.get("pool"),
            pad=layer.get("pad", 0),
            stride=layer.get("stride", 1),
        )
    elif kind == "lrn":
        builder.lrn(name, layer.get("param", DEFAULT_LRN_PARAM))
    elif kind == "relu":
        builder.relu(name, layer.get("leak", 0.0))
    elif kind == "dropout":
        builder.dropout(name, layer.get("rate", DEFAULT_DROPOUT_RATE))
    elif kind == "softmax":
        builder.softmax(name)
    elif kind == "bnorm":
        gain, bias, moments = _weights(layer)
        builder.bnorm(
            name,
            gain,
            bias,
            moments,
            layer.get("epsilon", DEFAULT_BNORM_EPSILON),
        )


def _weights(layer: dict[str, Any]) -> list[Any]:
    """`layer.weights` (current layout) or the pre-beta17 `filters`/`biases` fields, popped.

    The first three entries, `None` for those the layer lacks (conv: filters,
    biases; bnorm: gain, bias, moments).
    """
    if "weights" in layer:
        weights = layer.pop("weights")
        if isinstance(weights, np.ndarray):  # a single array instead of a cell
            weights = [weights]
        weights = list(weights) if isinstance(weights, list) else []
    else:
        weights = [layer.pop(f) for f in ("filters", "biases") if f in layer]
    return (weights + [None, None, None])[:3]


def _absent(value: Any) -> bool:
    """No value, or an empty MATLAB array or cell (`[]`, `{}`)."""
    return value is None or (isinstance(value, np.ndarray) and value.size == 0) or (isinstance(value, list) and not value)


# ----------------------------------------------------------------------------- meta


def read_meta(top: dict[str, Any], path: Path) -> dict[str, Any]:
    """`meta` (or the pre-beta17 top-level fields) as plain Python.

    Keys: `normalization` (`averageImage` as float32 HxWx3 or 1x1x3 numpy,
    `imageSize` [h, w, c], `interpolation`, `keepAspect`, `border`,
    `cropSize`, and any other field as plain values), `classes`
    (`name`, `description` lists of str), `inputs` (list of
    {name, size}), `source` (the file name).
    """
    src = top.get("meta") if isinstance(top.get("meta"), dict) else {}
    norm_src = src.get("normalization", top.get("normalization", {}))
    classes_src = src.get("classes", top.get("classes", {}))
    meta: dict[str, Any] = {"source": path.name}

    normalization: dict[str, Any] = {}
    if isinstance(norm_src, dict):
        for key, value in norm_src.items():
            if key == "averageImage":
                normalization[key] = _average_image(value, path)
            elif key == "imageSize":
                normalization[key] = [int(round(v)) for v in _floats(value)]
            elif key == "keepAspect":
                normalization[key] = bool(_floats(value)[0]) if _floats(value) else True
            else:
                normalization[key] = to_plain(value)
    meta["normalization"] = normalization

    classes: dict[str, Any] = {}
    if isinstance(classes_src, dict):
        for key, value in classes_src.items():
            classes[key] = _string_list(value) if key in ("name", "description") else to_plain(value)
    meta["classes"] = classes

    inputs = src.get("inputs")
    if inputs is not None:
        inputs = [inputs] if isinstance(inputs, dict) else inputs
        meta["inputs"] = [
            {"name": str(i.get("name", "")), "size": [int(round(v)) for v in _floats(i.get("size", []))]}
            for i in inputs
            if isinstance(i, dict)
        ]
    for key, value in src.items():  # anything else in meta, kept as plain values
        if key not in ("normalization", "classes", "inputs"):
            meta.setdefault("extra", {})[key] = to_plain(value)
    return meta


def _average_image(value: Any, path: Path) -> np.ndarray | None:
    if not isinstance(value, np.ndarray) or value.size == 0:
        return None
    array = np.asarray(value, dtype=np.float32)
    if array.size == 3:  # a mean colour, however it was shaped
        return array.reshape(1, 1, 3)
    if array.ndim > 3:
        try:
            array = pad_trailing_dims(array, 3)
        except ValueError:
            raise CqdError(f"{path}: meta.normalization.averageImage has shape {value.shape}; expected HxWx3") from None
    return np.ascontiguousarray(pad_trailing_dims(array, 3))


def input_channels(meta: dict[str, Any]) -> int | None:
    """Channels of the network input, from `imageSize` or `inputs` (None if the file does not say)."""
    size = meta.get("normalization", {}).get("imageSize")
    if isinstance(size, list) and len(size) >= 3:
        return int(size[2])
    for entry in meta.get("inputs", []):
        if len(entry.get("size", [])) >= 3:
            return int(entry["size"][2])
    return None


def to_plain(value: Any) -> Any:
    """Plain Python for checkpoints loaded with weights_only=True (vectors flattened, scalars unwrapped)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, OpaqueValue):
        return f"<MATLAB {value.class_name}>"
    if isinstance(value, np.ndarray):
        if value.dtype == bool:
            value = value.astype(np.uint8)
        if value.size == 1:
            return value.reshape(()).item()
        if value.ndim == 2 and 1 in value.shape:
            return value.ravel(order="F").tolist()
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _floats(value: Any) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"expected numbers, got {array.dtype}")
    return [float(v) for v in array.ravel(order="F")]


def _string_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v if isinstance(v, str) else str(to_plain(v)) for v in value]
    return [str(v) for v in np.asarray(value).ravel(order="F")]


# ----------------------------------------------------------------------------- the builder


@dataclass
class NetworkBuilder:
    """Builds the layer list and state dict layer by layer, checking shapes as it goes.

    Attribute conventions are MatConvNet's: pad `[top bottom left right]`
    (a scalar pads all sides; a 2-vector is read as `[y x]`, i.e. top=bottom=y,
    left=right=x), stride/dilate/pool `[y x]` (a scalar applies to both).
    """

    path: Path
    channels: int | None = None
    specs: list[LayerSpec] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    # -- helpers
    def fail(self, name: str, message: str) -> CqdError:
        return CqdError(f"{self.path}: layer '{name}': {message}")

    def _numbers(self, name: str, attr: str, value: Any) -> list[float]:
        try:
            return _floats(value)
        except TypeError:
            raise self.fail(name, f"'{attr}' must be numeric, got {type(value).__name__}") from None

    def _pair(self, name: str, attr: str, value: Any) -> list[int]:
        v = self._numbers(name, attr, value)
        if len(v) == 1:
            v = v * 2
        if len(v) != 2 or any(x < 1 or x != int(x) for x in v):
            raise self.fail(name, f"'{attr}' must be one or two positive integers [y x], got {v}")
        return [int(x) for x in v]

    def _pad(self, name: str, value: Any) -> list[int]:
        v = self._numbers(name, "pad", value)
        if len(v) == 1:
            v = v * 4
        elif len(v) == 2:
            v = [v[0], v[0], v[1], v[1]]
        if len(v) != 4 or any(x < 0 or x != int(x) for x in v):
            raise self.fail(name, f"'pad' must be 1, 2 or 4 non-negative integers [top bottom left right], got {v}")
        return [int(x) for x in v]

    def _add(self, name: str, kind: str, attrs: dict[str, Any]) -> None:
        if any(spec.name == name for spec in self.specs):
            raise self.fail(name, "the name is used by two layers; layer names must be unique")
        self.specs.append(LayerSpec(name, kind, attrs))

    def _tensor(self, name: str, what: str, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise self.fail(name, f"{what} is missing or not a numeric array")
        # from_numpy keeps MATLAB's column-major strides: no copy here.
        if value.dtype != np.float32:
            value = value.astype(np.float32, order="K")
        return torch.from_numpy(value)

    # -- layers
    def conv(self, name: str, filters: Any, biases: Any, pad: Any = 0, stride: Any = 1, dilate: Any = 1) -> None:
        """`vl_nnconv`: filters HxWxCin_per_group x Cout -> OIHW; fully connected layers are convolutions."""
        attrs = {
            "pad": self._pad(name, pad),
            "stride": self._pair(name, "stride", stride),
            "dilate": self._pair(name, "dilate", dilate),
        }
        raw = self._tensor(name, "the filter bank", filters)
        if raw.dim() > 4:
            raw = raw.reshape(tuple(raw.shape[:4])) if all(d == 1 for d in raw.shape[4:]) else raw
        if raw.dim() > 4 or raw.numel() == 0:
            raise self.fail(name, f"filters have shape {tuple(raw.shape)}; expected H x W x Cin x Cout")
        weight = filters_to_oihw(raw)
        del raw, filters
        cout, depth = int(weight.shape[0]), int(weight.shape[1])
        if self.channels is not None:
            if self.channels % depth != 0:
                raise self.fail(
                    name,
                    f"filter depth {depth} does not divide the {self.channels} input channels; "
                    "the filters do not fit the previous layer",
                )
            groups = self.channels // depth
            if cout % groups != 0:
                raise self.fail(name, f"{cout} filters cannot be split into {groups} groups")
        has_bias = not _absent(biases)
        bias = None
        if has_bias:
            bias = bias_vector(self._tensor(name, "the biases", biases)).contiguous()
            if bias.numel() != cout:
                raise self.fail(name, f"has {bias.numel()} biases for {cout} filters; they must match")
        attrs["has_bias"] = bool(has_bias)
        self.state[f"{name}.weight"] = weight
        if bias is not None:
            self.state[f"{name}.bias"] = bias
        self._add(name, "conv", attrs)
        self.channels = cout

    def pool(self, name: str, method: Any, size: Any, pad: Any = 0, stride: Any = 1) -> None:
        """`vl_nnpool`: max pads with -inf, avg divides by the non-padding pixels."""
        method = str(method).lower() if isinstance(method, str) else method
        if method not in ("max", "avg"):
            raise self.fail(name, f"pooling method {method!r} is not 'max' or 'avg'")
        if size is None:
            raise self.fail(name, "pool layer has no 'pool' size")
        attrs = {
            "method": method,
            "pool": self._pair(name, "pool", size),
            "pad": self._pad(name, pad),
            "stride": self._pair(name, "stride", stride),
        }
        self._add(name, "pool", attrs)

    def lrn(self, name: str, param: Any) -> None:
        """`vl_nnnormalize`: param [N kappa alpha beta] (alpha not divided by N)."""
        values = self._numbers(name, "param", param)
        if len(values) != 4:
            raise self.fail(name, f"LRN 'param' must be [N kappa alpha beta], got {values}")
        self._add(name, "lrn", {"param": values})

    def relu(self, name: str, leak: Any = 0.0) -> None:
        values = self._numbers(name, "leak", leak) or [0.0]
        self._add(name, "relu", {"leak": values[0]})

    def dropout(self, name: str, rate: Any = DEFAULT_DROPOUT_RATE) -> None:
        values = self._numbers(name, "rate", rate) or [DEFAULT_DROPOUT_RATE]
        if not 0.0 <= values[0] < 1.0:
            raise self.fail(name, f"dropout rate {values[0]} is outside [0, 1)")
        self._add(name, "dropout", {"rate": values[0]})

    def softmax(self, name: str) -> None:
        self._add(name, "softmax", {})

    def bnorm(self, name: str, gain: Any, bias: Any, moments: Any, epsilon: Any = DEFAULT_BNORM_EPSILON) -> None:
        """`vl_nnbnorm` in test mode: gain, bias (C) and moments C x 2 `[mean sigma]`."""
        g = bias_vector(self._tensor(name, "the bnorm gain", gain)).contiguous()
        b = bias_vector(self._tensor(name, "the bnorm bias", bias)).contiguous()
        c = g.numel()
        if _absent(moments):
            raise self.fail(name, "batch normalization has no moments; only test-mode bnorm can be converted")
        m = self._tensor(name, "the bnorm moments", moments)
        if tuple(m.shape) != (c, 2):
            raise self.fail(name, f"moments have shape {tuple(m.shape)}; expected {c} x 2 [mean sigma]")
        m = m.contiguous()
        if b.numel() != c:
            raise self.fail(name, f"gain has {c} entries but bias {b.numel()}; they must match")
        if self.channels is not None and self.channels != c:
            raise self.fail(name, f"has {c} channels but its input has {self.channels}")
        values = self._numbers(name, "epsilon", epsilon) or [DEFAULT_BNORM_EPSILON]
        self.state[f"{name}.weight"] = g
        self.state[f"{name}.bias"] = b
        self.state[f"{name}.moments"] = m
        self._add(name, "bnorm", {"epsilon": values[0]})
        self.channels = c

    def finish(self, meta: dict[str, Any], layout: str) -> ImportedNetwork:
        if not self.specs:
            raise CqdError(f"{self.path}: the network has no layers; pass a model file with layers")
        meta["layout"] = layout
        return ImportedNetwork(self.specs, self.state, meta, layout, str(self.path))

