"""Gradient maps and tau on tiny hand-made networks (no trained weights needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cqd_port.analysis.gradients import gradient_maps, input_gradients, preprocessing_from_meta
from cqd_port.analysis.tau import box_in_input, box_mask, tau, tau_for_box
from cqd_port.errors import CqdError


class MaskedNet(nn.Module):
    """A small conv net that sees the input only through a fixed 0/1 mask (inside or outside a box)."""

    def __init__(self, mask: torch.Tensor, num_classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("mask", mask.float()[None, None])
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x * self.mask))
        return self.fc(h.mean(dim=(2, 3)))


class SmoothNet(nn.Module):
    """Tiny smooth network returning MatConvNet-shaped N x K x 1 x 1 scores, for finite differences."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2).double()
        self.conv2 = nn.Conv2d(4, 3, 3).double()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.tanh(self.conv1(x)))
        return self.conv2(h).mean(dim=(2, 3), keepdim=True)


def test_box_mapping_exact_halving_and_rounding():
    # 64 x 64 -> 32 x 32: original pixels 17..48 (1-based) cover edges [16, 48] -> [8, 24] -> input pixels 8..23.
    assert box_in_input((17, 17, 48, 48), (64, 64), (32, 32)) == (8, 8, 23, 23)
    # x and y scale separately: 100 wide -> 10 (s = 0.1), 50 high -> 25 (s = 0.5).
    # x: edges [0.1*(11-1), 0.1*60] = [1, 6] -> centres 1.5..5.5 -> 1..5; y: [0.5*4, 0.5*30] = [2, 15] -> 2..14.
    assert box_in_input((11, 5, 60, 30), (50, 100), (25, 10)) == (1, 2, 5, 14)
    # Centre-in-box rounding: edges [0.7, 3.2] hold the centres 1.5 and 2.5 only.
    assert box_in_input((8, 1, 32, 10), (10, 100), (10, 10)) == (1, 0, 2, 9)
    # A box thinner than an input pixel keeps the pixel holding its centre.
    assert box_in_input((50, 50, 50, 50), (100, 100), (10, 10)) == (4, 4, 4, 4)
    # Upsampling: 10 -> 20, pixel 3 covers input pixels 4 and 5.
    assert box_in_input((3, 3, 3, 3), (10, 10), (20, 20)) == (4, 4, 5, 5)
    # Whole image maps to the whole input.
    assert box_in_input((1, 1, 37, 53), (53, 37), (224, 224)) == (0, 0, 223, 223)
    with pytest.raises(CqdError):
        box_in_input((5, 5, 4, 9), (10, 10), (10, 10))


def test_tau_bounds_and_values():
    rng = np.random.default_rng(0)
    values = rng.random((20, 30))
    box = (3, 4, 10, 12)
    t = tau(values, box)
    assert 0.0 <= t <= 1.0
    assert t == pytest.approx(values[4:13, 3:11].sum() / values.sum())
    assert tau(values, (0, 0, 29, 19)) == pytest.approx(1.0)
    only_inside = np.where(box_mask(box, (20, 30)), values, 0.0)
    assert tau(only_inside, box) == pytest.approx(1.0)
    assert tau(values - only_inside, box) == pytest.approx(0.0)
    assert np.isnan(tau(np.zeros((4, 4)), (0, 0, 1, 1)))
    with pytest.raises(CqdError):
        tau(-values, box)


@pytest.mark.parametrize("inside", [True, False])
def test_model_looking_only_inside_or_outside_the_box(inside):
    # Original image 96 x 128 (H x W), box x 33..96, y 25..72 (1-based); network input 48 x 64 (scale 0.5):
    # the box is input columns 16..47 and rows 12..35, written here by hand, not through box_in_input.
    box_mask_in = torch.zeros(48, 64, dtype=torch.bool)
    box_mask_in[12:36, 16:48] = True
    model = MaskedNet(box_mask_in if inside else ~box_mask_in)
    images = torch.randn(6, 3, 48, 64, generator=torch.Generator().manual_seed(1)) * 50
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    maps = gradient_maps(model, images, labels)
    assert maps.shape == (6, 48, 64)
    assert (maps >= 0).all()
    taus = [tau_for_box(m, (33, 25, 96, 72), (96, 128)) for m in maps]
    for t in taus:
        assert 0.0 <= t <= 1.0
        if inside:
            assert t > 0.99
        else:
            assert t < 0.01


