"""The data catalog: where each prepared data variant lives, how it is made, what it is.

A *data variant* is one prepared copy of a dataset (`degradation` applied to
`source`). `DataCatalog` owns, for every stage above it:

* where a variant lives (`variant_dir`: `<prepared>/<dataset>/<folder>`) and
  which variant is actually made (`concrete`: the demo's Sobel edges, a
  non-default low-resolution kernel);
* how it is prepared (`degradation_config`, `ensure`: prepare it from the raw
  dataset when missing or stale; `prepare_command` when it cannot be);
* its identity (`manifest_digest`: the SHA-256 of its manifest, which records
  the sources' fingerprint and every setting; `split_digest`: the image list
  and split a `cqd-port train` dataset is read with);
* the gate before any work: `check_preparable` (raw data and models present)
  and `check_plugins` (a plugin degradation run once on a REAL image of the
  dataset, with the run's parameters, through `degrade.check_plugin` and
  `degrade.degrade`), so a broken plugin stops a command before anything is
  trained or written.

`DomainData` turns prepared variants into `ImageStore`s (decoded once, cached
for the life of a command).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cqd_port.data import PREPARED_DEFAULT
from cqd_port.errors import CqdError

if TYPE_CHECKING:
    from cqd_port.data.degrade import DegradationConfig
    from cqd_port.data.records import DatasetIndex, ImageRecord
    from cqd_port.data.store import ImageStore

MISSING = "missing"  # the digest of a variant not prepared yet


@dataclass(frozen=True)
class DataVariant:
    """One prepared copy of a dataset: `degradation` applied to `source` (box crop or full image).

    `source` None means the degradation's own default (CUB degradations work on
    the box crop, CARS ones on the full image); the folder name says when the
    source was changed, e.g. `lowres-full` is `lowres` made from the full image.
    """

    dataset: str  # "cub" or "cars"
    degradation: str  # "localized", "original", "lowres", "edges", "distorted"
    source: str | None = None  # None (default), "full" or "box"
    lowres_kernel: str | None = None  # a non-default low-resolution kernel ("bicubic"), set by DataCatalog.concrete

    @property
    def folder(self) -> str:
        """The prepared folder's name, as `cqd_port.data.prepare.output_dir` writes it."""
        name = self.degradation if self.lowres_kernel is None else f"{self.degradation}-{self.lowres_kernel}"
        return name if self.source is None else f"{name}-{self.source}"

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.folder}"


