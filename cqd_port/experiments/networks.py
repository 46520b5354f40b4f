"""Networks as the released CQD code set them up for fine-tuning.

Reproduces the released `initializeNetwork.m` followed by
`dagnn.DagNN.fromSimpleNN`: the ImageNet model (vgg-m or vgg-vd-16) is cut
after `relu7` (its `fc8` and `prob` layers are dropped), a dropout layer of
rate 0.5 follows `relu6` and another `relu7`, and a new k-way `fc8`
(filters `0.01 * randn`, zero biases) is appended. Parameter multipliers are
the ones the DagNN really trained with: (learning rate, weight decay) = (1, 1)
for every pretrained parameter, biases included (`fromSimpleNN` does not carry
the SimpleNN `learningRate` fields), and `fc8` has `[10 20]` / `[1 0]`
(filters / biases).

Differences from a PyTorch-style fine-tuning setup: no softmax layer in the
network (the loss is applied outside, on the `fc8` scores, as `softmaxloss`
was); weight decay applies to biases of pretrained layers (wd 1) but not to
the `fc8` bias; the fresh `fc8` draws from `torch.Generator` seeded by the
caller, so its values differ from MATLAB's `randn` (only the statistics match).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cqd_port.errors import CqdError
from cqd_port.models.layers import LayerSpec

if TYPE_CHECKING:
    from cqd_port.models.network import SimpleNetwork

FC8 = "fc8"
DROPOUT_RATE = 0.5
FC8_STD = 0.01

IMAGENET_FILES = {"vgg-m": "imagenet-vgg-m", "vgg-vd-16": "imagenet-vgg-verydeep-16"}

Multipliers = dict[str, tuple[float, float]]


@dataclass
class FinetuneNetwork:
    """A network ready to fine-tune: layer list, parameters, meta and per-parameter (lr, wd) multipliers."""

    specs: list[LayerSpec]
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    multipliers: Multipliers

    def build(self, lrn_mode: str = "exact") -> SimpleNetwork:
        """The `SimpleNetwork` running these layers with these parameters."""
        from cqd_port.models.network import SimpleNetwork

        return SimpleNetwork(self.specs, self.state, self.meta, lrn_mode=lrn_mode)


def imagenet_model_candidates(models_dir: str | Path, arch: str) -> list[Path]:
    """Where `arch`'s ImageNet model may be in `models_dir`, in order of preference: the `.pt`, then the `.mat`."""
    if arch not in IMAGENET_FILES:
        raise CqdError(f"unknown network '{arch}' (known: {', '.join(IMAGENET_FILES)})")
    stem = IMAGENET_FILES[arch]
    return [Path(models_dir) / f"{stem}{suffix}" for suffix in (".pt", ".mat")]


def imagenet_model_path(models_dir: str | Path, arch: str) -> Path:
    """The converted ImageNet model of `arch` in `models_dir` (`.pt` preferred, else the `.mat`).

    Raises CqdError naming the missing file and the command that makes it.
    """
    pt, mat = imagenet_model_candidates(models_dir, arch)
    for candidate in (pt, mat):
        if candidate.is_file():
            return candidate
    raise CqdError(
        f"ImageNet weights for {arch} missing: {pt} (or {mat.name}); put MatConvNet's "
        f"{mat.name} in {mat.parent} and run `cqd-port convert-weights {mat}`, "
        f"or point --models at the folder that has them"
    )


def load_pretrained(path: str | Path, lrn_mode: str = "exact") -> tuple[list[LayerSpec], dict[str, torch.Tensor], dict[str, Any]]:
    """Layer list, parameters and meta of a converted model (`.pt` from convert-weights, or a `.mat`)."""
    from matconvnet_weights.convert import load_model

    model = load_model(Path(path), lrn_mode=lrn_mode)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return list(model.specs), state, copy.deepcopy(dict(model.meta or {}))


