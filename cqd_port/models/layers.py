"""The layer list: a declarative description of a MatConvNet chain network.

A network is a list of `LayerSpec`, exactly as `vl_simplenn` runs
`net.layers{1..L}` one after the other. The readers in `matconvnet_weights`
produce it from any of the three MatConvNet file layouts, the builders in
`cqd_port.models.vgg` produce it from scratch, and `SimpleNetwork` runs it.
Specs hold only plain Python values, so a checkpoint stores them and loads
with `torch.load(..., weights_only=True)`.

Layer types and their attributes (`attrs`), in MatConvNet's conventions:

| type | attrs | MatConvNet block |
|---|---|---|
| conv | pad [top bottom left right], stride [y x], dilate [y x], has_bias, size [h w depth count] (optional; shapes otherwise come from the state) | vl_nnconv (fully connected layers are convolutions) |
| pool | method "max"/"avg", pool [h w], pad [t b l r], stride [y x] | vl_nnpool |
| lrn | param [N kappa alpha beta] | vl_nnnormalize |
| relu | leak | vl_nnrelu |
| dropout | rate | vl_nndropout |
| softmax | (none) | vl_nnsoftmax |
| bnorm | epsilon | vl_nnbnorm (test mode, moments [mean sigma]) |
| convt | upsample [y x], crop [t b l r], groups, has_bias | vl_nnconvt (dagnn.ConvTranspose); weight FD x K x FH x FW |
| scale | has_bias | dagnn.Scale; weight/bias NCHW with MATLAB's singleton dims |
| sum | (none; several inputs) | dagnn.Sum |
| concat | dim (MATLAB's, 3 = channels; several inputs) | dagnn.Concat |
| crop | crop [y x] (two inputs) | dagnn.Crop |
| unknown | matconvnet_type | a layer the port cannot run: `inspect` shows it, conversion refuses it |

Graph networks (DagNN files that are not chains) add to every layer's attrs
`inputs` and `outputs` (DagNN variable names); `cqd_port.models.graph.GraphNetwork`
runs them. A layer reusing another layer's parameter (recursive networks)
has `shared` {"weight": "<owner layer>.weight", ...}: the parameter lives once,
under its owner's key. A layer whose MatConvNet name cannot be a state-dict
key (dots, control characters...) gets a safe name and keeps the original
in `matconvnet_name`.

Parameters live in the network's state dict under `<layer name>.weight`
(filters OIHW / bnorm gain), `<layer name>.bias` and `<layer name>.moments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cqd_port.errors import CqdError

LAYER_TYPES = ("conv", "pool", "lrn", "relu", "dropout", "softmax", "bnorm", "convt", "scale", "sum", "concat", "crop", "unknown")
# Types that read several variables: they exist only in graph networks.
MULTI_INPUT_TYPES = ("sum", "concat", "crop")


@dataclass
class LayerSpec:
    name: str
    type: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in LAYER_TYPES:
            raise CqdError(
                f"layer '{self.name}': unknown layer type '{self.type}' "
                f"(supported: {', '.join(LAYER_TYPES)})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "attrs": _plain(self.attrs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerSpec":
        return cls(name=str(data["name"]), type=str(data["type"]), attrs=dict(data.get("attrs", {})))


def _plain(value: Any) -> Any:
    """Plain Python (lists, floats, ints, str, bool) for weights_only checkpoints."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return value


def scalar_attr(value: Any) -> float:
    """A scalar attribute (`leak`, `rate`, `epsilon`); readers may keep MATLAB's 1x1 arrays as one-element lists."""
    return float(value[0]) if isinstance(value, (list, tuple)) else float(value)


def display_name(spec: LayerSpec) -> str:
    """The layer's name as MatConvNet had it (`matconvnet_name` when the key had to be made safe)."""
    return str(spec.attrs.get("matconvnet_name", spec.name))


def display_type(spec: LayerSpec) -> str:
    """The layer type, or for an unknown layer its MatConvNet type marked as unknown."""
    if spec.type == "unknown":
        return f"{spec.attrs.get('matconvnet_type', '?')} (unknown)"
    return spec.type


def is_graph(specs: list[LayerSpec]) -> bool:
    """True for the layer list of a graph network (layers name their input variables)."""
    return any("inputs" in spec.attrs for spec in specs)


def conv_filter_shape(spec: LayerSpec) -> tuple[int, int, int, int] | None:
    """A conv layer's `size` attribute [h w depth count] (MatConvNet's order) as the OIHW shape, or None without one."""
    size = spec.attrs.get("size")
    if size is None:
        return None
    h, w, depth, count = (int(v) for v in size)
    return (count, depth, h, w)
