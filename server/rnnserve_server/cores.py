"""How many CPU cores this process may really use, and how its threads share them.

The affinity mask (what `os.sched_getaffinity` reports) says which cores the process may run on,
but a container's CPU limit is usually a CFS quota instead (Kubernetes `resources.limits.cpu`):
a pod limited to 2 CPUs on a 64-core node sees 64 cores in its mask. Both are read here, the
quota from cgroup v2 (`cpu.max`) or v1 (`cpu/cpu.cfs_quota_us` over `cpu.cfs_period_us`).

Where cores are few, the ONNX Runtime workers run nicer than the event loop (`lower_priority`):
a run then never delays the reads and replies that keep every session moving; it fills the time
they leave.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
log = logging.getLogger("rnnserve.cores")


def usable_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores in the affinity mask, capped by the cgroup CPU quota (rounded up) if one is set."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # not Linux: no mask, and no cgroups either
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in cores (e.g. 1.5), or None when there is none or it can't be read."""
    try:
        v2 = cgroup_root / "cpu.max"
        if v2.is_file():  # "<quota> <period>" or "max <period>"
            quota, period = v2.read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        v1 = cgroup_root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def lower_priority(nice: int) -> int:
    """Give the calling thread at least niceness `nice` (Linux, where every thread has its own;
    a thread may always lower its own priority). Returns the thread's niceness afterwards, or -1
    where that can't be done; never raises (it runs as a thread pool's initializer)."""
    if nice <= 0:
        return 0
    if not sys.platform.startswith("linux"):
        return -1
    tid = threading.get_native_id()
    try:
        target = max(nice, os.getpriority(os.PRIO_PROCESS, tid))
        os.setpriority(os.PRIO_PROCESS, tid, target)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as exc:
        log.warning("could not lower the priority of an ONNX Runtime worker: %s", exc)
        return -1
