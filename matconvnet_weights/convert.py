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
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_torch_save
from cqd_port.models.graph import GraphNetwork, execution_order
from cqd_port.models.layers import LayerSpec, display_name, display_type, is_graph
from cqd_port.models.network import SimpleNetwork
from cqd_port.models.vgg import check_topology, vgg_m_specs, vgg_vd16_specs
from cqd_port.nn.functional import as_pair, as_quad
from matconvnet_weights.network import ImportedNetwork, input_shape
from matconvnet_weights.read import read_network

CHECKPOINT_FORMAT = "cqd-port-checkpoint/1"
TORCHVISION_FORMAT = "cqd-port-torchvision/1"  # cqd_port.models.torchvision_nets.save_torchvision
MODEL_NAMES = ("vgg-m", "vgg-vd-16")


class TorchvisionCheckpointError(CqdError):
    """A torchvision run's `final.pt` where a MatConvNet-layout network is needed (`inspect` shows it instead)."""

    def __init__(self, path: Path, arch: str) -> None:
        self.path, self.arch = path, arch
        super().__init__(
            f"{path}: a torchvision run's network ({arch}); this command does not support torchvision runs: it takes MatConvNet-layout networks only "
            "(vgg-m, vgg-vd-16, converted .mat models): `cqd-port inspect` shows it, and gradient analysis or "
            "export-mat need runs trained with a MatConvNet network"
        )


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
    atomic_torch_save(path, payload)  # OSError (disk full, permissions) -> one-line CqdError
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
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False, which would run code from the file: never pass it on.
        raise CqdError(
            f"{path}: not a cqd-port checkpoint: it holds Python objects other than tensors and plain values "
            "(a pickled model or training state?), which are not loaded; convert the MatConvNet model with "
            "convert-weights, or save a checkpoint with save_checkpoint"
        ) from None
    except Exception:  # noqa: BLE001 - torch raises many types for a bad file
        raise CqdError(
            f"{path}: not a readable checkpoint (not a complete PyTorch zip archive: truncated or corrupt); "
            "convert the model again with convert-weights"
        ) from None
    if isinstance(payload, dict) and payload.get("format") == TORCHVISION_FORMAT:
        raise TorchvisionCheckpointError(path, str(payload.get("arch", "?")))
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
    """A runnable network from a MatConvNet `.mat` (any layout) or a converted `.pt` checkpoint.

    A chain gives a `SimpleNetwork`, a DagNN graph a `GraphNetwork` (a
    subclass). A network with layers the port cannot run is refused, naming them.
    """
    imported = read_any(path)
    check_convertible(imported, path)
    return build_model(imported, lrn_mode, path)


def build_model(imported: ImportedNetwork, lrn_mode: str = "exact", source: Any = "") -> SimpleNetwork:
    """The `SimpleNetwork` or `GraphNetwork` of an imported network."""
    cls = GraphNetwork if imported.is_graph else SimpleNetwork
    try:
        return cls(imported.specs, imported.state, imported.meta, lrn_mode=lrn_mode)
    except CqdError as exc:
        raise CqdError(f"{source}: {exc}" if source else str(exc)) from None


