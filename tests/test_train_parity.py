"""The training replay: three CQD SGD steps of MatConvNet reproduced by the library trainer."""

from __future__ import annotations

import torch

from cqd_port_parity.compare import relative_error
from cqd_port_parity.train_reference import run_train_reference


def test_train_vggm_tiny_replay_matches_matconvnet(parity_dir):
    path = parity_dir / "train_vggm_tiny.mat"
    rows = run_train_reference(path)
    failed = [f"{r.case} {r.quantity}: rel {r.rel:.2e} > {r.tol:.0e} {r.note}" for r in rows if not r.passed]
    assert not failed, "\n".join(failed)
    quantities = {r.quantity for r in rows}
    assert {"loss objective (softmaxlog)", "loss distill", "momentum fc8.bias", "param conv1.weight", "update conv1.bias"} <= quantities
    assert {r.case for r in rows} == {"step1", "step2", "step3"}
    assert len(rows) == 3 * (2 + 16 + 16 + 16)


def test_parameter_rows_can_see_one_update(parity_dir):
    # The parameter comparison has power: one step moves every fc8 parameter by more than the tolerance.
    from matconvnet_weights.matfile import load_mat
    from matconvnet_weights.simplenn import read_simplenn

    path = parity_dir / "train_vggm_tiny.mat"
    top = load_mat(path)
    before = read_simplenn(top["initial"], path).state
    after = read_simplenn(top["after"][0], path).state
    for name in ("fc8.weight", "fc8.bias", "conv1.weight"):
        assert relative_error(before[name], after[name])[1] > 1e-5


def test_a_skipped_small_update_fails_the_update_row_not_the_parameter_row(parity_dir, monkeypatch):
    # conv1.bias moves by ~1e-6 in step 1 next to values of ~0.2: below the parameter rows' 1e-5
    # relative tolerance, so only the update row (after minus before) can tell it was not applied.
    from cqd_port.train.sgd import MatConvNetSGD

    step = MatConvNetSGD.step

    def step_without_conv1_bias(self, learning_rate, batch_size):
        kept = self.params["conv1.bias"].detach().clone()
        step(self, learning_rate, batch_size)
        with torch.no_grad():
            self.params["conv1.bias"].copy_(kept)

    monkeypatch.setattr(MatConvNetSGD, "step", step_without_conv1_bias)
    rows = {(r.case, r.quantity): r for r in run_train_reference(parity_dir / "train_vggm_tiny.mat")}
    assert rows[("step1", "param conv1.bias")].passed  # the parameter comparison cannot see it
    assert not rows[("step1", "update conv1.bias")].passed
    assert rows[("step1", "update conv1.bias")].rel > 0.5  # the whole update is missing
    assert rows[("step1", "update conv1.weight")].passed
