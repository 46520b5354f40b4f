"""How the CPU runtime under torch waits and allocates: settings that change speed, never a number.

Two process-wide settings, applied by the `cqd-port` command before torch is
imported (a script of your own can call `tune_cpu_runtime()` first thing):

* **OpenMP waiting** (`GOMP_SPINCOUNT=1000`). Between two parallel ATen
  operations libgomp's threads wait for the next one. Its default spins for
  up to 300,000 iterations before sleeping; `OMP_WAIT_POLICY=PASSIVE` does
  not spin at all. Spinning is what a quiet machine wants and a disaster on
  a shared one, where the spinning thread holds the core the thread it waits
  for needs. Measured on this project's 2-core machine, one training step of
  the demo's network (malloc tuned, ms per step, idle / two busy processes
  beside it, ranges of 3 repeats): spin 0 (passive) 22-30 / 28-31; 1000
  15-19 / 42-48; 3000 15-17 / 52-59; 100,000 15-16 / 34-835; libgomp's
  default ~22 / 73-576. 1000 takes most of spinning's gain on a quiet
  machine and stays within ~1.5x of passive on a loaded one
  (`benchmarks/bench_cpu_runtime.py`: 14.6 / 34.9 ms against passive's
  28.6 / 36.8 and the defaults' 21.3 / 73.0).
* **glibc malloc** (`mallopt`: no `mmap` for large blocks, keep up to
  1 GiB of freed memory at the top of the heap, grow it in 64 MiB steps).
  By default glibc serves a block over 128 KiB (up to 32 MiB as the
  threshold adapts, always above) with a fresh `mmap` and `munmap`s it when
  freed: every activation, gradient and SGD temporary of a training step is
  then page-faulted in and zeroed by the kernel again at each step. The
  demo's network (`bench_cpu_runtime.py`, idle, medians): ~4,500 page
  faults and 9 ms of system time per 21 ms step; with this setting (and the
  spin above) 1 fault, 0.8 ms, 14.6 ms. Full-width VGG-M at batch 16
  (fc6's 300 MB weight, its gradient and momentum are above any mmap
  threshold): 640,000 faults and 1.0 s of system time per 1.30 s step;
  with this setting 0.93 s (0.83-1.21 s over 3 repeats: where blocks land
  in the heap varies), for 3.2 GB peak resident memory instead of 2.3 (the
  heap keeps its peak). PyTorch's own advice for CPU training
  is an allocator that keeps memory (jemalloc, tcmalloc by `LD_PRELOAD`);
  this is the same effect with the allocator every Linux Python already
  has. A block the heap cannot hold still gets its own `mmap` (glibc falls
  back to it), so nothing fails that worked before.

Neither setting changes what is computed: which thread does which part of
an operation is fixed by OpenMP's static schedule, and where a buffer lives
does not change its arithmetic (`tests/test_cpu_runtime.py` trains with and
without them and compares the weights bit for bit). A user's own
`OMP_WAIT_POLICY`, `GOMP_SPINCOUNT` or `MALLOC_*` environment wins, and
`CQD_PORT_CPU_RUNTIME=default` leaves both alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# libgomp's spin count before a waiting thread sleeps (its default is 300,000 when the policy is unset).
SPIN_COUNT = 1_000
# glibc mallopt parameters (malloc.h) and the values set
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
MMAP_MAX = 0  # no mmap for large blocks: they come from the heap, and stay there when freed
TRIM_THRESHOLD_BYTES = 1 << 30  # freed memory kept at the heap's top before it is given back (256 MiB still trimmed fc6-sized blocks)
TOP_PAD_BYTES = 64 << 20  # the heap grows in 64 MiB steps (pages are touched, and faulted in, only when used)
OPT_OUT = "CQD_PORT_CPU_RUNTIME"
MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def tune_cpu_runtime() -> dict[str, str]:
    """Apply the two settings above where the user has not chosen; returns what was done, by setting.

    Call it before `import torch`: libgomp reads its environment once, when
    torch loads it (a later call still tunes malloc, and says that the
    OpenMP setting came too late).
    """
    if os.environ.get(OPT_OUT, "").lower() == "default":
        return {"openmp": f"left alone ({OPT_OUT}=default)", "malloc": f"left alone ({OPT_OUT}=default)"}
    return {"openmp": _openmp_wait(), "malloc": _malloc_keeps_memory()}


def _openmp_wait() -> str:
    chosen = [name for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if name in os.environ]
    if chosen:
        return f"left alone (the environment sets {', '.join(chosen)})"
    if "torch" in sys.modules:
        return "too late (torch is already imported; libgomp read its environment then)"
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return f"GOMP_SPINCOUNT={SPIN_COUNT}"


def _malloc_keeps_memory() -> str:
    chosen = [name for name in MALLOC_VARIABLES if name in os.environ]
    if chosen:
        return f"left alone (the environment sets {', '.join(chosen)})"
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return "left alone (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "left alone (no mallopt)"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting the trim threshold also stops glibc from adapting it (and the mmap threshold)
    for param, value in ((M_MMAP_MAX, MMAP_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_TOP_PAD, TOP_PAD_BYTES)):
        if mallopt(param, value) != 1:
            return f"refused by mallopt (parameter {param}, value {value})"
    return f"no mmap for large blocks, trim threshold {TRIM_THRESHOLD_BYTES >> 20} MiB, top pad {TOP_PAD_BYTES >> 20} MiB"