def _layer_index(specs: list[LayerSpec], name: str, what: str, source: str) -> int:
    for i, spec in enumerate(specs):
        if spec.name == name:
            return i
    raise CqdError(
        f"{source}: no layer '{name}' ({what}); expected an ImageNet vgg-m or vgg-vd-16 model whose layers run "
        f"... fc6 relu6 fc7 relu7 fc8 prob (list its layers with `cqd-port inspect {source}`)"
    )


def finetune_network(
    specs: list[LayerSpec],
    state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    num_classes: int,
    seed: int = 0,
    source: str = "model",
) -> FinetuneNetwork:
    """The released `initializeNetwork.m` + `DagNN.fromSimpleNN` applied to a pretrained model.

    Keeps the layers through `relu7` (existing dropout layers are dropped and
    re-inserted, so models saved with or without them give the same network),
    puts dropout (rate 0.5) after `relu6` and `relu7`, appends a fresh
    `num_classes`-way `fc8` (N(0, 0.01^2) filters from a generator seeded with
    `seed`, zero biases) and returns the (lr, wd) multipliers described in the
    module docstring. `source` names the model in error messages.
    """
    if num_classes < 1:
        raise CqdError(f"num_classes {num_classes}: a classifier needs at least one class")
    relu7 = _layer_index(specs, "relu7", "the last layer kept", source)
    kept = [s for s in specs[: relu7 + 1] if s.type != "dropout"]
    names = [s.name for s in kept]
    if "relu6" not in names:
        _layer_index(kept, "relu6", "dropout follows it", source)
    fc7 = _layer_index(kept, "fc7", "its width sets fc8's input", source)
    fc7_weight = state.get(f"{kept[fc7].name}.weight")
    if fc7_weight is None:
        raise CqdError(f"{source}: layer fc7 has no weights; the model file is incomplete, convert it again")
    width = int(fc7_weight.shape[0])

    new_specs: list[LayerSpec] = []
    for spec in kept:
        new_specs.append(LayerSpec(spec.name, spec.type, copy.deepcopy(spec.attrs)))
        if spec.name in ("relu6", "relu7"):
            new_specs.append(LayerSpec(f"dropout{spec.name[-1]}", "dropout", {"rate": DROPOUT_RATE}))
    new_specs.append(
        LayerSpec(FC8, "conv", {"pad": [0, 0, 0, 0], "stride": [1, 1], "dilate": [1, 1], "has_bias": True})
    )

    kept_names = {s.name for s in kept}
    new_state = {k: v.detach().clone() for k, v in state.items() if k.rpartition(".")[0] in kept_names}
    generator = torch.Generator().manual_seed(int(seed))
    new_state[f"{FC8}.weight"] = FC8_STD * torch.randn(num_classes, width, 1, 1, generator=generator, dtype=torch.float32)
    new_state[f"{FC8}.bias"] = torch.zeros(num_classes, dtype=torch.float32)

    new_meta = copy.deepcopy(meta)
    new_meta["classes"] = {"name": [str(i + 1) for i in range(num_classes)], "description": []}
    new_meta["num_classes"] = num_classes
    return FinetuneNetwork(new_specs, new_state, new_meta, finetune_multipliers(new_state))


def finetune_multipliers(state: dict[str, torch.Tensor]) -> Multipliers:
    """(lr, wd) per parameter: (1, 1) for all, fc8 filters (10, 1), fc8 biases (20, 0).

    Also what a trained model keeps when it is fine-tuned again (staged
    training, A-CQD start from the whole A model, fc8 multipliers included).
    Moments (bnorm statistics) are not trained by SGD and get none.
    """
    from cqd_port.train.sgd import cqd_multipliers

    trained = [name for name in state if name.rpartition(".")[2] != "moments"]
    return {name: (m.lr, m.wd) for name, m in cqd_multipliers(trained, new_layers=(FC8,)).items()}


def imagenet_finetune_network(path: str | Path, num_classes: int, seed: int = 0) -> FinetuneNetwork:
    """`finetune_network` on the model stored at `path`."""
    specs, state, meta = load_pretrained(path)
    return finetune_network(specs, state, meta, num_classes, seed=seed, source=str(path))


