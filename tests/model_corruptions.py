"""Corrupted copies of the real MatConvNet model files (`../shared/real-models`), by class.

Used by `test_weights_model_fuzz.py` (a small, cheap set in CI) and
`benchmarks/fuzz_models.py` (the larger set, and the before/after counts).
Each corruption is written as a new `.mat` file; `Case.must_refuse` says
whether a correct importer has to refuse it (a NaN stride, a deep nest, a
dangling graph input) or may accept it (a pad of 0, a truncation that still
leaves a readable file). The mutations work on the plain tree
`matconvnet_weights.matfile.load_mat` gives and are written back with
`scipy.io.savemat`, except the byte-level ones (truncations, deep nesting).

Classes: `numeric` (NaN, Inf, fractions, negative, huge, strings, sparse,
structs, cells, complex in stride, pad, dilate, pool size, numGroups,
upsample, crop, LRN param, leak, rate, meta.normalization.imageSize,
keepAspect, meta.inputs size, meta.inputSize, pool `method` as a number),
`weights` (filters and biases of the wrong type or length), `graph`
(dangling, nested, missing inputs, two outputs, two writers of one variable,
cycles), `channels` (filter depth or count that does not fit the producer),
`types` (wrong MATLAB types for layers, names, types, meta), `nesting`
(a cell nested thousands deep), `truncated`.
"""

from __future__ import annotations

import copy
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.io
import scipy.sparse

# fields of a layer (SimpleNN) or its block (DagNN) that MatConvNet reads as numbers
LAYER_NUMERIC_FIELDS = ("stride", "pad", "dilate", "pool", "poolSize", "numGroups", "upsample", "crop", "param",
                        "leak", "rate", "dim", "hasBias")
# field -> the layer types (short, lower case) that read it, for must_refuse
_READ_BY = {
    "stride": ("conv", "pool", "pooling"), "pad": ("conv", "pool", "pooling"), "dilate": ("conv",),
    "pool": ("pool",), "poolSize": ("pooling",), "numGroups": ("convt", "convtranspose"),
    "upsample": ("convt", "convtranspose"), "crop": ("convt", "convtranspose", "crop"),
    "param": ("lrn", "normalize"), "leak": ("relu",), "rate": ("dropout",),
}


@dataclass(frozen=True)
class Case:
    path: Path
    kind: str  # the corruption class
    what: str  # the mutation, for the report
    must_refuse: bool


def _bad_values() -> list[tuple[str, Any, bool]]:
    """(label, value, always refused) for a numeric field."""
    return [
        ("NaN", np.array([[np.nan, 1.0]]), True),
        ("Inf", np.array([[np.inf]]), True),
        ("-Inf", np.array([[1.0, -np.inf, 1.0, 1.0]]), True),
        ("string", "abc", True),
        ("sparse", scipy.sparse.csc_matrix(np.array([[1.0, 2.0]])), True),
        ("struct", {"a": np.array([[1.0]])}, True),
        ("complex", np.array([[1.0 + 2.0j]]), True),
        ("cell of strings", np.array([["x", "y"]], dtype=object), True),
        ("fraction", np.array([[1.5]]), False),  # a fraction is fine for an LRN parameter, wrong for a stride
        ("negative", np.array([[-3.0]]), False),
        ("huge", np.array([[1e30]]), False),
        ("zero", np.array([[0.0]]), False),
        ("empty", np.zeros((0, 0)), False),
        ("five values", np.ones((1, 5)), False),
    ]


# ----------------------------------------------------------------------------- writing


def to_savemat(value: Any) -> Any:
    """The plain tree of `load_mat` as values `scipy.io.savemat` writes back the same way."""
    from matconvnet_weights.matfile import OpaqueValue

    if isinstance(value, dict):
        return {str(k): to_savemat(v) for k, v in value.items()}
    if isinstance(value, list):
        cell = np.empty((1, len(value)), dtype=object)
        for i, item in enumerate(value):
            cell[0, i] = to_savemat(item)
        return cell
    if isinstance(value, OpaqueValue) or value is None:
        return np.zeros((0, 0))
    return value


def write_plain(path: Path, top: dict[str, Any]) -> Path:
    scipy.io.savemat(str(path), to_savemat(top), do_compression=True, long_field_names=True, oned_as="row")
    return path


