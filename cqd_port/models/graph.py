"""`GraphNetwork`: runs a MatConvNet DagNN graph exactly as `dagnn.DagNN.eval` does.

A graph is a layer list whose layers name their input and output variables
(`attrs["inputs"]`, `attrs["outputs"]`, DagNN's variable names). The layers
run in DagNN's execution order (`execution_order`: by decreasing height in
the graph, ties in file order, as MatConvNet's `DagNN.rebuild` orders
them), each on the variables it reads.
Any variable can be returned by name; parameters shared between layers
(recursive networks: `attrs["shared"]`) are one `nn.Parameter`, so training
updates them once, as MatConvNet accumulates the derivatives of a shared
parameter.

It is a `SimpleNetwork` in everything else (state-dict keys
`<layer>.weight`, test mode by default, `lrn_mode`, `specs`, `meta`), so
checkpoints hold a graph as they hold a chain. The state dict holds a shared
parameter once, under its owner's key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cqd_port.errors import CqdError
from cqd_port.models.layers import MULTI_INPUT_TYPES, LayerSpec
from cqd_port.models.network import SimpleNetwork


def execution_order(specs: Sequence[LayerSpec]) -> list[int]:
    """Indices of `specs` in DagNN's execution order; `CqdError` for a cycle.

    MatConvNet (`DagNN.rebuild` -> `getOrder`/`dagSort`) gives every layer a
    height, 1 + the largest height of the layers reading its outputs (1 for
    a layer nobody reads), and runs the layers by decreasing height, ties in
    file order (MATLAB's stable `sort(..., 'descend')`). Every layer so runs
    after the layers writing its inputs, and independent branches run in
    MatConvNet's order, which matters for float sums of several branches.
    Python's `graphlib` would give a different, equally valid, order.
    MatConvNet only warns about a cycle; here it is an error.
    """
    readers: dict[str, list[int]] = {}
    for index, spec in enumerate(specs):
        for var in spec.attrs.get("inputs", []):
            readers.setdefault(var, []).append(index)
    height = [0] * len(specs)  # 0 unvisited, -1 open (on the walk), > 0 done
    for start in range(len(specs)):
        if height[start]:
            continue
        height[start] = -1
        stack: list[tuple[int, list[int]]] = [(start, _next_layers(specs[start], readers))]
        while stack:
            node, pending = stack[-1]
            if pending:
                child = pending.pop(0)
                if height[child] == -1:
                    raise CqdError(
                        f"the network graph has a cycle through layers '{specs[node].name}' and "
                        f"'{specs[child].name}'; a DagNN must be acyclic"
                    )
                if height[child] == 0:
                    height[child] = -1
                    stack.append((child, _next_layers(specs[child], readers)))
            else:
                children = _next_layers(specs[node], readers)
                height[node] = 1 + max((height[c] for c in children), default=0)
                stack.pop()
    return sorted(range(len(specs)), key=lambda i: (-height[i], i))


def _next_layers(spec: LayerSpec, readers: dict[str, list[int]]) -> list[int]:
    return [r for var in spec.attrs.get("outputs", []) for r in readers.get(var, [])]


def graph_inputs(specs: Sequence[LayerSpec]) -> list[str]:
    """Variables read but written by no layer: the network's inputs, in first-use order."""
    written = {var for spec in specs for var in spec.attrs.get("outputs", [])}
    seen: list[str] = []
    for spec in specs:
        for var in spec.attrs.get("inputs", []):
            if var not in written and var not in seen:
                seen.append(var)
    return seen


def graph_outputs(specs: Sequence[LayerSpec]) -> list[str]:
    """Variables written but read by no layer: the network's outputs, in layer order."""
    read = {var for spec in specs for var in spec.attrs.get("inputs", [])}
    return [var for spec in specs for var in spec.attrs.get("outputs", []) if var not in read]


class GraphNetwork(SimpleNetwork):
    """A DagNN graph given as a list of `LayerSpec` (with `inputs`/`outputs`) plus a state dict."""

    is_graph = True

    def __init__(
        self,
        specs: Sequence[LayerSpec],
        state: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        lrn_mode: str = "exact",
        bnorm_backward: str = "matconvnet",
    ) -> None:
        for spec in specs:
            if not spec.attrs.get("inputs") or not spec.attrs.get("outputs"):
                raise CqdError(f"layer '{spec.name}' ({spec.type}) names no input or output variable; not a graph layer")
            if len(spec.attrs["outputs"]) != 1:
                raise CqdError(f"layer '{spec.name}' writes {len(spec.attrs['outputs'])} variables; only one-output layers are supported")
        super().__init__(specs, state, meta, lrn_mode, bnorm_backward)
        self.channels_last = False  # several branches: keep every variable in one memory format
        self._order = execution_order(self._specs)
        writers: dict[str, str] = {}
        for spec in self._specs:
            out = spec.attrs["outputs"][0]
            if out in writers:
                raise CqdError(f"variable '{out}' is written by layers '{writers[out]}' and '{spec.name}'")
            writers[out] = spec.name
        self.inputs = graph_inputs(self._specs)
        self.outputs = graph_outputs(self._specs)
        self._aliases: dict[str, str] = {}
        for spec in self._specs:
            for role, owner_key in dict(spec.attrs.get("shared") or {}).items():
                owner, owner_role = owner_key.rsplit(".", 1)
                if owner not in self._modules:
                    raise CqdError(f"layer '{spec.name}' shares '{owner_key}', which belongs to no layer")
                setattr(self._modules[spec.name], role, getattr(self._modules[owner], owner_role))
                self._aliases[f"{spec.name}.{role}"] = owner_key

    # -- state dict: a shared parameter once, under its owner's key -------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for alias in self._aliases:
            state.pop(prefix + alias, None)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        full = dict(state_dict)
        for alias, owner in self._aliases.items():
            if owner in full:
                full.setdefault(alias, full[owner])
        return super().load_state_dict(full, strict=strict, assign=assign)

    def _cloned_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    # -- evaluation -----------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor | Mapping[str, torch.Tensor],
        return_all: bool = False,
        outputs: str | Sequence[str] | None = None,
    ) -> torch.Tensor | OrderedDict[str, torch.Tensor]:
        """Evaluate the graph on `x` (a tensor for the single input variable, or {variable: tensor}).

        Returns the network's output (one output variable), {variable: tensor}
        for several, every variable with `return_all=True`, or the variables
        named in `outputs` (a name: that tensor). Only the layers needed for
        the requested variables run.
        """
        values: dict[str, torch.Tensor] = {}
        if isinstance(x, Mapping):
            values.update(x)
        else:
            if len(self.inputs) != 1:
                raise CqdError(f"the network has {len(self.inputs)} inputs ({', '.join(self.inputs)}); pass {{variable: tensor}}")
            values[self.inputs[0]] = x
        missing = [v for v in self.inputs if v not in values]
        if missing:
            raise CqdError(f"no value for the network input(s) {', '.join(missing)}")
        wanted = [outputs] if isinstance(outputs, str) else list(outputs) if outputs is not None else list(self.outputs)
        known = set(self.inputs) | {spec.attrs["outputs"][0] for spec in self._specs}
        for name in wanted:
            if name not in known:
                raise CqdError(f"no variable named '{name}' (variables: {', '.join(sorted(known))})")
        needed = None if return_all else self._needed_layers(wanted)
        for index in self._order:
            spec = self._specs[index]
            if needed is not None and index not in needed:
                continue
            module = self._modules[spec.name]
            args = [values[var] for var in spec.attrs["inputs"]]
            try:
                result = module(args) if spec.type in MULTI_INPUT_TYPES else module(args[0])
            except CqdError as exc:
                raise CqdError(f"layer '{spec.name}' ({spec.type}): {exc}") from None
            values[spec.attrs["outputs"][0]] = result
        if return_all:
            return OrderedDict((k, v) for k, v in values.items())
        if isinstance(outputs, str) or (outputs is None and len(wanted) == 1):
            return values[wanted[0]]
        return OrderedDict((name, values[name]) for name in wanted)

    def _needed_layers(self, wanted: Sequence[str]) -> set[int]:
        writer = {spec.attrs["outputs"][0]: i for i, spec in enumerate(self._specs)}
        needed: set[int] = set()
        todo = [writer[v] for v in wanted if v in writer]
        while todo:
            index = todo.pop()
            if index in needed:
                continue
            needed.add(index)
            todo.extend(writer[v] for v in self._specs[index].attrs["inputs"] if v in writer)
        return needed

    # -- derived networks -----------------------------------------------------------
    def truncated(self, after: str) -> "GraphNetwork":
        """A new graph with the layers `after`'s output depends on (copied weights, same meta)."""
        names = self.layer_names
        if after not in names:
            raise CqdError(f"cannot truncate after '{after}': no such layer (layers: {', '.join(names)})")
        keep = self._needed_layers([self._specs[names.index(after)].attrs["outputs"][0]])
        specs = [spec for i, spec in enumerate(self._specs) if i in keep]
        kept_names = {s.name for s in specs}
        state = {k: v for k, v in self._cloned_state().items() if k.rsplit(".", 1)[0] in kept_names}
        net = GraphNetwork(specs, state, self._meta, self._lrn_mode, self._bnorm_backward)
        return net.train(self.training)

    def with_layers_appended(self, specs: Sequence[LayerSpec], state: Mapping[str, Any] | None = None) -> "GraphNetwork":
        raise CqdError("appending layers to a graph network is not supported; append to a chain network")
