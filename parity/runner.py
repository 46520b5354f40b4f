"""The parity suite: run the library on MatConvNet's reference inputs and compare.

`run_parity` drives the *same* library code the rest of the project uses
(`cqd_port.nn`, `matconvnet_weights`, `cqd_port.models.SimpleNetwork`, the
trainer through `cqd_port_parity.train_reference`) on every reference file it finds,
and returns one `ComparisonRow` per compared tensor:

- `ops_*.mat`: each operator case forward (`y`) and backward (`dzdx`, and
  `dzdw`/`dzdb` for convolutions), the backward by autograd with the file's
  `dzdy` as the projection, exactly MatConvNet's `vl_nnX(x, ..., dzdy)`;
- `ref_*.mat`: the network named in `provenance.network` (looked up beside
  the reference file, together with its other file layouts `<net>_oldformat.mat`
  and `<net>_dag.mat` when present), layer by layer: every activation
  `x{i+1}`, every input derivative `dzdx{i}` and parameter derivative
  `dzdw{i}`, with one backward pass from the output projected on `dzdy`;
  then, for chain networks, every layer's LOCAL backward (`compare_layers_locally`):
  layer i alone on the reference's own `x{i}` and `dzdx{i+1}`, at the
  single-operator tolerance, so a wrong backward fails its own layer's row
  only; ReLU inputs at float noise of zero and bnorm's batch statistics are
  named in the note;
- `train_*.mat`: replayed by `cqd_port_parity.train_reference.run_train_reference`;
- the released CQD pipeline's references (../shared/release-parity), each by
  its own checker, imported when needed: `train_epochs_*.mat` by
  `cqd_port_parity.release_train.check_train_epochs_reference`, `tps_*.mat` by
  `cqd_port_parity.release_tps.check_tps_reference`, `sed_*.mat` by
  `cqd_port_parity.release_sed.check_sed_reference` with the `sed_model_*.mat` beside it.

A check that cannot run (a checker module missing, a file it cannot read, a
crash in the library) is a FAILED row with the error in its note, never a
traceback that hides the rest of the table. When run with the default
folders, a default folder that is not found is reported (`ParityReport.missing`):
the suite then did not check everything, and says so.

Precision: everything runs in float32 (except the local backward rows,
see `LOCAL_DTYPE`), the precision MatConvNet computed
the references in and the precision the library trains and evaluates in
(what the suite must vouch for); the CPU LRN's `fast_pow` is moreover defined
on float32 bit patterns. Both precisions pass at the FORMAT.md tolerances;
measured worst relative errors: operators 3.8e-7 in float32 / 4.6e-7 in
float64; whole networks, activations 1.2e-6 / 1.2e-6 and gradients 6.7e-6 /
1.7e-6. The float32 network gradients are further off because a bias
gradient sums ~50k float32 terms in another order than MatConvNet did, which
is exactly why FORMAT.md allows 1e-4 for whole-network gradients.

LRN mode: taken from each file's `provenance.lrn` (`lrn="auto"`), or forced
for every file with `lrn="exact"` / `lrn="matconvnet-cpu"`; forcing the
wrong one makes the LRN rows fail, which is how the suite shows it can fail.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.layout import image_to_nchw
from cqd_port.nn import bnorm, conv, distill_loss, dropout, lrn, pool, relu, softmax, softmaxlog_loss
from cqd_port.nn import modules as M
from cqd_port.nn.functional import BETA18_BNORM_EPSILON, batch_moments
from matconvnet_weights.convert import load_model
from matconvnet_weights.simplenn import SIMPLENN_TYPES
from cqd_port_parity.compare import (
    TOL_DEFAULT,
    float_noise_threshold,
    forward_tolerance,
    TOL_NETWORK_GRADIENT,
    ComparisonRow,
    compare,
    failed_row,
    join_notes,
    largest_magnitude,
)
from cqd_port_parity.references import (
    LRN_MODES,
    SED_MODEL_PREFIX,
    NetworkReference,
    OpCase,
    find_reference_files,
    read_network_reference,
    read_ops_file,
    read_train_provenance,
    reference_kind,
)

LRN_CHOICES = ("auto", *LRN_MODES)
PACKAGED_REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
# The file layouts of one network that a faithful reader must read identically (FORMAT.md).
NETWORK_LAYOUT_SUFFIXES = ("", "_oldformat", "_dag")

Progress = Callable[[str], None]


@dataclass
class NotRun:
    """A reference file the suite found but did not compare, and why."""

    path: str
    reason: str


@dataclass
class MissingFolder:
    """A default reference folder that was not found, so none of its references ran."""

    label: str
    """How the folder is named to the user (`../shared/parity`)."""
    holds: str
    """What it holds, i.e. what was not checked."""
    looked_in: list[Path] = field(default_factory=list)

    def message(self) -> str:
        where = ", ".join(str(p) for p in self.looked_in)
        return f"not found: {self.label} (looked in {where}): {self.holds} not run"


@dataclass
class ParityReport:
    rows: list[ComparisonRow] = field(default_factory=list)
    not_run: list[NotRun] = field(default_factory=list)
    lrn_modes: dict[str, str] = field(default_factory=dict)
    """The LRN mode each group ran with (for the files where LRN takes part)."""
    missing: list[MissingFolder] = field(default_factory=list)
    """Default reference folders that were not found (only when run with the defaults)."""

    @property
    def complete(self) -> bool:
        """False when a default folder was missing or a found file was not run."""
        return not self.missing and not self.not_run

    @property
    def n_passed(self) -> int:
        return sum(row.passed for row in self.rows)

    @property
    def n_failed(self) -> int:
        return len(self.rows) - self.n_passed

    @property
    def passed(self) -> bool:
        """True when at least one comparison ran and none failed."""
        return bool(self.rows) and self.n_failed == 0

    def failures(self) -> list[ComparisonRow]:
        return [row for row in self.rows if not row.passed]


# --------------------------------------------------------------------------- where the references are


# The default folders beside the checkout (../shared/<name>) and what each holds.
SHARED_REFERENCE_FOLDERS = (
    ("parity", "MatConvNet's network and training references (ref_*, train_*; and ops_* not packaged)"),
    ("release-parity", "the released CQD pipeline's references (train_epochs_*, tps_*, sed_*)"),
)


@dataclass
class DefaultFolder:
    label: str
    holds: str
    candidates: list[Path]

    @property
    def path(self) -> Path | None:
        """The first candidate that exists, or None."""
        return next((c for c in self.candidates if c.is_dir()), None)


def default_reference_folders() -> list[DefaultFolder]:
    """The packaged `parity/reference/`, `../shared/parity` and `../shared/release-parity`.

    `../shared` is looked up relative to the current working directory and to
    the repository root (the checkout this package was imported from; for an
    installed package, the folder above site-packages, which rarely has it).
    """
    folders = [DefaultFolder("parity/reference (packaged)", "the packaged operator references (ops_*)", [PACKAGED_REFERENCE_DIR])]
    for name, holds in SHARED_REFERENCE_FOLDERS:
        candidates = [Path.cwd().parent / "shared" / name, REPOSITORY_ROOT.parent / "shared" / name]
        unique = list({c.resolve(): c for c in reversed(candidates)}.values())[::-1]
        folders.append(DefaultFolder(f"../shared/{name}", holds, unique))
    return folders


def default_reference_dirs() -> list[Path]:
    """The default folders that exist (`default_reference_folders`), each listed once."""
    dirs: list[Path] = []
    seen: set[Path] = set()
    for folder in default_reference_folders():
        path = folder.path
        if path is not None and path.resolve() not in seen:
            seen.add(path.resolve())
            dirs.append(path)
    return dirs


def _resolve_lrn(lrn: str, file_lrn: str) -> str:
    if lrn != "auto":
        return lrn
    return file_lrn or "exact"  # files without provenance.lrn: the GPU (exact pow) behaviour


def network_layouts(reference_path: Path, network_name: str) -> list[Path]:
    """The network file a reference names, looked up beside it, then in a sibling
    `parity/` folder, plus its other layouts.

    CqdError when the named file is missing. `net_X.mat` brings along
    `net_X_oldformat.mat` and `net_X_dag.mat` from the same folder when they
    exist: FORMAT.md requires the same numbers from all three layouts.
    """
    if not network_name:
        raise CqdError(
            f"reference file {reference_path} names no network (provenance.network is empty); "
            "run it with --model NET.mat --reference REF.mat"
        )
    beside = reference_path.parent / network_name
    sibling = reference_path.parent.parent / "parity" / network_name  # release-parity/ref_x -> parity/net_x
    primary = next((p for p in (beside, sibling) if p.is_file()), None)
    if primary is None:
        raise CqdError(
            f"network file {network_name} (named by {reference_path.name} in provenance.network) not found "
            f"beside it or in {sibling.parent}; put it there or use --model/--reference"
        )
    layouts = [primary]
    for suffix in NETWORK_LAYOUT_SUFFIXES[1:]:
        variant = primary.with_name(f"{primary.stem}{suffix}{primary.suffix}")
        if variant.is_file():
            layouts.append(variant)
    return layouts


# --------------------------------------------------------------------------- ops_*.mat


def _op_forward(case: OpCase, x: torch.Tensor, lrn_mode: str, extra: dict[str, torch.Tensor]) -> torch.Tensor:
    """The library's implementation of one MatConvNet operator case."""
    t, p = case.tensors, case.params
    op = case.op
    if op == "conv":
        return conv(x, extra["w"], extra.get("b"), pad=p["pad"], stride=p["stride"], dilate=p.get("dilate", [1, 1]))
    if op == "pool":
        return pool(x, p["method"], p["pool"], stride=p["stride"], pad=p["pad"])
    if op == "normalize":
        return lrn(x, p["param"], mode=lrn_mode)
    if op == "relu":
        return relu(x, p.get("leak", 0.0))
    if op == "softmax":
        return softmax(x)
    if op in ("loss_softmaxlog", "softmaxloss"):
        return softmaxlog_loss(x, p["labels"])
    if op == "dropout":
        return dropout(x, p["rate"], training=True, mask=t["mask"])
    if op == "bnorm":
        return bnorm(x, t["g"], t["b"], t["moments"], p.get("epsilon", BETA18_BNORM_EPSILON))
    if op == "distill":
        # vl_nndistillloss: x/T2 is the student, v/T1 the teacher; y is per image.
        return distill_loss(x, t["v"], p["T2"], p["T1"], reduction="none")
    raise CqdError(f"unknown operator '{op}' in case '{case.name}' (supported: conv, pool, normalize, relu, "
                   "softmax, loss_softmaxlog, softmaxloss, dropout, bnorm, distill)")


