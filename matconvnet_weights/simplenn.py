"""MatConvNet SimpleNN model files -> `ImportedNetwork`.

Two SimpleNN layouts exist in the wild:

- current (1.0-beta17 and later, e.g. `imagenet-vgg-m.mat` as distributed
  today): `layers{i}.weights = {filters, biases}`, `meta.normalization`,
  `meta.classes`, `meta.inputs`;
- pre-1.0-beta17: `layers{i}.filters` / `layers{i}.biases`, top-level
  `normalization` and `classes`.

`vl_simplenn_tidy` upgrades the old layout and fills in missing fields with
defaults; `read_simplenn` does the same (defaults are tidy's). Trailing loss
layers of any kind (`softmaxloss`, `loss`, `pdist`, a `custom` layer holding
function handles, any type named like a loss) are dropped with a note: the
converted network is for inference. Layers of other types the port does not
know are kept as `unknown` layers (`inspect` shows them; conversion refuses
them, naming each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.errors import CqdError
from matconvnet_weights.network import (
    DEFAULT_BNORM_EPSILON,
    DEFAULT_DROPOUT_RATE,
    DEFAULT_LRN_PARAM,
    LAYOUT_SIMPLENN,
    LAYOUT_SIMPLENN_OLD,
    ImportedNetwork,
    NetworkBuilder,
    note_dropped_layers,
    read_meta,
)

# SimpleNN types this reader converts (MatConvNet name -> LayerSpec type).
SIMPLENN_TYPES = {
    "conv": "conv",
    "convt": "convt",
    "pool": "pool",
    "normalize": "lrn",
    "lrn": "lrn",
    "relu": "relu",
    "dropout": "dropout",
    "softmax": "softmax",
    "bnorm": "bnorm",
}
# Loss layers end a training network; the converted network is for inference.
SIMPLENN_LOSS_TYPES = ("softmaxloss", "loss", "pdist", "custom")


def is_loss_type(mtype: str) -> bool:
    """A SimpleNN or DagNN layer type that ends a training network (a loss or a custom layer)."""
    short = mtype.split(".")[-1].lower()
    return short in SIMPLENN_LOSS_TYPES or "loss" in short


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
    builder = NetworkBuilder(path)
    types = [str(layer.get("type", "")) if isinstance(layer.get("type", ""), str) else "?" for layer in layers]

    # Trailing loss layers are dropped (the converted network is for inference).
    end = len(layers)
    while end > 0 and is_loss_type(types[end - 1]):
        end -= 1
    dropped = [{"name": _layer_name(layers[i], i), "type": types[i]} for i in range(end, len(layers))]

    for index in range(end):
        layer = layers[index]
        _simplenn_layer(builder, index, layer, types[index])
        layers[index] = None  # let the file's arrays go as soon as they are converted
    note_dropped_layers(meta, dropped)
    return builder.finish(meta, LAYOUT_SIMPLENN_OLD if legacy else LAYOUT_SIMPLENN)


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


def _simplenn_layer(builder: NetworkBuilder, index: int, layer: dict[str, Any], mtype: str) -> None:
    name = _layer_name(layer, index)
    if mtype not in SIMPLENN_TYPES:
        # a loss in the middle of the network, or a type the port does not know
        builder.unknown(name, mtype)
        return
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
    elif kind == "convt":
        filters, biases, _ = _weights(layer)
        builder.convt(
            name,
            filters,
            biases,
            upsample=layer.get("upsample", 1),
            crop=layer.get("crop", 0),
            groups=layer.get("numGroups", 1),
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


