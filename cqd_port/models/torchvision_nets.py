"""torchvision classification networks as CQD's f or g, with their own preprocessing.

`build_torchvision(arch, num_classes, weights, input_size, seed)` builds any
classification model of `torchvision.models` by name (`resnet18`,
`resnet50`, `efficientnet_b0`, `vit_b_16`, ...), loads ImageNet weights from
a LOCAL file (this project cannot download; the error names the URL
torchvision publishes) or keeps torchvision's random initialisation (seeded),
and replaces the classifier (the last Linear, or squeezenet's 1x1 conv) by a
fresh `num_classes`-way one initialised as the released code's `fc8`
(N(0, 0.01^2) weights from a generator seeded with `seed`, zero biases).

Preprocessing follows the network, and lives in the module
(`TorchvisionClassifier`) so the data path stays the same for every network:
the input is the prepared image as float RGB in 0..255 (N x 3 x H x W, any
H x W); it is resized to `input_size` x `input_size` (bilinear with
antialiasing: torchvision's `Resize` on tensors, not MATLAB's bicubic
`imresize` that the MatConvNet models use), divided by 255 and normalised
with the ImageNet mean and std. The MatConvNet models instead subtract their
`meta.normalization.averageImage` in the data path (`cqd_port.data.batches`).

Saved models (`save_torchvision`, a run's `final.pt`) hold the architecture
name, class count, input size and state dict; `load_torchvision` rebuilds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cqd_port.errors import CqdError
from cqd_port.seeds import check_seed

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TorchvisionClassifier",
    "build_torchvision",
    "is_torchvision_arch",
    "load_torchvision",
    "save_torchvision",
    "torchvision_archs",
    "weights_url",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "cqd-port-torchvision/1"
HEAD_STD = 0.01
_AUX_ARCHS = ("googlenet", "inception_v3")  # built without auxiliary heads: the losses need one output


def torchvision_archs() -> list[str]:
    """Every classification builder torchvision has."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def is_torchvision_arch(arch: str) -> bool:
    return arch in torchvision_archs()


def weights_url(arch: str) -> str | None:
    """The URL torchvision publishes for `arch`'s default ImageNet weights (read from its tables, nothing is downloaded)."""
    from torchvision import models

    try:
        return str(models.get_model_weights(arch).DEFAULT.url)
    except (ValueError, AttributeError, KeyError):
        return None


def default_input_size(arch: str) -> int:
    """torchvision's evaluation crop for `arch` (224 for most, 299 for inception_v3)."""
    from torchvision import models

    try:
        crop = models.get_model_weights(arch).DEFAULT.transforms().crop_size
        return int(crop[0])
    except (ValueError, AttributeError, KeyError, IndexError):
        return 224


class TorchvisionClassifier(nn.Module):
    """A torchvision network behind its preprocessing: 0..255 RGB of any size in, N x K logits out."""

    def __init__(self, arch: str, backbone: nn.Module, num_classes: int, input_size: int, head: str = "") -> None:
        super().__init__()
        self.arch = arch
        self.head = head  # state-dict prefix of the classifier whose SGD multipliers are fc8's ("" for none)
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        self.backbone = backbone
        # (x / 255 - mean) / std as one affine map per channel; buffers, so they follow .to(device) and the state dict
        std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1) / std, persistent=False)

    @property
    def meta(self) -> dict[str, Any]:
        """What the run records: the network, its input size and its normalisation."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "normalization": {"imageSize": [self.input_size, self.input_size], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "preprocessing": "torchvision: bilinear antialiased resize, RGB / 255, ImageNet mean and std",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        return self.backbone(x * self.scale + self.shift)


def _head(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier layer: the last Linear, or a 1x1 Conv2d when it comes after every Linear (squeezenet)."""
    found: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            found = (name, module)
    if found is None:
        raise CqdError(f"{type(model).__name__}: no Linear or 1x1 conv classifier found; use another torchvision network")
    return found


def _replace_head(model: nn.Module, num_classes: int, seed: int) -> str:
    name, old = _head(model)
    generator = torch.Generator().manual_seed(check_seed(seed))
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=True)
        shape: tuple[int, ...] = (num_classes, old.in_features)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=True)
        shape = (num_classes, old.in_channels, 1, 1)
    with torch.no_grad():
        new.weight.copy_(HEAD_STD * torch.randn(shape, generator=generator))
        new.bias.zero_()
    parent = model
    *path, last = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, new)
    return name