def run_op_case(case: OpCase, group: str, lrn_mode: str) -> list[ComparisonRow]:
    """Forward and backward of one operator case; rows for y, dzdx (and dzdw, dzdb)."""
    t = case.tensors
    note = f"lrn {lrn_mode}" if case.op == "normalize" else ""
    x = t["x"].clone().requires_grad_(True)
    extra: dict[str, torch.Tensor] = {}
    if "w" in t:
        extra["w"] = t["w"].clone().requires_grad_(True)
    if "b" in t and t["b"].numel() > 0:
        extra["b"] = t["b"].clone().requires_grad_(True)
    try:
        y = _op_forward(case, x, lrn_mode, extra)
    except CqdError:
        raise
    except Exception as exc:  # a library defect: a failed row, not a crash
        return [failed_row(group, case.name, "y", TOL_DEFAULT, f"{case.op} raised {type(exc).__name__}: {exc}")]
    if not isinstance(y, torch.Tensor):
        return [failed_row(group, case.name, "y", TOL_DEFAULT, f"{case.op} returned {type(y).__name__}, not a tensor")]

    ref_y = t["y"]
    rows = []
    # Same numbers, possibly another shape (a per-image loss as N vs MatConvNet's 1x1x1xN).
    got_y = y.reshape(ref_y.shape) if y.numel() == ref_y.numel() else y
    rows.append(compare(case.name, "y", got_y, ref_y, TOL_DEFAULT, group, note, largest_magnitude(t["x"], ref_y)))
    if "dzdx" not in t:
        return rows  # forward-only case (bnorm in test mode)

    dzdy = t["dzdy"].to(y.dtype)
    if dzdy.numel() == 1 and y.numel() != 1:
        dzdy = dzdy.reshape(()).expand(y.shape)  # a scalar projection of a per-image loss
    elif dzdy.numel() == y.numel():
        dzdy = dzdy.reshape(y.shape)
    inputs = [x, *extra.values()]
    try:
        grads = torch.autograd.grad(y, inputs, grad_outputs=dzdy, allow_unused=True)
    except Exception as exc:  # a library defect in the backward: failed rows, not a crash
        return rows + [failed_row(group, case.name, "dzdx", TOL_DEFAULT, f"{case.op} backward raised {type(exc).__name__}: {exc}")]
    by_name = dict(zip(["x", *extra.keys()], grads))
    context = largest_magnitude(*(t[k] for k in ("dzdy", "dzdx", "dzdw", "dzdb") if k in t))
    for key, ref_key, quantity in (("x", "dzdx", "dzdx"), ("w", "dzdw", "dzdw"), ("b", "dzdb", "dzdb")):
        if ref_key not in t or (ref_key == "dzdb" and t[ref_key].numel() == 0):
            continue
        grad = by_name.get(key)
        if grad is None:
            rows.append(failed_row(group, case.name, quantity, TOL_DEFAULT, "no gradient reached this input"))
        else:
            rows.append(compare(case.name, quantity, grad, t[ref_key], TOL_DEFAULT, group, note, context))
    return rows


