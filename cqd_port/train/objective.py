"""The training objective: softmax-log alone, or CQD's Equation (1).

CQD minimises, over a batch, `sum_i softmaxlog(g(z_i), y_i) + lambda *
sum_i distill(g(z_i), f(x_i))` where `f(x_i)` are the teacher's logits on the
high-quality image and `distill` the cross-entropy of the two softmaxes at
temperature T (`T1 = T2 = T`). Both terms are *summed* over the batch, as
the original `cnn_train_dag` network had them (two loss blocks, `objective`
with derivative 1 and `distill` with derivative `lambda`); the 1/batchSize
normalisation happens in the SGD update (`MatConvNetSGD`). PyTorch's
`cross_entropy` would average by default instead.

`kind="distill"` is softmax-log + weight x a later distillation method's term
(`DistillSpec`: FitNets, AT, SP, RKD, DKD), the term computed by the
trainer's `cqd_port.train.distillers.Distiller` and passed in as `distill_term`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from cqd_port.errors import CqdError
from cqd_port.train.distill_spec import DistillSpec

CQD_TEMPERATURE = 10.0
"""T of the paper (validated, the same for every experiment)."""

CQD_LAMBDA: dict[str, float] = {"cub": 200.0, "cars": 50.0, "vgg16_vggm": 50.0}
"""lambda of the paper: CUB 200, CARS 50, vgg-vd -> vgg-m (Table 2) 50."""

OBJECTIVE_KINDS = ("softmaxlog", "cqd", "distill")


class ObjectiveValue(NamedTuple):
    """`total` is what is differentiated; `softmaxlog` and `distill` are the two summed terms."""

    total: torch.Tensor
    softmaxlog: torch.Tensor
    distill: torch.Tensor


def class_scores(scores: torch.Tensor) -> torch.Tensor:
    """Network output `N x K x 1 x 1` (MatConvNet's `1x1xKxN`) or `N x K` -> `N x K`."""
    if scores.dim() == 4:
        if scores.shape[2] != 1 or scores.shape[3] != 1:
            raise CqdError(
                f"network output has spatial size {scores.shape[2]}x{scores.shape[3]}, a classifier needs 1x1; "
                "check the input image size against the network's"
            )
        return scores.reshape(scores.shape[0], scores.shape[1])
    if scores.dim() != 2:
        raise CqdError(f"network output has shape {tuple(scores.shape)}, expected N x K or N x K x 1 x 1")
    return scores


@dataclass(frozen=True)
class Objective:
    """What a training step minimises.

    `kind="softmaxlog"`: the summed softmax-log loss (fine-tuning, data
    augmentation, staged training). `kind="cqd"`: softmax-log + `lambda_` x
    distillation to the teacher's logits at temperature `temperature`.
    `kind="distill"`: softmax-log + `distill.weight` x the term of the method
    `distill` (build it with `Objective.for_method`, which gives `kd` as `cqd`).
    """

    kind: str = "softmaxlog"
    lambda_: float = 0.0
    temperature: float = CQD_TEMPERATURE
    distill: DistillSpec | None = None

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVE_KINDS:
            raise CqdError(f"unknown objective '{self.kind}' (known: {', '.join(OBJECTIVE_KINDS)})")
        if (self.kind == "distill") != (self.distill is not None):
            raise CqdError("a 'distill' objective needs its DistillSpec (and only it has one); use Objective.for_method(spec)")
        if self.distill is not None:  # the spec's weight and temperature are the objective's
            object.__setattr__(self, "lambda_", float(self.distill.weight))
            object.__setattr__(self, "temperature", float(self.distill.temperature))  # type: ignore[arg-type]
        if self.kind == "cqd" and not self.temperature > 0:
            raise CqdError(f"CQD temperature must be positive, got {self.temperature}")
        if self.kind == "cqd" and not self.lambda_ >= 0:
            raise CqdError(f"CQD lambda must be non-negative, got {self.lambda_}")

    @classmethod
    def cqd(cls, preset: str) -> "Objective":
        """The paper's CQD setting by name: `cub` (lambda 200), `cars` (50), `vgg16_vggm` (50); T = 10."""
        try:
            lam = CQD_LAMBDA[preset]
        except KeyError:
            raise CqdError(f"unknown CQD preset '{preset}' (known: {', '.join(CQD_LAMBDA)})") from None
        return cls(kind="cqd", lambda_=lam, temperature=CQD_TEMPERATURE)

    @classmethod
    def for_method(cls, spec: DistillSpec) -> "Objective":
        """The objective of a distillation method: `kd` is CQD's (`kind="cqd"`), the others `kind="distill"`."""
        if spec.method == "kd":
            return cls(kind="cqd", lambda_=spec.weight, temperature=float(spec.temperature))  # type: ignore[arg-type]
        return cls(kind="distill", distill=spec)

    @property
    def needs_teacher(self) -> bool:
        """It needs f's logits table (`teacher_logits`)."""
        return self.kind == "cqd"

    @property
    def needs_teacher_targets(self) -> bool:
        """It needs f's targets (`cqd_port.train.teacher.TeacherTargets`) and a `Distiller`."""
        return self.kind == "distill"

    def __call__(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        check_labels: bool = True,
        distill_term: torch.Tensor | None = None,
    ) -> ObjectiveValue:
        """Both summed terms and their weighted sum for a batch (labels 0-based).

        `check_labels` False skips the label range check, which waits for the
        device (the trainer checks the labels once per run instead).
        `distill_term` is the `Distiller`'s term for a `distill` objective.
        """
        from cqd_port.nn.losses import distill_loss, softmaxlog_loss

        scores = class_scores(scores)
        softmaxlog = softmaxlog_loss(scores, labels, check_labels=check_labels)
        if self.kind == "softmaxlog":
            distill = scores.new_zeros(())
            return ObjectiveValue(softmaxlog, softmaxlog, distill)
        if self.kind == "distill":
            if distill_term is None:
                raise CqdError(f"the {self.distill.method} objective needs its term from cqd_port.train.distillers.Distiller")  # type: ignore[union-attr]
            return ObjectiveValue(softmaxlog + self.lambda_ * distill_term, softmaxlog, distill_term)
        if teacher_logits is None:
            raise CqdError("the CQD objective needs teacher logits; compute them with cqd_port.train.teacher.teacher_logits")
        teacher = class_scores(teacher_logits).to(scores.dtype)
        if teacher.shape != scores.shape:
            raise CqdError(
                f"teacher logits have shape {tuple(teacher.shape)}, the student's scores {tuple(scores.shape)}; "
                "the teacher must be trained on the same classes"
            )
        distill = distill_loss(scores, teacher, self.temperature, self.temperature)
        return ObjectiveValue(softmaxlog + self.lambda_ * distill, softmaxlog, distill)

    def to_dict(self) -> dict[str, object]:
        if self.distill is not None:
            return {"kind": self.kind, **self.distill.to_dict()}
        return {"kind": self.kind, "lambda": self.lambda_, "temperature": self.temperature}