@dataclass(frozen=True)
class DatasetSource:
    """A dataset of `cqd-port train`: its root and reader (`folder`: ImageFolder with the split options; `cub`; `cars`)."""

    root: Path
    format: str = "folder"
    test_fraction: float = 0.3
    split_seed: int = 0

    def read(self, name: str) -> DatasetIndex:
        """The `DatasetIndex` (named `name`)."""
        if self.format == "folder":
            from cqd_port.data.imagefolder import read_image_folder

            return read_image_folder(self.root, name=name, test_fraction=self.test_fraction, seed=self.split_seed)
        from cqd_port.data.prepare import read_dataset

        index = read_dataset(self.format, self.root)
        index.name = name
        return index


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def index_digest(index: DatasetIndex) -> str:
    """What a dataset was read as: its class names and every image's path, label and split flag (SHA-256, 16 hex)."""
    listing = {"classes": list(index.class_names), "images": [[r.path, r.label, bool(r.train)] for r in index.records]}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class DataCatalog:
    """Every data variant of a command: where it lives, how it is prepared, its identity (module docstring).

    `cub_root` / `cars_root` (or `sources` for `cqd-port train`'s own data) are
    the raw datasets a missing or stale variant is prepared from, by `workers`
    processes (None: one per usable CPU) with `prepare_config` as extra
    `DegradationConfig` fields; `edges_method` replaces `edges` (the demo's
    Sobel edges); `lowres_kernel` makes the low-resolution variants with
    "bilinear" (the specification, default) or "bicubic" (the release).
    """

    prepared: Path = PREPARED_DEFAULT
    cub_root: Path | None = None
    cars_root: Path | None = None
    sources: dict[str, DatasetSource] = field(default_factory=dict)
    sed_model: Path | None = None
    edges_method: str | None = None
    lowres_kernel: str = "bilinear"
    prepare_config: dict | None = None
    plugin_params: dict[str, dict] = field(default_factory=dict)
    workers: int | None = None

    # ------------------------------------------------------------------ where and how

    def concrete(self, variant: DataVariant) -> DataVariant:
        """The variant actually prepared: `edges` made with `edges_method`; a low-res variant with a non-default kernel."""
        from cqd_port.data.degrade import DEFAULT_LOWRES_KERNEL, LOWRES_DEGRADATIONS

        if variant.degradation == "edges" and self.edges_method and self.edges_method != "edges":
            return DataVariant(variant.dataset, self.edges_method, variant.source)
        if variant.degradation in LOWRES_DEGRADATIONS and self.lowres_kernel != DEFAULT_LOWRES_KERNEL:
            return replace(variant, lowres_kernel=self.lowres_kernel)
        return variant

    def variant_dir(self, variant: DataVariant) -> Path:
        """The prepared copy of a data variant: `<prepared>/<dataset>/<folder>` (`cqd_port.data.prepare.output_dir`)."""
        from cqd_port.data.prepare import output_dir

        concrete = self.concrete(variant)
        return output_dir(
            self.prepared, concrete.dataset, concrete.degradation, concrete.source, concrete.lowres_kernel,
            self.plugin_params.get(concrete.degradation),
        )

    def dataset_root(self, dataset: str) -> Path | None:
        if dataset in self.sources:
            return self.sources[dataset].root
        return self.cub_root if dataset == "cub" else self.cars_root

    def degradation_config(self, variant: DataVariant) -> DegradationConfig:
        """The `DegradationConfig` a variant is prepared with: `prepare_config`, the SED model, the low-res kernel
        (low-res variants only: other variants' settings stay the defaults), a plugin's parameters."""
        from cqd_port.data.degrade import LOWRES_DEGRADATIONS, DegradationConfig, is_plugin

        concrete = self.concrete(variant)
        extra = dict(self.prepare_config or {})
        if self.sed_model is not None:
            extra.setdefault("sed_model", str(self.sed_model))
        if concrete.degradation in LOWRES_DEGRADATIONS:
            extra["lowres_kernel"] = self.lowres_kernel
        if is_plugin(concrete.degradation):
            extra["plugin_params"] = dict(self.plugin_params.get(concrete.degradation) or {})
        return DegradationConfig(**extra)

    def prepare_command(self, concrete: DataVariant) -> str:
        """The `cqd-port prepare` line that writes `concrete` where this catalog reads it, with DIR for the raw dataset."""
        source = f" --source {concrete.source}" if concrete.source else ""
        kernel = f" --lowres-kernel {concrete.lowres_kernel}" if concrete.lowres_kernel else ""
        sed = f" --sed-model {self.sed_model or 'MODEL.yml.gz'}" if concrete.degradation == "edges" else ""
        return (
            f"`cqd-port prepare --dataset {concrete.dataset} --degradation {concrete.degradation}{source}{kernel}{sed} "
            f"--data-root DIR --out {self.prepared}` (DIR: the raw dataset folder)"
        )

    def _no_raw_data(self, variant: DataVariant) -> CqdError:
        concrete = self.concrete(variant)
        return CqdError(
            f"prepared data {self.variant_dir(variant)} missing; pass --{concrete.dataset}-root DIR (the raw dataset) "
            f"so it can be prepared, or run {self.prepare_command(concrete)}"
        )

    def is_prepared(self, variant: DataVariant) -> bool:
        from cqd_port.data.prepare import MANIFEST

        return (self.variant_dir(variant) / MANIFEST).is_file()

    def read_source(self, dataset: str) -> DatasetIndex | None:
        """The raw dataset of a `cqd-port train` source as its reader sees it now (None for CUB/Cars roots)."""
        source = self.sources.get(dataset)
        return source.read(dataset) if source is not None else None

    def ensure(self, variant: DataVariant, progress: bool = True) -> Path:
        """The prepared folder of `variant`, preparing it from the raw dataset when it is missing or stale.

        Preparation resumes where an interrupted one stopped (`prepare_dataset`);
        with the raw dataset given, a folder whose sources changed since is
        rebuilt (its fingerprint), one that is current is returned at once.
        CqdError naming the folder and the option when the raw dataset is not given.
        """
        from cqd_port.data.prepare import prepare_dataset

        folder = self.variant_dir(variant)
        concrete = self.concrete(variant)
        root = self.dataset_root(variant.dataset)
        if root is None:
            if self.is_prepared(variant):
                return folder
            raise self._no_raw_data(variant)
        return prepare_dataset(
            concrete.dataset,
            concrete.degradation,
            root,
            self.prepared,
            source=concrete.source,
            workers=self.workers,  # None: prepare's own default, what the machine has
            config=self.degradation_config(variant),
            progress=progress,
            index=self.read_source(concrete.dataset),
        )

    # ------------------------------------------------------------------ the gate before any work

    def check_preparable(self, variants: list[DataVariant]) -> None:
        """Fail before any work when a missing variant cannot be prepared (no raw data, no SED model)."""
        for variant in dict.fromkeys(variants):
            if self.is_prepared(variant):
                continue
            concrete = self.concrete(variant)
            if concrete.degradation == "edges" and self.sed_model is None:
                raise CqdError(
                    f"prepared data {self.variant_dir(variant)} missing and the paper's edges need the Structured Edge model: "
                    "pass --sed-model modelBsds.mat (the SED toolbox's forest) to this command, or, where it has no such option "
                    f"(`cqd-port train`), prepare the folder first with `cqd-port prepare --degradation edges --sed-model modelBsds.mat --out {self.prepared}`"
                )
            if self.dataset_root(variant.dataset) is None:
                raise self._no_raw_data(variant)

    def check_plugins(self, variants: list[DataVariant]) -> None:
        """Run every plugin degradation once on a real image of its dataset, with its parameters; CqdError naming it.

        `degrade.check_plugin` checks the contract (import, call, dtype and
        shape) on a test image; then the plugin degrades the dataset's first
        image as preparation will (its box, its per-image seed), so a plugin
        that only fails on real data fails here, before any training.
        """
        from cqd_port.data.degrade import check_plugin, degrade_from_source, is_plugin
        from cqd_port.data.images import read_image_rgb
        from cqd_port.data.prepare import default_source, image_seed, read_dataset

        for variant in dict.fromkeys(variants):
            concrete = self.concrete(variant)
            if not is_plugin(concrete.degradation) or self.is_prepared(variant):
                continue
            config = self.degradation_config(variant)
            root = self.dataset_root(variant.dataset)
            index = None
            if root is not None:  # without it, check_preparable names the missing root
                index = self.read_source(variant.dataset) or read_dataset(variant.dataset, root)
            record = index.records[0] if index is not None and index.records else None
            where = "a test image" if record is None else str(index.resolve(record))
            try:
                if record is None:
                    check_plugin(concrete.degradation, config)  # the contract, on a test image
                    continue
                check_plugin(concrete.degradation, config, read_image_rgb(index.resolve(record)), where)  # the contract, on the real image
                source = concrete.source or default_source(variant.dataset, concrete.degradation)
                crop = source == "box" and record.box is not None
                result = degrade_from_source(
                    concrete.degradation, read_image_rgb(index.resolve(record)), record.box, crop, config, image_seed(config.seed, record.path)
                )
            except CqdError:
                raise
            except Exception as exc:  # noqa: BLE001 - the user's code failed: name it, no traceback
                raise CqdError(
                    f"degradation plugin '{concrete.degradation}' failed on {where} ({type(exc).__name__}: {exc}); "
                    "fix the plugin or its parameters"
                ) from None
            if not isinstance(result, np.ndarray) or result.dtype != np.uint8 or result.ndim != 3 or result.shape[2] != 3:
                raise CqdError(
                    f"degradation plugin '{concrete.degradation}' returned {getattr(result, 'dtype', type(result).__name__)} "
                    f"{getattr(result, 'shape', '')} on {index.resolve(record)}; it must return a uint8 HxWx3 array"
                )

    # ------------------------------------------------------------------ identity

    def manifest_digest(self, variant: DataVariant) -> str:
        """SHA-256 (16 hex) of the variant's manifest (what it was made from and how), or `MISSING`."""
        from cqd_port.data.prepare import MANIFEST

        manifest = self.variant_dir(variant) / MANIFEST
        return file_digest(manifest)[:16] if manifest.is_file() else MISSING

    def split_digest(self, dataset: str) -> str | None:
        """For a `cqd-port train` dataset: the digest of its image list and split as read now (`index_digest`); else None."""
        index = self.read_source(dataset)
        return index_digest(index) if index is not None else None


