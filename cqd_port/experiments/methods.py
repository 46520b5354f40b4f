"""The methods of Tables 1 and 2 and what one run of them does.

A *cell* of a table (task x method) is answered by a *run*: one network
trained (or only evaluated) on given domains, from a given start, in its own
run folder. Several cells may share a run (the A model of CUB serves the
upper bound of five columns, the no-adaptation test, the staged and A-CQD
starts and the CQD teacher), which `cqd_port.experiments.grid` works out.

Methods (paper Section 4, 'Methods', and the released code):

| method | trains on | tests on | starts from | objective |
|---|---|---|---|---|
| upper_bound | A | A | ImageNet, new fc8 | softmax-log |
| no_adaptation | (the A model) | B | - | evaluation only |
| fine_tuning | B | B | ImageNet, new fc8 | softmax-log |
| data_augmentation | A+B | B | ImageNet, new fc8 (2k-way by default) | softmax-log |
| staged | B | B | the whole A model (fc8 and its multipliers included) | softmax-log |
| cqd | B | B | ImageNet, new fc8 | softmax-log + lambda * distillation from the A model |
| a_cqd | B | B | the whole A model | same as cqd |

`a_cqd_start="imagenet"` (`--a-cqd-start imagenet`) runs A-CQD as the released
script did: from ImageNet, which makes it CQD itself (the grid shares the run).

Data augmentation as released concatenates the class lists of the two
domains, so `fc8` is 2k-way while the labels of both domains stay in 1..k
(outputs k+1..2k are never a target); the test takes the argmax over the
label range 1..k. `augmentation_classes="k"` trains a plain k-way fc8.

The distillers after CQD (`DISTILLERS`: fitnets, at, sp, rkd, dkd; see
`cqd_port.train.distill_spec`) are methods like `cqd` (B, from ImageNet, f's
A model as teacher on the paired A image) whose term is the method's, with
its layers named per network (`default_distill_spec`) and its weight chosen on
validation from `candidates` (or `weight` without selection).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cqd_port.experiments.tasks import DataVariant, Hyper
from cqd_port.train.distill_spec import DistillSpec

IMAGENET = "imagenet"


@dataclass(frozen=True)
class MethodSpec:
    """How a method trains: domains, start, objective (see the module table)."""

    name: str
    train: str  # "A", "B", "A+B" or "" (evaluation only)
    test: str  # "A" or "B"
    start: str  # "imagenet" or "a_model"
    distill: bool = False


METHODS: dict[str, MethodSpec] = {
    "upper_bound": MethodSpec("upper_bound", "A", "A", IMAGENET),
    "no_adaptation": MethodSpec("no_adaptation", "", "B", "a_model"),
    "fine_tuning": MethodSpec("fine_tuning", "B", "B", IMAGENET),
    "data_augmentation": MethodSpec("data_augmentation", "A+B", "B", IMAGENET),
    "staged": MethodSpec("staged", "B", "B", "a_model"),
    "cqd": MethodSpec("cqd", "B", "B", IMAGENET, distill=True),
    "a_cqd": MethodSpec("a_cqd", "B", "B", "a_model", distill=True),
}


@dataclass(frozen=True)
class DistillerDefaults:
    """A later distiller as a row of the table: its label, default weight, selection candidates and layers.

    Weights are in this project's units (terms summed over the batch, the SGD
    dividing by its size, `cqd_port.nn.distill`): `weight` is the paper's
    per-batch-mean weight where that carries over (SP 3000, RKD 1, DKD 1) and
    a decade grid around it is the default `candidates` (`--select`). FitNets'
    hint is a squared distance summed over a whole feature map of a network
    fed 0-255 inputs (per image about 1e4 at the demo's conv5): 1e-4 brings
    it to the size of softmax-log (0.01 already left the demo at chance).
    `layers` maps a network family to (teacher layer, student layer name in
    that family): `vgg-m`, `vgg-vd` (MatConvNet names), `torchvision`
    (ResNet module paths; other torchvision networks: name the layers in
    `cqd-port train`'s `distill:` section).
    """

    method: str
    label: str
    weight: float
    candidates: tuple[float, ...]
    layers: tuple[tuple[str, str], ...] = ()  # (family, layer); empty: the method reads the logits


DISTILLERS: dict[str, DistillerDefaults] = {
    d.method: d
    for d in (
        DistillerDefaults("fitnets", "FitNets hint", 1e-4, (1e-5, 1e-4, 1e-3),
                          (("vgg-m", "conv5"), ("vgg-vd", "conv5_3"), ("torchvision", "layer4"))),
        DistillerDefaults("at", "Attention transfer", 100.0, (10.0, 100.0, 1000.0),
                          (("vgg-m", "relu5"), ("vgg-vd", "relu5_3"), ("torchvision", "layer4"))),
        DistillerDefaults("sp", "Similarity-preserving KD", 3000.0, (300.0, 3000.0, 30000.0),
                          (("vgg-m", "relu7"), ("vgg-vd", "relu7"), ("torchvision", "layer4"))),
        DistillerDefaults("rkd", "Relational KD (distance + angle)", 1.0, (0.1, 1.0, 10.0),
                          (("vgg-m", "fc7"), ("vgg-vd", "fc7"), ("torchvision", "avgpool"))),
        DistillerDefaults("dkd", "Decoupled KD", 1.0, (0.1, 1.0, 10.0)),
    )
}
"""The distillers that `--methods` adds as rows (`kd` on logits is CQD's own row)."""

for _name in DISTILLERS:
    METHODS[_name] = MethodSpec(_name, "B", "B", IMAGENET, distill=True)


def network_family(arch: str) -> str:
    """`vgg-m`, `vgg-vd` or `torchvision` for a `NetworkSpec` key (`vgg-m`, `vgg-m (random init)`, `resnet18@112px`)."""
    if arch.startswith("vgg-m"):
        return "vgg-m"
    if arch.startswith("vgg-vd"):
        return "vgg-vd"
    return "torchvision"


def default_distill_spec(method: str, teacher_arch: str, student_arch: str, **settings: Any) -> DistillSpec:
    """The `DistillSpec` of a distiller between f (`teacher_arch`) and g (`student_arch`): the default
    weight and layers of `DISTILLERS`, overridden by `settings` (the YAML's `distill:` keys)."""
    defaults = DISTILLERS[method]
    values: dict[str, Any] = {"method": method, "weight": defaults.weight}
    if defaults.layers:
        layers = dict(defaults.layers)
        values.update(teacher_layer=layers[network_family(teacher_arch)], student_layer=layers[network_family(student_arch)])
    values.update(settings)
    return DistillSpec.from_dict(values)


def with_weight(spec: DistillSpec, weight: float) -> DistillSpec:
    return replace(spec, weight=float(weight))

AUGMENTATION_CLASSES = ("2k", "k")
A_MODEL = "a_model"
A_CQD_STARTS = (A_MODEL, IMAGENET)
"""Where A-CQD's student starts: the A model (the paper's text, the default) or ImageNet (the released
`run_CQD.m`, whose flags make A-CQD the same computation as CQD; the grid then shares CQD's run)."""


@dataclass(frozen=True)
class RunSpec:
    """One run: a network trained (or evaluated) in the run folder `<out>/<key>`.

    `init` is "imagenet" (the ImageNet model with a fresh fc8) or the key of the
    run whose `final.pt` it starts from; `teacher` the key of the run whose model
    gives the distillation targets; `depends` every run that must finish first.
    """

    key: str
    method: str
    task: str
    arch: str
    train: tuple[DataVariant, ...]
    test: DataVariant
    init: str
    hyper: Hyper
    batch_size: int
    class_factor: int = 1  # 2: the released A+B's 2k-way fc8
    teacher: str | None = None
    teacher_arch: str | None = None
    teacher_data: DataVariant | None = None  # the teacher's (A) domain, paired image by image with train[0]
    depends: tuple[str, ...] = ()
    validation: int | None = None  # a seed: train on that validation split's training part, test on its validation part
    select_from: tuple[str, ...] = ()  # candidate runs (validation runs); lambda and T are taken from the best of them
    distiller: DistillSpec | None = None  # a later distiller (FitNets, AT, ...): its term instead of CQD's; None: CQD's

    @property
    def trains(self) -> bool:
        return bool(self.train)

    @property
    def distill(self) -> bool:
        return self.teacher is not None

    def signature(self) -> tuple:
        """What makes two runs the same computation (the folder name aside)."""
        return (
            self.method if self.method == "no_adaptation" else ("train", self.distill),
            self.arch,
            self.train,
            self.test,
            self.init,
            self.hyper.schedule,
            self.hyper.epochs,
            self.batch_size,
            self.class_factor,
            self.teacher,
            self.teacher_arch,
            self.teacher_data,
            (self.hyper.lambda_, self.hyper.temperature) if self.distill else None,
            self.validation,
            self.select_from,
            *((self.distiller,) if self.distiller is not None else ()),  # absent for CQD: signatures as before
        )

    def describe(self) -> str:
        """One line for `--dry-run`."""
        if not self.trains:
            what = f"evaluate {self.init} on {self.test.label}"
        else:
            train = " + ".join(v.label for v in self.train)
            if self.init != IMAGENET:
                start = f"{self.init}/final.pt"
            else:  # a `cqd-port train` network may start from random weights (its name says so)
                start = self.arch if "random init" in self.arch else "ImageNet " + self.arch
            what = f"train {self.arch} on {train} from {start}, test on {self.test.label}"
            if self.class_factor != 1:
                what += f", fc8 {self.class_factor}k-way"
            if self.distill and self.select_from:
                chosen = "weight" if self.distiller is not None else "lambda and T"
                what += f", distill from {self.teacher} ({chosen}: the best of {len(self.select_from)} validation runs)"
            elif self.distiller is not None:
                what += f", {self.method} from {self.teacher} ({_settings_text(self.distiller)})"
            elif self.distill:
                what += f", distill from {self.teacher} (lambda {self.hyper.lambda_:g}, T {self.hyper.temperature:g})"
            if self.validation is not None:
                what = what.replace(", test on", ", on the validation split's training part, test on its validation part of")
            what += f", {self.hyper.epochs} epochs, batch {self.batch_size}"
        return what


def _settings_text(spec: DistillSpec) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in spec.to_dict().items() if k != "method")
