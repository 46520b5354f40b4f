"""`cqd-port train CONFIG.yaml`: one run of any method on your own data, degradation and networks.

The YAML file (template: `cqd-port train --example`, `EXAMPLE_CONFIG`) is read
into `RunConfig`, a dataclass schema; every schema error is one line naming
the key and the fix. The run is the grid's machinery with one task and one
method: a `Task` whose domains are prepared variants of the user's dataset
(A: `data.high_quality`, B: `data.degradation`, a built-in name or a
`package.module:function` plugin), f (`teacher`, trained on A) and g
(`student`, trained on B) as `NetworkSpec`s, the paper's hyper-parameters as
defaults, planned by the grid's `task_run` (CQD, A-CQD, staged and no
adaptation first train f on A), resolved into `RunJob`s and executed by
`cqd_port.experiments.run.execute_run`: the same road, identity guard,
trainer, checkpoints, resume, teacher cache, `run.json`, `final.pt` and
`net-train.pdf` as `cqd-port reproduce`. Before anything is trained or
written, the networks' files, the data and a plugin degradation (on a real
image of the dataset) are checked and every data variant is prepared.

The out folder (the run folder of `cqd-port train`) holds `config.yaml`
(the resolved configuration, a record), `description.txt` (what runs, with
the split, the networks' preprocessing and the optimizer), and one folder per
run, `<data.name>/<method>`. Rerunning the same command continues an
interrupted run; each run folder's `RunJob` identity (its data and split
digests included) is the guard: a finished run is reused only when nothing
that changes its numbers changed (images added to `data.root` change it), a
run made with other settings is refused (`--rerun` retrains it), a run whose
last attempt failed or diverged restarts with the corrected settings.
Several methods may share an out folder (and f's run), each in its own
folder; `config.yaml` then names the last one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cqd_port.errors import CqdError

if typing.TYPE_CHECKING:
    from cqd_port.experiments.networks import NetworkSpec
    from cqd_port.experiments.plan import Schedule
    from cqd_port.experiments.settings import GridConfig

CONFIG_NAME = "config.yaml"
DESCRIPTION_NAME = "description.txt"
LOCK_NAME = ".lock"  # held while a `cqd-port train` command works in the out folder
MAX_SIDE = 8192  # data.size, input_size: larger images would not fit in memory
MAX_COUNT = 1_000_000  # train.epochs, train.batch_size: a bound far above any real run, below an endless one
MAX_WORKERS = 1024

METHOD_ALIASES = {
    "a": "upper_bound",
    "b": "fine_tuning",
    "a+b": "data_augmentation",
    "a,b": "staged",
    "cqd": "cqd",
    "a-cqd": "a_cqd",
    "upper_bound": "upper_bound",
    "no_adaptation": "no_adaptation",
    "fine_tuning": "fine_tuning",
    "data_augmentation": "data_augmentation",
    "staged": "staged",
    "a_cqd": "a_cqd",
    # the distillers after CQD (`cqd_port.experiments.methods.DISTILLERS`), settings in the `distill:` section
    "fitnets": "fitnets",
    "at": "at",
    "sp": "sp",
    "rkd": "rkd",
    "dkd": "dkd",
}

@dataclass
class DataSection:
    """Where the images are and how domain B is made from them."""

    root: str = ""  # required: the dataset folder
    format: str = "folder"  # folder (root/<class>/<image>), cub or cars
    name: str = ""  # prepared/<name>/<variant> and the run folders; default: the root's folder name
    test_fraction: float = 0.3  # folder without train.txt/test.txt: share of each class held out (seeded)
    split_seed: int = 0
    size: int = 224  # side of the prepared (degraded) images, as the released code's 224
    prepared: str = "data/prepared"
    high_quality: str = "original"  # domain A: original, localized (needs boxes), ...
    degradation: str = ""  # required: domain B, a built-in degradation or package.module:function
    parameters: dict = field(default_factory=dict)  # keyword arguments of a plugin degradation
    source: typing.Optional[str] = None  # box or full: the image B starts from (default: the degradation's own)
    seed: int = 0  # seed of random degradations (mixed with each image's path)
    workers: int = 0  # processes preparing images


@dataclass
class NetworkSection:
    """f or g: `arch` vgg-m, vgg-vd-16 (weights: a converted .pt or .mat) or a torchvision classifier."""

    arch: str = "vgg-m"
    weights: typing.Optional[str] = None  # a file, or "random" (torchvision only); required for vgg-m / vgg-vd-16
    input_size: typing.Optional[int] = None  # torchvision: the side it sees (default: its ImageNet crop, 224)


@dataclass
class TrainSection:
    """Hyper-parameters; the defaults are the paper's (CUB setting)."""

    epochs: int = 30
    batch_size: typing.Optional[int] = None  # default 128 (32 when the trained network is vgg-vd-16)
    schedule: typing.Union[str, list] = "cub"  # cub, cars (the released schedules) or a list of learning rates per epoch
    lr_scale: float = 1.0
    lambda_: float = 200.0  # YAML key `lambda`: weight of the distillation term (paper: 200 CUB, 50 CARS)
    temperature: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "matconvnet"  # matconvnet (the released cnn_train_dag update) or torch (torch.optim.SGD)
    augmentation_classes: str = "2k"  # A+B classifier: 2k (released code) or k
    seed: int = 0
    device: str = "auto"
    tf32: bool = False
    # seconds between a run's checkpoints (0: every epoch); changes no number. settings.CHECKPOINT_INTERVAL (a test
    # holds them equal): this schema module imports nothing heavy at load time
    checkpoint_every: float = 60.0


