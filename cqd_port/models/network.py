"""`SimpleNetwork`: runs a MatConvNet layer list exactly as `vl_simplenn` does.

The layers run one after another, each on the previous output. Parameters
live in the module's state dict as `<layer>.weight` (conv filters OIHW, bnorm
gain), `<layer>.bias` and `<layer>.moments` (bnorm `[mean sigma]`, a buffer).

Differences from a plain `nn.Sequential`: layer names are MatConvNet's and
index the state dict directly; every intermediate output is available
(`return_all=True`, `res(i+1).x` of `vl_simplenn`) for parity checks; the
network starts in *test* mode (`vl_simplenn`'s default: dropout is the
identity) and `model.train()` turns dropout on; LRN layers use `lrn_mode`
("exact" as MatConvNet's GPU kernels, "matconvnet-cpu" for its CPU kernels);
bnorm layers are differentiated as beta18 does (`bnorm_backward="matconvnet"`:
batch statistics even in test mode) or through their stored moments
("consistent"; see `cqd_port.nn.functional.bnorm`).

Speed options (same numbers, within float32 rounding): `channels_last`
(default True) runs CPU activations in channels-last memory, where oneDNN's
convolutions and max pooling are much faster; `inplace_relu` (default True)
applies a ReLU in place on a fresh conv/bnorm output when only the final
output is requested. Parameters stay ordinary contiguous OIHW tensors.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cqd_port.errors import CqdError
from cqd_port.models.layers import MULTI_INPUT_TYPES, LayerSpec, conv_filter_shape, scalar_attr
from cqd_port.nn import modules as M
from cqd_port.nn.functional import BETA18_BNORM_EPSILON
from cqd_port.nn.lrn import check_lrn_mode

# Layers whose output autograd does not keep, so a ReLU right after them may work in place.
_INPLACE_SAFE_BEFORE_RELU = ("conv", "bnorm")


def _tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return torch.from_numpy(np.array(value, copy=True))


class SimpleNetwork(nn.Module):
    """A chain network given as a list of `LayerSpec` plus a state dict.

    `state` maps `<layer>.weight` / `.bias` / `.moments` to tensors (or numpy
    arrays). Without a state, conv layers need a `size` attribute
    `[h w depth count]` and start from zeros (see `vgg.init_state` for random
    weights). Missing, unknown or mis-shaped parameters raise `CqdError`
    naming the layer, the parameter and both shapes.
    """

    # GraphNetwork sets this: layers then read their inputs by variable name.
    is_graph = False

    def __init__(
        self,
        specs: Sequence[LayerSpec],
        state: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        lrn_mode: str = "exact",
        bnorm_backward: str = "matconvnet",
    ) -> None:
        super().__init__()
        check_lrn_mode(lrn_mode)
        self._bnorm_backward = M.check_bnorm_backward(bnorm_backward)
        self._specs: list[LayerSpec] = [copy.deepcopy(s) for s in specs]
        self._meta: dict[str, Any] = copy.deepcopy(dict(meta)) if meta is not None else {}
        self._lrn_mode = lrn_mode
        # ReLU in place after conv/bnorm when only the final output is asked for (saves a
        # pass over memory); switch off when forward hooks must see pre-ReLU outputs.
        self.inplace_relu = True
        # Activations in channels-last memory: oneDNN's convolutions and max pooling are
        # markedly faster on CPU that way (VGG-M forward ~1.5x); values are unchanged.
        self.channels_last = True
        state = dict(state) if state is not None else None
        used: set[str] = set()
        names: set[str] = set()
        for spec in self._specs:
            if spec.name in names:
                raise CqdError(f"layer '{spec.name}' appears twice; layer names must be unique")
            names.add(spec.name)
            if spec.type in MULTI_INPUT_TYPES and not self.is_graph:
                raise CqdError(
                    f"layer '{spec.name}' ({spec.type}) reads several inputs; a chain network cannot hold it "
                    "(load the model with matconvnet_weights.load_model, which builds a GraphNetwork)"
                )
            module = self._build(spec, state, used)
            if not spec.name or "." in spec.name or (hasattr(self, spec.name) and spec.name not in self._modules):
                raise CqdError(f"layer name '{spec.name}' cannot be used (empty, contains '.', or clashes with an attribute); rename the layer")
            self.add_module(spec.name, module)
        if state is not None:
            unknown = sorted(set(state) - used)
            if unknown:
                raise CqdError(f"parameter '{unknown[0]}' belongs to no layer of the network (layers: {', '.join(s.name for s in self._specs)})")
        self.eval()

    # -- construction ---------------------------------------------------------------
    def _param(self, state: dict[str, Any] | None, used: set[str], spec: LayerSpec, key: str, shape: tuple[int, ...] | None) -> torch.Tensor:
        full = dict(spec.attrs.get("shared") or {}).get(key, f"{spec.name}.{key}")
        if state is None or full not in state:
            if state is None and shape is not None:
                return torch.zeros(shape)
            if state is None:
                raise CqdError(
                    f"layer '{spec.name}' ({spec.type}): no state given and no 'size' attribute to shape "
                    f"'{full}'; pass the parameters (e.g. vgg.init_state(specs)) or add 'size' [h w depth count]"
                )
            expected = f" of shape {list(shape)}" if shape is not None else ""
            raise CqdError(f"layer '{spec.name}' ({spec.type}): parameter '{full}'{expected} is missing from the state dict")
        used.add(full)
        value = _tensor(state[full])
        if shape is not None:
            if key == "bias" or (spec.type == "bnorm" and key == "weight"):
                value = value.reshape(-1) if value.numel() == int(np.prod(shape)) else value
            elif key == "moments" and value.numel() == int(np.prod(shape)):
                value = value.reshape(shape)
            if tuple(value.shape) != tuple(shape):
                raise CqdError(
                    f"layer '{spec.name}' ({spec.type}): parameter '{full}' has shape {list(value.shape)}, expected {list(shape)}"
                )
        return value

    def _build(self, spec: LayerSpec, state: dict[str, Any] | None, used: set[str]) -> nn.Module:
        a = spec.attrs
        if spec.type == "conv":
            shape = conv_filter_shape(spec)
            weight = self._param(state, used, spec, "weight", shape)
            if weight.dim() != 4:
                raise CqdError(f"layer '{spec.name}' (conv): parameter '{spec.name}.weight' must be 4-D (O x I x H x W), got shape {list(weight.shape)}")
            has_bias = bool(a.get("has_bias", True))
            bias = self._param(state, used, spec, "bias", (weight.shape[0],)) if has_bias else None
            return M.Conv(weight, bias, a.get("pad", 0), a.get("stride", 1), a.get("dilate", 1))
        if spec.type == "pool":
            return M.Pool(str(a.get("method", "max")), a.get("pool", 1), a.get("stride", 1), a.get("pad", 0))
        if spec.type == "lrn":
            if "param" not in a:
                raise CqdError(f"layer '{spec.name}' (lrn): attribute 'param' [N kappa alpha beta] is missing")
            return M.LRN(a["param"], self._lrn_mode)
        if spec.type == "relu":
            return M.ReLU(scalar_attr(a.get("leak", 0.0)))
        if spec.type == "dropout":
            return M.Dropout(scalar_attr(a.get("rate", 0.5)))
        if spec.type == "softmax":
            return M.Softmax()
        if spec.type == "bnorm":
            weight = self._param(state, used, spec, "weight", None)
            channels = weight.numel()
            gain = weight.reshape(-1)
            bias = self._param(state, used, spec, "bias", (channels,))
            moments = self._param(state, used, spec, "moments", (channels, 2))
            return M.BatchNormTest(gain, bias, moments, scalar_attr(a.get("epsilon", BETA18_BNORM_EPSILON)), self._bnorm_backward)
        if spec.type == "convt":
            weight = self._param(state, used, spec, "weight", None)
            if weight.dim() != 4:
                raise CqdError(f"layer '{spec.name}' (convt): parameter '{spec.name}.weight' must be 4-D (FD x K x FH x FW), got shape {list(weight.shape)}")
            groups = int(scalar_attr(a.get("groups", 1)))
            has_bias = bool(a.get("has_bias", True))
            bias = self._param(state, used, spec, "bias", (weight.shape[1] * groups,)) if has_bias else None
            return M.ConvTranspose(weight, bias, a.get("upsample", 1), a.get("crop", 0), groups)
        if spec.type == "scale":
            weight = self._param(state, used, spec, "weight", None)
            bias = self._param(state, used, spec, "bias", None) if bool(a.get("has_bias", True)) else None
            return M.Scale(weight, bias)
        if spec.type == "sum":
            return M.Sum()
        if spec.type == "concat":
            return M.Concat(int(scalar_attr(a.get("dim", 3))))
        if spec.type == "crop":
            return M.Crop(a.get("crop", 0))
        if spec.type == "unknown":
            raise CqdError(
                f"layer '{spec.name}' has type '{a.get('matconvnet_type', '?')}', which the port cannot run; "
                "keep the network before it (convert-weights --cut-at LAYER)"
            )
        raise CqdError(f"layer '{spec.name}': unknown layer type '{spec.type}'")

    # -- properties -----------------------------------------------------------------
    @property
    def specs(self) -> list[LayerSpec]:
        """The layer list (copies: editing them does not change the network)."""
        return [copy.deepcopy(s) for s in self._specs]

    @property
    def meta(self) -> dict[str, Any]:
        """MatConvNet's `net.meta` (normalization, classes, ...) as plain Python."""
        return self._meta

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self._specs]

    @property
    def lrn_mode(self) -> str:
        return self._lrn_mode

    @lrn_mode.setter
    def lrn_mode(self, mode: str) -> None:
        self._lrn_mode = check_lrn_mode(mode)
        for module in self.children():
            if isinstance(module, M.LRN):
                module.mode = mode

    @property
    def bnorm_backward(self) -> str:
        """How bnorm layers are differentiated: "matconvnet" (batch statistics, as beta18's
        `vl_simplenn`; the default) or "consistent" (through the stored moments)."""
        return self._bnorm_backward

    @bnorm_backward.setter
    def bnorm_backward(self, mode: str) -> None:
        self._bnorm_backward = M.check_bnorm_backward(mode)
        for module in self.children():
            if isinstance(module, M.BatchNormTest):
                module.bnorm_backward = mode

    def layer(self, name: str) -> nn.Module:
        if name not in self._modules:
            raise CqdError(f"no layer named '{name}' (layers: {', '.join(self.layer_names)})")
        return self._modules[name]  # type: ignore[return-value]

    # -- evaluation -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_all: bool = False) -> torch.Tensor | OrderedDict[str, torch.Tensor]:
        """Run every layer in order; the last output, or {layer name: output} for all layers."""
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        previous_type = None
        if self.channels_last and x.dim() == 4 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        for spec in self._specs:
            module = self._modules[spec.name]
            if isinstance(module, M.ReLU):
                # in place only on a fresh activation that nobody else holds or needs for backward
                module.inplace = self.inplace_relu and not return_all and previous_type in _INPLACE_SAFE_BEFORE_RELU
            try:
                x = module(x)
            except CqdError as exc:
                raise CqdError(f"layer '{spec.name}' ({spec.type}): {exc}") from None
            previous_type = spec.type
            if return_all:
                outputs[spec.name] = x
        return outputs if return_all else x

    # -- derived networks -----------------------------------------------------------
    def _cloned_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def truncated(self, after: str) -> "SimpleNetwork":
        """A new network with the layers up to and including `after` (copied weights, same meta and LRN mode)."""
        names = self.layer_names
        if after not in names:
            raise CqdError(f"cannot truncate after '{after}': no such layer (layers: {', '.join(names)})")
        keep = names[: names.index(after) + 1]
        state = {k: v for k, v in self._cloned_state().items() if k.split(".", 1)[0] in keep}
        net = SimpleNetwork(self._specs[: len(keep)], state, self._meta, self._lrn_mode)
        return self._same_options(net)

    def with_layers_appended(self, specs: Sequence[LayerSpec], state: Mapping[str, Any] | None = None) -> "SimpleNetwork":
        """A new network: these layers plus `specs`, whose parameters come from `state` (copied weights)."""
        merged = self._cloned_state()
        if state is None:
            # new conv layers then need their `size` attribute; build them on their own first
            extra = SimpleNetwork(specs, None, lrn_mode=self._lrn_mode)._cloned_state()
        else:
            extra = dict(state)
        clash = sorted(set(merged) & set(extra))
        if clash:
            raise CqdError(f"cannot append: parameter '{clash[0]}' already exists in the network; rename the new layer")
        merged.update(extra)
        net = SimpleNetwork([*self._specs, *specs], merged, self._meta, self._lrn_mode)
        return self._same_options(net)

    def _same_options(self, net: "SimpleNetwork") -> "SimpleNetwork":
        net.inplace_relu, net.channels_last = self.inplace_relu, self.channels_last
        net.bnorm_backward = self._bnorm_backward
        return net.train(self.training)

    def extra_repr(self) -> str:
        return f"lrn_mode={self._lrn_mode!r}"