def run_ops_file(path: Path, lrn: str = "auto") -> tuple[list[ComparisonRow], str | None]:
    """All cases of one `ops_*.mat` file. Returns the rows and the LRN mode used (None if no LRN case)."""
    ops = read_ops_file(path)
    lrn_mode = _resolve_lrn(lrn, ops.provenance.lrn)
    rows: list[ComparisonRow] = []
    for case in ops.cases:
        rows.extend(run_op_case(case, path.name, lrn_mode))
    uses_lrn = any(case.op == "normalize" for case in ops.cases)
    return rows, (lrn_mode if uses_lrn else None)


# --------------------------------------------------------------------------- ref_*.mat


def _average_image(model: torch.nn.Module) -> torch.Tensor | None:
    """meta.normalization.averageImage (H x W x 3 or 1x1x3, MatConvNet layout) as 1 x 3 x H x W, if any."""
    meta = getattr(model, "meta", None) or {}
    normalization = meta.get("normalization") if isinstance(meta, dict) else None
    average = normalization.get("averageImage") if isinstance(normalization, dict) else None
    if average is None:
        return None
    average = np.asarray(average, dtype=np.float32)
    if average.ndim == 1 or (average.ndim == 2 and 1 in average.shape):
        average = average.reshape(1, 1, -1)  # a mean colour stored as a vector
    return image_to_nchw(average)


def compare_network(model: torch.nn.Module, ref: NetworkReference, group: str) -> list[ComparisonRow]:
    """Run `model` on the reference input and compare every layer, forward and backward.

    Reproduces `res = vl_simplenn(net, input, dzdy)` in test mode: one forward
    pass keeping every layer's output, one backward pass from the last output
    projected on `dzdy`. The derivative with respect to the input of layer i
    is the gradient retained on the output of layer i - 1 (on the input for
    the first layer). Layers are matched by position, as `vl_simplenn` runs
    them; a name or type that differs from the reference is noted on the row.

    As MatConvNet: bnorm layers back-propagate with batch statistics
    (`bnorm_backward="matconvnet"`, set for the comparison) and their moments'
    derivative is compared (the batch moments times the number of images). In
    a chain, a ReLU input within float noise of zero in the reference
    (`float_noise_threshold`) back-propagates with the reference's sign
    (`_ReferenceSignReLU`): its sign is float noise, and the other sign would
    change every gradient before it; the rows it reaches say how many such
    inputs had the other sign in the port. Tolerances and floors: a layer's
    output at `forward_tolerance` of its depth and accumulated magnitude;
    near-zero references floored by what the layer summed (`carried_floor`;
    graphs: by the largest reference of their kind, `NEAR_ZERO_FRACTION`).
    """
    chain = not getattr(model, "is_graph", False) and hasattr(model, "layer")
    names_now = list(getattr(model, "layer_names", []))
    carried = _carried_magnitudes(model, ref, names_now) if chain else None
    with _AsMatConvNet(model, ref if chain else None) as signs:
        rows = _compare_network(model, ref, group, carried, signs)
    if chain:
        # A graph's x{i} is not always layer i's input, nor dzdx{i} its own derivative alone.
        rows.extend(compare_layers_locally(model, ref, group, names_now, carried))
    return rows


