"""Replay `train_*.mat` (three SGD steps of CQD training by MatConvNet) through the trainer.

The file (FORMAT.md, "train_vggm_tiny.mat") holds a SimpleNN network
(`initial`, the `net_vggm_tiny` network without its softmax), the CQD
constants (`lambda`, `T`, `momentum`, `weightDecay`, `learningRate` per
step, `lrMult`/`wdMult` per layer) and, per step, the batch (`inputs`,
1-based `labels`, `teacher` logits), the losses before the step
(`loss = [objective distill]`: the *unweighted* summed softmax-log loss and
the summed distillation loss, the two loss blocks' outputs of
`cnn_train_dag`), the network after the step (`after`) and the momentum
buffers after it (`momentumAfter`, `{layer}{1 filters, 2 biases}`).

The replay drives the library's own `cqd_port.train.trainer.sgd_step` and
`MatConvNetSGD` with the LRN mode the file's provenance names. The network
has no dropout layer, so train mode changes nothing and the reference is
deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.layout import bias_vector, filters_to_oihw, mcn_to_nchw
from cqd_port_parity.compare import TOL_DEFAULT, TOL_MOMENTUM, TOL_UPDATE, ComparisonRow, compare, compare_update, failed_row
from cqd_port_parity.references import mat_float, mat_floats

_PARAM_KINDS = ("weight", "bias")


def _param_tensor(kind: str, value: Any) -> torch.Tensor:
    array = np.asarray(value, dtype=np.float32)
    return filters_to_oihw(array) if kind == "weight" else bias_vector(array.copy())


def _require(top: dict[str, Any], key: str, path: Path) -> Any:
    if key not in top:
        raise CqdError(f"training reference {path} has no variable '{key}' (not a train_*.mat file in the FORMAT.md layout)")
    return top[key]


def _layer_names(network: dict[str, Any]) -> list[str]:
    layers = network["layers"]
    layers = layers if isinstance(layers, list) else [layers]
    return [str(layer.get("name", f"layer{i + 1}")) if isinstance(layer, dict) else f"layer{i + 1}" for i, layer in enumerate(layers)]


def _per_layer_params(cells: list[Any], names: list[str], what: str, path: Path) -> dict[str, Any]:
    """`{layer}{1 filters, 2 biases}` cells (empty for layers without parameters) -> {state-dict name: value}."""
    if len(cells) != len(names):
        raise CqdError(f"training reference {path}: '{what}' has {len(cells)} entries for {len(names)} layers")
    out: dict[str, Any] = {}
    for name, cell in zip(names, cells):
        if isinstance(cell, np.ndarray) and cell.size == 0:
            continue
        values = cell if isinstance(cell, list) else [cell]
        if isinstance(cell, np.ndarray) and cell.dtype != object and what in ("lrMult", "wdMult"):
            values = list(np.asarray(cell, dtype=np.float64).reshape(-1))
        for kind, value in zip(_PARAM_KINDS, values):
            out[f"{name}.{kind}"] = value
    return out


def run_train_reference(path: str | Path) -> list[ComparisonRow]:
    """Replay every step of a `train_*.mat` file and compare with MatConvNet.

    Rows per step: the two losses before the step (tolerance `TOL_DEFAULT`),
    every momentum buffer after it (`TOL_MOMENTUM`), every parameter after it
    (`TOL_DEFAULT`, relative to the parameter's own magnitude) and every
    parameter's update, after minus before (`TOL_UPDATE`, relative to the
    reference's update, float32 storage rounding discounted by
    `compare_update`): a step that moves a parameter by less than the
    parameter tolerance is invisible to the parameter row, not to the update
    row. Each side's update is taken from its own parameters before the step
    (ours: the model's; the reference's: `initial`, then the previous `after`).
    """
    from cqd_port.models.network import SimpleNetwork
    from cqd_port.train.objective import Objective
    from cqd_port.train.sgd import MatConvNetSGD, Multipliers
    from cqd_port.train.trainer import sgd_step
    from matconvnet_weights.matfile import load_mat
    from matconvnet_weights.simplenn import read_simplenn

    path = Path(path)
    group = path.stem
    top = load_mat(path)
    provenance = top.get("provenance", {}) or {}
    lrn_mode = str(provenance.get("lrn", "") or "matconvnet-cpu") if isinstance(provenance, dict) else "matconvnet-cpu"

    initial_raw = _require(top, "initial", path)
    names = _layer_names(initial_raw)  # before read_simplenn, which may consume the dict
    initial = read_simplenn(initial_raw, path)
    lr_mult = _per_layer_params(list(_require(top, "lrMult", path)), names, "lrMult", path)
    wd_mult = _per_layer_params(list(_require(top, "wdMult", path)), names, "wdMult", path)
    multipliers = {k: Multipliers(lr=float(lr_mult[k]), wd=float(wd_mult.get(k, 1.0))) for k in lr_mult}

    model = SimpleNetwork(initial.specs, initial.state, initial.meta, lrn_mode=lrn_mode)
    optimizer = MatConvNetSGD(
        model.named_parameters(),
        momentum=mat_float(_require(top, "momentum", path)),
        weight_decay=mat_float(_require(top, "weightDecay", path)),
        multipliers=multipliers,
    )
    temperature = mat_float(_require(top, "T", path))
    objective = Objective(kind="cqd", lambda_=mat_float(_require(top, "lambda", path)), temperature=temperature)

    learning_rates = mat_floats(_require(top, "learningRate", path))
    steps = [list(_require(top, key, path)) for key in ("inputs", "labels", "teacher", "loss", "after", "momentumAfter")]
    if len({len(s) for s in steps} | {len(learning_rates)}) != 1:
        raise CqdError(f"training reference {path}: per-step fields have different numbers of steps")

    rows: list[ComparisonRow] = []
    ref_before = initial.state
    for step, (inputs, labels, teacher, loss, after, momentum_after) in enumerate(zip(*steps), start=1):
        case = f"step{step}"
        x = mcn_to_nchw(np.asarray(inputs, dtype=np.float32))
        y = torch.tensor([int(round(v)) - 1 for v in mat_floats(labels)], dtype=torch.long)
        v = mcn_to_nchw(np.asarray(teacher, dtype=np.float32))
        before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        stats = sgd_step(model, optimizer, objective, x, y, v, learning_rates[step - 1])
        ref_loss = mat_floats(loss)
        rows.append(compare(case, "loss objective (softmaxlog)", torch.tensor(stats.softmaxlog), np.float64(ref_loss[0]), TOL_DEFAULT, group, f"LRN {lrn_mode}"))
        rows.append(compare(case, "loss distill", torch.tensor(stats.distill), np.float64(ref_loss[1]), TOL_DEFAULT, group))

        ref_momentum = _per_layer_params(list(momentum_after), names, "momentumAfter", path)
        for name, buf in optimizer.momentum_buffers.items():
            if name not in ref_momentum:
                rows.append(failed_row(group, case, f"momentum {name}", TOL_MOMENTUM, "no reference momentum"))
                continue
            kind = name.rsplit(".", 1)[1]
            rows.append(compare(case, f"momentum {name}", buf, _param_tensor(kind, ref_momentum[name]), TOL_MOMENTUM, group))

        after_state = read_simplenn(after, path).state
        got_state = model.state_dict()
        for name in optimizer.params:
            if name not in after_state:
                rows.append(failed_row(group, case, f"param {name}", TOL_DEFAULT, "parameter missing from 'after'"))
                continue
            rows.append(compare(case, f"param {name}", got_state[name], after_state[name], TOL_DEFAULT, group))
            if name not in ref_before:
                rows.append(failed_row(group, case, f"update {name}", TOL_UPDATE, "parameter missing before this step"))
                continue
            rows.append(compare_update(case, f"update {name}", before[name], got_state[name], ref_before[name], after_state[name], TOL_UPDATE, group))
        ref_before = after_state
    return rows
