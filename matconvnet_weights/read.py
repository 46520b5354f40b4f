"""Read any MatConvNet model file: the layout is detected from what the file holds.

`read_network` loads the `.mat` container (`matfile.load_mat`), unwraps a
network saved as one variable (`save(f, 'net')`, as `cnn_train` does) and
hands it to the reader of its format (`simplenn.read_simplenn` or
`dagnn.read_dagnn`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cqd_port.errors import CqdError
from matconvnet_weights.dagnn import read_dagnn
from matconvnet_weights.matfile import OpaqueValue, load_mat
from matconvnet_weights.network import ImportedNetwork
from matconvnet_weights.simplenn import read_simplenn


def read_network(path: str | os.PathLike[str]) -> ImportedNetwork:
    """Read a MatConvNet model file (SimpleNN current or pre-beta17, or DagNN `saveobj`).

    Raises `CqdError` naming the file (and the layer, when one is at fault)
    for a file that is not a MAT file, holds no network or has inconsistent
    parameter shapes. Layers of unknown types are kept (`ImportedNetwork.unknown_layers`).
    """
    path = Path(path)
    top = unwrap_network_variable(load_mat(path), path)
    if looks_like_dagnn(top):
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


def looks_like_dagnn(top: dict[str, Any]) -> bool:
    layers = top.get("layers")
    first = layers if isinstance(layers, dict) else (layers[0] if isinstance(layers, list) and layers else None)
    return ("vars" in top or "params" in top) and isinstance(first, dict) and "block" in first