class _ReferenceSignReLU(torch.autograd.Function):
    """`vl_nnrelu` whose backward passes the derivative where `keep` is true (times `leak` elsewhere)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, leak: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(keep)
        ctx.leak = leak
        return relu(x, leak)

    @staticmethod
    def backward(ctx, dzdy: torch.Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        slope = torch.where(keep, torch.ones_like(dzdy), torch.full_like(dzdy, ctx.leak))
        return dzdy * slope, None, None


class _ReferenceSignLayer(torch.nn.Module):
    """Stands in for a chain's ReLU layer in `compare_network`: the port's own forward; in the
    backward, the reference's sign where the reference's input is float noise of zero, the port's
    own sign everywhere else (so a real forward error still shows in the gradients)."""

    def __init__(self, leak: float, reference_input: torch.Tensor) -> None:
        super().__init__()
        self.leak = leak
        self.reference_input = reference_input
        self.noise = reference_input.abs() <= float_noise_threshold(largest_magnitude(reference_input))
        self.flipped = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.reference_input.shape:
            return relu(x, self.leak)  # the shape rows fail on their own
        reference_positive = self.reference_input.to(device=x.device) > 0
        own = x.detach() > 0
        keep = torch.where(self.noise.to(x.device), reference_positive, own)
        self.flipped = int((keep != own).sum())
        return _ReferenceSignReLU.apply(x, keep, self.leak)


class _AsMatConvNet:
    """While comparing: bnorm layers back-propagate as beta18 (batch statistics) and hand back a
    moments derivative; in a chain, ReLU layers take the reference's sign at float noise
    (`_ReferenceSignLayer`). Yields {layer index: stand-in}; restores the model afterwards."""

    def __init__(self, model: torch.nn.Module, ref: NetworkReference | None) -> None:
        self.model, self.ref = model, ref
        self.saved_mode = getattr(model, "bnorm_backward", None)
        self.bnorms = [m for m in model.modules() if isinstance(m, M.BatchNormTest)]
        self.saved_bnorm_modes = [m.bnorm_backward for m in self.bnorms]
        self.swapped: dict[str, torch.nn.Module] = {}
        self.signs: dict[int, _ReferenceSignLayer] = {}

    def __enter__(self) -> dict[int, _ReferenceSignLayer]:
        for module in self.bnorms:
            module.bnorm_backward = "matconvnet"
            module.moments.requires_grad_(True)
        if self.ref is not None:
            for i, name in enumerate(getattr(self.model, "layer_names", [])):
                module = self.model._modules.get(name)
                if isinstance(module, M.ReLU) and i < len(self.ref.x):
                    self.swapped[name] = module
                    self.signs[i] = _ReferenceSignLayer(module.leak, self.ref.x[i])
                    self.model._modules[name] = self.signs[i]
        return self.signs

    def __exit__(self, *exc: object) -> None:
        for name, module in self.swapped.items():
            self.model._modules[name] = module
        for module, mode in zip(self.bnorms, self.saved_bnorm_modes):
            module.moments.requires_grad_(False)
            module.moments.grad = None
            module.bnorm_backward = mode


def _flip_note(signs: dict[int, _ReferenceSignLayer], i: int) -> str:
    """The ReLU inputs at float noise of zero, at layer i or after, that the port saw with the other sign."""
    flipped = {index: layer.flipped for index, layer in signs.items() if index >= i and layer.flipped}
    if not flipped:
        return ""
    count = sum(flipped.values())
    where = ", ".join(f"layer {index + 1}: {n}" for index, n in sorted(flipped.items()))
    inputs = "input" if count == 1 else "inputs"
    return (f"backward with the reference's ReLU sign at {count} {inputs} at float noise of zero "
            f"that the port saw with the other sign ({where})")


def _compare_network(
    model: torch.nn.Module,
    ref: NetworkReference,
    group: str,
    carried: list[dict[str, float]] | None,
    signs: dict[int, _ReferenceSignLayer],
) -> list[ComparisonRow]:
    params = dict(model.state_dict(keep_vars=True))
    for param in params.values():
        param.grad = None  # one backward pass from dzdy, not added to what an earlier one left
    dtype = next((p.dtype for p in params.values() if p.is_floating_point()), torch.float32)
    x = ref.input.to(dtype).clone().requires_grad_(True)
    rows: list[ComparisonRow] = []
    with torch.enable_grad():
        try:
            outputs = model.forward(x, return_all=True)
        except Exception as exc:  # a library defect: a failed row, not a traceback
            return [failed_row(group, "network", "forward", TOL_DEFAULT, f"the forward pass raised {type(exc).__name__}: {exc}")]
        names = list(outputs.keys())
        tensors = list(outputs.values())
        for tensor in tensors:
            if tensor.requires_grad and tensor is not x:
                tensor.retain_grad()
        if not tensors:
            return [failed_row(group, "network", "layers", TOL_DEFAULT, "the model returned no layer outputs")]
        final = tensors[-1]
        dzdy = ref.dzdy.to(final.dtype)
        backward_ran = dzdy.shape == final.shape and final.requires_grad
        if backward_ran:
            try:
                final.backward(dzdy)
            except Exception as exc:  # the gradient rows below then fail with "no gradient"
                backward_ran = False
                rows.append(failed_row(group, "network", "backward", TOL_NETWORK_GRADIENT,
                                       f"the backward pass raised {type(exc).__name__}: {exc}"))
        elif dzdy.shape != final.shape:
            rows.append(failed_row(group, "network", "dzdy", TOL_NETWORK_GRADIENT,
                                   f"no backward pass: model output {tuple(final.shape)} vs reference dzdy {tuple(dzdy.shape)}"))
        else:
            rows.append(failed_row(group, "network", "dzdy", TOL_NETWORK_GRADIENT, "no backward pass: the output needs no gradient"))
    # graphs: near-zero references floored by the largest reference of their kind (NEAR_ZERO_FRACTION)
    activation_context = 0.0 if carried is not None else largest_magnitude(*ref.x)
    gradient_context = 0.0 if carried is not None else \
        largest_magnitude(ref.dzdy, *ref.dzdx, *(g for layer in ref.dzdw for g in layer.values()))
    average = _average_image(model)
    if average is not None:
        # The reader's averageImage against the reference's own normalization: input = image - averageImage.
        try:
            normalized = ref.image - average.to(ref.image.dtype)
            rows.append(compare("input", "image - averageImage", normalized, ref.input, TOL_DEFAULT, group))
        except RuntimeError as exc:  # sizes that do not broadcast
            rows.append(failed_row(group, "input", "image - averageImage", TOL_DEFAULT, f"averageImage does not fit the image: {exc}"))
    if len(names) != len(ref.names):
        rows.append(failed_row(group, "network", "layers", TOL_DEFAULT,
                               f"the model has {len(names)} layers, the reference {len(ref.names)}"))
    specs = getattr(model, "specs", None)
    depth, error_scale = 0, (largest_magnitude(ref.x[0]) if ref.x else 0.0)
    for i, ref_name in enumerate(ref.names):
        case = f"{i + 1:02d} {ref_name}"
        if i >= len(names):
            rows.append(failed_row(group, case, "y", TOL_DEFAULT, "layer missing from the model"))
            continue
        note = "" if names[i] == ref_name else f"model layer '{names[i]}'"
        if specs is not None and i < len(specs):
            want = SIMPLENN_TYPES.get(ref.types[i], ref.types[i])
            if specs[i].type != want:
                note = join_notes(note, f"model type '{specs[i].type}' vs '{ref.types[i]}'")
        depth += ref.types[i] in ("conv", "convt")
        error_scale, output_size = _accumulated_scale(ref.types[i], error_scale, ref.x[i], ref.x[i + 1])
        tol_y = forward_tolerance(depth, error_scale / output_size if output_size > 0 else math.inf)
        layer_carried = carried[i] if carried is not None and i < len(carried) else {}
        rows.append(compare(case, "y", tensors[i], ref.x[i + 1], tol_y, group, note, activation_context, layer_carried.get("y", 0.0)))
        grad_note = join_notes(note, _flip_note(signs, i)) if _flip_note(signs, i) else note
        if ref.types[i] == "bnorm":
            grad_note = join_notes(grad_note, BATCH_STATISTICS_NOTE)
        input_tensor = x if i == 0 else tensors[i - 1]
        if input_tensor.grad is None:
            rows.append(failed_row(group, case, "dzdx", TOL_NETWORK_GRADIENT, join_notes(grad_note, "no gradient reached this layer's input")))
        else:
            rows.append(compare(case, "dzdx", input_tensor.grad, ref.dzdx[i], TOL_NETWORK_GRADIENT, group, grad_note,
                                gradient_context, layer_carried.get("dzdx", 0.0)))
        for suffix, ref_grad in ref.dzdw[i].items():
            quantity = {"weight": "dzdw", "bias": "dzdb"}.get(suffix, f"dzd{suffix}")
            param = params.get(f"{names[i]}.{suffix}")
            if param is None or param.grad is None:
                why = f"no parameter '{names[i]}.{suffix}'" if param is None else "no gradient for this parameter"
                rows.append(failed_row(group, case, quantity, TOL_NETWORK_GRADIENT, join_notes(grad_note, why)))
            else:
                got = param.grad
                if suffix == "moments" and got.numel() == ref_grad.numel():
                    got = got.reshape(ref_grad.shape)  # C x 2 either way; a 2C vector in some files
                rows.append(compare(case, quantity, got, ref_grad, TOL_NETWORK_GRADIENT, group, grad_note,
                                    gradient_context, layer_carried.get(suffix, 0.0)))
    return rows


def _accumulated_scale(layer_type: str, scale: float, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(the magnitude float32 rounding has worked at up to this layer's output, max|y|), for `forward_tolerance`.

    A layer that sums keeps the larger of what came before and its own output
    (DnCNN's last layer: 6e3 upstream, an output of 44); a normalizing layer
    (LRN, bnorm) rescales the error with its output; softmax turns the logits'
    absolute error into its own relative error, so its scale is that of the
    logits times its output.
    """
    before, after = largest_magnitude(x), largest_magnitude(y)
    if layer_type in ("normalize", "lrn", "bnorm"):
        return (scale * after / before if before > 0 else after), after
    if layer_type == "softmax":
        return after * max(1.0, scale), after
    return max(scale, after), after


