"""The `cqd-port` command line: a thin layer over the library."""

import os

# OpenMP threads that sleep between parallel regions instead of spinning. With the default (spinning) policy a
# 2-thread op on a 2-core machine shared with other jobs waits for its second thread to be scheduled while the
# first burns its time slice: 30 steps of the demo's network took 32-51 s under load 8-10 instead of 1.8-2.3 s
# with PASSIVE, the same bits either way (the policy decides how threads wait, not what they compute).
# libgomp reads it once, when torch loads it: before any import of torch. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
