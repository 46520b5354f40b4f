"""Converted checkpoints (`.pt`), loading models from `.mat` or `.pt`, and the layer table.

The checkpoint is a plain dict that loads with `torch.load(path,
weights_only=True)`:

    {"format": "cqd-port-checkpoint/1",
     "layers": [LayerSpec.to_dict(), ...],
     "state_dict": {"<layer>.weight": tensor, ...},
     "meta": {... plain Python ..., "normalization": {"averageImage": tensor, ...}}}

It is written atomically (`cqd_port.fileio`), so an interrupted conversion
leaves no half-written file.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_torch_save
from cqd_port.models.layers import LayerSpec
from cqd_port.models.network import SimpleNetwork
from cqd_port.models.vgg import check_topology
from cqd_port.nn.functional import as_pair, as_quad
from matconvnet_weights.simplenn import ImportedNetwork, read_network

CHECKPOINT_FORMAT = "cqd-port-checkpoint/1"
MODEL_NAMES = ("vgg-m", "vgg-vd-16")
DEFAULT_IMAGE_SIZE = (224, 224, 3)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: str | os.PathLike[str],
    specs: list[LayerSpec],
    state: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> Path:
    """Write the checkpoint atomically; `averageImage` is stored as a tensor. Returns the path."""
    path = Path(path)
    meta_out = _meta_for_checkpoint(meta)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "layers": [spec.to_dict() for spec in specs],
        "state_dict": {key: _checkpoint_tensor(key, value) for key, value in state.items()},
        "meta": meta_out,
    }
    try:
        atomic_torch_save(path, payload)
    except OSError as exc:
        raise CqdError(f"{path}: cannot write the checkpoint ({exc.strerror or exc}); choose another output path") from None
    return path


def _checkpoint_tensor(key: str, value: Any) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    return tensor.detach().cpu()


def _meta_for_checkpoint(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta as weights_only-loadable values: averageImage a float32 tensor, the rest plain Python."""
    meta = dict(meta or {})
    normalization = dict(meta.get("normalization") or {})
    average = normalization.pop("averageImage", None)
    out = _checkpoint_plain({**meta, "normalization": normalization})
    if average is not None:
        tensor = average.detach().cpu() if isinstance(average, torch.Tensor) else torch.from_numpy(np.asarray(average))
        out["normalization"]["averageImage"] = tensor.to(torch.float32).contiguous().clone()
    return out


def _checkpoint_plain(value: Any) -> Any:
    # numpy values (which weights_only=True refuses) become Python numbers and lists.
    if isinstance(value, dict):
        return {str(k): _checkpoint_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_checkpoint_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (np.ndarray, np.generic)):
        return _checkpoint_plain(value.tolist())
    if isinstance(value, os.PathLike):
        return str(value)
    return copy.deepcopy(value)


