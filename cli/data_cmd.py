"""`cqd-port prepare`, `cqd-port synth`, `cqd-port gallery`: datasets on disk.

Thin: parses options, calls `cqd_port.data`, prints every output path.
User errors are `CqdError` (one line on stderr, exit code 2).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from cqd_port.data import PREPARED_DEFAULT


def prepare(
    dataset: str = typer.Option(..., "--dataset", help="cub, cars or folder (root/<class>/<image>; train.txt/test.txt or a seeded split)"),
    degradation: str = typer.Option(
        ..., "--degradation", help="original, localized, lowres, localized_lowres, edges, edges_opencv, edges_sobel, distorted, gray, or a plugin package.module:function"
    ),
    data_root: Path = typer.Option(..., "--data-root", help="the dataset folder (CUB_200_2011, Stanford Cars, or an ImageFolder)"),
    out: Path = typer.Option(
        PREPARED_DEFAULT, "--out", help="writes <out>/<dataset>/<degradation>[-box|-full]; the default, data/prepared, is where `reproduce` reads (its --prepared)"
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="worker processes; 0 = in this process; default: one per CPU this process may use, none for small datasets"
    ),
    source: Optional[str] = typer.Option(None, "--source", help="box or full: override the image the degradation starts from"),
    sed_model: Optional[Path] = typer.Option(None, "--sed-model", help="edges: the SED toolbox's modelBsds.mat (the paper's edges); edges_opencv: OpenCV's model.yml.gz (not the paper's)"),
    lowres_kernel: Optional[str] = typer.Option(None, "--lowres-kernel", help="bilinear (default: the user's specification) or bicubic (the release's imresize defaults); bicubic goes to <degradation>-bicubic"),
    lowres_path: Optional[str] = typer.Option(None, "--lowres-path", help="code (image->50->224) or paper (image->224->50->224)"),
    seed: int = typer.Option(0, "--seed", help="dataset-level seed of the random degradations (distorted, plugins)"),
    param: Optional[list[str]] = typer.Option(None, "--param", help="a plugin's parameter name=value (repeatable)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Write a degraded copy of a dataset (224x224 JPEG q75, same paths, manifest.json). Resumes."""
    from cqd_port.data.degrade import DegradationConfig
    from cqd_port.data.prepare import prepare_dataset
    from cqd_port.data.synth import is_synthetic

    changes: dict = {"seed": seed}
    if sed_model is not None:
        changes["sed_model"] = str(sed_model)
    if lowres_kernel is not None:
        changes["lowres_kernel"] = lowres_kernel
    if lowres_path is not None:
        changes["lowres_path"] = lowres_path
    if param:
        from cqd_port_cli.custom_cmd import _parameters

        changes["plugin_params"] = _parameters(param)
    config = replace(DegradationConfig(), **changes)
    target = prepare_dataset(dataset, degradation, data_root, out, source=source, workers=workers, config=config, progress=progress)
    tag = " (SYNTHETIC data)" if is_synthetic(target) else ""
    typer.echo(f"prepared {dataset}/{degradation}{tag}: {target}")
    typer.echo(f"manifest: {target / 'manifest.json'}")


def synth(
    out: Path = typer.Option(..., "--out", help="folder for the synthetic dataset (CUB layout)"),
    classes: int = typer.Option(20, "--classes", help="number of classes (2 to 108)"),
    train_per_class: int = typer.Option(30, "--train-per-class", help="training images per class"),
    test_per_class: int = typer.Option(20, "--test-per-class", help="test images per class"),
    size: int = typer.Option(224, "--size", help="image height in pixels"),
    seed: int = typer.Option(0, "--seed", help="random seed: the same seed draws the same dataset"),
    style: str = typer.Option("birds", "--style", help="birds or cars"),
) -> None:
    """Draw a SYNTHETIC fine-grained dataset in the CUB-200-2011 layout (for demos and tests)."""
    from cqd_port.data.synth import make_synthetic_dataset

    root = make_synthetic_dataset(out, classes, train_per_class, test_per_class, size, seed, style)
    total = classes * (train_per_class + test_per_class)
    typer.echo(f"SYNTHETIC {style} dataset, {classes} classes, {total} images: {root}")
    typer.echo(f"marker: {root / 'synthetic.json'}")


def gallery(
    data_root: Path = typer.Option(..., "--data-root", help="the dataset folder"),
    out: Path = typer.Option(..., "--out", help="the PNG to write"),
    dataset: str = typer.Option("cub", "--dataset", help="cub or cars"),
    n: int = typer.Option(4, "--n", help="images per row"),
    sed_model: Optional[Path] = typer.Option(None, "--sed-model", help="The SED toolbox's modelBsds.mat; without it the edges panel shows Sobel edges, labelled"),
) -> None:
    """A figure like the paper's Figure 3: high-quality images above their degraded versions."""
    from cqd_port.data.gallery import make_gallery
    from cqd_port.data.synth import is_synthetic

    path = make_gallery(data_root, out, dataset=dataset, n=n, sed_model=sed_model)
    tag = " (SYNTHETIC data)" if is_synthetic(data_root) else ""
    typer.echo(f"gallery{tag}: {path}")


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
    app.command("synth")(synth)
    app.command("gallery")(gallery)
