"""Launchers (submitit local, SLURM through a stub sbatch), run locks, run identity, seeds.

The SLURM path is checked without SLURM: a stub `sbatch` on PATH keeps each
submitted script and answers with a made-up job id, so the test reads the
dependency flags the grid's DAG produced.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cqd_port.data.synth import make_synthetic_dataset
from cqd_port.errors import CqdError
from cqd_port.experiments.dryrun import describe_plan
from cqd_port.experiments.grid import run_grid
from cqd_port.experiments.plan import plan_grid
from cqd_port.experiments.runfolder import EXECUTIONS, LOCK, RunLock
from cqd_port.experiments.settings import GridConfig
from cqd_port.experiments.results import load_results
from cqd_port.models.vgg import init_state, vgg_m_specs
from matconvnet_weights.convert import save_checkpoint

PREPARE_64 = {"out_size": 64, "lowres_size": 14, "distortion_grid_start": 2, "distortion_grid_step": 5, "distortion_sigma": 1.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two classes, 3 + 1 images each, a 1/8-wide random 'ImageNet' VGG-M: plumbing only."""
    root = tmp_path_factory.mktemp("tiny")
    birds = make_synthetic_dataset(root / "birds", classes=2, train_per_class=3, test_per_class=1, size=64, seed=3, style="birds")
    specs = vgg_m_specs(num_classes=10, width=0.125, input_size=64, softmax=True)
    meta = {"normalization": {"imageSize": [64, 64, 3], "averageImage": np.array([120.0, 115.0, 100.0], dtype=np.float32).reshape(1, 1, 3)}}
    save_checkpoint(root / "models" / "imagenet-vgg-m.pt", specs, init_state(specs, seed=1, method="xavierimproved"), meta)
    return root, birds


def _config(tiny, out: Path) -> GridConfig:
    root, birds = tiny
    return GridConfig(
        out=out, prepared=root / "prepared", models=root / "models", cub_root=birds, device="cpu", workers=0,
        progress=False, prepare_config=PREPARE_64, batch_size=4,
    )  # fmt: skip


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------- locks


def test_lock_is_exclusive_and_the_second_waits(tmp_path):
    path = tmp_path / "run" / LOCK
    order: list[str] = []
    with RunLock(path, say=lambda m: order.append("waiting")) as first:
        holder = json.loads(path.read_text())
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid() and holder["time"]

        def second():
            with RunLock(path, say=lambda m: order.append("waiting"), poll_seconds=0.05):
                order.append("second holds it")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first releases")
        first.release()
        thread.join(5)
    assert order == ["waiting", "first releases", "second holds it"]
    assert not path.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / LOCK
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "time": "2026-01-01 00:00:00"}))
    messages: list[str] = []
    with RunLock(path, say=messages.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(messages) == 1 and "taking over a stale lock" in messages[0] and "2026-01-01" in messages[0]


def test_local_slots_pin_cuda_visible_devices(tmp_path):
    """`--gpus 3` gives the job CUDA_VISIBLE_DEVICES=3 (submitit's LocalExecutor does the pinning)."""
    from cqd_port.experiments.launch import _local_executor

    executor = _local_executor(GridConfig(out=tmp_path, device="cuda"), 3)
    assert executor.submit(os.getenv, "CUDA_VISIBLE_DEVICES").result() == "3"


# --------------------------------------------------------------------------- identity, resume, seeds


def test_identity_mismatch_is_refused_then_rerun(tiny, tmp_path):
    config = _config(tiny, tmp_path / "runs")
    run_grid(plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=1), config)
    with pytest.raises(CqdError) as error:  # today's bug: a 1-epoch run reported for --epochs 2
        run_grid(plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=2), config)
    message = str(error.value)
    assert "(epochs, schedule)" in message and "--out" in message and "--rerun" in message and "\n" not in message
    with pytest.raises(CqdError, match=r"other settings \(schedule\)"):  # --lr-scale scales the schedule
        run_grid(plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=1), replace(config, lr_scale=0.5))
    outcome = run_grid(plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=2), config, rerun=True)
    record = json.loads((tmp_path / "runs/local_cub/fine_tuning/run.json").read_text())
    assert record["epochs"] == 2
    cell = next(c for c in load_results(outcome.results_json)["cells"] if (c["task"], c["method"]) == ("local_cub", "fine_tuning"))
    assert cell["accuracy"] == pytest.approx(record["accuracy"])
    from cqd_port.analysis.report import recollect

    before = outcome.results_json.read_text()
    outcome.results_json.unlink()
    assert recollect(tmp_path / "runs")  # `cqd-port report` collects again from grid.json and the run folders
    assert outcome.results_json.read_text() == before