@dataclass
class RunConfig:
    """One `cqd-port train` run."""

    method: str = "cqd"  # A, B, A+B, A,B, CQD, A-CQD (or upper_bound, no_adaptation, fine_tuning, ...; fitnets, at, sp, rkd, dkd)
    out: str = "runs/custom"
    data: DataSection = field(default_factory=DataSection)
    teacher: NetworkSection = field(default_factory=NetworkSection)  # f, trained on A
    student: typing.Optional[NetworkSection] = None  # g, trained on B (default: the same as the teacher)
    train: TrainSection = field(default_factory=TrainSection)
    distill: dict = field(default_factory=dict)  # a distiller's settings (`DistillSpec.from_dict` keys but method)

    def distill_spec(self) -> Any:
        """The `DistillSpec` of a distiller method (its defaults, then the `distill:` keys); None for the others."""
        from cqd_port.experiments.methods import DISTILLERS, default_distill_spec

        if self.method_name not in DISTILLERS:
            return None
        settings = {k: v for k, v in self.distill.items() if k != "method"}
        return default_distill_spec(self.method_name, network_spec(self.teacher).key, network_spec(self.student_net).key, **settings)

    @property
    def method_name(self) -> str:
        return METHOD_ALIASES[self.method.lower()]

    @property
    def distill_spec_allowed(self) -> bool:
        from cqd_port.experiments.methods import DISTILLERS

        return self.method_name in DISTILLERS

    @property
    def dataset_name(self) -> str:
        return self.data.name or Path(self.data.root).resolve().name

    @property
    def student_net(self) -> NetworkSection:
        return self.student if self.student is not None else self.teacher

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration (dataset name and student filled in), as YAML data."""
        resolved = dataclasses.replace(
            self, data=dataclasses.replace(self.data, name=self.dataset_name), student=self.student_net
        )
        return _to_yaml_dict(resolved)


EXAMPLE_CONFIG = """\
# cqd-port train CONFIG.yaml [--set key=value ...]
# One run of one method of Su & Maji (BMVC 2017) on your own data. Every key but
# data.root and data.degradation has a default (the paper's); relative paths are
# relative to the folder you run the command from.

method: CQD              # A (upper bound), B (fine-tuning), A+B, "A,B" (staged), CQD, A-CQD, no_adaptation
out: runs/custom         # the run folder: config.yaml, description.txt, <data.name>/<method>/...

data:
  root: path/to/images   # REQUIRED: root/<class>/<image> (train.txt/test.txt/boxes.txt optional), or a CUB/Cars root
  format: folder         # folder, cub or cars
  name: ""               # prepared/<name>/... and run folders; "" = the root's folder name
  test_fraction: 0.3     # no train.txt/test.txt: this share of each class is the test set (seeded)
  split_seed: 0
  size: 224              # side of the prepared images (the released code's 224)
  prepared: data/prepared
  high_quality: original # domain A: original, or localized (crop to boxes.txt's boxes)
  degradation: cqd_port.plugins.blur:gaussian_blur   # REQUIRED: domain B; built-in (lowres, edges_sobel,
                         # distorted, gray, ...) or your own package.module:function
  parameters:            # keyword arguments of a plugin: here the blur's
    sigma: 2.0
  source: null           # box or full: the image B starts from (null: the degradation's default)
  seed: 0                # per-image seeds of random degradations derive from it
  workers: 0             # processes preparing images (0: in this process)

teacher:                 # f, trained on A
  arch: resnet18         # vgg-m, vgg-vd-16 (weights: a converted .pt/.mat) or any torchvision classifier
  weights: random        # a file (torchvision's .pth; this project cannot download it) or random (torchvision only)
  input_size: null       # torchvision: side the network sees (null: its ImageNet crop, 224)

student:                 # g, trained on B; omit to use the teacher's network
  arch: resnet18
  weights: random
  input_size: null

train:                   # the paper's hyper-parameters
  epochs: 30
  batch_size: null       # null: 128 (32 when training vgg-vd-16)
  schedule: cub          # cub, cars (the released learning-rate schedules) or a list, e.g. [0.01, 0.01, 0.001]
  lr_scale: 1.0          # multiplies the schedule
  lambda: 200            # distillation weight (paper: 200 CUB, 50 CARS)
  temperature: 10
  momentum: 0.9
  weight_decay: 0.0005
  optimizer: matconvnet  # matconvnet (the released SGD) or torch (torch.optim.SGD)
  augmentation_classes: 2k   # A+B classifier: 2k (released code) or k
  seed: 0
  device: auto           # auto, cpu, cuda, cuda:N
  tf32: false
  checkpoint_every: 60   # seconds between a run's checkpoints, one after its last epoch (0: every epoch)

# method: fitnets, at, sp, rkd or dkd (the distillers after CQD; README 'Distillers after CQD') take a
# distill: section; every key is optional (defaults per method and network family):
# distill:
#   weight: 0.1          # the term's weight (fitnets 0.1, at 100, sp 3000, rkd 1, dkd 1)
#   teacher_layer: layer4   # f's layer by its own name (vgg-m conv5, torchvision layer4, logits)
#   student_layer: layer4   # g's layer
#   temperature: 4       # dkd; alpha: 1, beta: 8 (dkd); distance_weight: 25, angle_weight: 50 (rkd); attention: paper (at)
"""


# --------------------------------------------------------------------------- parsing and checking


def _yaml_key(name: str) -> str:
    return "lambda" if name == "lambda_" else name


def _field_name(key: str) -> str:
    return "lambda_" if key == "lambda" else key


def _to_yaml_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {_yaml_key(f.name): _to_yaml_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_yaml_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_yaml_dict(v) for k, v in obj.items()}
    return obj


def _type_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping", list: "a list"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _convert(value: Any, kind: Any, key: str, example: Any) -> Any:
    """`value` as `kind` (int, float, str, bool, dict, list, Optional/Union of those, a section dataclass)."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None and type(None) in typing.get_args(kind):
            return None
        for option in options:
            try:
                return _convert(value, option, key, example)
            except CqdError:
                continue
        wanted = " or ".join(_type_name(o) for o in options)
        raise CqdError(f"{key}: expected {wanted}, got {value!r}; e.g. {key.rsplit('.', 1)[-1]}: {example}")
    if dataclasses.is_dataclass(kind):
        return _section(kind, value, key)
    bad = CqdError(f"{key}: expected {_type_name(kind)}, got {value!r}; e.g. {key.rsplit('.', 1)[-1]}: {example}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad
        return value
    if kind is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if kind is list:
        if not isinstance(value, list):
            raise bad
        return list(value)
    raise bad  # pragma: no cover - every schema type is handled above


def _section(cls: type, data: Any, prefix: str) -> Any:
    """A schema dataclass from a YAML mapping: unknown keys and wrong types are one-line errors."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CqdError(f"{where}: expected a mapping of keys (key: value), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {_yaml_key(f.name): f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    defaults = cls()
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{(prefix + '.' if prefix else '') + close[0]}'?" if close else f"known keys: {', '.join(fields)}"
            raise CqdError(f"unknown key '{full}'; {hint}")
        name = _field_name(str(key))
        example = _to_yaml_dict(getattr(defaults, name))
        if dataclasses.is_dataclass(example) or isinstance(example, dict) and not example:
            example = "{...}"
        values[name] = _convert(value, hints[name], full, example)
    return cls(**values)


def _apply_override(data: dict, assignment: str) -> None:
    """`--set a.b=value` on the raw YAML mapping (the value parsed as YAML: numbers, lists, null, ...)."""
    from cqd_port.yamlio import load_yaml_text

    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CqdError(f"--set {assignment}: write it as key=value, e.g. --set train.epochs=5")
    value = load_yaml_text(text, f"--set {key}") if text.strip() else ""  # strict: no aliases, duplicate keys or deep nesting
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            section = ".".join(parts[: depth + 1])
            raise CqdError(f"--set {assignment}: '{section}' is not a section")
        node = child
    node[parts[-1]] = value


def _check(config: RunConfig) -> RunConfig:
    """Value checks the types cannot express; each a one-line error naming the key and the fix."""
    from cqd_port.data.degrade import DEGRADATIONS, is_plugin, load_plugin
    from cqd_port.experiments.methods import AUGMENTATION_CLASSES
    from cqd_port.fileio import check_relative_key
    from cqd_port.seeds import check_seed
    from cqd_port.train.schedules import SCHEDULES
    from cqd_port.train.sgd import OPTIMIZERS
    from cqd_port.train.trainer import check_checkpoint_interval

    if config.method.lower() not in METHOD_ALIASES:
        raise CqdError(
            f"method: unknown method '{config.method}'; use one of A, B, A+B, \"A,B\", CQD, A-CQD, no_adaptation, fitnets, at, sp, rkd, dkd"
        )
    _check_distill(config)
    data = config.data
    if not data.root:
        raise CqdError("data.root missing: set it to your dataset folder (root/<class>/<image>), e.g. data: {root: path/to/images}")
    if not Path(data.root).is_dir():
        raise CqdError(f"data.root: folder {data.root} does not exist; point it at the dataset folder")
    if data.format not in ("folder", "cub", "cars"):
        raise CqdError(f"data.format: unknown format '{data.format}'; use folder (root/<class>/<image>), cub or cars")
    if not 0.0 < data.test_fraction < 1.0:
        raise CqdError(f"data.test_fraction: {data.test_fraction} must lie strictly between 0 and 1, e.g. 0.3")
    if data.size < 8:
        raise CqdError(f"data.size: {data.size} pixels is too small; e.g. data.size: 224")
    if data.size > MAX_SIDE:
        raise CqdError(f"data.size: {data.size} pixels is more than {MAX_SIDE}; e.g. data.size: 224")
    if not data.degradation:
        raise CqdError("data.degradation missing: name a built-in degradation (lowres, distorted, ...) or your package.module:function")
    for key, name in (("data.high_quality", data.high_quality), ("data.degradation", data.degradation)):
        if is_plugin(name):
            try:
                load_plugin(name)
            except CqdError as exc:
                raise CqdError(f"{key}: {exc}") from None
        elif name not in DEGRADATIONS:
            raise CqdError(f"{key}: unknown degradation '{name}'; use one of {', '.join(DEGRADATIONS)} or a package.module:function plugin")
    if data.parameters and not is_plugin(data.degradation):
        raise CqdError("data.parameters: only a plugin degradation (package.module:function) takes parameters; remove them")
    if data.source not in (None, "box", "full"):
        raise CqdError(f"data.source: '{data.source}'; use box, full or null")
    if data.name:
        check_relative_key(data.name, "data.name")  # prepared/<name>/... and <out>/<name>/<method>: never outside them
    if not 0 <= data.workers <= MAX_WORKERS:
        raise CqdError(f"data.workers: {data.workers} must be 0 (prepare in this process) to {MAX_WORKERS}")
    for key, seed in (("data.seed", data.seed), ("data.split_seed", data.split_seed), ("train.seed", config.train.seed)):
        check_seed(seed, key)  # before any data is prepared: torch and numpy refuse seeds outside 0..2**32-1
    for role, net in (("teacher", config.teacher), ("student", config.student_net)):
        _check_network(role, net)
    train = config.train
    for key, value in (("train.epochs", train.epochs), ("train.batch_size", 1 if train.batch_size is None else train.batch_size)):
        if value < 1:
            raise CqdError(f"{key}: {value} must be at least 1")
        if value > MAX_COUNT:
            raise CqdError(f"{key}: {value} is more than {MAX_COUNT}; e.g. {key.split('.')[-1]}: 30")
    if isinstance(train.schedule, str) and train.schedule.lower() not in SCHEDULES:
        raise CqdError(f"train.schedule: unknown schedule '{train.schedule}'; use cub, cars or a list of learning rates like [0.01, 0.001]")
    if isinstance(train.schedule, list) and (
        not train.schedule or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf for v in train.schedule)
    ):
        raise CqdError(f"train.schedule: {train.schedule} must be a non-empty list of non-negative learning rates, e.g. [0.01, 0.001]")
    if train.optimizer not in OPTIMIZERS:
        raise CqdError(f"train.optimizer: unknown optimizer '{train.optimizer}'; use matconvnet (the released SGD) or torch")
    if train.augmentation_classes not in AUGMENTATION_CLASSES:
        raise CqdError(f"train.augmentation_classes: '{train.augmentation_classes}'; use 2k (released code) or k")
    for key, value in (("train.momentum", train.momentum), ("train.weight_decay", train.weight_decay), ("train.lr_scale", train.lr_scale)):
        if not math.isfinite(value) or value < 0:
            raise CqdError(f"{key}: {value} must be a finite number >= 0 (paper: momentum 0.9, weight_decay 0.0005, lr_scale 1)")
    check_checkpoint_interval(train.checkpoint_every, "train.checkpoint_every")
    if not (math.isfinite(train.temperature) and math.isfinite(train.lambda_)) or train.temperature <= 0 or train.lambda_ < 0:
        raise CqdError("train.temperature must be positive and train.lambda non-negative (paper: 10 and 200)")
    method = config.method_name
    if method in ("staged", "a_cqd") and network_spec(config.teacher).key != network_spec(config.student_net).key:
        raise CqdError(f"method {config.method}: g starts from f's trained model, so student must equal teacher (or be omitted)")
    return config


def _check_distill(config: RunConfig) -> None:
    """The `distill:` section: only for a distiller method, its keys those of the method (one line each)."""
    if config.distill_spec_allowed:
        named = config.distill.get("method")
        if named is not None and str(named).lower() != config.method_name:
            raise CqdError(f"distill.method: '{named}' differs from method '{config.method}'; leave distill.method out (method: names it)")
        try:
            config.distill_spec()
        except CqdError as exc:
            raise CqdError(f"distill: {exc}") from None
    elif config.distill:
        raise CqdError(f"distill: method {config.method} takes no distill section (only fitnets, at, sp, rkd, dkd); remove it")


def _check_network(role: str, net: NetworkSection) -> None:
    from cqd_port.experiments.networks import MATCONVNET_ARCHS
    from cqd_port.models.torchvision_nets import is_torchvision_arch, weights_url

    if net.arch not in MATCONVNET_ARCHS and not is_torchvision_arch(net.arch):
        close = difflib.get_close_matches(net.arch, list(MATCONVNET_ARCHS) + ["resnet18", "resnet50", "efficientnet_b0", "vit_b_16"], n=1)
        hint = f"did you mean {close[0]}?" if close else "use vgg-m, vgg-vd-16 or a torchvision classifier such as resnet18"
        raise CqdError(f"{role}.arch: unknown network '{net.arch}'; {hint}")
    if net.weights is None or net.weights == "":
        if net.arch in MATCONVNET_ARCHS:
            raise CqdError(f"{role}.weights missing: {net.arch} needs its ImageNet model converted by `cqd-port convert-weights` (a .pt or .mat file)")
        raise CqdError(f"{role}.weights missing: give torchvision's .pth file for {net.arch}, or write weights: random")
    if net.weights == "random":
        if net.arch in MATCONVNET_ARCHS:
            raise CqdError(f"{role}.weights: random initialisation is offered for torchvision networks; {net.arch} needs its converted ImageNet model")
    elif not Path(net.weights).is_file():
        url = weights_url(net.arch) if net.arch not in MATCONVNET_ARCHS else None
        fix = f"download {url} on a machine with internet and copy it there" if url else "convert it with `cqd-port convert-weights`"
        raise CqdError(f"{role}.weights: file {net.weights} missing; this project cannot download: {fix}, or use weights: random")
    if net.input_size is not None:
        if net.arch in MATCONVNET_ARCHS:
            raise CqdError(f"{role}.input_size: {net.arch} takes its input size from the model file's meta.normalization; remove the key")
        if not 8 <= net.input_size <= MAX_SIDE:
            raise CqdError(f"{role}.input_size: {net.input_size} must lie between 8 and {MAX_SIDE}; e.g. 224")


def network_spec(net: NetworkSection) -> NetworkSpec:
    """The `NetworkSpec` of a schema section."""
    from cqd_port.experiments.networks import NetworkSpec

    return NetworkSpec(net.arch, None if net.weights == "random" else net.weights, net.input_size)


def parse_config(data: Any, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A checked `RunConfig` from the YAML mapping and `--set key=value` overrides."""
    import copy

    raw = copy.deepcopy(data) if data is not None else {}
    if not isinstance(raw, dict):
        raise CqdError(f"the config must be a YAML mapping (key: value lines), got {type(raw).__name__}; see `cqd-port train --example`")
    for assignment in overrides:
        _apply_override(raw, assignment)
    return _check(_section(RunConfig, raw, ""))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read and check a YAML config file (see `parse_config`)."""
    import yaml

    from cqd_port.yamlio import load_yaml_text

    path = Path(path)
    if not path.is_file():
        raise CqdError(f"config file {path} does not exist; write one from `cqd-port train --example > {path.name}`")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"), path)  # strict: duplicate keys, anchors/aliases refused
    except (OSError, UnicodeDecodeError) as exc:
        raise CqdError(f"cannot read {path} ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CqdError(f"{path}{where}: {problem}; fix the YAML syntax (indent with spaces, key: value)") from None
    return parse_config(data, overrides)


# --------------------------------------------------------------------------- the run


def _task(config: RunConfig):
    from cqd_port.experiments.tasks import DataVariant, Hyper, Task

    train = config.train
    schedule = train.schedule.lower() if isinstance(train.schedule, str) else tuple(float(v) for v in train.schedule)
    hyper = Hyper(schedule=schedule, lambda_=train.lambda_, temperature=train.temperature, epochs=train.epochs)  # type: ignore[arg-type]
    name = config.dataset_name
    return Task(
        name,
        0,
        DataVariant(name, config.data.high_quality),
        DataVariant(name, config.data.degradation, config.data.source),
        network_spec(config.teacher).key,
        network_spec(config.student_net).key,
        hyper,
    )


def plan_runs(config: RunConfig) -> dict:
    """The runs of the chosen method, dependencies first (f on A before what starts from or distils from it)."""
    from cqd_port.experiments.plan import task_run

    task = _task(config)
    class_factor = 2 if config.train.augmentation_classes == "2k" else 1
    a_run = task_run(task, "upper_bound", "", class_factor)
    method = config.method_name
    if method == "upper_bound":
        return {a_run.key: a_run}
    run = task_run(task, method, a_run.key, class_factor)
    if run.distiller is not None:  # the YAML's distill: settings over the method's defaults
        run = dataclasses.replace(run, distiller=config.distill_spec())
    return {**({a_run.key: a_run} if run.depends else {}), run.key: run}


def grid_config(config: RunConfig, progress: bool = True) -> GridConfig:
    """The settings that run it (the same `GridConfig` as `reproduce`'s)."""
    from cqd_port.data.catalog import DatasetSource
    from cqd_port.experiments.settings import GridConfig

    data, train = config.data, config.train
    networks = {network_spec(n).key: network_spec(n) for n in (config.teacher, config.student_net)}
    return GridConfig(
        out=Path(config.out),
        prepared=Path(data.prepared),
        device=train.device,
        tf32=train.tf32,
        workers=data.workers,
        seed=train.seed,
        lr_scale=train.lr_scale,
        progress=progress,
        prepare_config={"out_size": data.size, "seed": data.seed},
        batch_size=train.batch_size,
        networks=networks,
        datasets={config.dataset_name: DatasetSource(Path(data.root), data.format, data.test_fraction, data.split_seed)},
        plugin_params={data.degradation: dict(data.parameters)} if data.parameters else {},
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        optimizer=train.optimizer,
        checkpoint_interval=train.checkpoint_every,
    )


def describe(config: RunConfig, split: str) -> str:
    """What the run does, in words (`description.txt`)."""
    from cqd_port.experiments.methods import METHODS

    runs = plan_runs(config)
    gc = grid_config(config, progress=False)
    data, train = config.data, config.train
    spec = METHODS[config.method_name]
    lines = [
        f"method {config.method} ({config.method_name}): trains on {spec.train or '- (evaluation only)'}, tests on {spec.test}",
        f"data: {data.root} ({data.format}, {split or 'the dataset split'}), prepared at {data.size}x{data.size} in {data.prepared}",
        f"A: {data.high_quality}; B: {data.degradation}" + (f" with {data.parameters}" if data.parameters else ""),
        f"f (teacher, on A): {network_spec(config.teacher).describe()}",
        f"g (student, on B): {network_spec(config.student_net).describe()}",
        f"optimizer: {'MatConvNet SGD (the released cnn_train_dag update)' if train.optimizer == 'matconvnet' else 'torch.optim.SGD'}, "
        f"momentum {train.momentum:g}, weight decay {train.weight_decay:g}; a new classifier on pretrained weights gets lr x10/x20 "
        "(the released fc8), none on random weights",
        f"learning rates: {train.schedule}{'' if train.lr_scale == 1 else f' x {train.lr_scale:g}'} squeezed over {train.epochs} epochs; "
        f"T {train.temperature:g}, lambda {train.lambda_:g}; seed {train.seed}"
        if config.distill_spec() is None
        else f"distillation: {config.distill_spec().to_dict()}; seed {train.seed}",
        "runs:",
    ]
    for key, run in runs.items():
        batch = gc.batch_size or run.batch_size
        lines.append(f"  {key}: {dataclasses.replace(run, batch_size=batch).describe()}")
    return "\n".join(lines) + "\n"


def _check_last_batch(config: RunConfig, runs: dict, n_train: int, gc: Any) -> None:
    """A network with batch normalisation cannot train on a last batch of one image (the trainer keeps partial batches)."""
    from cqd_port.experiments.networks import MATCONVNET_ARCHS

    for run in runs.values():
        if not run.trains or run.arch.split("@")[0].split(" ")[0] in MATCONVNET_ARCHS:
            continue
        batch = gc.batch_size or run.batch_size
        n = n_train * len(run.train)
        if n % batch == 1:
            fix = next(b for b in range(batch + 1, batch + n + 2) if all((n_train * k) % b != 1 for k in (1, 2)))
            raise CqdError(
                f"train.batch_size {batch}: {n} training images leave a last batch of 1, which batch normalisation cannot "
                f"train on; set train.batch_size to e.g. {fix}"
            )


@dataclass
class CustomOutcome:
    """What `run_custom` leaves: the out folder, every run's run.json, the chosen method's."""

    out: Path
    records: dict[str, dict]
    record: dict
    description: str


def run_custom(config: RunConfig, progress: bool = True, rerun: bool = False) -> CustomOutcome:
    """Run `config` (resumably) and return its records; see the module docstring.

    The out folder is locked for the whole command (`RunLock`: host, pid and
    time in `<out>/.lock`), so two `cqd-port train` commands on one folder
    never train the same run at once: the second waits, then finds the runs
    finished; a lock left by a killed process is taken over. `rerun` discards
    runs made with other settings instead of refusing them.
    """
    from cqd_port.experiments.runfolder import RunLock

    with RunLock(Path(config.out) / LOCK_NAME, say=lambda message: print(message, flush=True), option="out"):
        return _run_custom_locked(config, progress, rerun)


def custom_schedule(config: RunConfig, gc: GridConfig) -> Schedule:
    """The jobs of `config`: its runs (f first) in `<out>/<data.name>/<method>`, under train.seed, after the data stage."""
    from cqd_port.experiments.plan import GridPlan, schedule_runs

    return schedule_runs(GridPlan(0, [], plan_runs(config)), gc.catalog(), gc.seed)


def _run_custom_locked(config: RunConfig, progress: bool, rerun: bool) -> CustomOutcome:
    import yaml

    from cqd_port.data.catalog import DomainData
    from cqd_port.experiments.job import RunJob
    from cqd_port.experiments.methods import IMAGENET
    from cqd_port.experiments.plan import JobResolver, check_inputs, workspace
    from cqd_port.experiments.run import execute_run
    from cqd_port.fileio import atomic_write_text

    out = Path(config.out)
    gc = grid_config(config, progress)
    schedule = custom_schedule(config, gc)
    runs = {n.key: n.run for n in schedule.runs()}
    check_inputs(schedule, gc)  # models, data, the plugin on a real image: before anything is trained or written
    catalog = gc.catalog()
    index = catalog.read_source(config.dataset_name)
    _check_last_batch(config, runs, len(index.train_records()), gc)
    for node in schedule.prepares():  # the data stage: a variant that cannot be made fails before any run starts
        catalog.ensure(node.variant, progress)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_NAME, "# resolved configuration of this run (cqd-port train)\n" + yaml.safe_dump(config.to_dict(), sort_keys=False))
    description = describe(config, index.split)
    atomic_write_text(out / DESCRIPTION_NAME, description)
    if progress:
        print(description, end="", flush=True)
    resolver = JobResolver(schedule, gc, catalog)
    space = workspace(gc, list(dict.fromkeys(r.arch for r in runs.values() if r.trains and r.init == IMAGENET)))
    data = DomainData(lambda v: catalog.ensure(v, False), domain_a=gc.domain_a)
    records: dict[str, dict] = {}
    for node in schedule.runs():
        job: RunJob = resolver.job(node)
        records[node.key] = execute_run(node, job, space, data, rerun=rerun, say=lambda m: print(m, flush=True))
    return CustomOutcome(out, records, records[list(runs)[-1]], description)


# --------------------------------------------------------------------------- evaluate a finished run


def run_config_of(run: str | Path) -> RunConfig:
    """The resolved configuration saved in a `cqd-port train` out folder."""
    path = Path(run) / CONFIG_NAME
    if not path.is_file():
        raise CqdError(f"{path} missing: RUN must be the out folder of a `cqd-port train` run")
    return load_config(path)


def evaluate_run(
    run: str | Path,
    data_root: str | Path | None = None,
    data_format: str = "folder",
    degradation: str | None = None,
    parameters: dict | None = None,
    split: str = "test",
    name: str | None = None,
    device: str = "auto",
    progress: bool = True,
    method: str | None = None,
) -> tuple[dict, Path]:
    """Score the finished run's model on any dataset and degradation (default: its own test domain).

    `method`: which of the folder's methods (default: the last one `cqd-port train` ran there).
    The data is prepared into the run's prepared store like the training data
    (`data.size`, the plugin contract). `split`: test or all. Writes
    `<run>/evaluations/<dataset>-<variant>-<split>.json` and returns a summary.
    On the run's own data, the image list and split must be the ones the model
    was trained with (the `split` digest of its identity): images added to or
    removed from `data.root` since would put training images in the test set,
    so that is an error naming the data.
    """
    from cqd_port.data.catalog import DatasetSource, DataVariant, DomainData
    from cqd_port.experiments.networks import load_trained_model
    from cqd_port.experiments.plan import JobResolver
    from cqd_port.experiments.run import FINAL_MODEL, evaluate_only
    from cqd_port.experiments.runfolder import FINISHED, RunFolder
    from cqd_port.fileio import check_relative_key

    config = run_config_of(run)
    if method is not None:
        config = _check(dataclasses.replace(config, method=method))
    runs = plan_runs(config)
    key, spec = list(runs.items())[-1]
    model_key = spec.init if not spec.trains else key
    status = RunFolder(Path(run) / key).status()
    if status == "pending" and method is not None:
        have = finished_methods(Path(run) / config.dataset_name)
        raise CqdError(
            f"{run} holds no {method} run ({key}); it has {', '.join(have) if have else 'no finished run'}: "
            f"choose one with --method, or train {method} with `cqd-port train {Path(run) / CONFIG_NAME} --set method={method}`"
        )
    if status != FINISHED:
        raise CqdError(f"run {Path(run) / key} has not finished ({status}); rerun `cqd-port train {Path(run) / CONFIG_NAME}` first")
    if split not in ("test", "all"):
        raise CqdError(f"--split {split}: use test or all")
    gc = grid_config(config, progress)
    schedule = custom_schedule(config, gc)
    model_node = schedule.nodes[model_key]
    model_job = JobResolver(schedule, gc).job(model_node)
    saved = RunFolder(Path(run) / model_key).saved_identity() or {}
    if data_root is None and saved.get("split") != model_job.split:
        raise CqdError(
            f"the images or split of data.root {config.data.root} changed since {Path(run) / model_key} was trained "
            f"(image list digest {saved.get('split')} then, {model_job.split} now), so its test set may hold training images; "
            f"restore the dataset, or retrain with `cqd-port train {Path(run) / CONFIG_NAME} --rerun`"
        )
    dataset = config.dataset_name
    if data_root is not None:
        dataset = check_relative_key(name or Path(data_root).resolve().name, "--name")  # prepared/<name>: inside the store
        gc.datasets[dataset] = DatasetSource(Path(data_root), data_format, config.data.test_fraction, config.data.split_seed)
    degradation = degradation or spec.test.degradation  # default: the domain the run was tested on
    if parameters:
        gc.plugin_params[degradation] = dict(parameters)
    variant = DataVariant(dataset, degradation, spec.test.source if degradation == spec.test.degradation else None)
    model = load_trained_model(Path(run) / model_key / FINAL_MODEL, gc.lrn_mode)
    catalog = gc.catalog()
    catalog.check_plugins([variant])
    data = DomainData(lambda v: catalog.ensure(v, progress), domain_a=gc.domain_a)
    index = data.index(variant)
    if index.num_classes != _num_outputs(model, spec.class_factor):
        raise CqdError(
            f"{index.root} has {index.num_classes} classes, the model was trained on {_num_outputs(model, spec.class_factor)}; "
            "evaluate on data with the same classes (same class folders)"
        )
    trained_on = gc.datasets[config.dataset_name].read(config.dataset_name).class_names
    if index.class_names != trained_on:
        differ = next(f"{a!r} vs {b!r}" for a, b in zip(index.class_names, trained_on) if a != b)
        raise CqdError(
            f"{index.root} has other classes than the training data ({differ}); labels follow the sorted class folder names, "
            "so evaluate on data with the same class folders"
        )
    records = index.test_records() if split == "test" else list(index.records)
    evaluation = evaluate_only(
        model, data, variant, records, model_job, device, label_range=(0, index.num_classes) if spec.class_factor != 1 else None,
        batch_size=max(32, gc.batch_size or 32),
    )
    target = Path(run) / "evaluations" / f"{config.method_name}-on-{dataset}-{catalog.variant_dir(variant).name}-{split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    evaluation.save(target)
    summary = {
        "model": str(Path(run) / model_key / FINAL_MODEL),
        "data": str(index.root),
        "split": split,
        "images": evaluation.num_images,
        "accuracy": evaluation.accuracy,
        "mean_class_accuracy": evaluation.mean_class_accuracy,
    }
    return summary, target


def finished_methods(dataset_folder: Path) -> list[str]:
    """The methods with a finished run in `<out>/<data.name>`, as `--method` takes them (A, B, CQD, ...)."""
    from cqd_port.experiments.runfolder import FINISHED, RunFolder

    names = {full: short for short, full in reversed(list(METHOD_ALIASES.items()))}  # upper_bound -> a, ...
    found = sorted(p.name for p in Path(dataset_folder).glob("*") if p.is_dir() and RunFolder(p).status() == FINISHED)
    return [names.get(m, m).upper() if names.get(m, m) != m else m for m in found]


def _num_outputs(model: Any, class_factor: int) -> int:
    from cqd_port.experiments.networks import model_num_classes

    return model_num_classes(model) // class_factor
