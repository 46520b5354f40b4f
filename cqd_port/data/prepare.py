"""Degraded copies of a dataset on disk, as the released code made them.

The original code wrote each cross-quality dataset once (MATLAB `imwrite`,
JPEG at its default quality 75, every image 224x224) and trained from those
files. We do the same: `prepare_dataset` reads every image, optionally crops
it to its box, applies one degradation (`cqd_port.data.degrade`) and writes
the result under the SAME relative path, then writes `manifest.json` (last)
so `read_prepared` gives a `DatasetIndex` without the original annotation
files.

Source rule (docs/architecture.md, "Domains of each Table 1 task"):
CUB degradations start from the bird cropped to its box (`lowres`, `edges`,
`edges_sobel`, `distorted`, `gray`); `original`, `localized` and
`localized_lowres` start from the full image (they crop themselves when they
need to); CARS always starts from the full image. `source="full"` on CUB
gives e.g. the Local.+Res. task's B (low resolution of the full image); an
overridden source is marked in the folder name (`lowres-full`), and so is a
low-resolution kernel other than the default bilinear (`lowres-bicubic`).

Resumable (finished files are skipped; every write is atomic, and the
temporary files of a killed run are removed when it resumes), parallel
(`workers` processes; 0 = in-process) and deterministic: the random seed of
each image (the distortion) is derived from the config's seed and the
image's relative path, never from the order or the worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import cv2

from cqd_port.data import PREPARED_DEFAULT  # noqa: F401 - re-exported: prepare's default --out
from cqd_port.data.images import image_size, read_image_rgb
from cqd_port.data.records import Box, DatasetIndex, ImageRecord, clip_box, map_box_to_resized, safe_join
from cqd_port.errors import CqdError
from cqd_port.fileio import atomic_write_bytes, atomic_write_json, check_output_dir, remove_stale_temporaries

if TYPE_CHECKING:
    from cqd_port.data.degrade import DegradationConfig

JPEG_QUALITY = 75  # MATLAB imwrite's default JPEG quality
MANIFEST = "manifest.json"
PARAMS_FILE = ".prepare-params.json"
SOURCE_HINT = "--source for prepare, data.source in a train config"
PREPARED_OPTION = "prepared-data folder (--out for prepare, data.prepared in a train config, --prepared for reproduce)"
BOX_SOURCE_CUB = ("lowres", "edges", "edges_opencv", "edges_sobel", "distorted", "gray")


def read_dataset(dataset: str, data_root: str | Path) -> DatasetIndex:
    """Read `cub`, `cars` or `folder` (the ImageFolder layout, `cqd_port.data.imagefolder`) from `data_root`.

    A `cars` root in the CUB layout (a synthetic `--style cars` dataset) is
    read with the CUB reader. `folder` uses the reader's default split
    (`train.txt`/`test.txt`, else 0.3 of each class for testing, seed 0);
    pass `prepare_dataset(index=...)` for another.
    """
    from cqd_port.data.cars import read_cars
    from cqd_port.data.cub import read_cub

    root = Path(data_root)
    if dataset == "cub":
        return read_cub(root, name="cub")
    if dataset == "cars":
        if (root / "images.txt").is_file() and not (root / "cars_annos.mat").is_file():
            return read_cub(root, name="cars")
        return read_cars(root, name="cars")
    if dataset == "folder":
        from cqd_port.data.imagefolder import read_image_folder

        return read_image_folder(root, name="folder")
    raise CqdError(f"unknown --dataset '{dataset}'; use cub, cars or folder (one sub-folder per class)")


def default_source(dataset: str, degradation: str) -> str:
    """'box' or 'full': where the released code started each degradation from."""
    if dataset == "cub" and degradation in BOX_SOURCE_CUB:
        return "box"
    return "full"


def output_dir(
    out: str | Path,
    dataset: str,
    degradation: str,
    source: str | None,
    lowres_kernel: str | None = None,
    plugin_params: dict | None = None,
) -> Path:
    """`<out>/<dataset>/<degradation>[-<kernel>][-<source>]`.

    `-bicubic` (any kernel but the default bilinear) marks a low-resolution
    variant made with another `lowres_kernel`; `-full`/`-box` a source that
    differs from the degradation's default. So `lowres`, `lowres-full`,
    `lowres-bicubic`, `lowres-bicubic-full` never share a folder. A
    `module:function` plugin's folder is `module.function[-<hash of plugin_params>]`.
    """
    from cqd_port.data.degrade import DEFAULT_LOWRES_KERNEL, LOWRES_DEGRADATIONS, degradation_folder

    folder = degradation_folder(degradation, plugin_params)
    if lowres_kernel is not None and lowres_kernel != DEFAULT_LOWRES_KERNEL and degradation in LOWRES_DEGRADATIONS:
        folder = f"{folder}-{lowres_kernel}"
    if source is not None and source != default_source(dataset, degradation):
        folder = f"{folder}-{source}"
    return Path(out) / dataset / folder


def source_fingerprint(index: DatasetIndex, settings: dict) -> str:
    """A hash of what a prepared folder is made from: the image list, each image's size and mtime, and the settings.

    `settings` holds whatever else changes the output (degradation parameters,
    source, JPEG quality). Equal fingerprints mean the same inputs; any image
    added, removed, relabelled, re-split, re-boxed or rewritten in place (size
    or mtime) changes it. Cheap: one `stat` per image, no pixels read. The
    tensor store keys its caches on it (`prepared_fingerprint`).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    digest.update(json.dumps(index.class_names).encode("utf-8"))
    for record in index.records:
        try:
            stat = index.resolve(record).stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(json.dumps([record.to_dict(), size, mtime]).encode("utf-8"))
    return digest.hexdigest()


