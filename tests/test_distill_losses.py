"""Each distillation objective against its paper's formula, written out here (loops over images, pairs,
triplets) on small float64 tensors: values, and gradients by `torch.autograd.gradcheck`."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cqd_port.errors import CqdError
from cqd_port.nn.distill import (
    HintConnector,
    attention_transfer_loss,
    dkd_losses,
    hint_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    similarity_preserving_loss,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(a: torch.Tensor | float, b: float) -> None:
    value = float(a.detach()) if isinstance(a, torch.Tensor) else float(a)
    assert value == pytest.approx(b, rel=1e-10, abs=1e-12)


def _huber(x: float) -> float:
    """Park et al. 2019, Eq. (5), delta = 1."""
    return 0.5 * x * x if abs(x) <= 1.0 else abs(x) - 0.5


# --- FitNets (Romero et al. 2015, Eq. 3)


def test_fitnets_hint_is_half_the_squared_distance_to_the_regressed_guided_layer():
    student, teacher = _rand(3, 4, 2, 2, seed=1), _rand(3, 5, 2, 2, seed=2)
    connector = HintConnector(4, 5, torch.Generator().manual_seed(0)).double()
    w, b = connector.weight.detach()[:, :, 0, 0], connector.bias.detach()
    expected = 0.0
    for n in range(3):
        for y in range(2):
            for x in range(2):
                r = [sum(w[o, c] * student[n, c, y, x] for c in range(4)) + b[o] for o in range(5)]
                expected += 0.5 * sum((float(r[o]) - float(teacher[n, o, y, x])) ** 2 for o in range(5))
    _close(hint_loss(connector(student), teacher), expected)
    s = student.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: hint_loss(connector(v), teacher), (s,))
    # the regressor's own gradient too (it is trained with g)
    weight = connector.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda wt: hint_loss(torch.nn.functional.conv2d(student, wt, connector.bias.detach()), teacher), (weight,))


def test_hint_connector_starts_he_normal_from_its_generator():
    a = HintConnector(64, 32, torch.Generator().manual_seed(3))
    b = HintConnector(64, 32, torch.Generator().manual_seed(3))
    assert torch.equal(a.weight, b.weight) and a.weight.shape == (32, 64, 1, 1) and not a.bias.any()
    assert float(a.weight.detach().std()) == pytest.approx(math.sqrt(2 / 64), rel=0.1)


# --- attention transfer (Zagoruyko & Komodakis 2017, Eq. 2, p = 2)


def _attention(features: torch.Tensor, n: int) -> list[float]:
    c, h, w = features.shape[1:]
    q = [sum(float(features[n, k, y, x]) ** 2 for k in range(c)) for y in range(h) for x in range(w)]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


@pytest.mark.parametrize("form", ["paper", "code"])
def test_attention_transfer_matches_equation_2(form):
    student, teacher = _rand(3, 4, 3, 3, seed=3), _rand(3, 7, 3, 3, seed=4)  # channel counts may differ
    expected = 0.0
    for n in range(3):
        qs, qt = _attention(student, n), _attention(teacher, n)
        squared = sum((a - b) ** 2 for a, b in zip(qs, qt))
        expected += 0.5 * math.sqrt(squared) if form == "paper" else 0.5 * squared / 9
    _close(attention_transfer_loss(student, teacher, form), expected)
    s = student.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: attention_transfer_loss(v, teacher, form), (s,))


def test_attention_transfer_refuses_maps_of_different_sizes_and_unknown_forms():
    with pytest.raises(CqdError, match="spatial size"):
        attention_transfer_loss(_rand(2, 3, 4, 4), _rand(2, 3, 2, 2))
    with pytest.raises(CqdError, match="form"):
        attention_transfer_loss(_rand(2, 3, 4, 4), _rand(2, 3, 4, 4), "squared")


# --- similarity-preserving KD (Tung & Mori 2019, Eqs. 1-4)


def _row_normalised_gram(features: torch.Tensor) -> list[list[float]]:
    q = features.reshape(features.shape[0], -1).tolist()
    b = len(q)
    g = [[sum(x * y for x, y in zip(q[i], q[j])) for j in range(b)] for i in range(b)]
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in g]


def test_similarity_preserving_is_b_times_the_mean_squared_gram_difference():
    student, teacher = _rand(4, 3, 2, 2, seed=5), _rand(4, 6, 3, 3, seed=6)  # any shapes, one batch
    gs, gt = _row_normalised_gram(student), _row_normalised_gram(teacher)
    l_sp = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(4) for j in range(4)) / 4**2  # Eq. (4)
    _close(similarity_preserving_loss(student, teacher), 4 * l_sp)
    s = student.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: similarity_preserving_loss(v, teacher), (s,))


# --- RKD (Park et al. 2019, Eqs. 3-7)


def _distance_potentials(rows: list[list[float]]) -> dict[tuple[int, int], float]:
    b = len(rows)
    d = {(i, j): math.dist(rows[i], rows[j]) for i in range(b) for j in range(b) if i != j}
    mu = sum(d.values()) / len(d)
    return {k: v / mu for k, v in d.items()}


def test_rkd_distance_is_the_huber_loss_of_mean_normalised_distances():
    student, teacher = _rand(5, 3, seed=7), _rand(5, 8, seed=8)
    ps, pt = _distance_potentials(student.tolist()), _distance_potentials(teacher.tolist())
    total = sum(_huber(ps[k] - pt[k]) for k in ps)
    _close(rkd_distance_loss(student, teacher), total / 5)  # the code's mean over b^2, times b
    s = student.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: rkd_distance_loss(v, teacher), (s,))


def _angle(rows: list[list[float]], i: int, j: int, k: int) -> float:
    """cos of the angle at t_j between t_i and t_k (Eq. 6)."""
    e_ij = [a - b for a, b in zip(rows[i], rows[j])]
    e_kj = [a - b for a, b in zip(rows[k], rows[j])]
    return sum(a * b for a, b in zip(e_ij, e_kj)) / (math.hypot(*e_ij) * math.hypot(*e_kj))


def test_rkd_angle_is_the_huber_loss_of_the_angles_of_every_triplet():
    student, teacher = _rand(4, 3, seed=9), _rand(4, 6, seed=10)
    s_rows, t_rows = student.tolist(), teacher.tolist()
    total = sum(_huber(_angle(s_rows, i, j, k) - _angle(t_rows, i, j, k)) for i, j, k in itertools.permutations(range(4), 3))
    _close(rkd_angle_loss(student, teacher), total / 4**2)  # the code's mean over b^3 triplets, times b
    s = student.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: rkd_angle_loss(v, teacher), (s,))


def test_rkd_large_differences_use_the_linear_part_of_the_huber_loss():
    student = _rand(4, 2, seed=11)
    teacher = student.clone()
    teacher[0] *= 40.0  # one far point: some normalised distances differ by more than 1
    ps, pt = _distance_potentials(student.tolist()), _distance_potentials(teacher.tolist())
    assert max(abs(ps[k] - pt[k]) for k in ps) > 1.0
    _close(rkd_distance_loss(student, teacher), sum(_huber(ps[k] - pt[k]) for k in ps) / 4)


# --- DKD (Zhao et al. 2022, Eqs. 1, 2, 6, 7)


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _dkd_parts(zs: list[float], zt: list[float], t: int, temp: float) -> tuple[float, float]:
    ps, pt = _softmax([v / temp for v in zs]), _softmax([v / temp for v in zt])
    tckd = _kl([pt[t], 1 - pt[t]], [ps[t], 1 - ps[t]])  # Eq. (1)
    rest = [k for k in range(len(zs)) if k != t]
    hs, ht = _softmax([zs[k] / temp for k in rest]), _softmax([zt[k] / temp for k in rest])  # Eq. (2)
    return tckd, _kl(ht, hs)


def test_dkd_parts_match_equations_1_and_2_times_t_squared():
    student, teacher = _rand(3, 5, seed=12) * 3, _rand(3, 5, seed=13) * 3
    labels = torch.tensor([0, 3, 4])
    temp = 2.5
    tckd = nckd = 0.0
    for n in range(3):
        a, b = _dkd_parts(student[n].tolist(), teacher[n].tolist(), int(labels[n]), temp)
        tckd, nckd = tckd + a * temp**2, nckd + b * temp**2
    got = dkd_losses(student, teacher, labels, temp)
    _close(got[0], tckd)
    _close(got[1], nckd)
    s = student.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: 1.0 * dkd_losses(v, teacher, labels, temp)[0] + 8.0 * dkd_losses(v, teacher, labels, temp)[1], (s,))


def test_dkd_with_beta_one_minus_p_t_is_classical_kd_equation_6():
    student, teacher = _rand(1, 6, seed=14) * 2, _rand(1, 6, seed=15) * 2
    label, temp = torch.tensor([2]), 3.0
    tckd, nckd = dkd_losses(student, teacher, label, temp)
    pt = _softmax([v / temp for v in teacher[0].tolist()])
    ps = _softmax([v / temp for v in student[0].tolist()])
    _close(tckd + (1 - pt[2]) * nckd, _kl(pt, ps) * temp**2)
