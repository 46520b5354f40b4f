"""Checks of what a model file declares, before a network is built from it.

MatConvNet trusts its files: a NaN stride, a pool `method` stored as a
number or a layer reading a variable nothing writes fail deep inside
`vl_nnconv` or `DagNN.eval`. The readers check them here instead, so a
corrupt file ends in one line naming the file, the layer and the field:

- `field_numbers`: a numeric field (stride, pad, pool size, numGroups,
  imageSize...) holds finite real numbers; strings, structs, sparse
  matrices, complex numbers, NaN and Inf are refused (`FieldError`, which
  the caller prefixes with the file and the layer);
- `integers`: the same, integral and within bounds (MatConvNet rounds
  nothing: `vl_nnconv` refuses a fractional stride);
- `variable_names`: a DagNN layer's `inputs`/`outputs`/`params` field is a
  name or a cell of names, never a nested cell or a number;
- `check_graph`: every DagNN layer reads at least one variable and writes
  exactly one, no variable has two writers, the graph has no cycle (the
  layers named), and every variable read is written by a layer or is the
  network's one input.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cqd_port.errors import CqdError
from cqd_port.models.graph import execution_order
from cqd_port.models.layers import LayerSpec
from matconvnet_weights.matfile import OpaqueValue

# Strides, pads, pool windows, image sizes beyond this are no image network's (and would
# make the output-size arithmetic allocate absurd tensors later).
MAX_FIELD_INTEGER = 1 << 20


class FieldError(ValueError):
    """A field of the wrong kind; the message reads after the field's name ("'stride' <message>")."""


def describe(value: Any) -> str:
    """What a MATLAB value is, in a few words, for error messages."""
    if isinstance(value, str):
        return f"the text {value[:24]!r}"
    if isinstance(value, dict):
        return "a struct"
    if isinstance(value, list):
        return "a cell array"
    if isinstance(value, OpaqueValue):
        return f"a MATLAB {value.class_name} object"
    if _is_sparse(value):
        return "a sparse matrix"
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return f"a {'x'.join(map(str, value.shape))} {value.dtype} array"
        if value.dtype.kind == "c":
            return "a complex array"
        return f"a {value.dtype} array"
    return type(value).__name__


def _is_sparse(value: Any) -> bool:
    return type(value).__module__.startswith("scipy.sparse")


def field_numbers(value: Any) -> list[float]:
    """The finite real numbers of a numeric field, column-major (a cell of numbers is flattened).

    `None` and empty arrays give `[]`. Raises `FieldError` for anything else.
    """
    if value is None:
        return []
    if isinstance(value, (bool, int, float, np.generic)) and not isinstance(value, (np.str_, np.bytes_)):
        numbers = [float(value)] if np.isrealobj(value) else None
        if numbers is None:
            raise FieldError("holds a complex number; MatConvNet needs real numbers here")
    elif isinstance(value, list):
        numbers = [f for item in value for f in field_numbers(item)]
    elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        numbers = [float(v) for v in value.ravel(order="F")]
    elif _is_sparse(value):
        raise FieldError("is a sparse matrix; MatConvNet needs a full numeric array here (save it with full(...))")
    elif isinstance(value, np.ndarray) and value.dtype.kind == "c":
        raise FieldError("holds complex numbers; MatConvNet needs real numbers here")
    else:
        raise FieldError(f"must be numeric, got {describe(value)}")
    bad = [v for v in numbers if not math.isfinite(v)]
    if bad:
        raise FieldError(f"holds {bad[0]} (NaN or Inf): {_short(numbers)}; the file is corrupt")
    return numbers


def integers(value: Any, minimum: int, maximum: int = MAX_FIELD_INTEGER) -> list[int]:
    """`field_numbers`, each an integer in [minimum, maximum]."""
    numbers = field_numbers(value)
    for v in numbers:
        if v != int(v) or not minimum <= v <= maximum:
            kind = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f"at least {minimum}"
            raise FieldError(f"must be {kind} integers of at most {maximum:,}, got {_short(numbers)}")
    return [int(v) for v in numbers]


def _short(numbers: list[float]) -> str:
    shown = ", ".join(f"{v:g}" for v in numbers[:6])
    return f"[{shown}{', ...' if len(numbers) > 6 else ''}]"


def variable_names(value: Any) -> list[str]:
    """A DagNN `inputs`/`outputs`/`params` field: one name or a cell of names (empty ones skipped)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, np.ndarray) and value.size == 0:
        return []
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise FieldError(f"must be a cell of variable names, but holds {describe(item)}")
        return [item for item in value if item]
    raise FieldError(f"must be a variable name or a cell of names, got {describe(value)}")


# ----------------------------------------------------------------------------- the graph


def check_graph(layers: list[dict[str, Any]], path: Path, declared: list[str] | None = None) -> None:
    """A DagNN layer list (dicts with `name`, `type`, `inputs`, `outputs`) that `GraphNetwork` can run.

    `declared`: the variable names the file declares (`net.vars`), when it has them.
    """
    writer: dict[str, str] = {}
    for layer in layers:
        name, outputs = layer["name"], layer["outputs"]
        if not layer["inputs"]:
            raise CqdError(f"{path}: layer '{name}' ({layer['type']}) reads no variable; a DagNN layer needs an input")
        if len(outputs) != 1:
            listed = ", ".join(f"'{v}'" for v in outputs)
            raise CqdError(
                f"{path}: layer '{name}' ({layer['type']}) writes {len(outputs)} variables ({listed}); "
                "the port runs layers with one output"
            )
        if outputs[0] in writer:
            raise CqdError(
                f"{path}: variable '{outputs[0]}' is written by two layers, '{writer[outputs[0]]}' and '{name}'; "
                "each variable must have one writer"
            )
        writer[outputs[0]] = name
    stand_ins = [LayerSpec(layer["name"], "unknown", {"inputs": layer["inputs"], "outputs": layer["outputs"]}) for layer in layers]
    try:
        execution_order(stand_ins)
    except CqdError as exc:
        raise CqdError(f"{path}: {exc}") from None
    known = set(declared or ())
    unwritten: dict[str, str] = {}  # variable -> the first layer reading it
    for layer in layers:
        for var in layer["inputs"]:
            if var not in writer:
                if known and var not in known:
                    raise CqdError(
                        f"{path}: layer '{layer['name']}' reads variable '{var}', which no layer writes and the file's "
                        "vars do not hold; the graph is corrupt: re-export the network"
                    )
                unwritten.setdefault(var, layer["name"])
    if len(unwritten) > 1:
        first, *others = unwritten
        listed = ", ".join(f"'{var}' (read by '{unwritten[var]}')" for var in others[:3])
        raise CqdError(
            f"{path}: besides the network input '{first}', layers read {listed}, which no layer writes; "
            "the port runs networks with one input variable: fix those layers' inputs"
        )