def test_gradient_matches_finite_differences():
    model = SmoothNet().double()
    images = torch.randn(2, 3, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([2, 0])
    model.train()  # input_gradients must switch dropout off (eval) and restore the mode
    grad = input_gradients(model, images, labels)
    assert model.training
    model.eval()

    def log_likelihood(x: torch.Tensor, n: int) -> float:
        with torch.no_grad():
            scores = model(x[n : n + 1]).flatten(1)
            return float(torch.log_softmax(scores, dim=1)[0, labels[n]])

    eps = 1e-6
    numeric = torch.zeros_like(images)
    for n in range(2):
        for idx in np.ndindex(3, 9, 9):
            plus, minus = images.clone(), images.clone()
            plus[(n, *idx)] += eps
            minus[(n, *idx)] -= eps
            numeric[(n, *idx)] = (log_likelihood(plus, n) - log_likelihood(minus, n)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(gradient_maps(model, images, labels), numeric.pow(2).sum(1).sqrt(), rtol=1e-5, atol=1e-8)
    # The gradient is of one image's own log-likelihood: batching does not mix images.
    torch.testing.assert_close(input_gradients(model, images[1:], labels[1:]), grad[1:])
    # Parameters' gradients are left alone.
    assert all(p.grad is None for p in model.parameters())


def test_labels_outside_the_classes_and_bad_shapes_are_user_errors():
    model = MaskedNet(torch.ones(8, 8, dtype=torch.bool), num_classes=3)
    with pytest.raises(CqdError, match="classes"):
        gradient_maps(model, torch.zeros(1, 3, 8, 8), torch.tensor([3]))
    with pytest.raises(CqdError):
        gradient_maps(model, torch.zeros(3, 8, 8), torch.tensor([0]))


def test_preprocessing_from_meta_is_the_training_preprocessing():
    spec = preprocessing_from_meta({"normalization": {"imageSize": [227, 224, 3], "averageImage": [1.0, 2.0, 3.0]}})
    assert spec.image_size == (227, 224)
    assert spec.average_image.reshape(-1).tolist() == [1.0, 2.0, 3.0]
    # A full average image is subtracted as stored, as the released imdb_get_batch (and our trainer) does.
    average = np.stack([np.full((4, 4), 10.0), np.arange(16.0).reshape(4, 4), np.zeros((4, 4))], axis=2)
    spec = preprocessing_from_meta({"normalization": {"imageSize": [4, 4, 3], "averageImage": average}})
    np.testing.assert_array_equal(spec.average_image, average.astype(np.float32))
    # No normalization: 224 x 224, nothing subtracted (the training default).
    spec = preprocessing_from_meta({"classes": []})
    assert spec.image_size == (224, 224) and not spec.average_image.any()
    with pytest.raises(CqdError, match="meta"):
        preprocessing_from_meta(["not", "a", "dict"], source="model.pt")


class LinearNet(nn.Module):
    """Scores = scale * W x: a model whose confidence (logit margin) is set by `scale`."""

    def __init__(self, weight: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1) @ self.weight.flatten(1).T


def test_a_saturated_softmax_still_gives_a_map_and_a_defined_tau():
    """A margin of ~1000 makes 1 - p(y|x) exactly 0 in float32: the true gradient is all zeros (tau 0/0 = NaN).

    The map is then the gradient's direction, d(z_y - z_runner-up)/dx in the limit: here W_y - W_k.
    """
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 3, 8, 8, generator=generator)  # 3 classes, 3 x 8 x 8 inputs
    image = torch.randn(1, 3, 8, 8, generator=generator)
    gentle, saturated = LinearNet(weight, 1e-3), LinearNet(weight, 1e4)
    scores = saturated(image)[0]
    label = int(scores.argmax())
    runner_up = int(scores.argsort()[-2])
    assert float(torch.softmax(scores, 0)[label]) == 1.0  # saturated in float32
    maps = gradient_maps(saturated, image, torch.tensor([label]))
    assert float(maps.sum()) > 0
    expected = (weight[label] - weight[runner_up]).pow(2).sum(0).sqrt()
    torch.testing.assert_close(maps[0] / maps[0].sum(), expected / expected.sum(), rtol=1e-4, atol=1e-7)
    box = (2, 2, 5, 6)
    assert tau_for_box(maps[0], box, (8, 8)) == pytest.approx(tau_for_box(expected, box, (8, 8)), abs=1e-6)
    # an unsaturated model keeps the exact gradient (the tiny scale changes only its size)
    exact = gradient_maps(gentle, image, torch.tensor([label]))[0]
    probabilities = torch.softmax(gentle(image)[0], 0)
    direction = (weight[label] - (probabilities[:, None, None, None] * weight).sum(0)) * 1e-3
    torch.testing.assert_close(exact, direction.pow(2).sum(0).sqrt(), rtol=1e-4, atol=1e-9)
