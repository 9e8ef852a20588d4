"""
How many cores this process may use: the CPUs it may run on (its affinity),
but no more than its cgroup's CPU quota allows, rounded up.

A container started with C{--cpus 2}, or a service with systemd's
C{CPUQuota=200%}, may run on every CPU of a 64-core host, but only for two
CPUs' worth of time: counting its affinity alone, C{--workers auto} would
start 64 workers and the wheel's tick would be chosen for 64 cores.  The
quota is the cgroup's C{cpu.max} (cgroup v2) or C{cpu.cfs_quota_us} over
C{cpu.cfs_period_us} (v1), of the process's own cgroup and of each of its
ancestors: the smallest one binds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    """C{quota / period} CPUs, or C{None} for no limit (C{max}, C{-1}) or nonsense."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """The cgroup directory of C{path} under C{mount}, then each parent up to C{mount}."""
    parts = [part for part in path.split("/") if part and part not in (".", "..")]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2Limits(root: Path, path: str) -> list[float]:
    limits = []
    for directory in _ancestors(root, path):
        fields = (_read(directory / "cpu.max") or "").split()
        if len(fields) == 2 and (limit := _ratio(*fields)) is not None:
            limits.append(limit)
    return limits


def _v1Limits(root: Path, controllers: str, path: str) -> list[float]:
    mount = root / controllers
    if not mount.is_dir():
        mount = root / "cpu"  # "cpu,cpuacct" is usually linked as "cpu" too
    limits = []
    for directory in _ancestors(mount, path):
        quota = _read(directory / "cpu.cfs_quota_us")
        period = _read(directory / "cpu.cfs_period_us")
        if quota is not None and period is not None and (limit := _ratio(quota, period)):
            limits.append(limit)
    return limits


def cpuQuota(root: Path = CGROUP_ROOT, procCgroup: Path = PROC_CGROUP) -> float | None:
    """
    The CPUs' worth of time the cgroup quota of this process allows (1.5 for
    C{--cpus 1.5}), or C{None} where there is none or it cannot be read.

    @param root: where the cgroup file systems are mounted.
    @param procCgroup: the process's cgroup list (C{/proc/self/cgroup}).
    """
    text = _read(procCgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:
            limits += _v2Limits(root, path)
        elif "cpu" in controllers.split(","):
            limits += _v1Limits(root, controllers, path)
    return min(limits) if limits else None


def usableCores() -> int:
    """
    The cores this process may use: those it may run on (all of them where
    affinity is unknown), but no more than its cgroup's CPU quota, rounded up.
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cpuQuota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores
