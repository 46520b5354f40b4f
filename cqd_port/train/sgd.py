"""MatConvNet's SGD update, as `cnn_train_dag.m` (1.0-beta18) applies it.

For every parameter `w` with gradient `g` of the *summed* batch objective,
learning-rate multiplier `lrMult` and weight-decay multiplier `wdMult`:

    m = momentum * m - weightDecay * wdMult * w - (1 / batchSize) * g
    w = w + learningRate * lrMult * m

How this differs from `torch.optim.SGD(momentum=mu, weight_decay=wd)`:

* PyTorch keeps `buf = mu * buf + (g + wd * w)` and steps `w -= lr * buf`;
  MatConvNet puts weight decay and the 1/batchSize gradient normalisation
  *inside* the momentum buffer (with a minus sign) and applies the learning
  rate only when it adds the buffer to the weights. A learning-rate change
  between epochs therefore rescales the whole accumulated velocity, which
  it does not in PyTorch.
* The gradient is of the loss summed over the batch and divided by the
  actual batch size here (the last, partial batch divides by its own size).
* Every parameter has its own `(lrMult, wdMult)`; the fresh `fc8` of CQD has
  `(10, 1)` for its filters and `(20, 0)` for its biases, everything else
  `(1, 1)` (what `DagNN.fromSimpleNN` gives a pretrained model).
* The momentum buffers start at zero and are exposed by parameter name.

Arithmetic follows the MATLAB expression's order (each product rounded to
float32 before the subtraction), not a fused `addcmul`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from cqd_port.errors import CqdError


@dataclass(frozen=True)
class Multipliers:
    """Per-parameter `(learningRate, weightDecay)` multipliers of a DagNN param."""

    lr: float = 1.0
    wd: float = 1.0


def cqd_multipliers(
    names: Iterable[str], new_layers: Iterable[str] = ("fc8",)
) -> dict[str, Multipliers]:
    """The multipliers CQD training really had (see the parity file's `lrMult`/`wdMult`).

    `DagNN.fromSimpleNN` gives every parameter of a pretrained network
    multipliers of 1 (biases included); `initializeNetwork.m` creates the new
    classifier with learning rate `[10 20]` and weight decay `[1 0]`
    (filters, biases).
    """
    new = set(new_layers)
    out: dict[str, Multipliers] = {}
    for name in names:
        layer, _, kind = name.rpartition(".")
        if layer in new and kind == "weight":
            out[name] = Multipliers(lr=10.0, wd=1.0)
        elif layer in new and kind == "bias":
            out[name] = Multipliers(lr=20.0, wd=0.0)
        else:
            out[name] = Multipliers()
    return out


class MatConvNetSGD:
    """`cnn_train_dag`'s momentum SGD over named parameters.

    Parameters are given as `(name, tensor)` pairs, the names being state-dict
    keys (`conv1.weight`, `fc8.bias`, ...); `multipliers` maps a name to a
    `Multipliers` or an `(lr_mult, wd_mult)` pair (missing names: 1, 1).
    A parameter whose `.grad` is None (it took no part in the forward pass)
    is updated with a zero gradient, as MatConvNet's zero `der` would be:
    weight decay and momentum still act on it.
    """

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.Tensor]],
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        multipliers: Mapping[str, Multipliers | tuple[float, float]] | None = None,
    ) -> None:
        self.params: dict[str, torch.Tensor] = {}
        for name, param in named_parameters:
            if param.requires_grad:
                self.params[name] = param
        if not self.params:
            raise CqdError("MatConvNetSGD: the model has no trainable parameters; check the network's state dict")
        multipliers = dict(multipliers or {})
        unknown = sorted(set(multipliers) - set(self.params))
        if unknown:
            raise CqdError(
                f"MatConvNetSGD: multipliers given for unknown parameters {unknown}; "
                f"use state-dict names such as {next(iter(self.params))!r}"
            )
        self.multipliers: dict[str, Multipliers] = {}
        for name in self.params:
            value = multipliers.get(name, Multipliers())
            self.multipliers[name] = value if isinstance(value, Multipliers) else Multipliers(*map(float, value))
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.momentum_buffers: dict[str, torch.Tensor] = {
            name: torch.zeros_like(p, memory_format=torch.preserve_format) for name, p in self.params.items()
        }

    @torch.no_grad()
    def reset_momentum(self) -> None:
        """Zero every momentum buffer in place (the start of an epoch in `cnn_train_dag`)."""
        for buf in self.momentum_buffers.values():
            buf.zero_()

    def zero_grad(self) -> None:
        for param in self.params.values():
            param.grad = None

    @torch.no_grad()
    def step(self, learning_rate: float, batch_size: int) -> None:
        """One update with the gradient of the loss summed over `batch_size` images."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        inv_batch = 1.0 / batch_size
        for name, param in self.params.items():
            mult = self.multipliers[name]
            buf = self.momentum_buffers[name]
            decay = self.weight_decay * mult.wd
            buf.mul_(self.momentum)
            if decay != 0.0:
                buf.sub_(param * decay)
            if param.grad is not None:
                buf.sub_(param.grad * inv_batch)
            param.add_(buf * (learning_rate * mult.lr))

    def state_dict(self) -> dict[str, object]:
        return {
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "multipliers": {k: [m.lr, m.wd] for k, m in self.multipliers.items()},
            "buffers": {k: v.detach().cpu().clone() for k, v in self.momentum_buffers.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        buffers = state["buffers"]
        assert isinstance(buffers, Mapping)
        if set(buffers) != set(self.momentum_buffers):
            raise CqdError(
                "checkpoint momentum buffers do not match the model's parameters "
                f"(missing {sorted(set(self.momentum_buffers) - set(buffers))}, "
                f"extra {sorted(set(buffers) - set(self.momentum_buffers))}); start a fresh run folder"
            )
        for name, buf in self.momentum_buffers.items():
            src = buffers[name]
            if tuple(src.shape) != tuple(buf.shape):
                raise CqdError(
                    f"checkpoint momentum buffer '{name}' has shape {tuple(src.shape)}, the model "
                    f"{tuple(buf.shape)}; start a fresh run folder"
                )
            buf.copy_(src)


OPTIMIZERS = ("matconvnet", "torch")


class TorchSGD:
    """`torch.optim.SGD` behind `MatConvNetSGD`'s interface (the option for torchvision networks).

    PyTorch's update: `buf = momentum * buf + (g + weight_decay * wd_mult * w)`,
    `w -= lr * lr_mult * buf`, with `g` the gradient of the batch-MEAN loss.
    The trainer differentiates the loss summed over the batch (as MatConvNet
    did), so the gradient is divided by the actual batch size first; weight
    decay sits outside the learning-rate-free buffer as PyTorch puts it (see
    the module docstring for how MatConvNet differs). One parameter group per
    parameter carries its multipliers.
    """

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.Tensor]],
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        multipliers: Mapping[str, Multipliers | tuple[float, float]] | None = None,
    ) -> None:
        self.params = {name: p for name, p in named_parameters if p.requires_grad}
        if not self.params:
            raise CqdError("TorchSGD: the model has no trainable parameters; check the network")
        multipliers = dict(multipliers or {})
        unknown = sorted(set(multipliers) - set(self.params))
        if unknown:
            raise CqdError(f"TorchSGD: multipliers given for unknown parameters {unknown}; use state-dict names")
        self.lr_mult: list[float] = []
        groups = []
        for name, param in self.params.items():
            value = multipliers.get(name, Multipliers())
            mult = value if isinstance(value, Multipliers) else Multipliers(*map(float, value))
            self.lr_mult.append(mult.lr)
            groups.append({"params": [param], "weight_decay": float(weight_decay) * mult.wd})
        self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=float(momentum))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, learning_rate: float, batch_size: int) -> None:
        """One `torch.optim.SGD` step with the gradient of the summed loss divided by `batch_size`."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for param in self.params.values():
            if param.grad is not None:
                param.grad.div_(batch_size)
        for group, mult in zip(self.optimizer.param_groups, self.lr_mult):
            group["lr"] = learning_rate * mult
        self.optimizer.step()

    def reset_momentum(self) -> None:
        """Drop the momentum buffers (they restart at zero), for `TrainConfig.momentum_reset_each_epoch`."""
        self.optimizer.state.clear()

    def state_dict(self) -> dict[str, object]:
        return {"kind": "torch", "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        if state.get("kind") != "torch":
            raise CqdError("the checkpoint holds MatConvNet SGD state, this run uses torch.optim.SGD; use the same optimizer or a fresh run folder")
        try:
            self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        except (ValueError, KeyError) as exc:
            raise CqdError(f"checkpoint optimizer state does not fit this network ({exc}); start a fresh run folder") from None


def make_optimizer(
    kind: str,
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    momentum: float,
    weight_decay: float,
    multipliers: Mapping[str, Multipliers | tuple[float, float]] | None = None,
) -> "MatConvNetSGD | TorchSGD":
    """`matconvnet` (the release's update, `MatConvNetSGD`) or `torch` (`TorchSGD`).

    A negative or non-finite momentum or weight decay is refused in one line
    naming its YAML key (torch.optim.SGD's bare ValueError, or a silently
    diverging MatConvNet update, otherwise).
    """
    for key, value, example in (("train.momentum", momentum, 0.9), ("train.weight_decay", weight_decay, 0.0005)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise CqdError(f"{key}: {value!r} must be a non-negative number, e.g. {key.partition('.')[2]}: {example}")
    if kind == "matconvnet":
        return MatConvNetSGD(named_parameters, momentum, weight_decay, multipliers)
    if kind == "torch":
        return TorchSGD(named_parameters, momentum, weight_decay, multipliers)
    raise CqdError(f"unknown optimizer '{kind}': use matconvnet (the released code's SGD) or torch (torch.optim.SGD)")
