"""Distillation objectives that came after CQD's logit distillation, as differentiable functions.

Every function here follows the project's loss convention (`cqd_port.nn.losses`):
the value is a *sum over the batch*, and the trainer's SGD divides the
gradient by the batch size (MatConvNet's `1/batchSize` inside the update).
Per-image objectives (FitNets, AT, DKD) are therefore summed over images;
relational objectives, which the papers define as a batch *mean* over pairs or
triplets (SP, RKD), are returned as `batch size x` that mean, so that after the
update's `1/batchSize` the step equals the paper's. Each docstring names the
paper, its equation and where released code differs.

The teacher's tensors are targets: no gradient flows into them.

- `hint_loss`: FitNets (Romero et al., ICLR 2015), Eq. (3);
- `attention_transfer_loss`: AT (Zagoruyko & Komodakis, ICLR 2017), Eq. (2);
- `similarity_preserving_loss`: SP (Tung & Mori, ICCV 2019), Eqs. (1)-(4);
- `rkd_distance_loss`, `rkd_angle_loss`: RKD (Park et al., CVPR 2019), Eqs. (3)-(7);
- `dkd_losses`: DKD (Zhao et al., CVPR 2022), Eqs. (1), (2), (7);
- `HintConnector`, `match_spatial_size`: how f's map meets g's when the two differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cqd_port.errors import CqdError

ATTENTION_FORMS = ("paper", "code")

_MASKED_LOGIT = -1e30  # a class left out of a softmax: exp() underflows to exactly 0, with no inf or NaN


def _same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise CqdError(f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape; match them with a connector")


def _as_maps(features: torch.Tensor, what: str) -> torch.Tensor:
    """N x C x H x W maps; N x C features are 1 x 1 maps."""
    if features.dim() == 2:
        return features[:, :, None, None]
    if features.dim() != 4:
        raise CqdError(f"{what}: features must be N x C x H x W (or N x C), got shape {tuple(features.shape)}")
    return features


def match_spatial_size(teacher_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """f's map resized to g's spatial `size` (the connector's fixed part; the identity when they agree).

    Bilinear with `align_corners=False`, antialiased when it shrinks (as
    torchvision's `Resize` on tensors): f usually sees the larger,
    high-quality image, so its map is the larger one. No parameters.
    """
    teacher_map = _as_maps(teacher_map, "connector")
    if tuple(teacher_map.shape[-2:]) == tuple(size):
        return teacher_map
    shrinks = teacher_map.shape[-2] > size[0] or teacher_map.shape[-1] > size[1]
    return F.interpolate(teacher_map, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrinks)


class HintConnector(nn.Module):
    """FitNets' regressor `r(v; W_r)`: a 1 x 1 convolution from g's channels to f's, trained with g.

    FitNets used a convolutional regressor whose kernel made the spatial sizes
    agree; here the spatial sizes are matched by resizing f's map
    (`match_spatial_size`), so the regressor is 1 x 1 (one linear map per
    position). Weights start He-normal (`N(0, 2 / C_g)`) from `generator`,
    biases at zero; the state dict holds `weight` (`C_f x C_g x 1 x 1`) and `bias`.
    """

    def __init__(self, student_channels: int, teacher_channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if student_channels < 1 or teacher_channels < 1:
            raise CqdError(f"hint connector: channel counts must be positive, got student {student_channels}, teacher {teacher_channels}")
        std = math.sqrt(2.0 / student_channels)
        self.weight = nn.Parameter(std * torch.randn(teacher_channels, student_channels, 1, 1, generator=generator))
        self.bias = nn.Parameter(torch.zeros(teacher_channels))

    def forward(self, student_map: torch.Tensor) -> torch.Tensor:
        student_map = _as_maps(student_map, "hint connector")
        return F.conv2d(student_map, self.weight.to(student_map.dtype), self.bias.to(student_map.dtype))


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """FitNets' hint loss, Romero et al. 2015, Eq. (3), summed over the batch.

    Per image `1/2 ||u_h(x) - r(v_g(x))||^2`: `hint` is the teacher's hint layer
    output `u_h` (already at g's spatial size), `regressed` the student's
    guided layer after the regressor `r`. FitNets trained this term alone in a
    first stage, then the whole student with KD; here it is one term of the
    objective beside softmax-log (as the later comparisons, e.g. CRD's, run FitNets).
    """
    _same_shape(regressed, hint, "hint loss")
    return 0.5 * (regressed - hint.detach()).pow(2).sum()


def attention_map(features: torch.Tensor, exponent: float = 2.0) -> torch.Tensor:
    """AT's spatial attention `Q = vec(F(A)) / ||vec(F(A))||_2` with `F(A) = sum_c |A_c|^p` (Sec. 3.1), N x HW."""
    maps = _as_maps(features, "attention map")
    return F.normalize(maps.abs().pow(exponent).sum(dim=1).flatten(1), p=2.0, dim=1)


def attention_transfer_loss(student: torch.Tensor, teacher: torch.Tensor, form: str = "paper") -> torch.Tensor:
    """Attention transfer, Zagoruyko & Komodakis 2017, Eq. (2) with `p = 2`, summed over the batch.

    `form="paper"`: per image `1/2 || Q_S / ||Q_S||_2 - Q_T / ||Q_T||_2 ||_2`
    (the `beta / 2` of Eq. (2) with `beta` the objective's weight; the norm
    of the difference is not squared). `form="code"`: the authors' released
    `at_loss`, the *squared* difference averaged over positions, per image
    `1/2 ||Q_S - Q_T||_2^2 / (H W)` (their `beta / 2 * mean`, used with
    `beta = 1000`). Both maps must have one spatial size (resize f's first);
    channel counts may differ (the map sums over channels).
    """
    if form not in ATTENTION_FORMS:
        raise CqdError(f"attention transfer: form '{form}' unknown (use {' or '.join(ATTENTION_FORMS)})")
    s_maps, t_maps = _as_maps(student, "attention transfer"), _as_maps(teacher.detach(), "attention transfer")
    if s_maps.shape[0] != t_maps.shape[0] or s_maps.shape[-2:] != t_maps.shape[-2:]:
        raise CqdError(f"attention transfer: student {tuple(s_maps.shape)} and teacher {tuple(t_maps.shape)} need one batch and spatial size")
    diff = attention_map(s_maps) - attention_map(t_maps)
    if form == "paper":
        return 0.5 * torch.linalg.vector_norm(diff, ord=2, dim=1).sum()
    return 0.5 * diff.pow(2).sum() / diff.shape[1]


def _similarity(features: torch.Tensor) -> torch.Tensor:
    """SP's row-normalised batch similarity `G = normalize_rows(Q Q^T)`, `Q` = features as b x (c h w)."""
    rows = features.flatten(1)
    return F.normalize(rows @ rows.t(), p=2.0, dim=1)


def similarity_preserving_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD, Tung & Mori 2019, Eqs. (1)-(4), as `b x L_SP`.

    `G_T = Q_T Q_T^T` with `Q_T` the teacher's activations reshaped to
    `b x chw` (Eq. 1), each row divided by its L2 norm (Eq. 2), `G_S` likewise
    (Eq. 3), `L_SP = 1/b^2 ||G_T - G_S||_F^2` (Eq. 4). Returned times `b`
    (= `||G_T - G_S||_F^2 / b`): the trainer's update divides by `b`, so the
    step is the paper's `gamma L_SP`. Any shapes with one batch size.
    """
    if student.shape[0] != teacher.shape[0]:
        raise CqdError(f"similarity-preserving KD: student batch {student.shape[0]} and teacher batch {teacher.shape[0]} differ")
    diff = _similarity(student) - _similarity(teacher.detach()).to(student.dtype)
    return diff.pow(2).sum() / student.shape[0]


def _pairwise_distances(rows: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows (RKD's released `pdist`), zero on the diagonal, no NaN gradient there."""
    squared = rows.pow(2).sum(dim=1)
    gram = rows @ rows.t()
    distances = (squared[:, None] + squared[None, :] - 2.0 * gram).clamp(min=1e-12).sqrt()
    off_diagonal = 1.0 - torch.eye(rows.shape[0], dtype=rows.dtype, device=rows.device)
    return distances * off_diagonal


def _normalized_distances(rows: torch.Tensor) -> torch.Tensor:
    """`psi_D = ||t_i - t_j|| / mu`, `mu` the mean distance over the `b (b - 1)` ordered pairs `i != j` (Eq. 3)."""
    b = rows.shape[0]
    distances = _pairwise_distances(rows)
    mean = distances.sum() / (b * (b - 1))  # no boolean indexing: it would wait for the device
    return distances / mean


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's distance-wise loss, Park et al. 2019, Eqs. (3)-(5), as `b x` the released code's mean.

    `psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu` with `mu` the batch's mean pair
    distance (Eq. 3), `L = sum_(i,j) l_delta(psi_D(t_i, t_j), psi_D(s_i, s_j))`
    (Eq. 4) with the Huber loss `l_delta` (Eq. 5, `delta = 1`). Eq. (4) sums
    over pairs; the released code takes the mean over the `b^2` entries of the
    distance matrix (the diagonal is 0 for both). Returned: that mean times `b`,
    i.e. `sum_(i != j) l_delta / b`. Features are flattened per image.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[0] < 2:
        raise CqdError(f"RKD: needs one batch of at least 2 images for student and teacher, got {student.shape[0]} and {teacher.shape[0]}")
    s = _normalized_distances(student.flatten(1))
    with torch.no_grad():
        t = _normalized_distances(teacher.detach().flatten(1).to(student.dtype))
    return F.smooth_l1_loss(s, t, reduction="sum", beta=1.0) / student.shape[0]


def _angles(rows: torch.Tensor) -> torch.Tensor:
    """`cos` of the angle at vertex `i` between `t_j` and `t_k`, for all `(i, j, k)` (Eq. 6): b x b x b."""
    directions = F.normalize(rows[None, :, :] - rows[:, None, :], p=2.0, dim=2)  # [i, j] = unit(t_j - t_i)
    return torch.bmm(directions, directions.transpose(1, 2))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD's angle-wise loss, Park et al. 2019, Eqs. (6)-(7), as `b x` the released code's mean.

    `psi_A(t_i, t_j, t_k) = <e_ij, e_kj>` with `e_ij = (t_i - t_j) / ||t_i - t_j||_2`
    (the cosine of the angle at `t_j`, Eq. 6), `L = sum l_delta(psi_A(t), psi_A(s))`
    over triplets (Eq. 7). The released code takes the mean over all `b^3`
    index triplets, where a triplet with a repeated index adds 0 (both angles
    are equal: 0 or 1); returned is that mean times `b`, i.e. the sum over
    triplets of distinct images divided by `b^2`. Memory: `b x b x d` floats.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[0] < 3:
        raise CqdError(f"RKD angle: needs one batch of at least 3 images for student and teacher, got {student.shape[0]} and {teacher.shape[0]}")
    s = _angles(student.flatten(1))
    with torch.no_grad():
        t = _angles(teacher.detach().flatten(1).to(student.dtype))
    b = student.shape[0]
    return F.smooth_l1_loss(s, t, reduction="sum", beta=1.0) / (b * b)


def dkd_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's two parts, Zhao et al. 2022, each summed over the batch and times `T^2`: `(TCKD, NCKD)`.

    With `p = softmax(z / T)` and `t` the label: `b = [p_t, 1 - p_t]` (Eq. 1),
    `p_hat_i = exp(z_i / T) / sum_(j != t) exp(z_j / T)` over the non-target
    classes (Eq. 2); `TCKD = KL(b^T || b^S)`, `NCKD = KL(p_hat^T || p_hat^S)`,
    and DKD `= alpha TCKD + beta NCKD` (Eq. 7). The `T^2` factor is the
    released code's (as in Hinton's KD). Logits N x K, labels 0-based.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise CqdError(f"DKD: student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits must both be N x K")
    if not temperature > 0:
        raise CqdError(f"DKD: temperature must be positive, got {temperature}")
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    # the label's column as a mask (scatter: no range check, so nothing waits for the device)
    target = torch.zeros_like(student_logits, dtype=torch.bool).scatter_(1, labels.long().reshape(-1, 1), True)

    def binary_log_probs(logits: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits / temperature, dim=1)
        log_target = (log_p * target).sum(dim=1)
        log_rest = torch.logsumexp(log_p.masked_fill(target, _MASKED_LOGIT), dim=1)
        return torch.stack([log_target, log_rest], dim=1)

    def non_target_log_probs(logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax((logits / temperature).masked_fill(target, _MASKED_LOGIT), dim=1)

    def kl(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
        return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()

    scale = temperature * temperature
    tckd = kl(binary_log_probs(teacher_logits), binary_log_probs(student_logits)) * scale
    nckd = kl(non_target_log_probs(teacher_logits), non_target_log_probs(student_logits)) * scale
    return tckd, nckd