def trained_network(path: str | Path) -> FinetuneNetwork:
    """A trained model (a run's `final.pt`) with the fine-tuning multipliers, to train again."""
    specs, state, meta = load_pretrained(path)
    if f"{FC8}.weight" not in state:
        raise CqdError(f"{path}: no fc8 layer; expected a model trained by `cqd-port reproduce`, delete the run folder and rerun")
    return FinetuneNetwork(specs, state, meta, finetune_multipliers(state))


# --------------------------------------------------------------------------- any network (`cqd-port train`)

MATCONVNET_ARCHS = ("vgg-m", "vgg-vd-16")


@dataclass(frozen=True)
class NetworkSpec:
    """A network of a single run (`cqd-port train`): f or g.

    `arch`: `vgg-m` or `vgg-vd-16` (a MatConvNet model set up as the released
    code did, `finetune_network`) or a torchvision classifier by name
    (`cqd_port.models.torchvision_nets`). `weights`: the file to start from
    (a converted `.pt` or a `.mat` for the MatConvNet models; torchvision's
    `.pth` for the others) or None for torchvision's random initialisation.
    `input_size`: the side the network sees (torchvision: any; the MatConvNet
    models take theirs from `meta.normalization`).
    """

    arch: str
    weights: str | None = None
    input_size: int | None = None

    @property
    def key(self) -> str:
        """The name runs know the network by (`RunSpec.arch`): arch, input size and start differ -> key differs."""
        key = self.arch if self.input_size is None else f"{self.arch}@{self.input_size}px"
        return key if self.weights is not None else f"{key} (random init)"

    @property
    def is_matconvnet(self) -> bool:
        return self.arch in MATCONVNET_ARCHS

    def describe(self) -> str:
        start = f"weights {self.weights}" if self.weights is not None else "random initialisation"
        if self.is_matconvnet:
            return f"{self.arch} ({start}; MatConvNet preprocessing: bicubic imresize to meta.normalization.imageSize, minus its average colour)"
        from cqd_port.models.torchvision_nets import default_input_size

        size = self.input_size or default_input_size(self.arch)
        return f"torchvision {self.arch} ({start}; input {size}x{size}: bilinear antialiased resize, RGB/255, ImageNet mean and std)"


def head_multipliers(state_names: list[str], head: str) -> Multipliers:
    """(lr, wd) per parameter of a torchvision network: fc8's (10, 1) / (20, 0) for its classifier `head`
    (a state-dict prefix; "" for none), (1, 1) elsewhere."""
    from cqd_port.train.sgd import cqd_multipliers

    return {name: (m.lr, m.wd) for name, m in cqd_multipliers(state_names, new_layers=(head,) if head else ()).items()}