LOCAL_DTYPE = torch.float64
"""The local rows run each layer in float64 on the reference's float32 tensors, so that what they
measure is MatConvNet's own float32 rounding, not ours on top of it: a bias derivative sums every
position's derivative (50k terms for ref_vggvd16_tiny's conv1_2), which in float32 in PyTorch's
order misses MatConvNet's sum by 1.1e-5, in float64 by 2.0e-6."""

BATCH_STATISTICS_NOTE = "bnorm with batch moments (beta18 vl_simplenn's backward, even in test mode)"

# Layers whose backward only selects, masks or averages (a Jacobian of non-negative entries): what
# they sum is their own backward of |dzdy|.
_NONNEGATIVE_JACOBIAN = (M.ReLU, M.Pool, M.Dropout)
# Layers linear in their input and in each parameter: what they sum is the same layer with
# |parameters| on |x|, back-propagating |dzdy|.
_MULTILINEAR = (M.Conv, M.ConvTranspose, M.Scale)


def _carried_magnitudes(model: torch.nn.Module, ref: NetworkReference, names: list[str]) -> list[dict[str, float]]:
    """Per layer of a chain, the magnitude of what it sums for each compared quantity (`carried_floor`).

    On the reference's own x{i} and dzdx{i+1}, in float64: the largest entry of
    the same computation with every term taken in absolute value, for `y`,
    `dzdx` and each parameter's derivative (by its suffix). Convolutions: the
    layer with |filters| and |biases| on |x{i}|, back-propagating |dzdx{i+1}|;
    bnorm: its terms in absolute value (`_bnorm_carried`); ReLU, pooling,
    dropout: their own backward of |dzdx{i+1}|; other layers: max|x{i}| and
    max|dzdx{i+1}|. A layer that does not fit its reference gets no floor.
    """
    out: list[dict[str, float]] = []
    for i in range(len(ref.names)):
        entry: dict[str, float] = {}
        out.append(entry)
        if i >= len(names) or i + 1 >= len(ref.x):
            continue
        try:
            module = copy.deepcopy(model.layer(names[i])).to(LOCAL_DTYPE)
            x = ref.x[i].to(LOCAL_DTYPE)
            dzdy = ref.dzdx[i + 1].to(LOCAL_DTYPE).abs()
            entry.update(y=largest_magnitude(x), dzdx=largest_magnitude(dzdy))
            with torch.enable_grad():
                if isinstance(module, _MULTILINEAR):
                    params = dict(module.named_parameters(recurse=False))
                    for p in params.values():
                        p.data.abs_()
                    xa = x.abs().requires_grad_(True)
                    y = module(xa)
                    grads = torch.autograd.grad(y, [xa, *params.values()], dzdy.reshape(y.shape), allow_unused=True)
                    entry["y"] = largest_magnitude(y)
                    for key, grad in zip(["dzdx", *params.keys()], grads):
                        if grad is not None:
                            entry[key] = largest_magnitude(grad)
                elif isinstance(module, _NONNEGATIVE_JACOBIAN):
                    if hasattr(module, "inplace"):
                        module.inplace = False
                    xg = x.clone().requires_grad_(True)
                    y = module(xg)
                    (grad,) = torch.autograd.grad(y, [xg], dzdy.reshape(y.shape))
                    entry["dzdx"] = largest_magnitude(grad)
                elif isinstance(module, M.BatchNormTest):
                    entry.update(_bnorm_carried(module, x, dzdy.reshape(x.shape)))
        except Exception:  # a layer that does not fit its reference: its own rows fail, with no floor
            entry.clear()
    return out