def load_checkpoint(path: str | os.PathLike[str]) -> ImportedNetwork:
    """Read a checkpoint written by `save_checkpoint` (weights_only: no code is unpickled).

    `meta.normalization.averageImage` comes back as a float32 numpy array, as
    `read_network` gives it.
    """
    path = Path(path)
    if not path.exists():
        raise CqdError(f"{path}: no such file; check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CqdError(
            f"{path}: not a readable cqd-port checkpoint ({reason}); convert the model again with convert-weights"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CqdError(
            f"{path}: not a cqd-port checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r}); "
            "convert the MatConvNet model with convert-weights"
        )
    try:
        specs = [LayerSpec.from_dict(entry) for entry in payload["layers"]]
        state = dict(payload["state_dict"])
        meta = dict(payload.get("meta", {}))
    except (KeyError, TypeError) as exc:
        raise CqdError(f"{path}: the checkpoint is incomplete ({exc}); convert the model again") from None
    normalization = dict(meta.get("normalization", {}))
    if isinstance(normalization.get("averageImage"), torch.Tensor):
        normalization["averageImage"] = normalization["averageImage"].numpy()
    meta["normalization"] = normalization
    return ImportedNetwork(specs, state, meta, str(meta.get("layout", "checkpoint")), str(path))


def read_any(path: str | os.PathLike[str]) -> ImportedNetwork:
    """A MatConvNet `.mat` file or a converted checkpoint, told apart by their contents."""
    path = Path(path)
    if not path.exists():
        raise CqdError(f"{path}: no such file; check the path")
    if path.is_file():
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic.startswith(b"PK"):  # torch.save's zip container
            return load_checkpoint(path)
    return read_network(path)


def load_model(path: str | os.PathLike[str], lrn_mode: str = "exact") -> SimpleNetwork:
    """A `SimpleNetwork` from a MatConvNet `.mat` (any layout) or a converted `.pt` checkpoint."""
    imported = read_any(path)
    try:
        return SimpleNetwork(imported.specs, imported.state, imported.meta, lrn_mode=lrn_mode)
    except CqdError as exc:
        raise CqdError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------- conversion


def check_model_name(model: str | None) -> str | None:
    if model is None:
        return None
    if model not in MODEL_NAMES:
        raise CqdError(f"unknown model '{model}' for --model (use one of: {', '.join(MODEL_NAMES)})")
    return model


def default_output_path(mat_path: str | os.PathLike[str]) -> Path:
    return Path(mat_path).with_suffix(".pt")


def check_output_path(out_path: Path, source: Path) -> None:
    """Refuse an output path that cannot be written, before the (slow) read of the model."""
    if out_path.is_dir():
        raise CqdError(f"{out_path}: is a directory; give a file name for the checkpoint (-o model.pt)")
    if out_path.exists() and source.exists() and out_path.resolve() == source.resolve():
        raise CqdError(f"{out_path}: is the input file; choose a different output path (-o model.pt)")
    ancestor = out_path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CqdError(f"{out_path}: '{ancestor}' is not a directory; choose another output path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CqdError(f"{out_path}: cannot write in '{ancestor}' (permission denied); choose another output path")
    if out_path.exists() and not os.access(out_path, os.W_OK):
        raise CqdError(f"{out_path}: the file exists and is read-only; remove it or choose another output path")


def convert_weights(
    mat_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    expect: str | None = None,
    on_read: Callable[[ImportedNetwork], None] | None = None,
) -> Path:
    """Convert a MatConvNet model file to a checkpoint; returns where it was written.

    `out_path` defaults to the input's name with `.pt`. `expect` ("vgg-m" or
    "vgg-vd-16") checks the topology against MatConvNet's pretrained network
    before anything is written. `on_read` sees the network once read (the CLI
    prints the layer table from it).
    """
    mat_path = Path(mat_path)
    expect = check_model_name(expect)
    out = Path(out_path) if out_path is not None else default_output_path(mat_path)
    check_output_path(out, mat_path)
    network = read_network(mat_path)
    if expect is not None:
        check_model(network, expect, mat_path)
    if on_read is not None:
        on_read(network)
    specs, state, meta = network.specs, network.state, network.meta
    del network
    return save_checkpoint(out, specs, state, meta)


def check_model(network: ImportedNetwork, model: str, source: Path | str) -> None:
    """`cqd_port.models.vgg.check_topology`, with the file named in the message."""
    size = network.meta.get("normalization", {}).get("imageSize") or list(DEFAULT_IMAGE_SIZE)
    try:
        check_topology(network.specs, model, network.state, int(size[0]))
    except CqdError as exc:
        raise CqdError(f"{source}: {exc}; drop --model or pass the matching model name") from None


# ----------------------------------------------------------------------------- layer table


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: tuple[int, int, int]  # C, H, W for one image
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    param_count: int = 0


@dataclass
class LayerTable:
    input_shape: tuple[int, int, int]  # C, H, W
    rows: list[LayerRow]
    total_params: int


def layer_table(network: Any, image_size: tuple[int, int] | None = None) -> LayerTable:
    """Per layer: output shape for one image of the model's `imageSize`, parameter shapes and counts.

    `network` is an `ImportedNetwork` or a `SimpleNetwork`. Output sizes use
    MatConvNet's arithmetic (`vl_nnconv`/`vl_nnpool`: floor((H + pad_t +
    pad_b - window) / stride) + 1 with the dilated window; pooling has no
    ceil mode, unlike the option PyTorch offers). Raises `CqdError` if the
    image is smaller than some layer's window.
    """
    specs: list[LayerSpec] = list(network.specs)
    state = network.state if isinstance(network, ImportedNetwork) else network.state_dict()
    meta = network.meta or {}
    size = meta.get("normalization", {}).get("imageSize") or list(DEFAULT_IMAGE_SIZE)
    h, w = (int(image_size[0]), int(image_size[1])) if image_size else (int(size[0]), int(size[1]))
    c = int(size[2]) if len(size) > 2 else 3
    first_conv = next((s for s in specs if s.type == "conv"), None)
    if first_conv is not None and f"{first_conv.name}.weight" in state and len(size) <= 2:
        c = int(state[f"{first_conv.name}.weight"].shape[1])
    input_shape = (c, h, w)
    rows: list[LayerRow] = []
    total = 0
    for spec in specs:
        params = {
            key.split(".", 1)[1]: tuple(int(d) for d in value.shape)
            for key, value in state.items()
            if key.split(".", 1)[0] == spec.name
        }
        count = int(sum(int(np.prod(shape)) for shape in params.values()))
        total += count
        a = spec.attrs
        if spec.type == "conv":
            kh, kw = params.get("weight", (c, c, 1, 1))[2:4]
            dy, dx = as_pair(a.get("dilate", 1), f"layer '{spec.name}' dilate")
            h, w = _out(spec, h, w, (dy * (kh - 1) + 1, dx * (kw - 1) + 1), a)
            c = params.get("weight", (c,))[0]
        elif spec.type == "pool":
            h, w = _out(spec, h, w, as_pair(a.get("pool", 1), f"layer '{spec.name}' pool"), a)
        rows.append(LayerRow(spec.name, spec.type, (c, h, w), params, count))
    return LayerTable(input_shape, rows, total)


def _out(spec: LayerSpec, h: int, w: int, window: tuple[int, int], a: dict[str, Any]) -> tuple[int, int]:
    pad = as_quad(a.get("pad", 0), f"layer '{spec.name}' pad")
    sy, sx = as_pair(a.get("stride", 1), f"layer '{spec.name}' stride")
    ho = (h + pad[0] + pad[1] - window[0]) // sy + 1
    wo = (w + pad[2] + pad[3] - window[1]) // sx + 1
    if ho < 1 or wo < 1:
        raise CqdError(
            f"layer '{spec.name}' ({spec.type}): its {h}x{w} input is smaller than its "
            f"{window[0]}x{window[1]} window; the network does not accept this image size"
        )
    return ho, wo


def summary(network: Any) -> dict[str, Any]:
    """The meta summary `inspect` prints: image size, average image shape, classes, layout."""
    meta = network.meta or {}
    normalization = meta.get("normalization", {})
    average = normalization.get("averageImage")
    classes = meta.get("classes", {}).get("name", [])
    return {
        "layout": meta.get("layout", getattr(network, "layout", "?")),
        "image_size": normalization.get("imageSize"),
        "average_image": list(average.shape) if average is not None else None,
        "classes": len(classes),
        "interpolation": normalization.get("interpolation"),
        "notes": list(meta.get("notes", [])),
    }
