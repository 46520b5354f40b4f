"""Gradient maps of the true label's log-likelihood with respect to the input image.

Section 5 of the paper ("Understanding CQD through gradient visualizations")
computes, for each image, the gradient of the log-likelihood of the true
label with respect to the image, and shows per pixel the L2 norm of the
gradient over the r, g, b channels, ||G_i||_2. This module computes exactly
that, for any network that maps an N x 3 x H x W batch to class scores:

    G = d log softmax(z(x))[y] / d x,   map[h, w] = sqrt(sum_c G[c, h, w]^2)

`x` is the network's input as the model was trained with it, i.e. the image
read, resized straight to `imageSize` and minus the average colour by the
batch pipeline (`cqd_port.data.batches.ImageFolderDataset`, with the size
and average the trainer takes from the model's meta). Subtracting the
average is a constant shift, so the gradient with respect to the
preprocessed input equals the gradient with respect to the resized image;
the maps therefore live in the network's input coordinates (imageSize).

Saturated images. For a model so confident that every other class's
probability underflows in float32 (a logit margin above about 100),
d log p(y|x) / dz = onehot - softmax(z) is exactly zero: the map is all
zeros and tau is 0/0. Since

    d log p(y|x)/dx = (1 - p_y) d(z_y - sum_{k != y} w_k z_k)/dx,  w = softmax(z without y)

(w held fixed), the bracket is the gradient's direction, with weights that
do not underflow; for those images (and only those) the map is taken from
it. tau is a ratio of the map's sums, so it is the limit of tau as the
margin grows, not a new definition; the displayed maps are normalised per
image anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cqd_port.errors import CqdError
from cqd_port.train.objective import class_scores as flatten_scores


def class_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The network's class scores (logits) for a batch, as an N x K tensor.

    MatConvNet networks end in a 1 x 1 "fully connected" convolution, so they
    return N x K x 1 x 1; that is flattened here (as the trainer does,
    `cqd_port.train.objective.class_scores`). A deployed MatConvNet model
    may end in a softmax layer (`vl_nnsoftmax`); its input, the logits, is
    taken instead, so that log softmax is computed stably from the logits
    rather than as the log of a probability that may have underflowed.
    """
    specs = getattr(model, "specs", None)
    if specs and getattr(specs[-1], "type", None) == "softmax":
        outputs = model(images, return_all=True)
        values = list(outputs.values())
        if len(values) < 2:
            raise CqdError("the network consists of a softmax layer only; it has no class scores to explain")
        scores = values[-2]
    else:
        scores = model(images)
    return flatten_scores(scores)