def _bnorm_carried(module: M.BatchNormTest, x: torch.Tensor, abs_dzdy: torch.Tensor) -> dict[str, float]:
    """What a bnorm layer sums, forward (stored moments) and backward (batch statistics), in absolute value."""
    c, axes = x.shape[1], (0, 2, 3)
    gain, bias = module.weight.detach().abs().reshape(1, c, 1, 1), module.bias.detach().abs().reshape(1, c, 1, 1)
    stored = module.moments.reshape(c, 2)
    forward = gain * (x - stored[:, 0].reshape(1, c, 1, 1)).abs() / stored[:, 1].abs().reshape(1, c, 1, 1) + bias
    moments = batch_moments(x, module.epsilon)
    sigma = moments[:, 1].reshape(1, c, 1, 1)
    xhat = ((x - moments[:, 0].reshape(1, c, 1, 1)) / sigma).abs()
    m = x.numel() // c
    dzdbias, dzdgain = abs_dzdy.sum(axes, keepdim=True), (abs_dzdy * xhat).sum(axes, keepdim=True)
    dzdx = gain / sigma * (abs_dzdy + dzdbias / m + xhat * dzdgain / m)
    return {"y": largest_magnitude(forward), "dzdx": largest_magnitude(dzdx),
            "weight": largest_magnitude(dzdgain), "bias": largest_magnitude(dzdbias)}


