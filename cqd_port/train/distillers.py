"""The distillation term of a `DistillSpec` method, from g's hooked features and f's targets.

`Distiller` is an `nn.Module`: its parameters (FitNets' 1x1 connector) are
trained with g. The trainer gives them to the same optimizer as g's under
the names `distill.<name>` (so the SGD update rule, momentum and weight decay
are g's, multipliers 1), saves them in the checkpoint beside g's and loads
them on resume. The connector that makes f's map meet g's:

- spatial size: f's map is resized to g's (`cqd_port.nn.distill.match_spatial_size`:
  bilinear, antialiased when shrinking), for `fitnets` and `at`;
- channels: FitNets' regressor, a learned 1x1 convolution from g's channels to
  f's (`HintConnector`); `at` sums over channels and `sp`/`rkd` compare
  relations within the batch, so they need none.

`build_distiller` hooks g's layer, reads the shapes from one probe forward
pass and seeds the connector; `Distiller(scores, labels, targets)` after a
forward pass of g inside `distiller.capturing()` gives the term.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from cqd_port.errors import CqdError
from cqd_port.models.features import LOGITS, FeatureHooks
from cqd_port.nn.distill import (
    HintConnector,
    attention_transfer_loss,
    dkd_losses,
    hint_loss,
    match_spatial_size,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)
from cqd_port.train.distill_spec import DistillSpec
from cqd_port.train.objective import class_scores

PARAMETER_PREFIX = "distill"
"""The distiller's parameters are `distill.<name>` in the optimizer (its momentum buffers too)."""


class Distiller(nn.Module):
    """The (unweighted) distillation term of `spec`; the objective adds `spec.weight` x it to softmax-log.

    `student_shape` and `teacher_shape` are the per-image shapes (`C x H x W`
    or `C`) of g's `spec.student_layer` and f's `spec.teacher_layer`; they size
    the connector. `generator` seeds its initial weights.
    """

    def __init__(
        self,
        spec: DistillSpec,
        student_shape: tuple[int, ...],
        teacher_shape: tuple[int, ...],
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.student_shape = tuple(student_shape)
        self.teacher_shape = tuple(teacher_shape)
        if spec.method in ("fitnets", "at") and (len(self.student_shape) not in (1, 3) or len(self.teacher_shape) not in (1, 3)):
            raise CqdError(
                f"{spec.method} needs feature maps: g's '{spec.student_layer}' gives {self.student_shape} per image, "
                f"f's '{spec.teacher_layer}' {self.teacher_shape}; name convolutional layers"
            )
        self.connector = HintConnector(self.student_shape[0], self.teacher_shape[0], generator) if spec.method == "fitnets" else None
        self.hooks: FeatureHooks | None = None

    def attach(self, student_model: nn.Module) -> "Distiller":
        """Hook g's `spec.student_layer` (nothing to hook for `logits`)."""
        self.detach_hooks()
        self.hooks = FeatureHooks(student_model, self.spec.student_layers)
        return self

    def detach_hooks(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Store g's hooked outputs during the forward passes inside the block."""
        if self.hooks is None:
            raise CqdError("the distiller is not attached to the student network; call attach(model) first")
        with self.hooks.capture():
            yield

    def term(self, student: torch.Tensor, teacher: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The method's term from g's feature `student`, f's target `teacher`, g's class scores and the labels."""
        spec = self.spec
        teacher = teacher.to(student.dtype)
        if spec.method == "fitnets":
            regressed = self.connector(student)  # type: ignore[misc]
            return hint_loss(regressed, match_spatial_size(teacher, tuple(regressed.shape[-2:])))
        if spec.method == "at":
            maps = student if student.dim() == 4 else student[:, :, None, None]
            return attention_transfer_loss(maps, match_spatial_size(teacher, tuple(maps.shape[-2:])), spec.attention)
        if spec.method == "sp":
            return similarity_preserving_loss(student, teacher)
        if spec.method == "rkd":
            # RKD's relations need pairs (distance) and triplets (angle): a last batch of the epoch smaller
            # than that has none, so that part of its term is 0 (the batch size is a Python int: no host sync)
            total = student.new_zeros(())
            if spec.distance_weight and student.shape[0] >= 2:
                total = total + spec.distance_weight * rkd_distance_loss(student, teacher)
            if spec.angle_weight and student.shape[0] >= 3:
                total = total + spec.angle_weight * rkd_angle_loss(student, teacher)
            return total
        if spec.method == "dkd":
            tckd, nckd = dkd_losses(scores, class_scores(teacher), labels, float(spec.temperature))  # type: ignore[arg-type]
            return spec.alpha * tckd + spec.beta * nckd
        raise CqdError(f"method '{spec.method}' is computed by the CQD objective, not a Distiller")

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """The term for the batch whose forward pass of g was captured; `targets` from `TeacherTargets.batch`."""
        spec = self.spec
        if spec.student_layer == LOGITS:
            student = scores
        elif self.hooks is None:
            raise CqdError("the distiller is not attached to the student network; call attach(model) first")
        else:
            student = self.hooks.get(spec.student_layer)
        return self.term(student, targets[spec.teacher_layer], class_scores(scores), labels)


def build_distiller(
    spec: DistillSpec,
    student_model: nn.Module,
    probe_inputs: torch.Tensor,
    teacher_shapes: Mapping[str, tuple[int, ...]],
    seed: int = 0,
) -> Distiller:
    """A `Distiller` for `spec`, attached to g, its connector sized by one test-mode probe of g on `probe_inputs`.

    `teacher_shapes` are f's per-image target shapes (`TeacherTargets.item_shapes`).
    The connector's weights come from a generator seeded with `seed`.
    """
    if spec.teacher_layer not in teacher_shapes:
        raise CqdError(f"the teacher targets hold {', '.join(teacher_shapes)}, not '{spec.teacher_layer}'; compute them for the method's layers")
    hooks = FeatureHooks(student_model, spec.student_layers)
    was_training = student_model.training
    try:
        student_model.eval()
        with torch.no_grad(), hooks.capture():
            output = student_model(probe_inputs)
        student = output if spec.student_layer == LOGITS else hooks.get(spec.student_layer)
    finally:
        hooks.remove()
        student_model.train(was_training)
    student_shape = tuple(int(d) for d in (class_scores(student) if spec.student_layer == LOGITS else student).shape[1:])
    generator = torch.Generator().manual_seed(int(seed))
    distiller = Distiller(spec, student_shape, tuple(teacher_shapes[spec.teacher_layer]), generator)
    return distiller.attach(student_model)
