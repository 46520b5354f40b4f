"""Replay `train_epochs_*.mat` (two epochs of the released CQD training loop) through OUR trainer.

The file (`../shared/release-parity/README.md`) was written by the release's
own `initializeNetworkDag` + `cnn_train_dag` run under Octave on the tiny
VGG-M (`provenance.network`, looked up beside the file, then in a sibling
`parity/` folder): 5 images in batches of 3, the batch order `randperm` drew
recorded in `batchIndices`/`batchEpoch`, dropout rate 0 for the replay,
`fast_pow` LRN, one learning rate per epoch, fc8 multipliers `[10 20]` /
`[1 0]`, momentum set to zero at the start of every epoch.

Nothing here re-implements the update: the network is built by
`cqd_port.experiments.networks.finetune_network` (as every CQD run builds
it), its parameters set to the file's `initial`, the images put in an
`ImageStore`, and `cqd_port.train.trainer.train` (its epoch loop, resume and
all) runs epoch 1, then continues to epoch 2 from its own checkpoint, with
the recorded batch order injected through `batch_order`. Rows: the
multipliers as `initializeNetworkDag` sets them, the per-batch objective,
distillation and total loss (1e-5 relative), every parameter after each
epoch (1e-5 relative, fc8 1e-4).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.layout import bias_vector, filters_to_oihw, mcn_to_nchw
from cqd_port_parity.compare import TOL_DEFAULT, TOL_MOMENTUM, ComparisonRow, compare, failed_row
from cqd_port_parity.references import mat_float, mat_floats, mat_ints

TOL_FC8 = TOL_MOMENTUM
"""fc8 parameters after an epoch: 1e-4 relative (its learning rate is 10-20x the others')."""

_KIND = {"f": "weight", "b": "bias"}


def _require(top: dict[str, Any], key: str, path: Path) -> Any:
    if key not in top:
        raise CqdError(f"release training reference {path} has no variable '{key}' (not a train_epochs_*.mat file)")
    return top[key]


def _state_name(param_name: str) -> str:
    """DagNN parameter name (`conv1f`, `fc8b`) -> state-dict name (`conv1.weight`, `fc8.bias`)."""
    layer, kind = param_name[:-1], param_name[-1]
    if kind not in _KIND:
        raise CqdError(f"parameter name '{param_name}' is not <layer>f or <layer>b")
    return f"{layer}.{_KIND[kind]}"


def _param(name: str, value: Any) -> torch.Tensor:
    array = np.asarray(value, dtype=np.float32)
    return filters_to_oihw(array) if name.endswith(".weight") else bias_vector(array.copy())


def _params(names: list[str], values: list[Any]) -> dict[str, torch.Tensor]:
    return {name: _param(name, value) for name, value in zip(names, values)}


def find_network(path: Path, network: str) -> Path:
    """The reference's network: beside it, else in a sibling `parity/` folder."""
    for candidate in (path.parent / network, path.parent.parent / "parity" / network):
        if candidate.is_file():
            return candidate
    raise CqdError(f"{path}: its network {network} is neither beside it nor in ../parity; put {network} there")


def replay_release_epochs(path: str | Path, momentum_reset_each_epoch: bool = True) -> dict[str, Any]:
    """Run the file's two epochs through `train`; return per-epoch parameters and per-batch losses."""
    from cqd_port.data.store import ImageStore
    from cqd_port.experiments.networks import finetune_network, load_pretrained
    from cqd_port.train.objective import Objective
    from cqd_port.train.trainer import TrainConfig, train
    from matconvnet_weights.matfile import load_mat

    path = Path(path)
    top = load_mat(path)
    provenance = top.get("provenance", {}) or {}
    lrn_mode = str(provenance.get("lrn", "") or "matconvnet-cpu")
    network_path = find_network(path, str(provenance.get("network", "net_vggm_tiny.mat")))

    names = [_state_name(str(n)) for n in _require(top, "paramNames", path)]
    num_classes = int(mat_float(_require(top, "numClasses", path)))
    specs, state, meta = load_pretrained(network_path, lrn_mode)
    network = finetune_network(specs, state, meta, num_classes, source=str(network_path))
    rates = mat_floats(top.get("dropoutRate", [0.0]))
    for spec in network.specs:
        if spec.type == "dropout":
            spec.attrs["rate"] = rates[0]  # the replay ran with dropout rate 0
    network.state.update(_params(names, list(_require(top, "initial", path))))
    model = network.build(lrn_mode)

    t1, t2 = mat_float(_require(top, "T1", path)), mat_float(_require(top, "T2", path))
    if t1 != t2:
        raise CqdError(f"{path}: T1 = {t1} and T2 = {t2} differ; the objective has one temperature")
    objective = Objective("cqd", mat_float(_require(top, "lambda", path)), t1)
    file_multipliers = {
        name: (lr, wd) for name, lr, wd in zip(names, mat_floats(_require(top, "lrMult", path)), mat_floats(_require(top, "wdMult", path)))
    }

    inputs = mcn_to_nchw(np.asarray(_require(top, "inputs", path), dtype=np.float32))  # already mean-subtracted
    labels = torch.tensor([v - 1 for v in mat_ints(_require(top, "labels", path))], dtype=torch.long)
    teacher = mcn_to_nchw(np.asarray(_require(top, "teacher", path), dtype=np.float32)).reshape(inputs.shape[0], -1)
    store = ImageStore(inputs, labels)

    epochs_of_batches = mat_ints(_require(top, "batchEpoch", path))
    recorded = [[i - 1 for i in mat_ints(b)] for b in _require(top, "batchIndices", path)]
    learning_rates = tuple(mat_floats(_require(top, "learningRate", path)))
    num_epochs = len(learning_rates)

    def batch_order(epoch: int, n: int) -> list[list[int]]:
        return [b for b, e in zip(recorded, epochs_of_batches) if e == epoch]

    batches: list[dict[str, float]] = []

    def on_step(epoch: int, step: int, out: Any) -> None:
        batches.append({"objective": float(out.softmaxlog), "distill": float(out.distill), "loss": float(out.total)})

    after: list[dict[str, torch.Tensor]] = []
    with tempfile.TemporaryDirectory(prefix="cqd-release-replay-") as run_dir:
        for epochs in range(1, num_epochs + 1):  # epoch by epoch: epoch 2 continues from the trainer's checkpoint
            config = TrainConfig(
                epochs=epochs,
                batch_size=int(mat_float(_require(top, "batchSize", path))),
                schedule=learning_rates,
                momentum=mat_float(_require(top, "momentum", path)),
                weight_decay=mat_float(_require(top, "weightDecay", path)),
                device="cpu",
                lrn_mode=lrn_mode,
                plot=False,
                momentum_reset_each_epoch=momentum_reset_each_epoch,
            )
            train(model, store, None, config, objective, run_dir, teacher, network.multipliers, progress=False,
                  on_step=on_step, batch_order=batch_order)
            after.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return {
        "names": names,
        "after": after,
        "batches": batches,
        "multipliers": dict(network.multipliers),
        "file_multipliers": file_multipliers,
        "top": top,
    }


def check_train_epochs_reference(path: Path, momentum_reset_each_epoch: bool = True) -> list[ComparisonRow]:
    """Rows comparing our trainer's two epochs with the release's (`momentum_reset_each_epoch` False must fail)."""
    path = Path(path)
    group = path.stem
    replay = replay_release_epochs(path, momentum_reset_each_epoch)
    top, names = replay["top"], replay["names"]
    rows: list[ComparisonRow] = []
    ours = replay["multipliers"]
    for name in names:
        want = replay["file_multipliers"][name]
        got = tuple(ours.get(name, (float("nan"), float("nan"))))
        rows.append(compare("setup", f"multipliers {name} (lr, wd)", np.asarray(got, np.float64), np.asarray(want, np.float64), TOL_DEFAULT, group))
    ref_batches = {key: mat_floats(_require(top, key, path)) for key in ("objective", "distill")}
    ref_batches["loss"] = list(np.asarray(_require(top, "loss", path), dtype=np.float64)[1].reshape(-1))
    epochs_of_batches = mat_ints(_require(top, "batchEpoch", path))
    if len(replay["batches"]) != len(epochs_of_batches):
        rows.append(failed_row(group, "batches", "count", TOL_DEFAULT, f"{len(replay['batches'])} batches run, {len(epochs_of_batches)} recorded"))
    for b, (got, epoch) in enumerate(zip(replay["batches"], epochs_of_batches), start=1):
        for key, label in (("objective", "objective (softmaxlog, summed)"), ("distill", "distill (summed)"), ("loss", "objective + lambda distill")):
            rows.append(compare(f"epoch{epoch} batch{b}", label, np.float64(got[key]), np.float64(ref_batches[key][b - 1]), TOL_DEFAULT, group))
    references = list(_require(top, "afterEpoch", path))
    note = "momentum reset each epoch" if momentum_reset_each_epoch else "momentum CARRIED over epochs (not the release)"
    for epoch, (got_state, ref_values) in enumerate(zip(replay["after"], references), start=1):
        ref_state = _params(names, list(ref_values))
        for name in names:
            tol = TOL_FC8 if name.startswith("fc8.") else TOL_DEFAULT
            rows.append(compare(f"after epoch {epoch}", f"param {name}", got_state[name], ref_state[name], tol, group, note))
    return rows