def compare_layers_locally(
    model: torch.nn.Module,
    ref: NetworkReference,
    group: str,
    names: list[str] | None = None,
    carried: list[dict[str, float]] | None = None,
) -> list[ComparisonRow]:
    """Each layer's backward alone, on the reference's own activations: rows `local dzdx`, `local dzdw`...

    Layer i of `model` (the very module the network runs) gets the reference's
    `x{i}` as input and the reference's `dzdx{i+1}` as output derivative; its
    input and parameter derivatives are compared with `dzdx{i}` and `dzdw{i}` at
    the single-operator tolerance. Unlike the end-to-end rows, an error here
    belongs to layer i alone. What MatConvNet does differently is named in the
    note rather than failed on:

    - ReLU: positions whose reference input is float noise of zero
      (`cqd_port_parity.compare.float_noise_threshold` of the layer's largest input)
      are left out and counted: their sign, hence their gradient, depends on
      summation order.
    - bnorm: beta18's `vl_simplenn` backward calls `vl_nnbnorm` without moments
      even in test mode; the layer runs with `bnorm_backward="matconvnet"`,
      which does the same (`cqd_port.nn.functional.bnorm`), and its moments
      "derivative" (the batch moments times the number of images, as
      `vl_simplenn` returns it) is compared too.

    Near-zero references are floored by what the layer summed (`carried`, from
    `_carried_magnitudes` when not given). The reference's own per-layer
    `notes` (when the file has them) are appended.
    """
    names = list(names) if names is not None else list(getattr(model, "layer_names", ref.names))
    if carried is None:
        carried = _carried_magnitudes(model, ref, names)
    rows: list[ComparisonRow] = []
    for i, ref_name in enumerate(ref.names):
        if i >= len(names) or i + 1 >= len(ref.x):
            break  # the end-to-end rows already fail a missing layer
        case = f"{i + 1:02d} {ref_name}"
        ref_note = ref.notes[i] if i < len(ref.notes) else ""
        note = f"reference: {ref_note}" if ref_note else ""
        try:
            module = model.layer(names[i])
        except CqdError as exc:
            rows.append(failed_row(group, case, "local dzdx", TOL_DEFAULT, join_notes(note, str(exc))))
            continue
        module = copy.deepcopy(module).to(LOCAL_DTYPE)  # the network itself stays as it is
        is_bnorm = isinstance(module, M.BatchNormTest)
        params = dict(module.named_parameters(recurse=False))
        if is_bnorm:
            module.bnorm_backward = "matconvnet"
            params["moments"] = module.moments.requires_grad_(True)
            note = join_notes(note, BATCH_STATISTICS_NOTE)
        x = ref.x[i].to(LOCAL_DTYPE).clone().requires_grad_(True)
        dzdy = ref.dzdx[i + 1].to(LOCAL_DTYPE)
        if hasattr(module, "inplace"):
            module.inplace = False  # x is a leaf that autograd needs
        try:
            with torch.enable_grad():
                y = module(x)
                inputs = [x, *params.values()]
                grads = torch.autograd.grad(y, inputs, grad_outputs=dzdy.reshape(y.shape), allow_unused=True) \
                    if y.requires_grad else [None] * len(inputs)
        except Exception as exc:  # a library defect, or a reference that does not fit the layer
            rows.append(failed_row(group, case, "local dzdx", TOL_DEFAULT,
                                   join_notes(note, f"layer alone raised {type(exc).__name__}: {exc}")))
            continue
        layer_carried = carried[i] if i < len(carried) else {}
        got_dzdx, ref_dzdx, dzdx_note = grads[0], ref.dzdx[i], note
        if got_dzdx is None:
            got_dzdx = torch.zeros_like(x)  # a layer whose output does not depend on its input
        if isinstance(module, M.ReLU) and got_dzdx.shape == ref_dzdx.shape:
            reference_input = ref.x[i].to(torch.float64)
            noise = reference_input.abs() <= float_noise_threshold(largest_magnitude(reference_input))
            excluded = int(noise.sum())
            if excluded:
                keep = ~noise
                got_dzdx, ref_dzdx = got_dzdx[keep], ref_dzdx[keep]
                inputs_word = "input" if excluded == 1 else "inputs"
                dzdx_note = join_notes(note, f"{excluded} {inputs_word} at float noise of zero excluded")
        rows.append(compare(case, "local dzdx", got_dzdx, ref_dzdx, TOL_DEFAULT, group, dzdx_note, 0.0, layer_carried.get("dzdx", 0.0)))
        by_suffix = dict(zip(params.keys(), grads[1:]))
        for suffix, ref_grad in ref.dzdw[i].items():
            quantity = "local " + {"weight": "dzdw", "bias": "dzdb"}.get(suffix, f"dzd{suffix}")
            grad = by_suffix.get(suffix)
            if grad is None:
                why = f"no parameter '{names[i]}.{suffix}'" if suffix not in by_suffix else "no gradient for this parameter"
                rows.append(failed_row(group, case, quantity, TOL_DEFAULT, join_notes(note, why)))
                continue
            row_note = join_notes(note, "batch moments x N") if suffix == "moments" else note
            got = grad.reshape(ref_grad.shape) if suffix == "moments" and grad.numel() == ref_grad.numel() else grad
            rows.append(compare(case, quantity, got, ref_grad, TOL_DEFAULT, group, row_note, 0.0, layer_carried.get(suffix, 0.0)))
    return rows


def run_network_reference(
    reference: Path,
    lrn: str = "auto",
    model_path: Path | None = None,
    progress: Progress | None = None,
) -> tuple[list[ComparisonRow], dict[str, str]]:
    """Compare one `ref_*.mat` with its network (all its layouts), or with `model_path` if given."""
    ref = read_network_reference(reference)
    lrn_mode = _resolve_lrn(lrn, ref.provenance.lrn)
    networks = [Path(model_path)] if model_path is not None else network_layouts(reference, ref.network_name)
    rows: list[ComparisonRow] = []
    modes: dict[str, str] = {}
    for network in networks:
        if not network.is_file():
            raise CqdError(f"network file not found: {network} (check --model)")
        group = f"{reference.name} / {network.name}"
        if progress is not None:
            progress(group)
        modes[group] = lrn_mode
        if model_path is not None:  # the user's own file: a user error if it cannot be read
            rows.extend(compare_network(load_model(network, lrn_mode=lrn_mode), ref, group))
            continue
        try:  # a layout the reader fails on is a parity failure, and must not hide the other layouts
            model = load_model(network, lrn_mode=lrn_mode)  # the project's own loader, in test mode
        except Exception as exc:
            rows.append(failed_row(group, "network", "read", TOL_DEFAULT, f"cannot load {network.name}: {type(exc).__name__}: {exc}"))
            continue
        rows.extend(compare_network(model, ref, group))
    return rows, modes


# --------------------------------------------------------------------------- train_*.mat


def run_train_file(path: Path) -> tuple[list[ComparisonRow], NotRun | None]:
    """Replay a `train_*.mat` through `cqd_port_parity.train_reference`, or say why it was not run."""
    read_train_provenance(path)  # a missing or corrupt file is a user error (CqdError) either way
    from cqd_port_parity.train_reference import run_train_reference

    try:
        return list(run_train_reference(path)), None
    except CqdError:
        raise
    except Exception as exc:
        # A replay that crashes is a parity failure, never a silent "not run".
        note = f"training replay crashed: {type(exc).__name__}: {exc}"
        return [failed_row(path.name, "replay", "all steps", TOL_DEFAULT, note)], None


# --------------------------------------------------------------------------- the release's references

# kind -> (module, function): the checkers of ../shared/release-parity, imported when a file needs them.
RELEASE_CHECKERS = {
    "train_epochs": ("cqd_port_parity.release_train", "check_train_epochs_reference"),
    "tps": ("cqd_port_parity.release_tps", "check_tps_reference"),
    "sed": ("cqd_port_parity.release_sed", "check_sed_reference"),
}