# ----------------------------------------------------------------------------- raw v5 (deep nesting)


def _tag(dtype: int, nbytes: int) -> bytes:
    return struct.pack("<II", dtype, nbytes)


def _sub(dtype: int, payload: bytes) -> bytes:
    return _tag(dtype, len(payload)) + payload + b"\x00" * ((-len(payload)) % 8)


def deep_cell_file(path: Path, depth: int, compressed: bool) -> Path:
    """A v5 file whose variable `layers` is a 1x1 cell nested `depth` deep around a double."""
    mi_int8, mi_uint32, mi_int32, mi_double, mi_matrix = 1, 6, 5, 9, 14
    flags = lambda cls: _sub(mi_uint32, struct.pack("<II", cls, 0))  # noqa: E731
    dims = _sub(mi_int32, struct.pack("<ii", 1, 1))
    inner = flags(6) + dims + _sub(mi_int8, b"") + _sub(mi_double, struct.pack("<d", 1.0))
    cell_head = flags(1) + dims + _sub(mi_int8, b"")  # mxCELL_CLASS, unnamed
    # payload sizes from the inside out: each level is its header, then the level inside (tag + payload)
    named_head = flags(1) + dims + _sub(mi_int8, b"layers")
    sizes = [len(inner)]
    for level in range(1, depth + 1):
        sizes.append(len(named_head if level == depth else cell_head) + 8 + sizes[-1])
    parts = [_tag(mi_matrix, sizes[depth]) + named_head]
    parts += [_tag(mi_matrix, sizes[level]) + cell_head for level in range(depth - 1, 0, -1)]
    parts.append(_tag(mi_matrix, sizes[0]) + inner)
    element = b"".join(parts)
    header = b"MATLAB 5.0 MAT-file, deep nesting test".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x01IM"
    if compressed:
        packed = zlib.compress(element, 6)
        element = _tag(15, len(packed)) + packed
    path.write_bytes(header + element)
    return path


# ----------------------------------------------------------------------------- mutations of the plain tree


def _net(top: dict[str, Any]) -> dict[str, Any]:
    return top["net"] if "net" in top and isinstance(top["net"], dict) else top


def _layers(top: dict[str, Any]) -> list[dict[str, Any]]:
    layers = _net(top)["layers"]
    return [layers] if isinstance(layers, dict) else layers


def _is_dagnn(top: dict[str, Any]) -> bool:
    return any("block" in layer for layer in _layers(top) if isinstance(layer, dict))


def _short_type(layer: dict[str, Any]) -> str:
    mtype = layer.get("type", "")
    return mtype.split(".")[-1].lower() if isinstance(mtype, str) else ""


def _numeric_targets(top: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any], Any], None], bool]]:
    """(where, setter(top, value), read by the layer) for every numeric field the file has."""
    targets = []
    dag = _is_dagnn(top)
    for index, layer in enumerate(_layers(top)):
        fields = layer.get("block") if dag else layer
        if not isinstance(fields, dict):
            continue
        short = _short_type(layer)
        for name in LAYER_NUMERIC_FIELDS:
            if name in fields:
                def setter(t, v, i=index, n=name):
                    target = _layers(t)[i]
                    (target["block"] if dag else target)[n] = v

                read = short in _READ_BY.get(name, ())
                targets.append((f"layer {index + 1} ({short}) {name}", setter, read))
        if short in ("pool", "pooling"):
            def set_method(t, v, i=index):
                target = _layers(t)[i]
                (target["block"] if dag else target)["method"] = v

            targets.append((f"layer {index + 1} ({short}) method", set_method, True))
    net = _net(top)
    meta = net.get("meta") if isinstance(net.get("meta"), dict) else None

    def meta_setter(*keys: str):
        def setter(t, v):
            node = _net(t)
            for key in ("meta",) + keys[:-1]:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[keys[-1]] = v
        return setter

    targets.append(("meta.normalization.imageSize", meta_setter("normalization", "imageSize"), True))
    targets.append(("meta.normalization.keepAspect", meta_setter("normalization", "keepAspect"), True))
    targets.append(("meta.inputs.size", meta_setter("inputs", "size"), True))
    if meta is not None and "inputSize" in meta:
        targets.append(("meta.inputSize", meta_setter("inputSize"), False))
    return targets