def _read_weights(path: Path, arch: str) -> dict[str, torch.Tensor]:
    url = weights_url(arch)
    if not path.is_file():
        where = f"download {url}" if url else f"get {arch}'s ImageNet weights"
        raise CqdError(
            f"weights file {path} for {arch} missing; this project cannot download: {where} on a machine with internet, "
            f"copy it to {path}, or set weights: random"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise CqdError(f"cannot read weights file {path} ({type(exc).__name__}); give torchvision's .pth for {arch}") from None
    if isinstance(data, dict) and ("state_dict" in data or "model" in data) and not any(torch.is_tensor(v) for v in data.values()):
        data = data.get("state_dict", data.get("model"))
    if not isinstance(data, dict):
        raise CqdError(f"weights file {path} holds no state dict; give torchvision's .pth for {arch}")
    return {k.removeprefix("module."): v for k, v in data.items()}


def build_torchvision(
    arch: str, num_classes: int, weights: str | Path | None = None, input_size: int | None = None, seed: int = 0
) -> tuple[TorchvisionClassifier, str]:
    """`arch` with ImageNet weights from the file `weights` (None: random init, seeded) and a fresh
    `num_classes`-way classifier. Returns the network and the state-dict prefix of its new classifier."""
    from torchvision import models

    if not is_torchvision_arch(arch):
        raise CqdError(f"unknown network '{arch}': use vgg-m, vgg-vd-16 or a torchvision classifier such as resnet18, resnet50, efficientnet_b0, vit_b_16")
    if num_classes < 1:
        raise CqdError(f"num_classes {num_classes}: a classifier needs at least one class")
    seed = check_seed(seed)  # before any work: torch.manual_seed crashes on seeds beyond 64 bits
    size = int(input_size) if input_size else default_input_size(arch)
    kwargs: dict[str, Any] = {"weights": None, "num_classes": 1000}
    if arch in _AUX_ARCHS:
        kwargs.update(aux_logits=False, init_weights=True)
    if arch.startswith(("vit_", "maxvit")) and weights is None:
        kwargs["image_size"] = size  # position embeddings (vit) or windows (maxvit) are built for the input size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        try:
            backbone = models.get_model(arch, **kwargs)
        except (ValueError, TypeError, AssertionError) as exc:
            raise CqdError(f"cannot build {arch} for {size}x{size} inputs ({exc}); choose another input_size") from None
    if weights is not None:
        path = Path(weights)
        state = _read_weights(path, arch)
        if arch in _AUX_ARCHS:
            state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            url = weights_url(arch)
            raise CqdError(
                f"weights file {path} does not fit torchvision's {arch} ({len(missing)} missing keys e.g. "
                f"{(missing or ['-'])[0]}, {len(unexpected)} unexpected e.g. {(unexpected or ['-'])[0]}); "
                f"use the file torchvision publishes{' (' + url + ')' if url else ''}"
            )
    head = f"backbone.{_replace_head(backbone, num_classes, seed)}"
    model = TorchvisionClassifier(arch, backbone, num_classes, size, head)
    model.eval()
    with torch.no_grad():
        try:
            out = model(torch.zeros(1, 3, size, size))
        except Exception as exc:  # noqa: BLE001 - an input size the architecture cannot take
            raise CqdError(f"{arch} cannot take {size}x{size} inputs ({str(exc).splitlines()[0]}); choose another input_size") from None
    if not torch.is_tensor(out) or tuple(out.shape) != (1, num_classes):
        raise CqdError(f"{arch} does not return one N x {num_classes} logits tensor; use another torchvision network")
    return model, head


def save_torchvision(path: str | Path, model: TorchvisionClassifier) -> None:
    """A trained network as `final.pt` (atomic): architecture, classes, input size, weights."""
    from cqd_port.fileio import atomic_torch_save

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "arch": model.arch,
            "num_classes": model.num_classes,
            "input_size": model.input_size,
            "head": model.head,
            "state_dict": state,
        },
    )


def is_torchvision_checkpoint(path: str | Path) -> bool:
    """True when `path` is a `save_torchvision` file (read without building anything)."""
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours
        return False
    return isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT


def load_torchvision(path: str | Path) -> TorchvisionClassifier:
    """A network saved by `save_torchvision` (a torchvision run's `final.pt`)."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CqdError(f"cannot read {path} ({type(exc).__name__}); rerun the run that made it") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CqdError(f"{path} is not a torchvision network saved by cqd-port; rerun the run that made it")
    model, _ = build_torchvision(str(data["arch"]), int(data["num_classes"]), None, int(data["input_size"]))
    model.load_state_dict(data["state_dict"])
    model.head = str(data.get("head", model.head))
    return model
