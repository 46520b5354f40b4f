"""The parts every MatConvNet reader and writer share: the imported network, meta, the builder.

`ImportedNetwork` is what any model file becomes (`simplenn.py`, `dagnn.py`
read the two file formats; `export.py` writes them back); `read_meta` reads
`net.meta` (or the pre-beta17 top-level fields) into plain Python; the
`NetworkBuilder` builds the layer list and state dict layer by layer,
checking shapes as it goes, for chains and graphs alike.

Memory: the arrays of the loaded file are converted one layer at a time and
their references dropped as soon as the tensor exists, and filters go
through `torch.from_numpy` on MATLAB's column-major data (no copy) before
`layout.filters_to_oihw` makes the one contiguous OIHW copy; so at most the
file's arrays plus the converted tensors (two copies of the weights) are
alive at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.layout import bias_vector, filters_to_oihw, mcn_to_nchw, pad_trailing_dims
from cqd_port.models.layers import LayerSpec, is_graph
from cqd_port.nn.functional import BETA18_BNORM_EPSILON
from matconvnet_weights.matfile import OpaqueValue
from matconvnet_weights.validate import MAX_FIELD_INTEGER, FieldError, describe, field_numbers, integers

LAYOUT_SIMPLENN = "simplenn"
LAYOUT_SIMPLENN_OLD = "simplenn-pre-beta17"
LAYOUT_DAGNN = "dagnn"

# vl_simplenn_tidy's defaults for fields a layer may omit (1.0-beta18).
DEFAULT_LRN_PARAM = [5.0, 1.0, 0.0001 / 5, 0.75]
DEFAULT_DROPOUT_RATE = 0.5
# beta18's vl_nnbnorm epsilon (1e-3), used where a bnorm layer stores none: beta18's vl_simplenn
# and dagnn.BatchNorm pass none; later versions store the layer's own, which is read instead.
DEFAULT_BNORM_EPSILON = BETA18_BNORM_EPSILON
# The input size assumed when a file names none (fully convolutional nets such as DnCNN).
DEFAULT_IMAGE_SIZE = (224, 224, 3)

def _reserved_names() -> frozenset[str]:
    from cqd_port.models.graph import GraphNetwork

    instance = {"inputs", "outputs", "inplace_relu", "channels_last", "training"}
    return frozenset(dir(GraphNetwork)) | instance


_RESERVED_NAMES = _reserved_names()


@dataclass
class ImportedNetwork:
    """A MatConvNet network (chain or graph), read from any of the three file layouts.

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

    @property
    def is_graph(self) -> bool:
        return is_graph(self.specs)

    def unknown_layers(self) -> list[LayerSpec]:
        """Layers of types the port cannot run (shown by `inspect`, refused by conversion)."""
        return [spec for spec in self.specs if spec.type == "unknown"]


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
                normalization[key] = _meta_integers(value, path, "meta.normalization.imageSize")
            elif key == "keepAspect":
                flags = _meta_numbers(value, path, "meta.normalization.keepAspect")
                normalization[key] = bool(flags[0]) if flags else True
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
        if not isinstance(inputs, list):
            raise CqdError(f"{path}: meta.inputs is {describe(inputs)}; expected a struct array with name and size")
        meta["inputs"] = [
            {"name": str(i.get("name", "")), "size": _meta_integers(i.get("size", []), path, "meta.inputs.size")}
            for i in inputs
            if isinstance(i, dict)
        ]
    for key, value in src.items():  # anything else in meta, kept as plain values
        if key == "inputSize":
            meta.setdefault("extra", {})[key] = _meta_integers(value, path, "meta.inputSize")
        elif key not in ("normalization", "classes", "inputs"):
            meta.setdefault("extra", {})[key] = to_plain(value)
    return meta


def _meta_numbers(value: Any, path: Path, field: str) -> list[float]:
    try:
        return field_numbers(value)
    except FieldError as exc:
        raise CqdError(f"{path}: {field} {exc}") from None


def _meta_integers(value: Any, path: Path, field: str) -> list[int]:
    try:
        return integers(value, minimum=1)
    except FieldError as exc:
        raise CqdError(f"{path}: {field} {exc}") from None


def _average_image(value: Any, path: Path) -> np.ndarray | None:
    if not isinstance(value, np.ndarray) or value.size == 0 or value.dtype.kind not in "biuf":
        return None
    array = np.asarray(value, dtype=np.float32)
    if not np.isfinite(array).all():
        raise CqdError(f"{path}: meta.normalization.averageImage holds NaN or Inf; the file is corrupt: re-export it")
    if array.size == 3:  # a mean colour, however it was shaped
        return array.reshape(1, 1, 3)
    if array.ndim > 3:
        try:
            array = pad_trailing_dims(array, 3)
        except ValueError:
            raise CqdError(f"{path}: meta.normalization.averageImage has shape {value.shape}; expected HxWx3") from None
    return np.ascontiguousarray(pad_trailing_dims(array, 3))


