"""Test-mode evaluation: the paper's per-image accuracy, and the details behind it.

`cnn_train_dag` reports top-1 *error* per epoch; the paper's tables give
per-image accuracy in percent (100 - 100 x top-1 error), which is what
`Evaluation.accuracy` is. Mean per-class accuracy and the confusion matrix
are extras for inspection.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_write_json
from cqd_port.train.objective import class_scores

LabelRange = tuple[int, int]


def normalize_label_range(label_range: int | Sequence[int] | None, num_outputs: int) -> LabelRange:
    """`None` -> all outputs; `k` -> `(0, k)`; `(lo, hi)` -> outputs `lo..hi-1` (0-based, half-open)."""
    if label_range is None:
        return (0, num_outputs)
    if isinstance(label_range, int):
        lo, hi = 0, int(label_range)
    else:
        lo, hi = (int(v) for v in label_range)
    if not 0 <= lo < hi <= num_outputs:
        raise CqdError(
            f"label_range {label_range} does not fit a classifier with {num_outputs} outputs; "
            f"give k or (lo, hi) with 0 <= lo < hi <= {num_outputs}"
        )
    return (lo, hi)


def predict(scores: torch.Tensor, label_range: LabelRange) -> torch.Tensor:
    """Predicted label: `lo + argmax` over outputs `lo..hi-1` only.

    For the A+B method, whose `fc8` has 2k outputs (k per domain), the
    original took the class among the first k outputs; `label_range=(0, k)`.
    """
    lo, hi = label_range
    return class_scores(scores)[:, lo:hi].argmax(dim=1) + lo


@dataclass
class Evaluation:
    """Per-image accuracy (percent), per-class accuracy (percent), confusion matrix, predictions.

    Classes are the outputs in `label_range`; `confusion[t][p]` counts images of
    class `lo + t` predicted as `lo + p`. `objective` is the softmax-log loss
    per image over all outputs (MatConvNet's `objective` statistic);
    `top1err` is the fraction of errors, as `cnn_train_dag` plots it.
    """

    accuracy: float
    mean_class_accuracy: float
    per_class_accuracy: list[float | None]
    confusion: list[list[int]]
    predictions: list[int]
    labels: list[int]
    indices: list[int]
    objective: float
    label_range: list[int] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    @property
    def top1err(self) -> float:
        return 1.0 - self.accuracy / 100.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_images"] = self.num_images
        data["top1err"] = self.top1err
        return data

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomic), e.g. a run folder's `evaluation.json`."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Evaluation":
        """Read back an `Evaluation` written by `save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CqdError(f"cannot read evaluation file {path}: {exc}") from None
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in fields})


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    label_range: int | Sequence[int] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: Any = None,
    tf32: bool = False,
) -> Evaluation:
    """Run `model` in test mode (no dropout) over an `ImageStore` (or a Dataset of `(image, label, index)` triples).

    Batches come from the store on `device` (moved there once); the scores
    stay on the device until the end (one transfer). Strict float32 unless
    `tf32`. `progress` is an optional `rich.progress.Progress` to report
    batches on. The model is moved to `device` and left there, in test mode.
   
    """
    from cqd_port.data.store import as_image_store
    from cqd_port.train.device import configure_determinism

    if len(dataset) == 0:  # type: ignore[arg-type]
        raise CqdError("cannot evaluate on an empty dataset; check the test split")
    device = torch.device(device)
    configure_determinism(tf32, device)
    store = as_image_store(dataset).to(device)
    model.to(device).eval()
    all_scores, all_indices = [], []
    task = progress.add_task("evaluate", total=len(store), info="") if progress is not None else None
    for positions, images, _labels in store.iter_batches(batch_size):
        all_scores.append(class_scores(model(images)).float())
        all_indices.append(positions)
        if task is not None:
            progress.advance(task, int(positions.shape[0]))
    if task is not None:
        progress.remove_task(task)
    return summarize(torch.cat(all_scores).cpu(), store.labels.cpu(), torch.cat(all_indices).cpu(), label_range)


def summarize(
    scores: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor | None = None,
    label_range: int | Sequence[int] | None = None,
) -> Evaluation:
    """An `Evaluation` from the scores (`N x K`) of every test image and their 0-based labels."""
    from cqd_port.nn.losses import softmaxlog_loss

    scores = class_scores(scores)
    lo, hi = normalize_label_range(label_range, scores.shape[1])
    labels = labels.long()
    if labels.numel() and (labels.min() < lo or labels.max() >= hi):
        raise CqdError(
            f"test labels span {int(labels.min())}..{int(labels.max())}, outside the evaluated outputs {lo}..{hi - 1}; "
            "check label_range"
        )
    preds = predict(scores, (lo, hi))
    k = hi - lo
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels - lo, preds - lo), torch.ones_like(labels), accumulate=True)
    per_class_total = confusion.sum(dim=1)
    per_class: list[float | None] = [
        (100.0 * float(confusion[c, c]) / float(per_class_total[c])) if per_class_total[c] > 0 else None for c in range(k)
    ]
    present = [v for v in per_class if v is not None]
    n = labels.numel()
    correct = int((preds == labels).sum())
    objective = float(softmaxlog_loss(scores, labels)) / n
    return Evaluation(
        accuracy=100.0 * correct / n,
        mean_class_accuracy=sum(present) / len(present) if present else 0.0,
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        predictions=preds.tolist(),
        labels=labels.tolist(),
        indices=(indices if indices is not None else torch.arange(n)).long().tolist(),
        objective=objective,
        label_range=[lo, hi],
    )
