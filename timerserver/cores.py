"""
How many cores this process may use: the CPUs it may run on (its affinity),
but no more than its cgroup's CPU quota allows, rounded up.

A container started with C{--cpus 2}, or a service with systemd's
C{CPUQuota=200%}, may run on every CPU of a 64-core host, but only for two
CPUs' worth of time: counting its affinity alone, C{--workers auto} would
start 64 workers and the wheel's tick would be chosen for 64 cores.  The
quota is the cgroup's C{cpu.max} (cgroup v2) or C{cpu.cfs_quota_us} over
C{cpu.cfs_period_us} (v1), of the process's own cgroup and of each of its
ancestors that this process can see: the smallest one binds.  The cgroup
paths of C{/proc/self/cgroup} are found under the mounts that
C{/proc/self/mountinfo} lists (a container often has only its own subtree
mounted at C{/sys/fs/cgroup}); where a path is not under its mount, nothing
is read from it rather than a wrong cgroup.  Whatever cannot be read or
makes no sense counts as no quota: this runs at every start, and must not
stop one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")

Mount = tuple[Path, str]
"""Where a cgroup hierarchy is mounted, and which of its paths is mounted there."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    """C{quota / period} CPUs, or C{None} for no limit (C{max}, C{-1}) or nonsense."""
    try:
        q, p = int(quota), int(period)
        return q / p if q > 0 and p > 0 else None
    except (ValueError, OverflowError):
        return None


def _parts(path: str) -> list[str] | None:
    """The names of a cgroup path, or C{None} if it climbs (C{..}): above its namespace."""
    parts = [part for part in path.split("/") if part and part != "."]
    return None if ".." in parts else parts


def _unescape(field: str) -> str:
    """A mountinfo field, its octal escapes (C{\\040} for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroupMounts(mountinfo: Path = PROC_MOUNTINFO) -> dict[str, Mount]:
    """
    The cgroup mounts that hold CPU quotas, from C{mountinfo}: C{"v2"} (a
    C{cgroup2} mount) and C{"v1"} (a C{cgroup} mount with the C{cpu}
    controller); of several, the last, which hides the others.
    """
    mounts: dict[str, Mount] = {}
    for line in (_read(mountinfo) or "").splitlines():
        before, separator, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        mount = (Path(_unescape(fields[4])), _unescape(fields[3]))
        if tail[0] == "cgroup2":
            mounts["v2"] = mount
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mounts["v1"] = mount
    return mounts


def _v2Quota(directory: Path) -> float | None:
    fields = (_read(directory / "cpu.max") or "").split()
    return _ratio(*fields) if len(fields) == 2 else None


def _v1Quota(directory: Path) -> float | None:
    quota = _read(directory / "cpu.cfs_quota_us")
    period = _read(directory / "cpu.cfs_period_us")
    return _ratio(quota, period) if quota is not None and period is not None else None


def _limits(mount: Mount, path: str, quotaOf: Callable[[Path], float | None]) -> list[float]:
    """The quotas of C{path}'s cgroup and of its ancestors up to the mount's root."""
    point, mountRoot = mount
    parts, rootParts = _parts(path), _parts(mountRoot)
    if parts is None or rootParts is None or parts[: len(rootParts)] != rootParts:
        return []  # not under this mount: its cgroup is not visible here
    below = parts[len(rootParts) :]
    quotas = (quotaOf(point.joinpath(*below[:depth])) for depth in range(len(below), -1, -1))
    return [quota for quota in quotas if quota is not None]


def cpuQuota(
    root: Path = CGROUP_ROOT, procCgroup: Path = PROC_CGROUP, mountinfo: Path = PROC_MOUNTINFO
) -> float | None:
    """
    The CPUs' worth of time the cgroup quota of this process allows (1.5 for
    C{--cpus 1.5}), or C{None} where there is none or it cannot be read.

    @param root: where the cgroup file systems are mounted when C{mountinfo}
        does not say (the usual layout).
    @param procCgroup: the process's cgroup list (C{/proc/self/cgroup}).
    @param mountinfo: the process's mounts (C{/proc/self/mountinfo}).
    """
    text = _read(procCgroup)
    if text is None:
        return None
    mounts = cgroupMounts(mountinfo)
    limits: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:
            mount = mounts.get("v2", (root, "/"))
            limits += _limits(mount, path, _v2Quota)
        elif "cpu" in controllers.split(","):
            mount = mounts.get("v1") or (_v1Fallback(root, controllers), "/")
            limits += _limits(mount, path, _v1Quota)
    return min(limits) if limits else None


def _v1Fallback(root: Path, controllers: str) -> Path:
    """The usual mount of a v1 hierarchy: named for its controllers, or C{cpu}."""
    named = root / controllers
    try:
        return named if named.is_dir() else root / "cpu"
    except OSError:  # EACCES, ENAMETOOLONG: Path.is_dir hides only some errors
        return root / "cpu"


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
