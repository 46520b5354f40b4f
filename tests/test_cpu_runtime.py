"""The CPU runtime settings change speed only: the same weights bit for bit, and no page faults per step."""

from __future__ import annotations

import os
import subprocess
import sys

from cqd_port.cpuruntime import MALLOC_VARIABLES, OPT_OUT

# Three CQD-like training steps of a small VGG-M (LRN, column-major pooling, MatConvNet SGD) in a fresh process;
# prints a digest of every final weight, bit for bit, and the page faults per step after eight warm-up steps.
TRAIN = r"""
import sys
import cqd_port_cli  # applies (or, with the opt-out, skips) the settings before torch loads
import hashlib, resource, torch
from cqd_port.models.network import SimpleNetwork
from cqd_port.models.vgg import init_state, vgg_m_specs
from cqd_port.train.objective import Objective
from cqd_port.train.sgd import MatConvNetSGD, cqd_multipliers
from cqd_port.train.trainer import train_step
specs = vgg_m_specs(num_classes=12, width=0.25, input_size=64, dropout=0.5, softmax=False)
model = SimpleNetwork(specs, init_state(specs, seed=0))
names = [n for n, _ in model.named_parameters()]
opt = MatConvNetSGD(model.named_parameters(), multipliers=cqd_multipliers(names))
g = torch.Generator().manual_seed(1)
x = torch.randn(32, 3, 64, 64, generator=g); y = torch.randint(0, 12, (32,), generator=g)
torch.manual_seed(2)
for _ in range(8):  # warm-up: the heap grows to its working size (its layout settles over a few steps)
    train_step(model, opt, Objective("softmaxlog"), x, y, None, 0.01)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    train_step(model, opt, Objective("softmaxlog"), x, y, None, 0.01)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
digest = hashlib.sha256()
for name, value in model.state_dict().items():
    digest.update(name.encode()); digest.update(value.numpy().tobytes())
print(digest.hexdigest(), faults // 4)
"""


def _train(**extra: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", OPT_OUT, *MALLOC_VARIABLES}}
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", TRAIN], env=env, capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


def test_tuned_runtime_trains_the_same_bits_without_page_faults():
    tuned, tuned_faults = _train()
    default, default_faults = _train(**{OPT_OUT: "default"})
    passive, _ = _train(OMP_WAIT_POLICY="PASSIVE", **{OPT_OUT: "default"})
    assert tuned == default == passive
    # glibc's default maps each multi-megabyte temporary afresh (thousands of faults per step); the tuned heap keeps them
    assert default_faults > 1000, default_faults
    assert tuned_faults < default_faults / 10, (tuned_faults, default_faults)
