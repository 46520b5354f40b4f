"""MatConvNetSGD against the hand-written cnn_train_dag update, and the schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cqd_port.errors import CqdError
from cqd_port.train.schedules import (
    CARS_SCHEDULE,
    CUB_SCHEDULE,
    learning_rate,
    shorten_schedule,
)
from cqd_port.matlab import colon as matlab_colon
from cqd_port.train.sgd import MatConvNetSGD, Multipliers, cqd_multipliers


class TwoParams(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.fc8 = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc8.weight.copy_(torch.randn(3, 4, generator=g))
            self.fc8.bias.copy_(torch.randn(3, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(x)


def test_update_equals_the_matconvnet_formula_over_several_steps():
    model = TwoParams()
    mu, wd = 0.9, 5e-4
    mults = {"fc8.weight": (10.0, 1.0), "fc8.bias": Multipliers(20.0, 0.0)}
    opt = MatConvNetSGD(model.named_parameters(), mu, wd, mults)
    w = {k: v.detach().clone().double() for k, v in model.state_dict().items()}
    m = {k: torch.zeros_like(v) for k, v in w.items()}
    g = torch.Generator().manual_seed(1)
    for step, (batch, lr) in enumerate([(5, 1e-3), (3, 5e-4), (5, 2e-4)]):
        x = torch.randn(batch, 4, generator=g)
        y = torch.randint(0, 3, (batch,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
        loss.backward()
        grads = {k: p.grad.detach().double() for k, p in model.named_parameters()}
        opt.step(lr, batch)
        for k in w:
            lr_mult, wd_mult = (10.0, 1.0) if k == "fc8.weight" else (20.0, 0.0)
            m[k] = mu * m[k] - wd * wd_mult * w[k] - (1.0 / batch) * grads[k]
            w[k] = w[k] + lr * lr_mult * m[k]
            torch.testing.assert_close(opt.momentum_buffers[k].double(), m[k], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(model.state_dict()[k].double(), w[k], rtol=1e-6, atol=1e-7)
    # MatConvNet's update is not torch.optim.SGD's: after a learning-rate change they differ.
    assert not torch.allclose(opt.momentum_buffers["fc8.bias"], torch.zeros(3))


def test_zero_gradient_parameters_still_decay_and_state_round_trips():
    model = TwoParams()
    opt = MatConvNetSGD(model.named_parameters(), 0.9, 0.1)
    before = model.fc8.weight.detach().clone()
    opt.step(0.5, 2)  # no backward: grad None means a zero derivative
    torch.testing.assert_close(model.fc8.weight.detach(), before + 0.5 * (-0.1 * before))
    state = opt.state_dict()
    other = MatConvNetSGD(TwoParams().named_parameters(), 0.9, 0.1)
    other.load_state_dict(state)
    for k in state["buffers"]:
        assert torch.equal(other.momentum_buffers[k], opt.momentum_buffers[k])


def test_unknown_multiplier_name_is_a_user_error():
    with pytest.raises(CqdError, match="fc9.weight"):
        MatConvNetSGD(TwoParams().named_parameters(), multipliers={"fc9.weight": (1, 1)})


def test_cqd_multipliers_match_initialize_network():
    mults = cqd_multipliers(["conv1.weight", "conv1.bias", "fc8.weight", "fc8.bias"])
    assert mults["conv1.weight"] == Multipliers(1, 1) and mults["conv1.bias"] == Multipliers(1, 1)
    assert mults["fc8.weight"] == Multipliers(10, 1) and mults["fc8.bias"] == Multipliers(20, 0)


# The whole released schedules, written out epoch by epoch (run_CQD.m: CUB
# [0.0005*ones(1,5), 0.0005:-0.00005:0.0001, 0.0001*ones(1,10), 0.00005*ones(1,10)],
# Cars the same with 0.001 and steps of 0.0001).
CUB_BY_EPOCH = (
    0.0005, 0.0005, 0.0005, 0.0005, 0.0005,                                      # epochs 1-5
    0.0005, 0.00045, 0.0004, 0.00035, 0.0003, 0.00025, 0.0002, 0.00015, 0.0001,  # 6-14: the colon ramp
    0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001,  # 15-24
    5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05,            # 25-34
)
CARS_BY_EPOCH = (
    0.001, 0.001, 0.001, 0.001, 0.001,                                                       # 1-5
    0.001, 0.0009, 0.0008, 0.0007, 0.0006, 0.0005, 0.0004, 0.0003, 0.0002, 0.0001,           # 6-15
    0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001,          # 16-25
    5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05, 5e-05,                    # 26-35
)


@pytest.mark.parametrize("schedule, by_epoch", [(CUB_SCHEDULE, CUB_BY_EPOCH), (CARS_SCHEDULE, CARS_BY_EPOCH)], ids=["cub", "cars"])
def test_released_schedules_whole(schedule, by_epoch):
    assert len(schedule) == len(by_epoch)
    for epoch, want in enumerate(by_epoch, start=1):
        # MATLAB's colon may differ from the decimal literal in the last bit (0.0003 is 0.00030000000000000003)
        assert math.isclose(learning_rate(schedule, epoch), want, rel_tol=1e-12, abs_tol=0), epoch
        assert learning_rate(schedule, epoch) == schedule[epoch - 1]
    # past the end, cnn_train_dag keeps the last value: learningRate(min(epoch, numel(learningRate)))
    for epoch in range(len(by_epoch) + 1, len(by_epoch) + 20):
        assert learning_rate(schedule, epoch) == by_epoch[-1]
    # the paper's 30 epochs visit exactly the first 30 entries
    assert [learning_rate(schedule, e) for e in range(1, 31)] == list(schedule[:30])


def test_released_schedules_colon_ramp_is_matlabs_not_accumulated():
    # the ramp's ends are exact; accumulating -0.00005 eight times would miss 0.0001
    assert CUB_SCHEDULE[5] == 0.0005 and CUB_SCHEDULE[13] == 0.0001
    assert CARS_SCHEDULE[5] == 0.001 and CARS_SCHEDULE[14] == 0.0001


def test_matlab_colon_hits_the_endpoint_and_counts_like_matlab():
    values = matlab_colon(0.0005, -0.00005, 0.0001)
    assert len(values) == 9 and values[0] == 0.0005 and values[-1] == 0.0001
    # accumulation would drift; MATLAB's element k is start + k*step (first half) / stop - (n-k)*step
    assert values[4] == (0.0005 + 0.0001) / 2
    assert matlab_colon(1, 1, 0) == [] and matlab_colon(0, 0.1, 0.3)[-1] == 0.3 and len(matlab_colon(0, 0.1, 1)) == 11


def test_learning_rate_uses_min_of_epoch_and_length():
    assert learning_rate(CUB_SCHEDULE, 1) == 0.0005
    assert learning_rate(CUB_SCHEDULE, 30) == CUB_SCHEDULE[29]
    assert learning_rate(CUB_SCHEDULE, 100) == 0.00005
    with pytest.raises(ValueError):
        learning_rate(CUB_SCHEDULE, 0)


def test_shortened_schedule_keeps_both_ends():
    short = shorten_schedule(CUB_SCHEDULE, 4, scale=2.0)
    assert len(short) == 4
    assert short[0] == 2 * 0.0005 and short[-1] == 2 * CUB_SCHEDULE[29]
    assert list(short) == sorted(short, reverse=True)


@pytest.mark.parametrize("kind", ["matconvnet", "torch"])
@pytest.mark.parametrize("momentum, weight_decay, key", [(-1.0, 5e-4, "train.momentum"), (0.9, -1.0, "train.weight_decay"), (float("nan"), 5e-4, "train.momentum"), (0.9, float("inf"), "train.weight_decay")])
def test_negative_or_non_finite_momentum_and_weight_decay_are_refused_naming_the_key(kind, momentum, weight_decay, key):
    from cqd_port.train.sgd import make_optimizer

    with pytest.raises(CqdError, match=rf"^{key}: .* must be a non-negative number, e\.g\. {key.partition('.')[2]}: ") as info:
        make_optimizer(kind, TwoParams().named_parameters(), momentum, weight_decay)
    assert "\n" not in str(info.value)
    make_optimizer(kind, TwoParams().named_parameters(), 0.0, 0.0)  # zero is fine