def declared_input_size(meta: dict[str, Any]) -> tuple[list[int], str] | None:
    """The input size a file declares and where: `meta.inputs`, `meta.inputSize`, then
    `meta.normalization.imageSize` (the first that gives at least height and width)."""
    for entry in meta.get("inputs", []) or []:
        size = [int(v) for v in entry.get("size", [])]
        if len(size) >= 2 and all(v > 0 for v in size[:2]):
            return size, "meta.inputs"
    size = (meta.get("extra") or {}).get("inputSize")
    if isinstance(size, list) and len(size) >= 2 and all(isinstance(v, (int, float)) and 0 < v < MAX_FIELD_INTEGER for v in size[:2]):
        return [int(v) for v in size], "meta.inputSize"
    size = meta.get("normalization", {}).get("imageSize")
    if isinstance(size, list) and len(size) >= 2 and all(v > 0 for v in size[:2]):
        return [int(v) for v in size], "meta.normalization.imageSize"
    return None


def input_shape(specs: list[LayerSpec], state: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[tuple[int, int, int], str]:
    """(C, H, W) of one input image, and a note saying where H x W came from.

    H x W from `declared_input_size` (else 224 x 224, said in the note); the
    channels from the first convolution's filter depth (a file's `imageSize`
    often says 3 for a one-channel network), else the declared size, else 3.
    """
    declared = declared_input_size(meta)
    if declared is not None:
        size, source = declared
        h, w = size[0], size[1]
    else:
        size, source = [], "not in the file: assumed"
        h, w = DEFAULT_IMAGE_SIZE[0], DEFAULT_IMAGE_SIZE[1]
    channels = None
    for spec in specs:
        if spec.type in ("conv", "convt"):
            weight = state.get(dict(spec.attrs.get("shared") or {}).get("weight", f"{spec.name}.weight"))
            if weight is not None and weight.dim() == 4:
                channels = int(weight.shape[1]) if spec.type == "conv" else int(weight.shape[0])
            break
        if spec.type == "unknown":
            break
    if channels is None:
        channels = int(size[2]) if len(size) >= 3 else DEFAULT_IMAGE_SIZE[2]
    return (channels, int(h), int(w)), source


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
    if type(value).__module__.startswith("scipy.sparse"):  # not loadable with weights_only=True
        return f"<MATLAB sparse {'x'.join(map(str, value.shape))} matrix>"
    return value


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
    # graph networks: the variables the next layer reads and writes, and the
    # channels of every variable built so far
    _io: tuple[list[str], list[str]] | None = None
    _var_channels: dict[str, int | None] = field(default_factory=dict)
    # DagNN parameter names: the next layer's role -> name, and name -> owning state key
    _param_names: dict[str, str] = field(default_factory=dict)
    param_owner: dict[str, str] = field(default_factory=dict)
    _shared: dict[str, str] = field(default_factory=dict)
    _original_names: set[str] = field(default_factory=set)
    _safe_names: dict[str, str] = field(default_factory=dict)

    # -- helpers
    def fail(self, name: str, message: str) -> CqdError:
        return CqdError(f"{self.path}: layer '{name}': {message}")

    def _numbers(self, name: str, attr: str, value: Any) -> list[float]:
        try:
            return field_numbers(value)
        except FieldError as exc:
            raise self.fail(name, f"'{attr}' {exc}") from None

    def _pair(self, name: str, attr: str, value: Any) -> list[int]:
        v = self._numbers(name, attr, value)
        if len(v) == 1:
            v = v * 2
        if len(v) != 2 or any(x < 1 or x != int(x) or x > MAX_FIELD_INTEGER for x in v):
            raise self.fail(name, f"'{attr}' must be one or two positive integers [y x], got {v}")
        return [int(x) for x in v]

    def _pad(self, name: str, value: Any) -> list[int]:
        v = self._numbers(name, "pad", value)
        if len(v) == 1:
            v = v * 4
        elif len(v) == 2:
            v = [v[0], v[0], v[1], v[1]]
        if len(v) != 4 or any(x < 0 or x != int(x) or x > MAX_FIELD_INTEGER for x in v):
            raise self.fail(name, f"'pad' must be 1, 2 or 4 non-negative integers [top bottom left right], got {v}")
        return [int(x) for x in v]

    def begin(self, inputs: list[str], outputs: list[str], params: dict[str, str] | None = None) -> None:
        """Graph layers: the variables the next layer reads and writes, and its DagNN parameter names by role."""
        self._io = (list(inputs), list(outputs))
        self.next_params(params)
        self.channels = self._var_channels.get(inputs[0]) if inputs else None

    def next_params(self, params: dict[str, str] | None) -> None:
        """The DagNN parameter names of the next layer, by role (`weight`, `bias`, `moments`)."""
        self._param_names = dict(params or {})
        self._shared = {}

    def key(self, name: str) -> str:
        """The state-dict key for a MatConvNet layer name: letters, digits and '_' only, unique, and
        no attribute of the network module (`forward`, `inputs`...)."""
        if name in self._safe_names:
            return self._safe_names[name]
        safe = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
        while safe in _RESERVED_NAMES:  # a layer called 'forward' or 'inputs' would shadow the module's own
            safe += "_"
        taken = set(self._safe_names.values())
        candidate, suffix = safe, 2
        while candidate in taken:
            candidate, suffix = f"{safe}_{suffix}", suffix + 1
        self._safe_names[name] = candidate
        return candidate

    def _store(self, name: str, role: str, tensor: torch.Tensor) -> None:
        """Put a parameter in the state, or, when its DagNN parameter already belongs to an
        earlier layer (a shared parameter), point this layer at the owner's key."""
        param = self._param_names.get(role)
        if param is not None and param in self.param_owner:
            owner_key = self.param_owner[param]
            owner = self.state[owner_key]
            if tuple(owner.shape) != tuple(tensor.shape):
                raise self.fail(name, f"shares parameter '{param}' of shape {tuple(owner.shape)} but needs {tuple(tensor.shape)}")
            self._shared[role] = owner_key
            return
        key = f"{self.key(name)}.{role}"
        self.state[key] = tensor
        if param is not None:
            self.param_owner[param] = key

    def _add(self, name: str, kind: str, attrs: dict[str, Any]) -> None:
        if name in self._original_names:
            raise self.fail(name, "the name is used by two layers; layer names must be unique")
        self._original_names.add(name)
        safe = self.key(name)
        if safe != name:
            attrs["matconvnet_name"] = name
        if self._shared:
            attrs["shared"] = dict(self._shared)
        if self._io is not None:
            attrs["inputs"], attrs["outputs"] = self._io
            for var in self._io[1]:
                self._var_channels[var] = self.channels
            self._io = None
        self.specs.append(LayerSpec(safe, kind, attrs))

    def _tensor(self, name: str, what: str, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise self.fail(name, f"{what} is missing or not a numeric array")
        # from_numpy keeps MATLAB's column-major strides: no copy here.
        if value.dtype != np.float32:
            value = value.astype(np.float32, order="K")
        tensor = torch.from_numpy(value)
        if not bool(torch.isfinite(tensor).all()):
            raise self.fail(name, f"{what} holds NaN or Inf values; the file is corrupt: re-export the network")
        return tensor

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
        self._store(name, "weight", weight)
        if bias is not None:
            self._store(name, "bias", bias)
        self.channels = cout  # before _add: a graph layer's output variable gets the layer's output channels
        self._add(name, "conv", attrs)

    def pool(self, name: str, method: Any, size: Any, pad: Any = 0, stride: Any = 1) -> None:
        """`vl_nnpool`: max pads with -inf, avg divides by the non-padding pixels."""
        if not isinstance(method, str):
            raise self.fail(name, f"pooling 'method' must be the text 'max' or 'avg', got {describe(method)}")
        method = method.lower()
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
        self._store(name, "weight", g)
        self._store(name, "bias", b)
        self._store(name, "moments", m)
        self._add(name, "bnorm", {"epsilon": values[0]})
        self.channels = c

    def convt(self, name: str, filters: Any, biases: Any, upsample: Any = 1, crop: Any = 0, groups: Any = 1) -> None:
        """`vl_nnconvt`: filters FH x FW x K x FD -> FD x K x FH x FW (PyTorch's conv_transpose2d layout)."""
        group_values = self._numbers(name, "numGroups", groups) or [1.0]
        if group_values[0] < 1 or group_values[0] != int(group_values[0]) or group_values[0] > MAX_FIELD_INTEGER:
            raise self.fail(name, f"'numGroups' must be a positive integer, got {group_values[0]}")
        attrs = {
            "upsample": self._pair(name, "upsample", upsample),
            "crop": self._pad(name, crop),
            "groups": int(group_values[0]),
        }
        raw = self._tensor(name, "the filter bank", filters)
        if raw.dim() > 4 or raw.numel() == 0:
            raise self.fail(name, f"filters have shape {tuple(raw.shape)}; expected FH x FW x K x FD")
        weight = filters_to_oihw(raw)
        depth, per_group = int(weight.shape[0]), int(weight.shape[1])
        if self.channels is not None and self.channels != depth:
            raise self.fail(name, f"filter depth {depth} differs from the {self.channels} input channels")
        if depth % attrs["groups"] != 0:
            raise self.fail(name, f"{attrs['groups']} groups do not divide the filter depth {depth}")
        cout = per_group * attrs["groups"]
        has_bias = not _absent(biases)
        attrs["has_bias"] = bool(has_bias)
        self._store(name, "weight", weight)
        if has_bias:
            bias = bias_vector(self._tensor(name, "the biases", biases)).contiguous()
            if bias.numel() != cout:
                raise self.fail(name, f"has {bias.numel()} biases for {cout} outputs; they must match")
            self._store(name, "bias", bias)
        self.channels = cout
        self._add(name, "convt", attrs)

    def scale(self, name: str, multiplier: Any, bias: Any) -> None:
        """`dagnn.Scale`: parameters kept in NCHW order with MATLAB's singleton dimensions (bsxfun broadcasting)."""
        mult = self._tensor(name, "the scale multiplier", multiplier)
        if mult.dim() > 4:
            raise self.fail(name, f"multiplier has shape {tuple(mult.shape)}; expected at most 4 dimensions")
        self._store(name, "weight", mcn_to_nchw(mult.numpy()).contiguous())
        has_bias = not _absent(bias)
        if has_bias:
            b = self._tensor(name, "the scale bias", bias)
            self._store(name, "bias", mcn_to_nchw(b.numpy()).contiguous())
        self._add(name, "scale", {"has_bias": bool(has_bias)})

    def sum(self, name: str) -> None:
        """`dagnn.Sum`: every input must have the channels of the first."""
        if self._io is not None:
            known = {v: self._var_channels.get(v) for v in self._io[0]}
            widths = {c for c in known.values() if c is not None}
            if len(widths) > 1:
                listed = ", ".join(f"'{v}' {c}" for v, c in known.items() if c is not None)
                raise self.fail(name, f"adds variables with different channel counts ({listed}); they must match")
        self._add(name, "sum", {})

    def concat(self, name: str, dim: Any = 3) -> None:
        values = self._numbers(name, "dim", dim) or [3.0]
        if values[0] not in (1.0, 2.0, 3.0, 4.0):
            raise self.fail(name, f"'dim' must be 1..4, got {values[0]}")
        if self._io is not None and int(values[0]) == 3:
            parts = [self._var_channels.get(v) for v in self._io[0]]
            self.channels = sum(parts) if all(p is not None for p in parts) else None  # type: ignore[misc]
        self._add(name, "concat", {"dim": int(values[0])})

    def crop(self, name: str, offset: Any = 0) -> None:
        self._add(name, "crop", {"crop": self._pair_nonneg(name, offset)})

    def _pair_nonneg(self, name: str, value: Any) -> list[int]:
        v = self._numbers(name, "crop", value) or [0.0]
        if len(v) == 1:
            v = v * 2
        if len(v) != 2 or any(x < 0 or x != int(x) or x > MAX_FIELD_INTEGER for x in v):
            raise self.fail(name, f"'crop' must be one or two non-negative integers [y x], got {v}")
        return [int(x) for x in v]

    def unknown(self, name: str, mtype: str) -> None:
        """A layer the port cannot run: kept so `inspect` shows it; its output channels are unknown."""
        self.channels = None
        self._add(name, "unknown", {"matconvnet_type": mtype})

    def finish(self, meta: dict[str, Any], layout: str) -> ImportedNetwork:
        if not self.specs:
            raise CqdError(f"{self.path}: the network has no layers; pass a model file with layers")
        renamed = [f"'{s.attrs['matconvnet_name']}' -> '{s.name}'" for s in self.specs if "matconvnet_name" in s.attrs]
        if renamed:
            meta.setdefault("notes", []).append(
                "layer names made safe for state-dict keys (originals kept in the layer list): " + ", ".join(renamed[:5])
                + (f" and {len(renamed) - 5} more" if len(renamed) > 5 else "")
            )
        meta["layout"] = layout
        return ImportedNetwork(self.specs, self.state, meta, layout, str(self.path))