@pytest.mark.parametrize("interval, checkpointed", [(0.0, 1), (3600.0, 0)])  # after every epoch; after the last only
def test_killed_run_resumes_over_its_stale_lock_and_dry_run_says_so(tiny, tmp_path, monkeypatch, interval, checkpointed):
    import cqd_port.train.trainer as trainer_module

    config = replace(_config(tiny, tmp_path / "runs"), checkpoint_interval=interval)
    plan = plan_grid(1, ["local_cub"], ["fine_tuning"], epochs=2)
    real = trainer_module.train

    def dies_in_epoch_2(*args, **kwargs):
        def on_step(epoch, step, stats):
            if epoch == 2:
                raise KeyboardInterrupt("killed")

        return real(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(trainer_module, "train", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_grid(plan, config)
    monkeypatch.undo()
    folder = tmp_path / "runs/local_cub/fine_tuning"
    (folder / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "time": "t"}))  # as kill -9 leaves it
    # where it resumes is the checkpoint's epoch + 1 (history.json has epoch 1 either way)
    assert [h["epoch"] for h in json.loads((folder / "history.json").read_text())] == [1]
    assert f"local_cub/fine_tuning [interrupted, resumes at epoch {checkpointed + 1}]" in "\n".join(describe_plan(plan, config))
    messages: list[str] = []
    from cqd_port.experiments.launch import launch_local
    from cqd_port.experiments.plan import schedule_grid

    launch_local(schedule_grid(plan, config.catalog()), config, say=messages.append)
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished" and record["resumed_from_epoch"] == checkpointed
    assert any("taking over a stale lock" in m for m in messages)
    assert len((folder / EXECUTIONS).read_text().splitlines()) == 2  # started, then resumed once