def input_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d log p(label | image) / d image for each image of the batch (N x C x H x W).

    The model is put in eval mode (dropout off, as MatConvNet's test mode) and
    restored afterwards; only the input requires a gradient, so the model's
    parameter `.grad` fields are left untouched. Images are independent in
    eval mode, so the gradient of the summed log-likelihoods is, per image,
    the gradient of that image's own log-likelihood; except through bnorm
    layers, which back-propagate as MatConvNet 1.0-beta18 does (the network's
    `bnorm_backward`, "matconvnet" by default: batch statistics of the batch
    given, even in test mode), so there each image's gradient depends on its
    batch, as in MatConvNet. Set `model.bnorm_backward = "consistent"` for
    the true derivative of the test-mode network.
    """
    if images.dim() != 4:
        raise CqdError(f"images must be an N x C x H x W batch, got shape {tuple(images.shape)}")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() != images.shape[0]:
        raise CqdError(f"{labels.numel()} labels for {images.shape[0]} images")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            scores = class_scores(model, x)
            if labels.min() < 0 or labels.max() >= scores.shape[1]:
                raise CqdError(
                    f"label {int(labels.max()) if labels.max() >= scores.shape[1] else int(labels.min())} is outside "
                    f"the network's {scores.shape[1]} classes: the model was trained on a different dataset"
                )
            log_likelihood = torch.log_softmax(scores, dim=1).gather(1, labels[:, None]).sum()
            (gradient,) = torch.autograd.grad(log_likelihood, x)
            gradient = gradient.detach()
            saturated = (gradient.flatten(1).abs().amax(dim=1) == 0).nonzero().flatten()
            if saturated.numel() and scores.shape[1] > 1:
                gradient[saturated] = _saturated_direction(model, images[saturated], labels[saturated])
    finally:
        model.train(was_training)
    return gradient


def _saturated_direction(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d(z_y - sum_{k != y} w_k z_k)/dx, w = softmax of the other classes' scores (fixed): the direction of
    d log p(y|x)/dx where 1 - p_y underflowed to zero (see the module docstring)."""
    x = images.detach().clone().requires_grad_(True)
    scores = class_scores(model, x)
    others = scores.detach().scatter(1, labels[:, None], float("-inf"))
    weights = torch.softmax(others, dim=1)  # zero at the true label
    objective = (scores.gather(1, labels[:, None])[:, 0] - (weights * scores).sum(dim=1)).sum()
    (gradient,) = torch.autograd.grad(objective, x)
    return gradient.detach()


def gradient_norm_map(gradient: torch.Tensor) -> torch.Tensor:
    """Per pixel L2 norm over the channel axis: N x C x H x W -> N x H x W (the paper's ||G_i||_2)."""
    return gradient.pow(2).sum(dim=1).sqrt()


def gradient_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's gradient maps for a batch: N x H x W, non-negative."""
    return gradient_norm_map(input_gradients(model, images, labels))


@dataclass
class PreprocessingSpec:
    """How the model was fed during training: `net.meta.normalization` of the original.

    `image_size` is (height, width); `average_image` the 1 x 1 x 3 average
    colour subtracted from every pixel (zeros when the model has none).
    """

    image_size: tuple[int, int]
    average_image: np.ndarray


def preprocessing_from_meta(meta: dict[str, Any] | None, source: str = "the model") -> PreprocessingSpec:
    """The input size and average the model was trained with, from its `meta.normalization`.

    Delegates to the training side (`cqd_port.experiments.methods.input_normalization`)
    so the maps are taken at exactly the inputs the model was trained on: as
    the released `imdb_get_batch`, images are resized to `imageSize(1:2)` (224 x 224
    when the meta has none) and `averageImage` is subtracted as stored (a full
    H x W x 3 average image pixel by pixel, a colour as a colour).
    """
    from cqd_port.experiments.networks import input_normalization

    if meta is not None and not isinstance(meta, dict):
        raise CqdError(f"{source}: its meta is not a dictionary; re-save it with `cqd-port convert-weights`")
    try:
        size, average = input_normalization(dict(meta or {}), None)
    except (TypeError, ValueError, IndexError) as exc:
        raise CqdError(
            f"{source}: unreadable meta.normalization ({exc}); re-save it with `cqd-port convert-weights`"
        ) from None
    return PreprocessingSpec(image_size=(int(size[0]), int(size[1])), average_image=np.asarray(average, dtype=np.float32))


def iterate_batches(dataset: Any, positions: Sequence[int], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Batches (positions, N x C x H x W images, labels) from an `ImageStore` (or a Dataset, decoded once into one)."""
    from cqd_port.data.store import as_image_store

    store = as_image_store(dataset)
    for start in range(0, len(positions), batch_size):
        chunk = list(positions[start : start + batch_size])
        images, labels = store.batch(chunk)
        yield chunk, images, labels


def maps_for_dataset(
    model: nn.Module, dataset: Any, positions: Iterable[int], batch_size: int = 16, device: torch.device | str | None = None
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Gradient maps for the dataset items at `positions`, batch by batch: (positions, N x H x W on the CPU).

    Batches go to `device` (the model must already be there); None keeps the CPU.
    Strict float32 (no TF32), as every forward of the project.
    """
    from cqd_port.data.store import as_image_store
    from cqd_port.train.device import configure_determinism

    configure_determinism(False, device if device is not None else "cpu")
    store = as_image_store(dataset)
    if device is not None:
        store = store.to(device)
    for chunk, images, labels in iterate_batches(store, list(positions), batch_size):
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        yield chunk, gradient_maps(model, images, labels).cpu()
