"""The two objectives of CQD training, as MatConvNet computed them.

- `softmaxlog_loss`: `vl_nnloss(x, c, [], 'loss', 'softmaxlog')` (and the
  older `vl_nnsoftmaxloss`), *summed* over the batch and over pixels, which
  is what `cnn_train_dag` optimised (PyTorch's `cross_entropy` averages by
  default). Labels here are 0-based (MatConvNet's `c` is 1-based).
- `distill_loss`: the original CQD `vl_nndistillloss`, whose hand-written
  backward differs from the true gradient when the two temperatures differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from cqd_port.errors import CqdError


def _scores_as_rows(scores: torch.Tensor, what: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """N x C, N x C x 1 x 1 or N x C x H x W scores -> (N*H*W) x C rows and the per-row shape (N[, H, W])."""
    if scores.dim() == 2:
        return scores, (scores.shape[0],)
    if scores.dim() == 4:
        n, c, h, w = scores.shape
        rows = scores.permute(0, 2, 3, 1).reshape(n * h * w, c)
        return rows, ((n,) if h == w == 1 else (n, h, w))
    raise CqdError(f"{what}: scores must be N x C or N x C x H x W, got shape {tuple(scores.shape)}")


def softmaxlog_loss(scores: torch.Tensor, labels: torch.Tensor, check_labels: bool = True) -> torch.Tensor:
    """Summed softmax log-loss: sum over images (and pixels) of `-log softmax(x)[label]`.

    Reproduces `vl_nnloss(..., 'loss', 'softmaxlog')` of MatConvNet: scores
    N x C x H x W (or N x C, or N x C x 1 x 1), one label per image or per
    pixel, the result a scalar *sum* (not PyTorch's mean), backward
    `softmax(x) - onehot(label)`. Computed through `log_softmax`, so it is
    stable for large scores. `labels` are 0-based class indices;
    `check_labels` False skips their range check (it reads the labels back
    from the device, which a training step must not do).
    """
    rows, row_shape = _scores_as_rows(scores, "softmaxlog loss")
    labels = torch.as_tensor(labels, device=scores.device).reshape(-1)
    if labels.numel() == row_shape[0] and len(row_shape) == 3:
        # one label per image broadcast over its pixels
        labels = labels.repeat_interleave(row_shape[1] * row_shape[2])
    if labels.numel() != rows.shape[0]:
        raise CqdError(
            f"softmaxlog loss: {labels.numel()} labels for scores of shape {tuple(scores.shape)} "
            "(give one label per image or per pixel)"
        )
    if labels.dtype.is_floating_point:
        labels = labels.round()
    labels = labels.long()
    num_classes = rows.shape[1]
    if check_labels and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise CqdError(
            f"softmaxlog loss: labels must be 0-based class indices in [0, {num_classes - 1}], "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return F.cross_entropy(rows, labels, reduction="sum")


class _DistillLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, t_student: float, t_teacher: float) -> torch.Tensor:  # type: ignore[override]
        target = torch.softmax(teacher / t_teacher, dim=1)
        log_prob = torch.log_softmax(student / t_student, dim=1)
        ctx.save_for_backward(log_prob, target)
        ctx.temps = (t_student, t_teacher)
        return -(target * log_prob).sum(dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        log_prob, target = ctx.saved_tensors
        t_student, t_teacher = ctx.temps
        # vl_nndistillloss: softmax(x/T2)/T2 - softmax(v/T1)/T1 (not the chain rule when T1 != T2)
        dx = torch.exp(log_prob) / t_student - target / t_teacher
        return grad.unsqueeze(1) * dx, None, None, None


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    t_student: float,
    t_teacher: float,
    reduction: str = "sum",
) -> torch.Tensor:
    """CQD's distillation loss, the original `vl_nndistillloss`.

    Per image: `-sum_k softmax(teacher / T1)_k * log softmax(student / T2)_k`
    with `T1 = t_teacher` (MatConvNet's `T1`, applied to the teacher logits
    `v`) and `T2 = t_student` (applied to the student scores `x`); summed over
    the batch (`reduction="none"` gives the per-image values). Scores may be
    N x C or N x C x 1 x 1. The backward pass is the original's
    `softmax(student/T2)/T2 - softmax(teacher/T1)/T1`, which equals the true
    gradient `(softmax(student/T2) - softmax(teacher/T1)) / T2` only when
    `T1 == T2`; the teacher receives no gradient.
    """
    if student.shape != teacher.shape:
        raise CqdError(f"distill loss: student scores {tuple(student.shape)} and teacher scores {tuple(teacher.shape)} differ in shape")
    if t_student <= 0 or t_teacher <= 0:
        raise CqdError(f"distill loss: temperatures must be positive, got T_student={t_student}, T_teacher={t_teacher}")
    s_rows, row_shape = _scores_as_rows(student, "distill loss")
    t_rows, _ = _scores_as_rows(teacher.detach(), "distill loss")
    per_row = _DistillLoss.apply(s_rows, t_rows.to(s_rows.dtype), float(t_student), float(t_teacher))
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row.reshape(row_shape)
    raise CqdError(f"distill loss: unknown reduction '{reduction}' (use 'sum' or 'none')")
