"""A resolved run job: everything that changes a run's numbers, and nothing else.

`RunJob` is built by the planner (`cqd_port.experiments.plan.resolve_job`) from
the table's plan (or `cqd-port train`'s YAML), the settings and the data
catalog: the network and its start (the ImageNet model's SHA-256, or the
identity of the run it starts from), the data variants with the digests of
their prepared manifests (and for `cqd-port train` the digest of the image
list and split it was read with), the hyper-parameters as the trainer will
use them (epochs, the squeezed schedule, batch size, optimizer, ...), the
seed, the method, lambda and T (after selection on validation), and the
identities of the runs it depends on.

A later distiller (FitNets, AT, SP, RKD, DKD) adds `distill`: its settings
(layers, temperature, its own parameters) as (name, value) pairs, the
weight being `lambda_`; for every other run `distill` is None and left out
of the identity, so run folders made before it existed keep theirs.

Its identity is `identity(job)` = `dataclasses.asdict(job)` (less a None `distill`): the one reuse
guard of every command (`reproduce` with either launcher, `cqd-port train`,
`collect`, `--dry-run`, `evaluate`). A run folder is reused only when the
identity saved in it equals the job's; nothing else is compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

PENDING = "pending"  # a part of the identity not known yet (data not prepared, selection not run)


@dataclass(frozen=True)
class RunJob:
    """What makes one run's numbers (see the module docstring); `asdict` of it is the run's identity."""

    method: str
    task: str
    arch: str  # the trained (or evaluated) network: a `NetworkSpec` key
    start: str  # "imagenet <arch> sha256 <digest>", "random init <arch>" or "run <identity hash>" (the A model)
    train: tuple[str, ...]  # data variants trained on (labels)
    test: str  # data variant tested on
    data: tuple[tuple[str, str], ...]  # (variant label, manifest digest) of every variant read
    split: str | None  # `cqd-port train`: digest of the dataset's image list and split; None for CUB/Cars
    teacher: str | None  # "run <identity hash>" of the distillation teacher
    teacher_data: str | None  # the teacher's variant (paired image by image with train[0])
    seed: int
    validation: int | None  # a seed: trained on that validation split (a selection candidate)
    epochs: int
    schedule: tuple[float, ...]  # learning rate per epoch, as the trainer uses it
    batch_size: int
    class_factor: int  # 2: the released A+B's 2k-way fc8
    lambda_: float | None  # distillation weight (after selection); None without distillation
    temperature: float | None
    selection: tuple[str, ...]  # identity hashes of the validation candidates lambda and T were chosen from
    optimizer: str
    momentum: float
    weight_decay: float
    lrn_mode: str
    average_image: str
    domain_a: str
    tf32: bool
    distill: tuple[tuple[str, Any], ...] | None = None  # a later distiller's settings but its weight (= lambda_)

    @property
    def trains(self) -> bool:
        return bool(self.train)

    @property
    def complete(self) -> bool:
        """Every part known (data prepared, selection made): only then can it be compared with a saved identity."""
        parts = (self.start, self.teacher, self.split, *(digest for _, digest in self.data), *self.selection)
        return PENDING not in parts


def identity(job: RunJob) -> dict[str, Any]:
    """The run's identity: the job's fields as JSON data (tuples as lists); `distill` only for a later distiller."""
    fields = asdict(job)
    if fields["distill"] is None:
        del fields["distill"]
    return json.loads(json.dumps(fields))


def identity_hash(job: RunJob) -> str:
    return hashlib.sha256(json.dumps(identity(job), sort_keys=True).encode()).hexdigest()[:16]


def differing(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the fields that differ between two identities (a field missing on one side differs);
    for the data, which variant: `data cub/lowres`."""
    names = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) == current.get(key):
            continue
        if key == "data" and isinstance(saved.get(key), list) and isinstance(current.get(key), list):
            before, now = dict(map(tuple, saved[key])), dict(map(tuple, current[key]))
            names += [f"data {label}" for label in sorted(set(before) | set(now)) if before.get(label) != now.get(label)]
        else:
            names.append(key.rstrip("_"))  # lambda_ -> lambda, as the user writes it
    return names
