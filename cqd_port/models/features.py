"""Intermediate outputs of a network by the network's own layer names, through forward hooks.

A layer is named as the network names it: a MatConvNet layer of a
`SimpleNetwork`/`GraphNetwork` (`conv5`, `relu5`, `fc7`), or a module path of a
torchvision network (`layer4`, `features.28`, `layer3.1.conv2`; the
`backbone.` prefix of `TorchvisionClassifier` may be left out). `LOGITS`
(`"logits"`) names the network's output itself.

A hook stores a *copy* of the layer's output: networks modify some outputs
in place after the layer ran (the in-place ReLU `SimpleNetwork` applies to a
fresh conv output, torchvision's residual `out += identity`), which would
otherwise change the stored tensor, and autograd's view of it, under our feet.
The copy is differentiable, so a loss on a student's feature trains the
layers below it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from cqd_port.errors import CqdError

LOGITS = "logits"
"""The name of a network's output (its class scores) among its layer names."""

_BACKBONE = "backbone."  # TorchvisionClassifier keeps the torchvision network here


def layer_names(model: nn.Module) -> list[str]:
    """The names `find_layer` accepts: MatConvNet layer names, or module paths (without `backbone.`)."""
    names = getattr(model, "layer_names", None)
    if names is not None:
        return list(names)
    paths = [name for name, _ in model.named_modules() if name]
    if any(p.startswith(_BACKBONE) for p in paths):
        return [p[len(_BACKBONE) :] for p in paths if p.startswith(_BACKBONE)]
    return paths


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called `name` in `model`; `CqdError` listing the names there are."""
    for path in (name, _BACKBONE + name):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    known = [n for n in layer_names(model) if n.count(".") == 0] or layer_names(model)
    raise CqdError(
        f"no layer named '{name}' in the {type(model).__name__} (top-level layers: {', '.join(known[:40])}"
        f"{', ...' if len(known) > 40 else ''}); name a layer of this network, or '{LOGITS}' for its output"
    )


class FeatureHooks:
    """Forward hooks on the named layers of `model`, storing their outputs while `capture()` is active.

    Outside `capture()` the hooks do nothing (evaluation runs at full speed).
    `LOGITS` among `names` is skipped here: it is the forward's return value.
    `remove()` takes the hooks off the network.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.names = tuple(dict.fromkeys(n for n in names if n != LOGITS))
        self.outputs: dict[str, torch.Tensor] = {}
        self._capturing = False
        self._handles = [find_layer(model, n).register_forward_hook(partial(self._store, n)) for n in self.names]

    def _store(self, name: str, _module: nn.Module, _inputs: Any, output: Any) -> None:
        if not self._capturing:
            return
        if not isinstance(output, torch.Tensor):
            raise CqdError(f"layer '{name}' returns {type(output).__name__}, not one tensor; name a layer with a single tensor output")
        self.outputs[name] = output.clone()

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """Store the hooked outputs of the forward passes inside the block (a fresh dict each time)."""
        self.outputs = {}
        self._capturing = True
        try:
            yield self.outputs
        finally:
            self._capturing = False

    def get(self, name: str) -> torch.Tensor:
        """The output of `name` from the last captured forward pass."""
        try:
            return self.outputs[name]
        except KeyError:
            raise CqdError(f"layer '{name}' did not run in the forward pass (a graph branch the output does not use?); name a layer on the path to the output") from None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def extract_features(model: nn.Module, inputs: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """One forward pass of `model` on `inputs`: {name: that layer's output} (`LOGITS`: the network's output).

    The model's mode (train/eval) and autograd state are the caller's.
    """
    hooks = FeatureHooks(model, names)
    try:
        with hooks.capture():
            output = model(inputs)
        features = {name: (output if name == LOGITS else hooks.get(name)) for name in names}
    finally:
        hooks.remove()
    return features
