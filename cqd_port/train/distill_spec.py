"""Which distillation method, with which weight, layers and parameters: `DistillSpec`.

`kd` is CQD's logit distillation (`vl_nndistillloss` at temperature T; the
trainer runs it as `Objective("cqd")`, bit for bit as before). The others
come after CQD and are computed by `cqd_port.train.distillers.Distiller`
from the loss functions of `cqd_port.nn.distill`:

| method | term (before `weight`) | layers | parameters (default) |
|---|---|---|---|
| kd | CQD's cross-entropy of softmaxes at T | logits | temperature (10) |
| fitnets | FitNets hint, Eq. (3), through a learned 1x1 connector | feature maps | - |
| at | attention transfer, Eq. (2) | feature maps | attention: paper or code |
| sp | similarity-preserving, Eq. (4) | any | - |
| rkd | distance_weight x RKD-D + angle_weight x RKD-A | any (flattened) | distance_weight (25), angle_weight (50) |
| dkd | alpha x TCKD + beta x NCKD, Eq. (7) | logits | temperature (4), alpha (1), beta (8) |

Layers are named as the networks name them (`cqd_port.models.features`):
`teacher_layer` in f, `student_layer` in g, `logits` for a network's output.
`from_dict` / `to_dict` are the YAML form: a key a method does not use is an
error, and `to_dict` writes only the keys the method uses.

Interpretations (where papers and their released code differ):
- FitNets trained the hint alone first, then the student with KD; here the hint
  is one term beside softmax-log from the start (as later comparisons run it),
  and the regressor is a 1x1 conv after resizing f's map, not a conv whose
  kernel fixes the sizes.
- AT: `attention: paper` is Eq. (2) (unsquared norm of the difference);
  `attention: code` the authors' `at_loss` (squared, averaged over positions).
- RKD: the batch mean over pairs/triplets of the released code, not Eq. (4)'s sum.
- DKD: the released code's `T^2` factor; its linear warm-up of the DKD term
  over the first 20 epochs is NOT applied (the term has its full weight from epoch 1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from cqd_port.errors import CqdError
from cqd_port.models.features import LOGITS
from cqd_port.nn.distill import ATTENTION_FORMS


@dataclass(frozen=True)
class MethodInfo:
    """What a method reads and which `DistillSpec` fields it uses."""

    name: str
    paper: str
    feature_layers: bool  # False: the method reads the logits of f and g (no layer choice)
    params: tuple[str, ...]
    defaults: tuple[tuple[str, Any], ...] = ()


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("kd", "Su & Maji 2017 (CQD); Hinton et al. 2015", False, ("temperature",), (("temperature", 10.0),)),
        MethodInfo("fitnets", "Romero et al. 2015 (FitNets)", True, ()),
        MethodInfo("at", "Zagoruyko & Komodakis 2017 (attention transfer)", True, ("attention",)),
        MethodInfo("sp", "Tung & Mori 2019 (similarity-preserving KD)", True, ()),
        MethodInfo("rkd", "Park et al. 2019 (relational KD)", True, ("distance_weight", "angle_weight")),
        MethodInfo("dkd", "Zhao et al. 2022 (decoupled KD)", False, ("temperature", "alpha", "beta")),
    )
}

_LAYER_FIELDS = ("teacher_layer", "student_layer")


@dataclass(frozen=True)
class DistillSpec:
    """One distillation method and its settings (see the module table).

    The objective is `softmaxlog + weight x term`, both summed over the batch.
    `temperature` is the method's default when left at None (kd: 10, the
    paper's T; dkd: 4, DKD's CIFAR setting).
    """

    method: str
    weight: float = 1.0
    teacher_layer: str = LOGITS
    student_layer: str = LOGITS
    temperature: float | None = None
    alpha: float = 1.0
    beta: float = 8.0
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    attention: str = "paper"

    def __post_init__(self) -> None:
        info = METHODS.get(self.method)
        if info is None:
            raise CqdError(f"unknown distillation method '{self.method}' (known: {', '.join(METHODS)})")
        if self.temperature is None:
            object.__setattr__(self, "temperature", float(dict(info.defaults).get("temperature", 4.0)))
        for name in ("weight", "temperature", "alpha", "beta", "distance_weight", "angle_weight"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not self.weight >= 0:
            raise CqdError(f"distillation weight must be non-negative, got {self.weight}")
        if not self.temperature > 0:  # type: ignore[operator]
            raise CqdError(f"{self.method}: temperature must be positive, got {self.temperature}")
        for name in ("alpha", "beta", "distance_weight", "angle_weight"):
            if not getattr(self, name) >= 0:
                raise CqdError(f"{self.method}: {name} must be non-negative, got {getattr(self, name)}")
        if self.attention not in ATTENTION_FORMS:
            raise CqdError(f"at: attention '{self.attention}' unknown (use {' or '.join(ATTENTION_FORMS)})")
        if not info.feature_layers and (self.teacher_layer != LOGITS or self.student_layer != LOGITS):
            raise CqdError(f"{self.method} distils logits: leave teacher_layer and student_layer out (they are '{LOGITS}')")
        for name in _LAYER_FIELDS:
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise CqdError(f"{self.method}: {name} must be a layer name (or '{LOGITS}')")

    @property
    def info(self) -> MethodInfo:
        return METHODS[self.method]

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        """The layers of f whose outputs are the targets (`logits` for f's output)."""
        return (self.teacher_layer,)

    @property
    def student_layers(self) -> tuple[str, ...]:
        """The layers of g the term reads (`logits` for g's output)."""
        return (self.student_layer,)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DistillSpec":
        """The YAML form: `method`, `weight`, the method's layers and parameters; other keys are errors."""
        if "method" not in data:
            raise CqdError(f"distillation settings need a 'method' ({', '.join(METHODS)})")
        method = str(data["method"])
        info = METHODS.get(method)
        if info is None:
            raise CqdError(f"unknown distillation method '{method}' (known: {', '.join(METHODS)})")
        allowed = {"method", "weight", *info.params, *(_LAYER_FIELDS if info.feature_layers else ())}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise CqdError(f"{method}: unknown setting '{unknown[0]}' (settings of {method}: {', '.join(sorted(allowed))})")
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("method", "teacher_layer", "student_layer", "attention"):
                values[key] = str(value)
            else:
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    raise CqdError(f"{method}: {key} must be a number, got {value!r} ({types[key]})") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings the method uses (the inverse of `from_dict`)."""
        out: dict[str, Any] = {"method": self.method, "weight": self.weight}
        if self.info.feature_layers:
            out.update(teacher_layer=self.teacher_layer, student_layer=self.student_layer)
        out.update({name: getattr(self, name) for name in self.info.params})
        return out