def _trainable(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def initial_network(spec: NetworkSpec, num_classes: int, seed: int = 0, lrn_mode: str = "exact") -> tuple[torch.nn.Module, Multipliers]:
    """`spec`'s network with a fresh `num_classes`-way classifier, and its SGD multipliers."""
    if spec.is_matconvnet:
        if spec.weights is None:
            raise CqdError(
                f"{spec.arch} needs a weights file (imagenet-{'vgg-m' if spec.arch == 'vgg-m' else 'vgg-verydeep-16'}.mat "
                "converted with `cqd-port convert-weights`); random initialisation is offered for torchvision networks"
            )
        network = imagenet_finetune_network(spec.weights, num_classes, seed=seed)
        return network.build(lrn_mode), network.multipliers
    from cqd_port.models.torchvision_nets import build_torchvision

    model, head = build_torchvision(spec.arch, num_classes, spec.weights, spec.input_size, seed)
    if spec.weights is None:
        # Random weights: the whole network is new, so the classifier gets no x10 / x20 boost over it (with the
        # boost, a random ResNet-18 barely trains at the learning rates that suit the rest). Kept in final.pt.
        model.head = ""
    return model, head_multipliers(_trainable(model), model.head)


def load_trained_model(path: str | Path, lrn_mode: str = "exact") -> torch.nn.Module:
    """A run's `final.pt`, whichever kind of network it holds."""
    from cqd_port.models.torchvision_nets import is_torchvision_checkpoint, load_torchvision

    if is_torchvision_checkpoint(path):
        return load_torchvision(path)
    from matconvnet_weights.convert import load_model

    return load_model(Path(path), lrn_mode=lrn_mode)


def trained_start(path: str | Path, lrn_mode: str = "exact") -> tuple[torch.nn.Module, Multipliers]:
    """A trained model to train again (staged, A-CQD), classifier multipliers kept as the release does."""
    from cqd_port.models.torchvision_nets import is_torchvision_checkpoint, load_torchvision

    if is_torchvision_checkpoint(path):
        model = load_torchvision(path)
        return model, head_multipliers(_trainable(model), model.head)
    network = trained_network(path)
    return network.build(lrn_mode), network.multipliers


def save_trained_model(path: str | Path, model: torch.nn.Module) -> None:
    """A trained network as a run's `final.pt` (atomic): the convert-weights format, or torchvision's."""
    from cqd_port.models.torchvision_nets import TorchvisionClassifier, save_torchvision

    if isinstance(model, TorchvisionClassifier):
        save_torchvision(path, model)
        return
    from matconvnet_weights.convert import save_checkpoint

    save_checkpoint(path, model.specs, {k: v.detach().cpu() for k, v in model.state_dict().items()}, model.meta)


def model_num_classes(model: torch.nn.Module) -> int:
    """The number of outputs of a trained network."""
    from cqd_port.models.torchvision_nets import TorchvisionClassifier

    if isinstance(model, TorchvisionClassifier):
        return model.num_classes
    return int(model.state_dict()[f"{FC8}.weight"].shape[0])


def model_input(model: torch.nn.Module, prepared_size: int | None, average: str = "stored") -> tuple[tuple[int, int], "np.ndarray"]:
    """(image size, average colour) the data path gives `model`.

    MatConvNet models: their `meta.normalization` (`input_normalization`).
    torchvision models: the prepared image untouched (size `prepared_size`,
    nothing subtracted); the network resizes and normalises it itself.
    """
    import numpy as np

    from cqd_port.models.torchvision_nets import TorchvisionClassifier

    if isinstance(model, TorchvisionClassifier):
        side = int(prepared_size or model.input_size)
        return (side, side), np.zeros((1, 1, 3), dtype=np.float32)
    return input_normalization(model.meta, None, average)


AVERAGE_MODES = ("stored", "colour")


def input_normalization(
    meta: dict[str, Any], image_size: int | None = None, average: str = "stored"
) -> tuple[tuple[int, int], np.ndarray]:
    """Input side and average image the network expects, from its `meta.normalization`.

    As the released `imdb_get_batch`: images are resized to `imageSize(1:2)`
    and the model's `averageImage` is subtracted AS STORED (`average="stored"`):
    a 1x1x3 colour stays a colour, a full HxWx3 image (imagenet-vgg-m.mat's
    224x224x3) is subtracted pixel by pixel. `average="colour"` subtracts its
    mean colour `mean(mean(averageImage, 1), 2)` instead (what cqd-port did
    before; the B-CNN code's habit). A full image whose size is not the input
    size can only be used as its mean colour. `image_size` overrides the size
    (the demo's reduced networks carry their own in meta anyway).
    """
    if average not in AVERAGE_MODES:
        raise CqdError(f"unknown average mode '{average}'; use one of {', '.join(AVERAGE_MODES)}")
    norm = meta.get("normalization", {}) or {}
    size = norm.get("imageSize") or [224, 224]
    hw = (int(image_size), int(image_size)) if image_size else (int(size[0]), int(size[1]))
    avg = norm.get("averageImage")
    if avg is None:
        return hw, np.zeros((1, 1, 3), dtype=np.float32)
    avg = np.asarray(avg, dtype=np.float32)
    if avg.size == 3:
        return hw, avg.reshape(1, 1, 3)
    if average == "stored" and avg.ndim == 3 and avg.shape == (*hw, 3):
        return hw, avg.copy()
    return hw, avg.reshape(-1, 3).mean(axis=0).reshape(1, 1, 3).astype(np.float32)
