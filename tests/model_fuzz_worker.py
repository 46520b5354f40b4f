"""Worker of `model_corruptions.run_cases`: the CLI in-process on each listed model file.

argv: LISTING.json OUT_FOLDER CASE_TIMEOUT MEMORY_LIMIT. For file i prints
`{"index": i, "command": "start"}`, then one JSON line per command
(`inspect`, `convert-weights`, and `load` when the conversion succeeded),
then `done`. Runs under an address-space limit and a per-case alarm.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def prepare(memory_limit: int):
    """Import the CLI, build its click command once, limit the address space; returns `run_cli`."""
    from conftest import run_cli  # noqa: E402 - the real entry point, in-process

    import typer.main

    import cqd_port_cli.main  # noqa: F401 - import everything before limiting memory

    # Typer rebuilds the click command on every call (~0.06 s); build it once for the hundreds of calls.
    build = typer.main.get_command
    built = build(cqd_port_cli.main.app)
    typer.main.get_command = lambda app: built if app is cqd_port_cli.main.app else build(app)
    with open("/proc/self/status") as handle:
        vm = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + memory_limit, vm + memory_limit))
    return run_cli


def main() -> None:
    listing, out, case_timeout, memory_limit = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    from matconvnet_weights.convert import load_model

    run_cli = prepare(memory_limit)

    def timeout(*_: object) -> None:
        raise TimeoutError(f"over {case_timeout} s")

    signal.signal(signal.SIGALRM, timeout)

    def emit(index: int, command: str, code: int, stderr: str = "") -> None:
        print(json.dumps({"index": index, "command": command, "code": code, "stderr": stderr[-2000:]}), flush=True)

    for index, path in enumerate(json.loads(Path(listing).read_text())):
        emit(index, "start", 0)
        target = out / (Path(path).stem + ".pt")
        for command, args in (("inspect", ("inspect", path)), ("convert-weights", ("convert-weights", path, "-o", str(target)))):
            signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                result = run_cli(*args)
                emit(index, command, result.exit_code, result.stderr)
            except BaseException:  # noqa: BLE001 - report what escaped the CLI
                emit(index, command, -1, traceback.format_exc())
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        if target.exists():
            signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                load_model(target)
                emit(index, "load", 0)
            except Exception as exc:  # noqa: BLE001 - a converted file must load
                emit(index, "load", 2, f"{type(exc).__name__}: {exc}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            target.unlink()
        emit(index, "done", 0)


if __name__ == "__main__":
    main()