def _numeric_cases(top: dict[str, Any], rng: np.random.Generator, count: int) -> list[tuple[str, dict[str, Any], bool]]:
    targets = _numeric_targets(top)
    values = _bad_values()
    out = []
    for _ in range(count):
        where, setter, read = targets[int(rng.integers(len(targets)))]
        label, value, always = values[int(rng.integers(len(values)))]
        if where.endswith("method"):
            label, value, always = [("number", np.array([[1.0]]), True), ("NaN", np.array([[np.nan]]), True),
                                    ("other name", "median", True), ("sparse", scipy.sparse.csc_matrix(np.ones((1, 1))), True)][
                int(rng.integers(4))]
        mutated = copy.deepcopy(top)
        setter(mutated, value)
        refuse = always and read and not (where.startswith("meta.inputs") and label == "cell of strings")
        if where.endswith("keepAspect") and label in ("five values",):
            refuse = False
        out.append((f"{where} = {label}", mutated, refuse))
    return out


def _weights_cases(top: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    out = []
    dag = _is_dagnn(top)
    layers = _layers(top)
    convs = [i for i, layer in enumerate(layers) if _short_type(layer) == "conv"]
    if not convs:
        return out
    i = convs[len(convs) // 2]
    for label, value in (("string", "weights"), ("sparse", scipy.sparse.csc_matrix(np.ones((3, 3)))),
                         ("struct", {"x": np.ones((1, 1))}), ("NaN filters", None), ("short biases", None)):
        mutated = copy.deepcopy(top)
        layer = _layers(mutated)[i]
        refuse = True
        if dag:
            names = layer["params"] if isinstance(layer["params"], list) else [layer["params"]]
            params = {p["name"]: p for p in _net(mutated)["params"]}
            if label == "NaN filters":
                params[names[0]]["value"] = np.full_like(params[names[0]]["value"], np.nan)
            elif label == "short biases":
                params[names[1]]["value"] = np.asarray(params[names[1]]["value"]).ravel()[:-1].reshape(1, -1) if len(names) > 1 else None
                refuse = len(names) > 1
            else:
                params[names[0]]["value"] = value
        else:
            weights = layer.get("weights") if "weights" in layer else [layer.get("filters"), layer.get("biases")]
            if label == "NaN filters":
                weights[0] = np.full_like(weights[0], np.nan)
            elif label == "short biases":
                weights[1] = np.asarray(weights[1]).ravel()[:-1].reshape(1, -1)
            else:
                weights[0] = value
            if "weights" in layer:
                layer["weights"] = weights
            else:
                layer["filters"], layer["biases"] = weights
        out.append((f"layer {i + 1} conv: {label}", mutated, refuse))
    return out


def _as4d(filters: Any) -> np.ndarray:
    array = np.asarray(filters)
    return array.reshape(array.shape + (1,) * (4 - array.ndim)) if array.ndim < 4 else array


def _channel_cases(top: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """A conv whose filter depth (or the previous conv's filter count) no longer fits: must be refused."""
    out = []
    dag = _is_dagnn(top)
    layers = _layers(top)

    def filters_of(t: dict[str, Any], i: int) -> tuple[Callable[[], np.ndarray], Callable[[np.ndarray], None], Callable[[], Any], Callable[[Any], None]]:
        layer = _layers(t)[i]
        if dag:
            params = {p["name"]: p for p in _net(t)["params"]}
            names = layer["params"] if isinstance(layer["params"], list) else [layer["params"]]
            f, b = params[names[0]], params[names[1]] if len(names) > 1 else None
            return (lambda: f["value"], lambda v: f.__setitem__("value", v),
                    lambda: b["value"] if b else None, lambda v: b.__setitem__("value", v) if b else None)
        key = "weights" if "weights" in layer else None
        if key:
            w = layer["weights"]
            return (lambda: w[0], lambda v: w.__setitem__(0, v), lambda: w[1] if len(w) > 1 else None,
                    lambda v: w.__setitem__(1, v) if len(w) > 1 else None)
        return (lambda: layer["filters"], lambda v: layer.__setitem__("filters", v), lambda: layer.get("biases"),
                lambda v: layer.__setitem__("biases", v))

    convs = [i for i, layer in enumerate(layers) if _short_type(layer) in ("conv",)]
    for prev, nxt in zip(convs, convs[1:]):
        get_f, _, _, _ = filters_of(top, nxt)
        depth = _as4d(get_f()).shape[2]
        if depth < 8:
            continue
        mutated = copy.deepcopy(top)
        get_f, set_f, _, _ = filters_of(mutated, nxt)
        set_f(np.ascontiguousarray(_as4d(get_f())[:, :, : depth - 3, :]))
        out.append((f"layer {nxt + 1}: {depth - 3}-channel filters after a {depth}-channel layer", mutated, True))
        mutated = copy.deepcopy(top)
        get_f, set_f, get_b, set_b = filters_of(mutated, prev)
        filters = _as4d(get_f())
        if filters.shape[-1] < 8:
            continue
        set_f(np.ascontiguousarray(filters[..., : filters.shape[-1] - 3]))
        if get_b() is not None and np.asarray(get_b()).size:
            set_b(np.asarray(get_b()).ravel()[:-3].reshape(1, -1))
        out.append((f"layer {prev + 1}: 3 filters fewer than layer {nxt + 1} reads", mutated, True))
        if len(out) >= 4:
            break
    return out


def _graph_cases(top: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """DagNN only: inputs that nothing writes, nested, missing; two outputs; two writers; a cycle."""
    if not _is_dagnn(top):
        return []
    out = []
    layers = _layers(top)
    mid = len(layers) // 2

    def mutate(label: str, change: Callable[[list[dict[str, Any]]], None]) -> None:
        mutated = copy.deepcopy(top)
        change(_layers(mutated))
        out.append((label, mutated, True))

    mutate("dangling input", lambda ls: ls[mid].__setitem__("inputs", ["no_such_variable"]))
    mutate("nested inputs", lambda ls: ls[mid].__setitem__("inputs", [list(ls[mid]["inputs"]) if isinstance(ls[mid]["inputs"], list) else [ls[mid]["inputs"]]]))
    mutate("no inputs", lambda ls: ls[mid].__setitem__("inputs", []))
    mutate("two outputs", lambda ls: ls[mid].__setitem__("outputs", [ls[mid]["outputs"] if isinstance(ls[mid]["outputs"], str) else ls[mid]["outputs"][0], "extra"]))
    mutate("two writers", lambda ls: ls[mid].__setitem__("outputs", ls[mid - 1]["outputs"]))
    mutate("cycle", lambda ls: ls[1].__setitem__("inputs", ls[-2]["outputs"]))
    mutate("input is a number", lambda ls: ls[mid].__setitem__("inputs", np.array([[3.0]])))
    return out


def _type_cases(top: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    out = []

    def mutate(label: str, change: Callable[[dict[str, Any]], None], refuse: bool = False) -> None:
        mutated = copy.deepcopy(top)
        change(mutated)
        out.append((label, mutated, refuse))

    mutate("layers a number", lambda t: _net(t).__setitem__("layers", np.ones((1, 3))), True)
    mutate("layers a string", lambda t: _net(t).__setitem__("layers", "conv"), True)
    mutate("a layer is a string", lambda t: _layers(t).__setitem__(0, "conv"), True)
    mutate("layer type a number", lambda t: _layers(t)[0].__setitem__("type", np.array([[7.0]])))
    mutate("layer name a number", lambda t: _layers(t)[0].__setitem__("name", np.array([[7.0]])))
    mutate("layer name a cell", lambda t: _layers(t)[0].__setitem__("name", ["a", "b"]))
    mutate("meta a string", lambda t: _net(t).__setitem__("meta", "meta"))
    mutate("meta.normalization a cell", lambda t: _net(t).__setitem__("meta", {"normalization": [1, 2]}))
    mutate("averageImage a string", lambda t: _net(t).__setitem__("meta", {"normalization": {"averageImage": "mean"}}))
    mutate("averageImage NaN", lambda t: _net(t).__setitem__("meta", {"normalization": {"averageImage": np.full((1, 3), np.nan)}}), True)
    mutate("classes a number", lambda t: _net(t).__setitem__("meta", {"classes": np.ones((2, 2))}))
    mutate("weights a struct", lambda t: _layers(t)[0].__setitem__("weights", {"f": np.ones((1, 1))}))
    return out


def corrupt_models(real_models: Path, folder: Path, numeric_per_file: int = 12, seed: int = 2026,
                   files: tuple[str, ...] | None = None, depths: tuple[int, ...] = (5_000, 100_000),
                   truncations_per_file: int = 3, kinds: tuple[str, ...] | None = None) -> list[Case]:
    """Write the corrupted copies under `folder`; returns them in a fixed order (`kinds`: only these classes)."""
    from matconvnet_weights.matfile import load_mat

    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    names = files or tuple(sorted(p.name for p in real_models.glob("*.mat")))
    for name in names:
        source = real_models / name
        stem = source.stem
        top = load_mat(source) if kinds is None or set(kinds) - {"truncated", "nesting"} else {}
        groups = [("numeric", lambda: _numeric_cases(top, rng, numeric_per_file)), ("weights", lambda: _weights_cases(top)),
                  ("channels", lambda: _channel_cases(top)), ("graph", lambda: _graph_cases(top)),
                  ("types", lambda: _type_cases(top))]
        for kind, make in groups:
            if kinds is not None and kind not in kinds:
                continue
            for i, (what, mutated, refuse) in enumerate(make()):
                path = write_plain(folder / f"{stem}.{kind}.{i:02d}.mat", mutated)
                cases.append(Case(path, kind, f"{name}: {what}", refuse))
        data = source.read_bytes()
        if kinds is not None and "truncated" not in kinds:
            continue
        for i, cut in enumerate(sorted(int(c) for c in rng.integers(1, len(data) - 1, truncations_per_file))):
            path = folder / f"{stem}.truncated.{i:02d}.mat"
            path.write_bytes(data[:cut])
            cases.append(Case(path, "truncated", f"{name}: first {cut} of {len(data)} bytes", False))
    for depth in depths:
        for compressed in (False, True):
            path = deep_cell_file(folder / f"deep.{depth}.{'z' if compressed else 'raw'}.mat", depth, compressed)
            cases.append(Case(path, "nesting", f"a 1x1 cell nested {depth} deep ({'compressed' if compressed else 'plain'})", True))
    return cases


# ----------------------------------------------------------------------------- running them


@dataclass
class Outcome:
    case: Case
    command: str  # inspect, convert-weights, load (the converted .pt)
    code: int  # exit code; -1 an exception escaped, -11 etc. the worker died, 124 a hang
    stderr: str


WORKER = Path(__file__).with_name("model_fuzz_worker.py")


def run_cases(python: str, cases: list[Case], out: Path, case_timeout: float = 20.0, memory_limit: int = 4 << 30) -> list[Outcome]:
    """Run `inspect` then `convert-weights` (and load the converted checkpoint) on every case, in-process in
    worker subprocesses of `python` (so a segfault or hang loses one case, not the run); a dead worker is
    restarted after the case it died on."""
    import json
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    start = 0
    while start < len(cases):
        listing = out.parent / f"{out.name}.listing.json"
        listing.write_text(json.dumps([str(c.path) for c in cases[start:]]))
        proc = subprocess.Popen([python, str(WORKER), str(listing), str(out), str(case_timeout), str(memory_limit)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out)
        current, done = None, start
        budget = case_timeout * 3 * (len(cases) - start) + 60
        try:
            stdout, stderr = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        for line in stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            index = start + record["index"]
            if record["command"] == "start":
                current = index
                continue
            outcomes.append(Outcome(cases[index], record["command"], record["code"], record["stderr"]))
            if record["command"] == "done":
                done = index + 1
        if proc.returncode == 0 and done >= len(cases):
            break
        dead = current if current is not None else done
        code = proc.returncode if proc.returncode not in (0, None) else 124
        outcomes.append(Outcome(cases[dead], "worker", code, stderr[-500:]))
        start = dead + 1
    return [o for o in outcomes if o.command != "done"]


def classify(outcome: Outcome) -> str:
    """ok (exit 0), refused (exit 2, one `error:` line naming the file), or what went wrong."""
    if outcome.command == "worker":
        return "hang" if outcome.code in (124, -9) else "crash"
    if outcome.code == -1 or "Traceback" in outcome.stderr:
        return "traceback"
    if outcome.command == "load" and outcome.code != 0:
        return "unusable"  # converted, but the checkpoint does not load
    if outcome.code == 0:
        return "ok"
    lines = outcome.stderr.strip().splitlines()
    if outcome.code == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "refused"
    return "bad-exit"