def test_seeds_keep_every_value_and_pair_the_difference(tiny, tmp_path):
    config = _config(tiny, tmp_path / "runs")
    plan = plan_grid(1, ["local_cub"], ["upper_bound", "fine_tuning", "cqd"], epochs=1)
    outcome = run_grid(plan, config, seeds=(0, 1))
    results = load_results(outcome.results_json)
    assert results["seeds"] == [0, 1]
    by_key = {(c["task"], c["method"]): c for c in results["cells"]}
    for method in ("upper_bound", "fine_tuning", "cqd"):
        cell = by_key[("local_cub", method)]
        values = {s: json.loads((tmp_path / "runs" / (f"seed{s}/" if s else "") / f"local_cub/{method}/run.json").read_text())["accuracy"] for s in (0, 1)}
        assert cell["values"] == {str(s): pytest.approx(v) for s, v in values.items()}
        assert cell["accuracy"] == pytest.approx((values[0] + values[1]) / 2)
        assert cell["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert by_key[("res_cub", "fine_tuning")]["values"] == {}  # not run: pending
    seed0 = torch.load(tmp_path / "runs/local_cub/fine_tuning/final.pt", weights_only=True)["state_dict"]
    seed1 = torch.load(tmp_path / "runs/seed1/local_cub/fine_tuning/final.pt", weights_only=True)["state_dict"]
    assert not torch.equal(seed0["fc8.weight"], seed1["fc8.weight"])  # another fc8 initialisation
    cqd1 = json.loads((tmp_path / "runs/seed1/local_cub/cqd/run.json").read_text())
    assert cqd1["teacher"] == "seed1/local_cub/upper_bound"  # each seed distils from its own A model
    (difference,) = [d for d in results["differences"] if d["task"] == "local_cub"]
    cqd, ft = by_key[("local_cub", "cqd")]["values"], by_key[("local_cub", "fine_tuning")]["values"]
    assert difference["n"] == 2 and difference["mean"] == pytest.approx(sum(cqd[s] - ft[s] for s in "01") / 2)
    assert "±" in outcome.markdown and "paired by seed" in outcome.markdown


def test_select_lambda_on_a_validation_split(tiny, tmp_path, monkeypatch):
    """One CQD run per candidate on the validation split (sharing the A model), the best retrained on the full set."""
    import cqd_port.train.trainer as trainer_module

    seen: dict[str, tuple[int, int, float]] = {}
    real = trainer_module.train

    def recording(model, train_set, test_set, config, objective, run_dir, *args, **kwargs):
        seen[str(Path(run_dir).relative_to(tmp_path / "runs"))] = (len(train_set), len(test_set), objective.to_dict().get("lambda"))
        return real(model, train_set, test_set, config, objective, run_dir, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train", recording)
    config = _config(tiny, tmp_path / "runs")
    outcome = run_grid(plan_grid(1, ["local_cub"], ["cqd"], epochs=1), config, select={"lambda": (20.0, 200.0)})
    # 2 classes x 3 training images: the validation split holds 1 per class out, keeps 2 per class to train
    assert seen["select/local_cub/cqd/lambda20_T10"] == (4, 2, 20.0)
    assert seen["select/local_cub/cqd/lambda200_T10"] == (4, 2, 200.0)
    (entry,) = load_results(outcome.results_json)["selection"]
    accuracies = {c["lambda"]: c["val_accuracy"] for c in entry["candidates"]}
    assert set(accuracies) == {20.0, 200.0} and entry["task"] == "local_cub" and entry["method"] == "cqd"
    best = 20.0 if accuracies[20.0] >= accuracies[200.0] else 200.0  # a tie goes to the first listed
    assert entry["chosen"] == {"lambda": best, "T": 10.0}
    assert seen["local_cub/cqd"] == (6, 2, best)  # the full training set, the test set, the chosen lambda
    assert seen["local_cub/upper_bound"][0] == 6  # one A model, shared by the candidates
    assert "chosen on a validation split" in outcome.markdown


# --------------------------------------------------------------------------- concurrent commands


def test_two_concurrent_reproduce_train_each_run_once(tiny, tmp_path):
    """Both commands prepare the same data folders and train the same runs: the locks make each happen once."""
    root, birds = tiny
    out = tmp_path / "runs"
    command = [sys.executable, "-c", "from cqd_port_cli.main import main; main()", "reproduce", "--tasks", "local_cub", "--methods", "upper_bound,staged",
               "--epochs", "1", "--models", root / "models", "--prepared", tmp_path / "prepared", "--cub-root", birds, "--out", out,
               "--device", "cpu", "--workers", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    for key in ("local_cub/upper_bound", "local_cub/staged"):
        assert len((out / key / EXECUTIONS).read_text().splitlines()) == 1, key
        assert not (out / key / LOCK).exists()
    results = load_results(out / "results.json")
    assert sum(c["accuracy"] is not None for c in results["cells"] if c["task"] == "local_cub") == 2
    assert "results.json" in outputs[0] + outputs[1]


@pytest.mark.parametrize("out", ["a-file", "a-file/sub", "/proc/cqd-port-out"])
def test_reproduce_with_out_a_file_or_under_proc_exits_2_with_one_line(cli, tiny, tmp_path, out):
    root, birds = tiny
    (tmp_path / "a-file").write_text("x")
    target = out if out.startswith("/") else tmp_path / out
    result = cli("reproduce", "--tasks", "local_cub", "--methods", "upper_bound", "--models", root / "models", "--prepared", tmp_path / "p",
                 "--cub-root", birds, "--out", target, "--epochs", "1", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, (result.exit_code, result.stderr)
    assert "--out" in result.stderr and not (tmp_path / "p").exists()


def test_two_slots_finishing_together_print_each_count_once(tiny, tmp_path, monkeypatch, capsys):
    """`--gpus 0,0`: both runs may be finished on disk when the first is reported; the count follows the reports."""
    import cqd_port.experiments.grid as grid
    from cqd_port.experiments.runfolder import RunFolder

    config = replace(_config(tiny, tmp_path / "runs"), progress=True)

    def both_finish_then_report(schedule, config, slots, rerun, on_done, say):
        runs = list(schedule.runs())
        for node in runs:  # both slots finish before the first report is printed
            RunFolder(Path(config.out) / node.key).mark_running({"key": node.key})
            RunFolder(Path(config.out) / node.key).mark_finished({"key": node.key, "accuracy": 50.0})
        records = {n.key: {"status": "finished", "accuracy": 50.0} for n in runs}
        for node in runs:
            on_done(node, records[node.key])
        return records

    monkeypatch.setattr(grid, "launch_local", both_finish_then_report)
    monkeypatch.setattr(grid, "collect_results", lambda *a: (tmp_path / "r.json", tmp_path / "r.md"))
    (tmp_path / "r.md").write_text("")
    run_grid(plan_grid(1, ["local_cub"], ["upper_bound", "fine_tuning"], epochs=1), config)
    counts = re.findall(r"^\[(\d+)/(\d+)\]", capsys.readouterr().out, re.M)
    assert counts == [("1", "2"), ("2", "2")]


# --------------------------------------------------------------------------- SLURM through a stub sbatch


STUB_SBATCH = """#!/bin/sh
# a stand-in for sbatch: keep the script and the flags, answer with the next job id
n=$(($(cat "$STUB_DIR/counter" 2>/dev/null || echo 1000) + 1))
echo $n > "$STUB_DIR/counter"
cp "$1" "$STUB_DIR/job-$n.sh"
echo "$@" > "$STUB_DIR/job-$n.args"
echo "Submitted batch job $n"
"""


@pytest.fixture
def stub_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(STUB_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "squeue").write_text('#!/bin/sh\ncat "$STUB_DIR/queue" 2>/dev/null\n')  # the jobs 'still queued'
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    stub_dir = tmp_path / "captured"
    stub_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("STUB_DIR", str(stub_dir))
    return stub_dir


def _submitted(stub_dir: Path) -> dict[str, dict]:
    jobs = {}
    for script in stub_dir.glob("job-*.sh"):
        text = script.read_text()
        name = re.search(r"^#SBATCH --job-name=(\S+)", text, re.M).group(1)
        dependency = re.search(r"^#SBATCH --dependency=afterok:(\S+)", text, re.M)
        jobs[name] = {"id": script.stem[4:], "after": set(dependency.group(1).split(":")) if dependency else set(), "text": text}
    return jobs


def test_slurm_one_job_per_run_with_afterok_from_the_dag(cli, tiny, tmp_path, stub_slurm):
    root, birds = tiny
    sed = tmp_path / "sed.yml.gz"
    sed.write_bytes(b"")
    out = tmp_path / "table1"
    args = ("reproduce", "--table", "1", "--launcher", "slurm", "--models", root / "models", "--prepared", tmp_path / "p", "--out", out,
            "--cub-root", birds, "--cars-root", birds, "--sed-model", sed, "--partition", "gpu", "--account", "lab", "--time", "600",
            "--mem", "64G", "--sbatch-extra=--qos=high", "--sbatch-extra=--exclusive")  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    jobs = _submitted(stub_slurm)
    plan = plan_grid(1)
    variants = {v.label for v in plan.variants()}
    prepare = {name: job for name, job in jobs.items() if name.startswith("cqd-prepare-")}
    runs = {name: job for name, job in jobs.items() if not name.startswith("cqd-prepare-")}
    assert len(prepare) == len(variants) == 9 and all(not job["after"] for job in prepare.values())  # first stage
    assert len(runs) == len(plan.runs) == 44  # one job per run
    job_of = {key: runs["cqd-" + key.replace("/", "-")]["id"] for key in plan.runs}
    prepare_of = {v.label: prepare[f"cqd-prepare-{v.dataset}-{v.folder}"]["id"] for v in plan.variants()}
    for key, run in plan.runs.items():
        job = runs["cqd-" + key.replace("/", "-")]
        a_runs = {run.init} - {"imagenet"} | ({run.teacher} if run.teacher else set())
        expected_runs = {job_of[k] for k in a_runs}
        assert job["after"] & set(job_of.values()) == expected_runs, key  # the A model it starts from / distils from, nothing else
        reads = {v.label for v in (*run.train, run.test, *((run.teacher_data,) if run.teacher_data else ()))}
        assert job["after"] - expected_runs == {prepare_of[v] for v in reads}, key  # and the data it reads
        for flag in ("--partition=gpu", "--account=lab", "--time=600", "--mem=64G", "--qos=high", "--exclusive", "--gpus-per-node=1", "--signal=USR2@120"):
            assert f"#SBATCH {flag}\n" in job["text"], (key, flag)
    assert job_of["local_cub/cqd"] != job_of["local_cub/upper_bound"]
    written = json.loads((out / "slurm-jobs.json").read_text())["jobs"]
    assert {k: v["job_id"] for k, v in written.items() if not k.startswith("prepare/")} == job_of
    assert f"local_cub/cqd: job {job_of['local_cub/cqd']} (afterok " in result.stdout
    results = load_results(out / "results.json")
    assert len(results["cells"]) == 49 and all(c["accuracy"] is None for c in results["cells"])  # all pending
    # The same command again while SLURM still holds the jobs: nothing is submitted twice.
    (stub_slurm / "queue").write_text("\n".join(v["job_id"] for v in written.values()) + "\n")
    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert len(list(stub_slurm.glob("job-*.sh"))) == len(jobs)


def test_slurm_wait_reports_jobs_that_vanished_with_their_logs(cli, tiny, tmp_path, stub_slurm):
    """squeue and sacct know none of the submitted jobs (purged, lost): not 'runs finished 0%' and exit 0."""
    root, birds = tiny
    (tmp_path / "bin" / "sacct").write_text("#!/bin/sh\nexit 0\n")  # knows no job
    (tmp_path / "bin" / "sacct").chmod(0o755)
    out = tmp_path / "runs"
    result = cli("reproduce", "--tasks", "local_cub", "--methods", "upper_bound", "--launcher", "slurm", "--wait",
                 "--models", root / "models", "--prepared", tmp_path / "p", "--cub-root", birds, "--out", out, "--epochs", "1")  # fmt: skip
    assert result.exit_code == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    jobs = json.loads((out / "slurm-jobs.json").read_text())["jobs"]
    job_id = jobs["local_cub/upper_bound"]["job_id"]
    assert "1 run(s) did not finish and SLURM no longer holds their jobs (1 unknown to squeue and sacct: vanished)" in line
    assert f"local_cub/upper_bound: job {job_id} vanished, log {out / '.submitit' / job_id / f'{job_id}_0_log.err'}" in line
    assert (out / "results.json").is_file()  # the table is still collected


def test_slurm_requeued_job_resumes(tiny, tmp_path, monkeypatch):
    """What a preempted job does when SLURM starts it again: the same job id takes over its own lock and resumes."""
    from cqd_port.experiments.launch import NodeJob
    from cqd_port.experiments.plan import schedule_grid

    config = _config(tiny, tmp_path / "runs")
    plan = plan_grid(1, ["local_cub"], ["upper_bound"], epochs=1)
    schedule = schedule_grid(plan, config.catalog())
    job = NodeJob(schedule.nodes["local_cub/upper_bound"], schedule, config)
    resubmission = job.checkpoint()  # what submitit requeues on preemption/timeout
    assert resubmission.function is job
    folder = tmp_path / "runs/local_cub/upper_bound"
    folder.mkdir(parents=True)
    (folder / LOCK).write_text(json.dumps({"host": "node-that-died", "pid": 1, "time": "t", "slurm_job": "4242"}))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for node in schedule.nodes.values():
        if node.kind == "prepare":
            NodeJob(node, schedule, config)()
    record = resubmission.function()
    assert record["status"] == "finished"


# --------------------------------------------------------------------------- issue 16: data identity, dry run


def test_reproduce_never_reuses_a_run_after_its_prepared_data_changed(tiny, tmp_path):
    import shutil

    root, birds = tiny
    data = tmp_path / "birds"
    shutil.copytree(birds, data)
    config = replace(_config(tiny, tmp_path / "runs"), cub_root=data, prepared=tmp_path / "prepared")
    plan = plan_grid(1, ["local_cub"], ["upper_bound"], epochs=1)
    run_grid(plan, config)
    images = sorted((data / "images").rglob("*.jpg"))
    shutil.copy(images[1], images[0])  # the dataset changed in place (e.g. `synth` over it) ...
    config.catalog().ensure(plan_grid(1, ["local_cub"], ["upper_bound"]).runs["local_cub/upper_bound"].test)  # ... and `prepare` rebuilt it
    with pytest.raises(CqdError, match=r"local_cub/upper_bound holds a run made with other settings \(data cub/localized\).*--rerun") as error:
        run_grid(plan, replace(config, cub_root=None))  # never "done, reused" with the old numbers
    assert "\n" not in str(error.value)
    run_grid(plan, config, rerun=True)
    saved = json.loads((tmp_path / "runs/local_cub/upper_bound/identity.json").read_text())["job"]
    assert dict(map(tuple, saved["data"]))["cub/localized"] == config.catalog().manifest_digest(plan.runs["local_cub/upper_bound"].test)


def test_dry_run_lists_every_seed_and_validation_run_with_the_chosen_lambda(tiny, tmp_path, cli):
    root, birds = tiny
    config = _config(tiny, tmp_path / "runs")
    plan = plan_grid(1, ["local_cub"], ["cqd"], epochs=1)
    select = {"lambda": (20.0, 200.0)}
    run_grid(plan, config, select=select)
    stdout = "\n".join(describe_plan(plan, config, (0, 1), select))
    jobs = dict(re.findall(r"^  (\S+) \[([^\]]+)\]: ", stdout, re.M))
    expected = {
        f"{prefix}{key}"
        for prefix in ("", "seed1/")
        for key in ("local_cub/upper_bound", "local_cub/cqd")
    } | {f"select/{prefix}local_cub/cqd/lambda{v}_T10" for prefix in ("", "seed1/") for v in (20, 200)}
    assert set(jobs) == expected
    assert {k for k, state in jobs.items() if state == "finished"} == {k for k in expected if not k.startswith(("seed1/", "select/seed1/"))}
    assert {jobs[k] for k in expected if "seed1/" in k} == {"pending"}
    chosen = json.loads((config.out / "local_cub/cqd/run.json").read_text())["objective"]["lambda"]
    line = next(l for l in stdout.splitlines() if l.startswith("  local_cub/cqd ["))
    assert f"(lambda {chosen:g}, T 10: chosen on 2 validation runs)" in line  # not the paper's 200 unless chosen
    seed1 = next(l for l in stdout.splitlines() if l.startswith("  seed1/local_cub/cqd ["))
    assert "not chosen yet" in seed1
    result = cli(  # the command line passes seeds and selection to the dry run (it listed seed 0 only)
        "reproduce", "--dry-run", "--tasks", "local_cub", "--methods", "cqd", "--epochs", "1", "--seeds", "0,1",
        "--select", "lambda=20,200", "--out", tmp_path / "other", "--prepared", config.prepared, "--models", root / "models",
    )
    assert result.exit_code == 0, result.stderr
    listed = set(re.findall(r"^  (\S+) \[pending\]: ", result.stdout, re.M))
    assert listed == expected and not (tmp_path / "other").exists()


def test_deleted_prepared_data_is_made_again_and_the_runs_reused(tiny, tmp_path):
    import shutil

    config = replace(_config(tiny, tmp_path / "runs"), prepared=tmp_path / "prepared")
    plan = plan_grid(1, ["local_cub"], ["upper_bound"], epochs=1)
    first = json.loads((run_grid(plan, config).results_json).read_text())
    shutil.rmtree(tmp_path / "prepared")  # the same data, prepared again: the same manifest, the run stands
    messages: list[str] = []
    outcome = run_grid(plan, replace(config, progress=True), on_run=lambda key, record: messages.append(key))
    assert not messages and json.loads(outcome.results_json.read_text())["cells"] == first["cells"]