def check_convertible(network: ImportedNetwork, source: Any) -> None:
    """Refuse a network holding layers the port cannot run, naming each layer and its type."""
    unknown = network.unknown_layers()
    if unknown:
        listed = ", ".join(f"'{display_name(s)}' ({s.attrs.get('matconvnet_type', '?')})" for s in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise CqdError(
            f"{source}: cannot convert layer(s) of types the port does not know: {listed}{more}; "
            f"`inspect` shows the whole network; {cut_hint(network)}"
        )


def cut_hint(network: ImportedNetwork) -> str:
    """Which `--cut-at LAYER` (inclusive) keeps the network before its first unknown layer, if any can."""
    specs = network.specs
    index = next(i for i, s in enumerate(specs) if s.type == "unknown")
    first = display_name(specs[index])
    if network.is_graph:
        writer = {s.attrs["outputs"][0]: s for s in specs if s.attrs.get("outputs")}
        feeding = [display_name(writer[v]) for v in specs[index].attrs.get("inputs", []) if v in writer]
        if feeding:
            return f"--cut-at {feeding[0]} keeps the network up to '{feeding[0]}' (inclusive), the layer feeding '{first}'"
        return f"'{first}' reads the network input, so no --cut-at can keep a network before it"
    if index == 0:
        return f"'{first}' is the first layer, so no --cut-at can keep a network before it"
    before = display_name(specs[index - 1])
    return f"--cut-at {before} keeps the layers up to '{before}' (inclusive), those before '{first}'"


def cut_at(network: ImportedNetwork, layer: str) -> ImportedNetwork:
    """The network up to and including `layer` (its MatConvNet name or its key); a graph keeps what `layer` needs."""
    specs = network.specs
    index = next((i for i, s in enumerate(specs) if layer in (s.name, display_name(s))), None)
    if index is None:
        names = ", ".join(display_name(s) for s in specs)
        raise CqdError(f"--cut-at {layer}: no such layer (layers: {names})")
    if network.is_graph:
        writer = {s.attrs["outputs"][0]: i for i, s in enumerate(specs)}
        keep: set[int] = set()
        todo = [index]
        while todo:
            i = todo.pop()
            if i not in keep:
                keep.add(i)
                todo.extend(writer[v] for v in specs[i].attrs["inputs"] if v in writer)
        kept = [s for i, s in enumerate(specs) if i in keep]
    else:
        kept = specs[: index + 1]
    names = {s.name for s in kept}
    owners = {k for s in kept for k in dict(s.attrs.get("shared") or {}).values()}
    state = {k: v for k, v in network.state.items() if k.rsplit(".", 1)[0] in names or k in owners}
    meta = dict(network.meta)
    meta["notes"] = list(meta.get("notes", [])) + [
        f"cut at layer '{layer}': kept {len(kept)} of {len(specs)} layers"
    ]
    return ImportedNetwork(kept, state, meta, network.layout, network.source)


# ----------------------------------------------------------------------------- conversion


def check_model_name(model: str | None) -> str | None:
    if model is None:
        return None
    if model not in MODEL_NAMES:
        raise CqdError(f"unknown model '{model}' for --model (use one of: {', '.join(MODEL_NAMES)})")
    return model


def default_output_path(mat_path: str | os.PathLike[str]) -> Path:
    return Path(mat_path).with_suffix(".pt")


def check_output_path(out_path: Path, source: Path, force: bool = False) -> None:
    """Refuse an output path that cannot be written, before the (slow) read of the model."""
    if out_path.is_dir():
        raise CqdError(f"{out_path}: is a directory; give a file name for the checkpoint (-o model.pt)")
    if out_path.exists() and not force and not (source.exists() and out_path.resolve() == source.resolve()):
        raise CqdError(f"{out_path}: already exists; pass --force to overwrite it, or choose another output path")
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
    force: bool = False,
    cut_at_layer: str | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Convert a MatConvNet model file to a checkpoint; returns where it was written.

    `out_path` defaults to the input's name with `.pt`. `expect` ("vgg-m" or
    "vgg-vd-16") checks the topology against MatConvNet's pretrained network
    before anything is written. `on_read` sees the network once read (the CLI
    prints the layer table from it). An existing output is refused unless
    `force`; `cut_at_layer` keeps the network up to that layer; layers of
    unknown types are refused, naming each.
    """
    mat_path = Path(mat_path)
    expect = check_model_name(expect)
    out = Path(out_path) if out_path is not None else default_output_path(mat_path)
    check_output_path(out, mat_path, force)
    network = read_network(mat_path)
    if cut_at_layer is not None:
        network = cut_at(network, cut_at_layer)
    if on_read is not None:
        on_read(network)
    check_convertible(network, mat_path)
    if expect is not None:
        note = check_model(network, expect, mat_path)
        if notes is not None:
            notes.append(note)
    specs, state, meta = network.specs, network.state, network.meta
    del network
    return save_checkpoint(out, specs, state, meta)


def check_model(network: ImportedNetwork, model: str, source: Path | str) -> str:
    """`cqd_port.models.vgg.check_topology`, with the file named in the message; returns a note.

    The check is of the topology (layer types, kernels, strides, padding, LRN
    parameters), not of the widths: the note says when widths differ from
    MatConvNet's released network (a reduced-width test network passes).
    """
    (_, h, _), _ = input_shape(network.specs, network.state, network.meta)
    try:
        check_topology(network.specs, model, network.state, int(h))
    except CqdError as exc:
        raise CqdError(f"{source}: topology check failed: {exc}; drop --model or pass the matching model name") from None
    differ = _width_differences(network, model)
    note = f"--model {model}: the topology (layer types, kernels, strides, padding, LRN) matches"
    if differ:
        note += "; the widths differ from MatConvNet's " + model + " (" + ", ".join(differ[:3]) + "): a reduced-width " + model
    return note


def _width_differences(network: ImportedNetwork, model: str) -> list[str]:
    """'conv1 has 12 filters, vgg-m 96' for every conv layer whose width differs from the released network."""
    reference = vgg_m_specs() if model == "vgg-m" else vgg_vd16_specs()
    ref_convs = [s for s in reference if s.type == "conv"]
    convs = [s for s in network.specs if s.type == "conv"]
    out = []
    for spec, ref in zip(convs, ref_convs):
        weight = network.state.get(f"{spec.name}.weight")
        expected = int(ref.attrs["size"][3])
        if weight is not None and int(weight.shape[0]) != expected and ref.name != "fc8":
            out.append(f"{display_name(spec)} has {int(weight.shape[0])} filters, {model} {expected}")
    return out


# ----------------------------------------------------------------------------- layer table


Shape = tuple[int, int, int] | None  # C, H, W for one image; None where unknown


@dataclass
class LayerRow:
    name: str  # the MatConvNet name (the state-dict key may be a safe version of it)
    type: str
    output_shape: Shape
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    param_count: int = 0
    inputs: list[str] = field(default_factory=list)  # graphs: the variables the layer reads


@dataclass
class LayerTable:
    input_shape: tuple[int, int, int]  # C, H, W
    rows: list[LayerRow]
    total_params: int
    input_source: str = ""  # where H x W came from (meta.inputs, meta.inputSize, ...)
    outputs: list[str] = field(default_factory=list)


def layer_table(network: Any, image_size: tuple[int, int] | None = None) -> LayerTable:
    """Per layer: output shape for one image, parameter shapes and counts, in execution order.

    `network` is an `ImportedNetwork` or a `SimpleNetwork`/`GraphNetwork`. The
    input is `image_size` or the size the file declares (`input_shape`), with
    the channels of the first convolution. Output sizes use MatConvNet's
    arithmetic (`vl_nnconv`/`vl_nnpool`: floor((H + pad_t + pad_b - window) /
    stride) + 1 with the dilated window, no ceil mode; `vl_nnconvt`:
    upsample * (H - 1) + FH - crop). After a layer of unknown type, shapes are
    unknown (None). Raises `CqdError` if the image is smaller than some
    layer's window.
    """
    specs: list[LayerSpec] = list(network.specs)
    state = network.state if isinstance(network, ImportedNetwork) else network.state_dict()
    meta = network.meta or {}
    (c, h, w), source = input_shape(specs, state, meta)
    if image_size:
        h, w, source = int(image_size[0]), int(image_size[1]), "given"
    graph = is_graph(specs)
    order = execution_order(specs) if graph else list(range(len(specs)))
    shapes: dict[str, Shape] = {}
    if graph:
        from cqd_port.models.graph import graph_inputs

        for var in graph_inputs(specs):
            shapes[var] = (c, h, w)
    previous: Shape = (c, h, w)
    rows: list[LayerRow] = []
    total = 0
    for index in order:
        spec = specs[index]
        params = _param_shapes(spec, state)
        count = int(sum(int(np.prod(shape)) for key, shape in params.items() if not key.endswith("(shared)")))
        total += count
        inputs = [shapes.get(v) for v in spec.attrs.get("inputs", [])] if graph else [previous]
        out = _output_shape(spec, inputs, params)
        if graph:
            shapes[spec.attrs["outputs"][0]] = out
        previous = out
        rows.append(LayerRow(display_name(spec), display_type(spec), out, params, count, list(spec.attrs.get("inputs", []))))
    from cqd_port.models.graph import graph_outputs

    outputs = graph_outputs(specs) if graph else ([specs[-1].name] if specs else [])
    return LayerTable((c, h, w), rows, total, source, outputs)


def _param_shapes(spec: LayerSpec, state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    params = {
        key.rsplit(".", 1)[1]: tuple(int(d) for d in value.shape)
        for key, value in state.items()
        if key.rsplit(".", 1)[0] == spec.name
    }
    for role, owner in dict(spec.attrs.get("shared") or {}).items():
        if owner in state:
            params[f"{role} (shared)"] = tuple(int(d) for d in state[owner].shape)
    return params


def _output_shape(spec: LayerSpec, inputs: list[Shape], params: dict[str, tuple[int, ...]]) -> Shape:
    if not inputs or any(shape is None for shape in inputs):
        return None
    c, h, w = inputs[0]  # type: ignore[misc]
    a = spec.attrs
    weight = params.get("weight") or params.get("weight (shared)")
    if spec.type == "conv":
        if weight is None:
            return None
        kh, kw = weight[2:4]
        dy, dx = as_pair(a.get("dilate", 1), f"layer '{spec.name}' dilate")
        h, w = _out(spec, h, w, (dy * (kh - 1) + 1, dx * (kw - 1) + 1), a)
        return (weight[0], h, w)
    if spec.type == "pool":
        h, w = _out(spec, h, w, as_pair(a.get("pool", 1), f"layer '{spec.name}' pool"), a)
        return (c, h, w)
    if spec.type == "convt":
        if weight is None:
            return None
        uy, ux = as_pair(a.get("upsample", 1), f"layer '{spec.name}' upsample")
        ct, cb, cl, cr = as_quad(a.get("crop", 0), f"layer '{spec.name}' crop")
        return (weight[1] * int(a.get("groups", 1)), uy * (h - 1) + weight[2] - ct - cb, ux * (w - 1) + weight[3] - cl - cr)
    if spec.type == "concat":
        dim = int(a.get("dim", 3))
        if dim == 3:
            return (sum(s[0] for s in inputs), h, w)  # type: ignore[index]
        if dim == 1:
            return (c, sum(s[1] for s in inputs), w)  # type: ignore[index]
        if dim == 2:
            return (c, h, sum(s[2] for s in inputs))  # type: ignore[index]
        return (c, h, w)
    if spec.type == "crop":
        return (c, inputs[1][1], inputs[1][2]) if len(inputs) > 1 else None  # type: ignore[index]
    if spec.type == "unknown":
        return None
    return (c, h, w)  # element-wise layers keep the shape


def _out(spec: LayerSpec, h: int, w: int, window: tuple[int, int], a: dict[str, Any]) -> tuple[int, int]:
    pad = as_quad(a.get("pad", 0), f"layer '{spec.name}' pad")
    sy, sx = as_pair(a.get("stride", 1), f"layer '{spec.name}' stride")
    ho = (h + pad[0] + pad[1] - window[0]) // sy + 1
    wo = (w + pad[2] + pad[3] - window[1]) // sx + 1
    if ho < 1 or wo < 1:
        raise CqdError(
            f"layer '{display_name(spec)}' ({spec.type}): its {h}x{w} input is smaller than its "
            f"{window[0]}x{window[1]} window; the network does not accept this image size"
        )
    return ho, wo


def summary(network: Any) -> dict[str, Any]:
    """The meta summary `inspect` prints: image size, average image shape, classes, layout, unknown layers."""
    meta = network.meta or {}
    normalization = meta.get("normalization", {})
    average = normalization.get("averageImage")
    classes = meta.get("classes", {}).get("name", [])
    unknown = [s for s in network.specs if s.type == "unknown"]
    return {
        "layout": meta.get("layout", getattr(network, "layout", "?")),
        "image_size": normalization.get("imageSize"),
        "average_image": list(average.shape) if average is not None else None,
        "classes": len(classes),
        "interpolation": normalization.get("interpolation"),
        "notes": list(meta.get("notes", [])),
        "unknown_layers": [(display_name(s), str(s.attrs.get("matconvnet_type", "?"))) for s in unknown],
        "graph": is_graph(list(network.specs)),
    }