# --------------------------------------------------------------------------- prepared variants as stores

NATIVE_DEGRADATIONS = ("original", "localized")
"""Variants the release read at native resolution and resized on the fly (domain A, the full CUB images)."""


class DomainData:
    """Prepared data variants as `ImageStore`s, cached for the life of a command.

    `ensure(variant)` returns the prepared folder of a variant (normally
    `DataCatalog.ensure`). Each (variant, records, size) is decoded once into a
    store (memory-mapped in the variant's `store/` folder, keyed by its
    sources and settings, so later runs and other processes reuse it) and kept
    for every later run; a model's average image is attached per use, not stored.

    With `domain_a="native"` (the release's pipeline) the `original` and
    `localized` variants of CUB/Cars (domain A, the full images) are read from
    the dataset's own images at NATIVE resolution (cropped to the box for
    `localized` or a `box` source) and resized to the network's input in
    single precision, bicubic with antialiasing, unrounded, once, as float32;
    `domain_a="prepared"` reads their prepared 224 JPEGs (cqd-port's old
    behaviour). Degraded variants are always the prepared uint8 files, as the
    release's `save_images.m` wrote them.
    """

    STORE_FOLDER = "store"

    def __init__(self, ensure: Callable[[DataVariant], Path], progress: bool = False, domain_a: str = "native") -> None:
        if domain_a not in ("native", "prepared"):
            raise CqdError(f"unknown domain_a '{domain_a}'; use native or prepared")
        self._ensure = ensure
        self._progress = progress
        self._domain_a = domain_a
        self._indices: dict[DataVariant, DatasetIndex] = {}
        self._stores: dict[tuple, ImageStore] = {}

    def index(self, variant: DataVariant) -> DatasetIndex:
        """The variant's prepared index (read once)."""
        if variant not in self._indices:
            from cqd_port.data.prepare import read_prepared

            self._indices[variant] = read_prepared(self._ensure(variant))
        return self._indices[variant]

    def dataset(self, variant: DataVariant, records: list[ImageRecord], image_size: tuple[int, int], average: np.ndarray) -> ImageStore:
        """`records` of the variant as a store of network inputs with `average` subtracted per batch."""
        from cqd_port.data.store import build_store

        key = (variant, tuple(r.path for r in records), tuple(image_size))
        if key not in self._stores:
            index = self.index(variant)
            root, boxes, dtype = index.root, None, "auto"
            native = self._native_source(variant, index) if self._domain_a == "native" else None
            if native is not None:
                root, by_path, crop = native
                boxes = [by_path[r.path] for r in records] if crop else None
                dtype = "float32"
            self._stores[key] = build_store(
                root,
                [r.path for r in records],
                [r.label for r in records],
                image_size,
                boxes=boxes,
                dtype=dtype,
                cache_dir=Path(index.root) / self.STORE_FOLDER,
                progress=self._progress,
            )
        return self._stores[key].with_average(average)

    @staticmethod
    def _native_source(variant: DataVariant, index: DatasetIndex) -> tuple[Path, dict[str, Any], bool] | None:
        """(dataset root, boxes by path, crop?) for a native-resolution variant, from its prepared folder's settings."""
        from cqd_port.data.prepare import PARAMS_FILE, read_dataset

        if variant.degradation not in NATIVE_DEGRADATIONS or variant.dataset not in ("cub", "cars"):
            return None  # other datasets (`cqd-port train`'s own data): A is read from its prepared images
        params_path = Path(index.root) / PARAMS_FILE
        try:
            params = json.loads(params_path.read_text(encoding="utf-8"))
            data_root = Path(params["data_root"])
        except (OSError, ValueError, KeyError, TypeError):
            raise CqdError(f"{params_path} is missing or unreadable; delete {index.root} and rerun to prepare it again") from None
        raw = read_dataset(variant.dataset, data_root)
        by_path = {r.path: r.box for r in raw.records}
        missing = [r.path for r in index.records if r.path not in by_path]
        if missing:
            raise CqdError(f"{data_root} no longer has {missing[0]} (listed in {index.root}); point the grid at the dataset it was prepared from")
        crop = variant.degradation == "localized" or params.get("source") == "box"
        return data_root, by_path, crop
