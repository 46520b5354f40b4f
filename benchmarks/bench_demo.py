"""`make demo` end to end: its wall time and CPU, where the time goes, and whether it prints the README's table.

Runs the installed `cqd-port demo --out <empty temporary folder>` in a
subprocess, exactly what `make demo` runs (its defaults: Table 1's whole grid
on synthetic data, lambda selection included, 86 runs), with this process's
environment. Measures the wall time, the user and system CPU of the demo and
everything it starts, and the load average before and after (another job on
the machine shows there); reads the demo's own phase times from its last
line (data, stand-in, data variants, runs), every run's seconds from its
run.json and the training epochs' own seconds from the history.json
files. Then checks what the README promises: every row of the README's demo
table and every lambda line (its section "What the demo shows") must
appear, character for character, in what the demo printed.

Target: 300 s on this project's 2-core machine (issue 19). Writes
`benchmarks/results/demo.json` (`--out` for another path); exits 1 when the
printed table differs from the README's. `--check LOG` only checks a saved
`make demo` output (e.g. from a fresh clone) against the README.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_cpu_runtime import cpu_model  # noqa: E402
from cqd_port.fileio import atomic_write_json  # noqa: E402

TARGET_SECONDS = 300.0
RESULTS = ROOT / "benchmarks" / "results" / "demo.json"
README = ROOT / "README.md"


def readme_promises(readme: str) -> list[str]:
    """The README demo section's table rows and lambda lines: what `make demo` must print, line for line."""
    section = readme.split("## What the demo shows", 1)[1].split("\n## ", 1)[0]
    table = section.split("The table as the run wrote it", 1)[1]
    lines = table.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    rows = []
    for line in lines[first:]:  # the first table after that sentence, to its end
        if not line.startswith("|"):
            break
        rows.append(line)
    block = re.search(r"The lambda the run chose[^\n]*\n+```\n(.*?)```", section, re.S)
    lambdas = [line for line in (block.group(1).splitlines() if block else []) if line.strip()]
    if not rows or not lambdas:
        raise SystemExit("README.md: no demo table or lambda block found under 'What the demo shows'")
    return rows + lambdas


def missing_lines(promises: list[str], output: str) -> list[str]:
    """The README lines `output` (what the demo printed) does not hold, each as a whole line."""
    printed = set(output.splitlines())
    return [line for line in promises if line not in printed]


def command() -> list[str]:
    installed = shutil.which("cqd-port", path=str(Path(sys.executable).parent)) or shutil.which("cqd-port")
    if installed is None:
        raise SystemExit("cqd-port is not installed in this environment: run `make setup` first")
    return [installed, "demo"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, default=None, help="run the demo in this (empty or new) folder and keep it")
    parser.add_argument("--check", type=Path, default=None, help="only check this saved `make demo` output against the README")
    args = parser.parse_args()
    promises = readme_promises(README.read_text())
    if args.check is not None:
        missing = missing_lines(promises, args.check.read_text())
        print(f"{args.check}: {len(promises) - len(missing)} of {len(promises)} README table and lambda lines printed exactly")
        if missing:
            print("\n".join(missing))
        return 1 if missing else 0
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        folder = args.keep or Path(tmp) / "demo"
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([*command(), "--out", str(folder)], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"cqd-port demo failed (exit {done.returncode})")
        runs = [json.loads(p.read_text()) for p in sorted(folder.rglob("run.json"))]  # the grid's and the validation runs
        epochs = [e for p in sorted(folder.rglob("history.json")) if "pretrain" not in p.parts for e in json.loads(p.read_text())]
    missing = missing_lines(promises, done.stdout)
    last = [line for line in done.stdout.splitlines() if "; wall time " in line]
    phases = dict(
        (name.strip(), float(value)) for name, value in re.findall(r"([\w -]+?) (\d+) s(?:,|\))", last[-1].rsplit("; wall time ", 1)[1])
    ) if last and "(" in last[-1] else {}
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    in_runs = sum(r.get("seconds") or 0.0 for r in runs)
    training = sum(e.get("seconds") or 0.0 for e in epochs)
    report = {
        "command": "cqd-port demo --out <empty folder> (what make demo runs)",
        "wall_seconds": round(wall, 1),
        "target_seconds": TARGET_SECONDS,
        "within_target": wall <= TARGET_SECONDS,
        "user_cpu_seconds": round(user, 1),
        "system_cpu_seconds": round(system, 1),
        "cpu_percent": round(100 * (user + system) / wall, 1),
        "phases_seconds": phases,
        "runs": len(runs),
        "runs_seconds_from_run_json": round(in_runs, 1),
        "training_epochs": len(epochs),
        "training_epochs_seconds": round(training, 1),
        "not_training_seconds": round(wall - training, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "environment": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CQD_PORT_CPU_RUNTIME") if k in os.environ},
        "readme_lines_checked": len(promises),
        "readme_lines_missing": missing,
        "prints_the_readme_table": not missing,
    }
    atomic_write_json(args.out, report)
    print(done.stdout.rstrip())
    print()
    print(
        f"demo wall time {wall:.1f} s (target {TARGET_SECONDS:.0f} s: {'met' if wall <= TARGET_SECONDS else 'NOT met'}); "
        f"CPU {user:.0f} s user + {system:.0f} s system ({report['cpu_percent']:.0f}%); load {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    print("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + f"; of the runs, {len(epochs)} training epochs {training:.0f} s")
    print(f"README table and lambda lines: {len(promises) - len(missing)} of {len(promises)} printed exactly" + (f"; missing:\n" + "\n".join(missing) if missing else ""))
    print(f"wrote {args.out}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
