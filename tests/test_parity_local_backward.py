"""cqd_port_parity.runner.compare_layers_locally: each layer's backward alone, on the reference's own activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from cqd_port.models.layers import LayerSpec
from cqd_port.models.network import SimpleNetwork
from cqd_port.nn import functional as MF
from cqd_port_parity.compare import compare
from cqd_port_parity.references import NetworkReference, Provenance, read_network_reference
from cqd_port_parity.runner import BATCH_STATISTICS_NOTE, compare_layers_locally, run_parity

LOCAL = ("local dzdx", "local dzdw", "local dzdb", "local dzdmoments")


def _reference(names: list[str], types: list[str], x: list[torch.Tensor], dzdx: list[torch.Tensor],
               dzdw: list[dict[str, torch.Tensor]], notes: list[str] | None = None) -> NetworkReference:
    return NetworkReference(
        path=Path("ref_constructed.mat"), provenance=Provenance(), image=x[0], input=x[0], names=names,
        types=types, x=x, dzdy=dzdx[-1], dzdx=dzdx, dzdw=dzdw, notes=notes or [],
    )


def test_a_wrong_layer_backward_fails_its_own_local_row_only(parity_dir, monkeypatch):
    right_pool = MF.pool

    def pool_with_doubled_backward(*args, **kwargs):
        y = right_pool(*args, **kwargs)
        return y.detach() + 2 * (y - y.detach())  # same forward, twice the gradient

    monkeypatch.setattr(MF, "pool", pool_with_doubled_backward)
    report = run_parity(model=parity_dir / "net_vggm_tiny.mat", reference=parity_dir / "ref_vggm_tiny.mat")
    local = [r for r in report.rows if r.quantity in LOCAL]
    assert len(local) == 21 + 16  # every layer's input derivative, 8 conv layers' filters and biases
    failed = {(r.case, r.quantity) for r in local if not r.passed}
    assert failed == {("04 pool1", "local dzdx"), ("08 pool2", "local dzdx"), ("15 pool5", "local dzdx")}
    # end to end, the error travels to every layer before the last pool: not local
    end_to_end_failed = {r.case for r in report.rows if r.quantity == "dzdx" and not r.passed}
    assert {"01 conv1", "02 relu1", "13 conv5", "15 pool5"} <= end_to_end_failed


def test_relu_inputs_at_float_noise_of_zero_are_excluded_and_counted():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 4, 4, generator=generator) * 2 - 1
    noise_positions = [(0, 0, 0, 0), (0, 1, 2, 3), (0, 2, 3, 1)]
    for position, value in zip(noise_positions, (1e-9, -1e-9, -1e-9)):
        x[position] = value
    dzdy = torch.rand(x.shape, generator=generator) + 0.5
    dzdx = dzdy * (x > 0)
    for position in noise_positions:  # MatConvNet saw these with the other sign
        dzdx[position] = dzdy[position] - dzdx[position]
    network = SimpleNetwork([LayerSpec("relu1", "relu")])
    ref = _reference(["relu1"], ["relu"], [x, torch.relu(x)], [dzdx, dzdy], [{}],
                     notes=["3 ReLU inputs within float noise of zero"])

    (row,) = compare_layers_locally(network, ref, "constructed")
    assert row.quantity == "local dzdx" and row.passed and row.rel == 0.0
    assert "3 inputs at float noise of zero excluded" in row.note
    assert "reference: 3 ReLU inputs within float noise of zero" in row.note
    # without the exclusion the flipped positions would fail the row
    assert not compare("relu1", "dzdx", dzdy * (x > 0), dzdx).passed

    # a real error away from zero still fails
    dzdx[0, 0, 1, 1] += 0.1
    (row,) = compare_layers_locally(network, ref, "constructed")
    assert not row.passed


def test_bnorm_local_backward_uses_batch_statistics():
    generator = torch.Generator().manual_seed(1)
    c = 3
    x = torch.randn(4, c, 5, 5, generator=generator, dtype=torch.float64) * 2 + 1
    gain, bias = torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)
    stored = torch.stack([torch.zeros(c), torch.ones(c) * 3], dim=1).double()  # moments unlike the batch's
    epsilon = 1e-4
    dzdy = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    # batch normalization's backward in closed form (Ioffe & Szegedy), per channel over N, H, W
    axes = (0, 2, 3)
    mean = x.mean(axes, keepdim=True)
    sigma = torch.sqrt(((x - mean) ** 2).mean(axes, keepdim=True) + epsilon)
    xhat = (x - mean) / sigma
    g = gain.reshape(1, c, 1, 1)
    dzdx = g / sigma * (dzdy - dzdy.mean(axes, keepdim=True) - xhat * (dzdy * xhat).mean(axes, keepdim=True))
    dzdw = {
        "weight": (dzdy * xhat).sum(axes), "bias": dzdy.sum(axes),
        "moments": torch.stack([mean.reshape(c), sigma.reshape(c)], dim=1) * x.shape[0],
    }
    state = {"bn1.weight": gain, "bn1.bias": bias, "bn1.moments": stored}
    network = SimpleNetwork([LayerSpec("bn1", "bnorm", {"epsilon": epsilon})], state).double()
    y = network(x)
    ref = _reference(["bn1"], ["bnorm"], [x.float(), y.detach().float()], [dzdx.float(), dzdy.float()],
                     [{k: v.float() for k, v in dzdw.items()}])

    rows = compare_layers_locally(network, ref, "constructed")
    assert {r.quantity for r in rows} == set(LOCAL)
    assert all(r.passed for r in rows), [(r.quantity, r.rel) for r in rows]
    assert all(BATCH_STATISTICS_NOTE in r.note for r in rows)
    # the test-mode backward (the stored moments) is not what vl_simplenn computes
    test_mode = g / stored[:, 1].reshape(1, c, 1, 1) * dzdy
    assert not compare("bn1", "dzdx", test_mode, dzdx).passed


def test_reader_keeps_the_exporters_notes(parity_dir, tmp_path):
    data = {k: v for k, v in scipy.io.loadmat(parity_dir / "ref_vggm_tiny.mat").items() if not k.startswith("__")}
    assert read_network_reference(parity_dir / "ref_vggm_tiny.mat").notes == []  # written before notes
    notes = np.empty((1, 21), dtype=object)
    notes[0, :] = [np.zeros((0, 0))] * 21
    notes[0, 1] = "2 ReLU inputs within float noise of zero"
    data["notes"] = notes
    scipy.io.savemat(tmp_path / "ref_notes.mat", data)
    read = read_network_reference(tmp_path / "ref_notes.mat")
    assert read.notes[1] == "2 ReLU inputs within float noise of zero" and read.notes[0] == "" and len(read.notes) == 21