def prepared_fingerprint(directory: str | Path) -> str:
    """The `source_fingerprint` a finished prepared folder records in its manifest.json."""
    path = Path(directory) / MANIFEST
    try:
        fingerprint = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CqdError(f"{path} is missing or has no fingerprint; rerun `cqd-port prepare` for {directory}") from None
    return str(fingerprint)


def _is_current(target: Path, index: DatasetIndex, fingerprint: str) -> bool:
    """A finished folder (manifest with this fingerprint) whose every image is still there."""
    try:
        current = prepared_fingerprint(target) == fingerprint
    except CqdError:
        return False
    return current and all(safe_join(target, r.path).is_file() for r in index.records)


def _rebuild(target: Path, reason: str) -> None:
    """Empty a prepared folder whose inputs changed, saying so on one line (the manifest goes first)."""
    print(f"{target}: {reason}; rebuilding it", file=sys.stderr, flush=True)
    (target / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(target)
    target.mkdir(parents=True)


def image_seed(seed: int, relative_path: str) -> int:
    """A stable 32-bit seed from (config seed, relative path); independent of order and worker."""
    digest = hashlib.sha256(f"{int(seed)}:{relative_path}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def _output_box(
    record_box: Box | None, image_size: tuple[int, int], cropped: bool, out_size: int, degradation: str, config: DegradationConfig
) -> Box | None:
    """The record's box in the out_size x out_size output: the whole image when the output is the crop.

    Most degradations resize the whole image to out_size x out_size (aspect not
    kept). `distorted` keeps the aspect (shorter side = out_size) and keeps the
    top-left window (the release; the centre one with `distortion_placement=
    "center"`); its box ignores the warp's few-pixel shifts.
    """
    if cropped:
        return (1, 1, out_size, out_size)
    if record_box is None:
        return None
    from cqd_port.data.tps import distortion_window

    h, w = image_size
    box = clip_box(record_box, w, h)
    if degradation != "distorted":
        return map_box_to_resized(box, (h, w), (out_size, out_size))
    (rh, rw), (top, left) = distortion_window((h, w), config.tps_config())
    x1, y1, x2, y2 = map_box_to_resized(box, (h, w), (rh, rw))
    x1, x2 = max(1, x1 - left), min(out_size, x2 - left)
    y1, y2 = max(1, y1 - top), min(out_size, y2 - top)
    if x2 < x1 or y2 < y1:  # the object lies outside the kept window
        return None
    return (x1, y1, x2, y2)


@contextlib.contextmanager
def _single_threaded_children():
    """Child processes started inside this block import numpy with one BLAS/OpenMP thread."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _init_worker() -> None:
    # Each process handles one image at a time; cv2's own thread pool would oversubscribe the cores.
    cv2.setNumThreads(1)


def _process(job: tuple) -> tuple[str, tuple[int, int] | None, str | None, bool]:
    """Degrade one image and write it atomically.

    Returns (path, source size, error or None, whether a plugin raised it).
    """
    rel, src, dst, degradation, record_box, crop, config, seed = job
    from cqd_port.data.degrade import PluginFailure, degrade_from_source

    try:
        image = read_image_rgb(src)
    except CqdError:
        return rel, None, "cannot be decoded", False
    size = image.shape[:2]
    if crop and record_box is None:
        return rel, size, "has no bounding box to crop to", False
    try:
        result = degrade_from_source(degradation, image, record_box, crop, config, seed, rel)
    except PluginFailure as exc:
        return rel, size, exc.detail, True
    except Exception as exc:  # noqa: BLE001 - collect per-image failures and report them together
        return rel, size, f"{degradation} failed: {exc}", False
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if dst.suffix.lower() in (".jpg", ".jpeg") else []
    # Encoded in memory (the same bytes cv2.imwrite writes), then written by fileio: a full disk is then a real
    # ENOSPC with the size it needs (the disk-full line every writer gives), not a bare False from imwrite.
    try:
        encoded, data = cv2.imencode(dst.suffix, cv2.cvtColor(result, cv2.COLOR_RGB2BGR), params)
    except cv2.error:
        encoded = False
    if not encoded:
        raise CqdError(f"cannot encode {dst} as {dst.suffix}; convert the source images to .jpg or .png")
    atomic_write_bytes(dst, data.tobytes())
    return rel, size, None, False


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and `taskset` narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(num_images: int) -> int:
    """`prepare`'s default number of worker processes: one per usable CPU, none for a small job.

    A worker costs a process start and the imports (about a second), so small
    jobs stay in this process (0) and large ones get at most one worker per 16
    images, never more than the machine has.
    """
    workers = min(usable_cpus(), num_images // 16)
    return workers if workers > 1 else 0


def _run(jobs: list[tuple], workers: int, progress: bool, label: str) -> Iterable[tuple[str, tuple[int, int] | None, str | None, bool]]:
    bar = None
    if progress and jobs:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task(label, total=len(jobs))
    try:
        if workers <= 0:
            for job in jobs:
                yield _process(job)
                if bar is not None:
                    bar.advance(task)
        else:
            # Spawned (not forked: the parent may hold threads whose locks a forked child would inherit held), and
            # one BLAS/OpenMP thread per worker: N workers x N BLAS threads would oversubscribe the cores.
            with _single_threaded_children(), ProcessPoolExecutor(
                max_workers=workers, initializer=_init_worker, mp_context=multiprocessing.get_context("spawn")
            ) as pool:
                for result in pool.map(_process, jobs, chunksize=4):
                    yield result
                    if bar is not None:
                        bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()


def prepare_dataset(
    dataset: str,
    degradation: str,
    data_root: str | Path,
    out: str | Path,
    source: str | None = None,
    workers: int | None = None,
    config: DegradationConfig | None = None,
    progress: bool = True,
    index: DatasetIndex | None = None,
) -> Path:
    """Write `<out>/<dataset>/<degradation>[-source]` (224x224 JPEG q75, same relative paths + manifest.json).

    `degradation` is a registry name or a `module:function` plugin (checked
    once on a test image before any file is written). `index` is the dataset
    already read (e.g. an ImageFolder with its own split); by default it is
    read from `data_root` by `read_dataset(dataset, ...)`. `workers` None
    picks `default_workers` (0: this process). Returns the output folder.
    Raises CqdError listing every missing or unreadable image together; the
    manifest is only written when all images are done, and a rerun skips
    every file already written.
    """
    from cqd_port.data.degrade import DEGRADATIONS, DegradationConfig, check_plugin, is_plugin

    if config is None:
        config = DegradationConfig()
    plugin = is_plugin(degradation)
    if not plugin and degradation not in DEGRADATIONS:
        raise CqdError(
            f"unknown --degradation '{degradation}'; choose one of {', '.join(DEGRADATIONS)} or a plugin package.module:function"
        )
    if source not in (None, "box", "full"):
        raise CqdError(f"unknown --source '{source}'; use box or full")
    if plugin:
        check_plugin(degradation, config)
    needs_box = False if plugin else DEGRADATIONS[degradation].needs_box
    effective = source if source is not None else default_source(dataset, degradation)
    if needs_box and effective == "box":
        raise CqdError(f"source box does not apply to '{degradation}', which crops to the box itself; drop it ({SOURCE_HINT})")
    if degradation == "edges":  # a missing or broken model fails once, up front
        from cqd_port.data.sed import read_sed_model

        read_sed_model(config.sed_model)
    elif degradation == "edges_opencv":
        from cqd_port.data.edges import load_sed_model

        load_sed_model(config.sed_model)
    if index is None:
        index = read_dataset(dataset, data_root)
    index.check_images_exist()
    if (effective == "box" or needs_box) and any(r.box is None for r in index.records):
        raise CqdError(f"'{degradation}' from the box needs bounding boxes, but {index.root} has images without one; use source full ({SOURCE_HINT})")

    check_output_dir(out, PREPARED_OPTION)
    target = check_output_dir(output_dir(out, dataset, degradation, source, config.lowres_kernel, config.plugin_params), PREPARED_OPTION)
    out_size = config.out_size
    params = {
        "dataset": dataset,
        "degradation": degradation,
        "source": effective,
        "data_root": str(Path(data_root).resolve()),
        **({"split": index.split} if index.split else {}),  # only where a reader chose the split: older folders stay valid
        "parameters": config.as_dict(),
        "jpeg_quality": JPEG_QUALITY,
    }
    # Settings that differ are refused (another --out is wanted); sources changed in place are rebuilt.
    fingerprint = source_fingerprint(index, params)
    params_path = target / PARAMS_FILE
    if params_path.is_file():
        try:
            previous = json.loads(params_path.read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict) or {k: v for k, v in previous.items() if k != "fingerprint"} != params:
            raise CqdError(
                f"{target} was prepared with different settings ({params_path}); use another {PREPARED_OPTION} or delete {target}"
            )
        if previous.get("fingerprint") != fingerprint:
            _rebuild(target, f"the images under {index.root} changed since it was prepared")
            atomic_write_json(params_path, {**params, "fingerprint": fingerprint})
    else:
        atomic_write_json(params_path, {**params, "fingerprint": fingerprint})
    remove_stale_temporaries(target, recursive=True)  # half-written files of a killed prepare (dead writers only)
    if _is_current(target, index, fingerprint):
        return target  # finished from these very sources: nothing to redo (cheap, so reproduce can always ask)

    crop = effective == "box"
    sizes: dict[str, tuple[int, int]] = {}
    jobs = []
    for record in index.records:
        dst = safe_join(target, record.path)
        if dst.is_file():
            continue
        jobs.append((record.path, index.resolve(record), dst, degradation, record.box, crop, config, image_seed(config.seed, record.path)))
    if workers is None:
        workers = default_workers(len(jobs))
    failures: list[str] = []
    plugin_failures: list[str] = []
    label = f"{dataset}/{target.name}"
    for rel, size, error, by_plugin in _run(jobs, workers, progress, label):
        if error is not None:
            (plugin_failures if by_plugin else failures).append(f"{rel} ({error})")
        elif size is not None:
            sizes[rel] = tuple(size)  # type: ignore[assignment]
    if plugin_failures:  # the plugin's fault, not the images': say so, and where its parameters come from
        from cqd_port.data.degrade import PARAMETERS_HINT

        raise CqdError(
            f"degradation plugin '{degradation}' failed on {len(plugin_failures)} of {len(jobs)} images ({_first(plugin_failures)}); "
            f"fix the plugin or its parameters ({PARAMETERS_HINT}) and rerun (finished images are kept)"
        )
    if failures:
        raise CqdError(
            f"{len(failures)} images could not be prepared ({_first(failures)}); replace or remove them under {index.root} and rerun "
            "(finished images are kept)"
        )

    records = []
    for record in index.records:
        if record.path not in sizes and not (crop or needs_box) and record.box is not None:
            sizes[record.path] = image_size(index.resolve(record))
        out_box = _output_box(record.box, sizes.get(record.path, (out_size, out_size)), crop or needs_box, out_size, degradation, config)
        records.append(dataclasses.replace(record, box=out_box).to_dict())
    from cqd_port.data.synth import is_synthetic

    synthetic = is_synthetic(index.root)
    manifest = {
        "format": 1,
        "synthetic": synthetic,
        "dataset": dataset,
        "degradation": degradation,
        "source": effective,
        "source_root": str(Path(index.root).resolve()),
        "split": index.split,
        "out_size": out_size,
        "jpeg_quality": JPEG_QUALITY,
        "parameters": params["parameters"],
        "fingerprint": fingerprint,
        "counts": {
            "images": len(records),
            "train": sum(1 for r in index.records if r.train),
            "test": sum(1 for r in index.records if not r.train),
            "classes": index.num_classes,
        },
        "class_names": index.class_names,
        "records": records,
    }
    if synthetic:
        atomic_write_json(target / "synthetic.json", {"synthetic": True, "prepared_from": str(Path(index.root).resolve())})
    atomic_write_json(target / MANIFEST, manifest)
    return target


def _first(failures: list[str], shown: int = 5) -> str:
    return "; ".join(failures[:shown]) + ("; ..." if len(failures) > shown else "")


def read_prepared(directory: str | Path) -> DatasetIndex:
    """The `DatasetIndex` of a prepared folder, from its `manifest.json` alone."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CqdError(f"{directory} has no {MANIFEST}; run `cqd-port prepare` for it first (an interrupted run resumes)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        records = [ImageRecord.from_dict(r) for r in manifest["records"]]
        class_names = [str(n) for n in manifest["class_names"]]
        name = f"{manifest['dataset']}-{directory.name}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CqdError(f"{path} is corrupt ({exc}); delete it and rerun `cqd-port prepare`") from exc
    index = DatasetIndex(root=directory, name=name, class_names=class_names, records=records, split=str(manifest.get("split", "")))
    for record in records:
        index.resolve(record)
        if not 0 <= record.label < len(class_names):
            raise CqdError(f"{path}: record {record.path} has label {record.label} outside 0..{len(class_names) - 1}; rerun prepare")
    return index


def prepared_out_size(directory: str | Path) -> int | None:
    """The side of a prepared folder's square images (its manifest's `out_size`), None when unknown."""
    try:
        return int(json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))["out_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
