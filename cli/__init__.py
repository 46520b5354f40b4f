"""The `cqd-port` command line: a thin layer over the library."""

from cqd_port.cpuruntime import tune_cpu_runtime

# Before any import of torch: libgomp reads its wait settings once, when torch loads it. A bounded OpenMP spin and a
# glibc malloc that keeps its memory: a training step of the demo's network 14.6 ms on an idle 2-core machine (21.3 ms
# with the defaults, 28.6 ms passive) and 34.9 ms beside two busy processes (73.0 ms with the defaults), full-width
# VGG-M 0.93 s instead of 1.30 s, the same bits either way (cqd_port/cpuruntime.py, benchmarks/bench_cpu_runtime.py).
# A user's own setting wins.
CPU_RUNTIME = tune_cpu_runtime()
