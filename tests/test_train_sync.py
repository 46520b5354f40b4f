"""A training step never waits for the device: no tensor is read back to the host inside it.

On the CPU there is no device to wait for, so the test counts the Python
calls that would synchronise on a GPU (`.item()`, `bool()`, `float()`,
`int()`, `.tolist()`, `.numpy()`, `.cpu()` on a tensor) while a step runs;
where CUDA exists the step also runs under `torch.cuda.set_sync_debug_mode("error")`.
"""

from __future__ import annotations

import pytest
import torch

from cqd_port.train.objective import Objective
from cqd_port.train.sgd import MatConvNetSGD
from cqd_port.train.trainer import TrainConfig, train, train_step

from test_train_loop import Blobs, tiny_net

_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts tensor-to-host reads while `counting[0]` is True."""
    counting = [False]
    calls: list[str] = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            if counting[0]:
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counting, calls


def _cqd_step_inputs(device):
    model = tiny_net().to(device)
    data = Blobs(6, 1)
    optimizer = MatConvNetSGD(model.named_parameters(), multipliers={"fc8.weight": (10.0, 1.0), "fc8.bias": (20.0, 0.0)})
    teacher = torch.randn(6, 5, generator=torch.Generator().manual_seed(3)).to(device)
    return model, optimizer, data.images.to(device), data.labels.to(device), teacher


def test_a_training_step_reads_nothing_back_from_the_device(host_reads):
    counting, calls = host_reads
    model, optimizer, x, y, teacher = _cqd_step_inputs("cpu")
    objective = Objective("cqd", 3.0, 2.0)
    counting[0] = True
    out = train_step(model, optimizer, objective, x, y, teacher, 0.01)
    counting[0] = False
    assert calls == []
    assert out.batch_size == 6 and out.total.dim() == 0  # the step's numbers stay tensors
    # the check is able to see a read: the step-by-step API (which checks NaN at once) does read
    from cqd_port.train.trainer import sgd_step

    counting[0] = True
    sgd_step(model, optimizer, objective, x, y, teacher, 0.01)
    counting[0] = False
    assert calls


def test_host_reads_of_the_epoch_loop_do_not_grow_with_the_number_of_steps(host_reads, tmp_path):
    counting, calls = host_reads
    counts = []
    for batch_size in (10, 2):  # 2 steps, then 10 steps per epoch
        calls.clear()
        counting[0] = True
        train(tiny_net(), Blobs(20, 1), None, TrainConfig(epochs=2, batch_size=batch_size, schedule=(0.01,), device="cpu", plot=False),
              Objective(), tmp_path / str(batch_size), progress=False)
        counting[0] = False
        counts.append(len(calls))
    assert counts[0] == counts[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for set_sync_debug_mode")
def test_a_cuda_step_raises_no_sync_error():
    model, optimizer, x, y, teacher = _cqd_step_inputs("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(model, optimizer, Objective("cqd", 3.0, 2.0), x, y, teacher, 0.01)
    finally:
        torch.cuda.set_sync_debug_mode("default")