def sed_model_beside(path: Path) -> Path:
    """The `sed_model_*.mat` beside a `sed_*.mat` reference (the model its edge maps were computed with)."""
    models = sorted(path.parent.glob(f"{SED_MODEL_PREFIX}*.mat"))
    if len(models) != 1:
        found = "none" if not models else ", ".join(m.name for m in models)
        raise CqdError(f"{path.name} needs exactly one {SED_MODEL_PREFIX}*.mat beside it in {path.parent}, found {found}")
    return models[0]


def run_release_file(path: Path, kind: str) -> list[ComparisonRow]:
    """Check one release reference with its checker (`RELEASE_CHECKERS`).

    A checker that cannot be imported is one failed row naming it; errors
    raised by the checker propagate to `_run_file`, which makes them a failed
    row too.
    """
    module_name, function_name = RELEASE_CHECKERS[kind]
    try:
        checker = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # ImportError, AttributeError, or an error while importing it
        return [failed_row(path.name, "checker", kind, TOL_DEFAULT,
                           f"{module_name}.{function_name} is not available: {type(exc).__name__}: {exc}")]
    rows = list(checker(path, sed_model_beside(path)) if kind == "sed" else checker(path))
    if not rows:
        return [failed_row(path.name, "checker", kind, TOL_DEFAULT, f"{module_name}.{function_name} compared nothing")]
    return rows


# --------------------------------------------------------------------------- the whole suite


def run_parity(
    reference_dirs: Iterable[str | os.PathLike[str]] | None = None,
    lrn: str = "auto",
    model: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ParityReport:
    """Run every reference file in `reference_dirs` and their subfolders.

    Default (`reference_dirs` None): the `default_reference_folders()`; one
    that is missing is listed in `report.missing` (the report is then not
    `complete`). `reference` alone runs just that file (any kind) with the
    network its provenance names; `model` with `reference` compares that
    network file (a MatConvNet `.mat` or a converted `.pt`) with that
    `ref_*.mat`: the check for a user's own conversion. In that single-file
    mode a user error (missing or unreadable file) is raised as `CqdError`;
    in folder mode every file that cannot be checked is a failed row, so one
    bad file never hides the others. `lrn` is "auto" (each file's
    `provenance.lrn`), "exact" or "matconvnet-cpu". `progress` is called
    with a label before each file or network is run.
    """
    if lrn not in LRN_CHOICES:
        raise CqdError(f"unknown --lrn '{lrn}' (use one of {', '.join(LRN_CHOICES)})")
    report = ParityReport()

    if model is not None and reference is None:
        raise CqdError("--model needs --reference REF.mat (the MatConvNet reference to compare the model with)")
    if reference is not None:
        ref_path = Path(reference)
        if not ref_path.is_file():
            raise CqdError(f"reference file not found: {ref_path} (check --reference)")
        kind = reference_kind(ref_path)
        if model is not None and kind != "ref":
            raise CqdError(f"--reference {ref_path.name} must be a ref_*.mat whole-network reference to go with --model")
        _run_file(report, ref_path, kind or "ref", lrn, Path(model) if model is not None else None, progress, strict=True)
        return report

    if reference_dirs is not None:
        dirs = [Path(d) for d in reference_dirs]
    else:
        dirs = []
        for folder in default_reference_folders():
            path = folder.path
            if path is None:
                report.missing.append(MissingFolder(folder.label, folder.holds, folder.candidates))
            elif path.resolve() not in {d.resolve() for d in dirs}:
                dirs.append(path)
    if not dirs:
        raise CqdError("no reference directory found (no parity/reference/ or ../shared/parity); pass --reference-dir DIR")
    files = find_reference_files(dirs)
    if not files.all():
        raise CqdError(
            f"no reference files ({', '.join(f'{k}_*.mat' for k in files.by_kind)}) in "
            f"{', '.join(str(d) for d in dirs)}; pass --reference-dir DIR"
        )
    for kind, paths in files.by_kind.items():
        for path in paths:
            _run_file(report, path, kind, lrn, None, progress, strict=False)
    return report


def _run_file(
    report: ParityReport, path: Path, kind: str, lrn: str, model: Path | None, progress: Progress | None, strict: bool
) -> None:
    """Run one file into `report`. Anything it raises becomes a failed row naming the file and the
    error, except a user error (`CqdError`) in `strict` (single-file) mode, which the CLI prints."""
    if progress is not None and kind != "ref":
        progress(path.name)
    try:
        if kind == "ops":
            rows, mode = run_ops_file(path, lrn)
            report.rows.extend(rows)
            if mode is not None:
                report.lrn_modes[path.name] = mode
        elif kind == "ref":
            rows, modes = run_network_reference(path, lrn, model, progress)
            report.rows.extend(rows)
            report.lrn_modes.update(modes)
        elif kind == "train":
            rows, not_run = run_train_file(path)
            report.rows.extend(rows)
            if not_run is not None:
                report.not_run.append(not_run)
        else:
            report.rows.extend(run_release_file(path, kind))
    except CqdError as exc:
        if strict:
            raise
        report.rows.append(failed_row(path.name, "file", kind, TOL_DEFAULT, f"not checked: {exc}"))
    except Exception as exc:
        report.rows.append(failed_row(path.name, "file", kind, TOL_DEFAULT, f"the check crashed: {type(exc).__name__}: {exc}"))


__all__ = [
    "LRN_CHOICES",
    "RELEASE_CHECKERS",
    "DefaultFolder",
    "MissingFolder",
    "NotRun",
    "ParityReport",
    "compare_layers_locally",
    "compare_network",
    "default_reference_dirs",
    "default_reference_folders",
    "network_layouts",
    "run_network_reference",
    "run_op_case",
    "run_ops_file",
    "run_parity",
    "run_release_file",
    "run_train_file",
    "sed_model_beside",
]
