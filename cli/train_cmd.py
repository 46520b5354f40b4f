"""`cqd-port reproduce` (Tables 1 and 2) and `cqd-port demo` (the same grid on synthetic data, on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cqd_port.data import PREPARED_DEFAULT
from cqd_port.errors import CqdError


def _split(values: Optional[list[str]]) -> list[str] | None:
    """`--tasks a,b --tasks c` -> [a, b, c]; None when not given."""
    if not values:
        return None
    out = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return out or None


def _gpus(text: Optional[str]) -> tuple[int, ...]:
    """`0,1` -> (0, 1): one launcher slot per entry (`0,0,1,1`: two runs at once on each GPU)."""
    if not text:
        return ()
    try:
        gpus = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CqdError(f"--gpus {text}: expected GPU numbers separated by commas, e.g. --gpus 0,1") from None
    if any(g < 0 for g in gpus):
        raise CqdError(f"--gpus {text}: GPU numbers must be non-negative")
    return gpus  # a number given twice runs two processes on that GPU (VGG-M at batch 128 needs well under 10 GB)


def register(app: typer.Typer) -> None:
    @app.command("reproduce")
    def reproduce(
        table: int = typer.Option(1, "--table", help="Paper table to reproduce: 1 (seven tasks x seven methods) or 2 (vgg-m / vgg-vd)."),
        cub_root: Optional[Path] = typer.Option(None, "--cub-root", help="CUB-200-2011 folder (needed only to prepare missing CUB variants)."),
        cars_root: Optional[Path] = typer.Option(None, "--cars-root", help="Stanford Cars folder (needed only to prepare missing CARS variants)."),
        prepared: Path = typer.Option(PREPARED_DEFAULT, "--prepared", help="Prepared (degraded) data variants: <DIR>/<dataset>/<variant>; the default is where `prepare` writes (its --out)."),
        models: Path = typer.Option(Path("models"), "--models", help="Folder with imagenet-vgg-m.pt/.mat and imagenet-vgg-verydeep-16.pt/.mat."),
        sed_model: Optional[Path] = typer.Option(None, "--sed-model", help="Structured Edge Detection model for the edge variants: the toolbox's modelBsds.mat (model.yml.gz with --edges-detector opencv)."),
        edges_detector: str = typer.Option("sed", "--edges-detector", help="sed: the toolbox's edgesDetect, as the release (the paper's edges); opencv: OpenCV's detector, NOT the paper's edges; sobel: model-free, NOT the paper's."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run folders and results (default runs/table1 or runs/table2)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        gpus: Optional[str] = typer.Option(
            None, "--gpus", help="--launcher local: one run at a time per entry, pinned to that GPU, e.g. 0,1 (0,0,1,1: two per GPU; with --device cpu: CPU processes)."
        ),
        launcher: str = typer.Option("local", "--launcher", help="local (this node) or slurm (one SLURM job per run; see README 'On a SLURM cluster')."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Run every cell under each seed, e.g. 0,1,2 (results: mean ± std, paired CQD - fine-tuning). Default 0."),
        select: Optional[list[str]] = typer.Option(
            None, "--select", help="Choose lambda/T on a validation split, e.g. --select lambda=20,50,200 [--select T=5,10]; a distiller's weight: fitnets=0.01,0.1 (default: its documented candidates)."
        ),
        rerun: bool = typer.Option(False, "--rerun", help="Retrain runs whose folder holds a run made with other settings (instead of stopping)."),
        wait: bool = typer.Option(False, "--wait", help="--launcher slurm: follow the jobs with a progress bar until they end, then collect."),
        partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition."),
        account: Optional[str] = typer.Option(None, "--account", help="SLURM account."),
        time_minutes: int = typer.Option(24 * 60, "--time", help="SLURM time limit per job, minutes (a job that hits it is requeued and resumes)."),
        gpus_per_job: int = typer.Option(1, "--gpus-per-job", help="SLURM GPUs per run job."),
        cpus_per_job: int = typer.Option(8, "--cpus-per-job", help="SLURM CPUs per job."),
        mem: Optional[str] = typer.Option(None, "--mem", help="SLURM memory per job, e.g. 64G."),
        sbatch_extra: Optional[list[str]] = typer.Option(None, "--sbatch-extra", help="Extra sbatch option, repeatable, e.g. --sbatch-extra=--qos=high."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per run (paper: 30); the schedule is squeezed to fit."),
        tasks: Optional[list[str]] = typer.Option(None, "--tasks", help="Only these tasks (comma-separated or repeated)."),
        methods: Optional[list[str]] = typer.Option(
            None, "--methods", help="Only these methods (comma-separated or repeated); fitnets, at, sp, rkd, dkd add distiller rows (with fine_tuning and cqd to compare)."
        ),
        augmentation_classes: str = typer.Option("2k", "--augmentation-classes", help="A+B classifier: 2k (released code) or k."),
        lowres_kernel: str = typer.Option("bilinear", "--lowres-kernel", help="Low-resolution variants: bilinear (the specification) or bicubic (the release's imresize defaults; prepared into <variant>-bicubic)."),
        a_cqd_start: str = typer.Option("a_model", "--a-cqd-start", help="A-CQD's student starts from a_model (the paper's text) or imagenet (the released script: the same run as CQD)."),
        vd_vd_lambda: Optional[float] = typer.Option(None, "--vd-vd-lambda", help="Lambda of Table 2's vgg-vd -> vgg-vd (default 200, the release's run_CQD.m; the paper: 50)."),
        tf32: bool = typer.Option(False, "--tf32", help="Allow TF32 on Ampere+ GPUs (MatConvNet computed in strict float32)."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Processes preparing missing data variants (default: one per usable CPU; 0: in this process)."),
        average_image: str = typer.Option("stored", "--average-image", help="Subtract the model's averageImage as stored (the release's imdb_get_batch) or its mean colour (colour)."),
        domain_a: str = typer.Option("native", "--domain-a", help="Domain A and full images: native (read at native resolution, resized in single precision, as the release) or prepared (their 224x224 JPEGs)."),
        checkpoint_every: Optional[float] = typer.Option(
            None, "--checkpoint-every",
            help="Seconds between a run's checkpoints (default 60; one after its last epoch; 0: every epoch). A crash loses at most this much training; changes no number.",
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print every cell, every job (all seeds, validation runs) with its state and lambda/T, the data and models, then stop."),
    ) -> None:
        """Train and evaluate every cell of the paper's Table 1 or 2; write results.json and results.md."""
        from cqd_port.experiments.dryrun import describe_plan
        from cqd_port.experiments.grid import run_grid, submit_grid
        from cqd_port.experiments.launch import LAUNCHERS, SlurmOptions
        from cqd_port.experiments.plan import parse_seeds, parse_select, plan_grid
        from cqd_port.experiments.settings import GridConfig

        if launcher not in LAUNCHERS:
            raise CqdError(f"--launcher {launcher}: use local or slurm")
        plan = plan_grid(table, _split(tasks), _split(methods), epochs, augmentation_classes, a_cqd_start, vd_vd_lambda)
        edges_methods = {"sed": None, "opencv": "edges_opencv", "sobel": "edges_sobel"}
        if edges_detector not in edges_methods:
            raise CqdError(f"--edges-detector {edges_detector}: use sed (the paper's), opencv or sobel")
        if average_image not in ("stored", "colour"):
            raise CqdError(f"--average-image {average_image}: use stored (the release) or colour")
        if domain_a not in ("native", "prepared"):
            raise CqdError(f"--domain-a {domain_a}: use native (the release) or prepared")
        seed_list = parse_seeds(seeds)
        grid = parse_select(select)
        config = GridConfig(
            out=out if out is not None else Path(f"runs/table{table}"),
            prepared=prepared,
            models=models,
            cub_root=cub_root,
            cars_root=cars_root,
            sed_model=sed_model,
            edges_method=edges_methods[edges_detector],
            device=device,
            gpus=_gpus(gpus),
            tf32=tf32,
            workers=workers,
            lowres_kernel=lowres_kernel,
            average_image=average_image,
            domain_a=domain_a,
            **({} if checkpoint_every is None else {"checkpoint_interval": checkpoint_every}),
        )
        if dry_run:
            typer.echo("\n".join(describe_plan(plan, config, seed_list, grid)))
            return
        if launcher == "slurm":
            options = SlurmOptions(partition, account, time_minutes, gpus_per_job, cpus_per_job, mem, list(sbatch_extra or []))
            jobs, outcome = submit_grid(plan, config, options, seeds=seed_list, select=grid, rerun=rerun, wait=wait, say=typer.echo)
            if not wait:
                typer.echo(f"{len(jobs)} job(s) in {config.out}/slurm-jobs.json; run this command again (or `cqd-port report {config.out}`) to collect what has finished")
            typer.echo(outcome.markdown)
            return
        outcome = run_grid(plan, config, seeds=seed_list, select=grid, rerun=rerun)
        typer.echo(outcome.markdown)
        typer.echo(f"wrote {outcome.results_json} and {outcome.results_md}")

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the synthetic data, the stand-in model and the runs go."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per run (default: the demo's tuned value)."),
        sed_model: Optional[Path] = typer.Option(None, "--sed-model", help="The SED toolbox's modelBsds.mat for the edge columns (default: Sobel edges)."),
        device: str = typer.Option("cpu", "--device", help="cpu (the demo's target), auto, cuda or cuda:N."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Run every cell under each seed, e.g. 0,1 (default 0: one run per cell, minutes)."),
        select: Optional[list[str]] = typer.Option(
            None, "--select", help="lambda/T candidates chosen on validation (default lambda=20,50,200; 'none': the paper's lambda)."
        ),
        lowres_kernel: str = typer.Option("bilinear", "--lowres-kernel", help="Low-resolution columns: bilinear (the specification) or bicubic (the release)."),
        a_cqd_start: str = typer.Option("a_model", "--a-cqd-start", help="A-CQD from a_model (the paper's text) or imagenet (the released script)."),
        tasks: Optional[list[str]] = typer.Option(None, "--tasks", help="Only these Table 1 tasks, e.g. res_cub,edge_cars (default: all seven)."),
        methods: Optional[list[str]] = typer.Option(
            None, "--methods", help="Only these methods; fitnets, at, sp, rkd, dkd add distiller rows (with fine_tuning and cqd), e.g. cqd,fitnets,at,sp,rkd,dkd."
        ),
        custom: bool = typer.Option(False, "--custom", help="Instead: `cqd-port train` on your-own-data terms (ImageFolder, blur plugin, ResNet-18 f and g); default --out runs/demo-custom."),
    ) -> None:
        """Table 1's whole grid end to end on SYNTHETIC data, small images and a narrow VGG-M, on a CPU."""
        if custom:
            from cqd_port.experiments.custom_demo import CustomDemoConfig, run_custom_demo

            custom_out = out if out != Path("runs/demo") else CustomDemoConfig.out
            outcome = run_custom_demo(CustomDemoConfig(out=custom_out, epochs=epochs or CustomDemoConfig.epochs, device=device))
            typer.echo(outcome.report)
            return
        from cqd_port.experiments.demo import DemoConfig, run_demo
        from cqd_port.experiments.plan import parse_seeds, parse_select

        config = DemoConfig(
            out=out,
            epochs=epochs or DemoConfig.epochs,
            sed_model=sed_model,
            device=device,
            seeds=parse_seeds(seeds),
            lowres_kernel=lowres_kernel,
            a_cqd_start=a_cqd_start,
            tasks=_split(tasks),
            methods=_split(methods),
        )
        if select == ["none"]:
            config.select = None
        elif select:
            config.select = parse_select(select)
        outcome = run_demo(config)
        typer.echo(outcome.report)
