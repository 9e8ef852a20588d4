"""L{timerserver.cores}: the cores a process may use, its cgroup's CPU quota included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ROOT
from timerserver import cores
from timerserver.cores import cpuQuota, usableCores


class CgroupTree:
    """A fake C{/sys/fs/cgroup} and C{/proc/self/cgroup} in a temporary directory."""

    def __init__(self, testCase: SynchronousTestCase, cgroups: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="timerserver-cgroup-"))
        testCase.addCleanup(shutil.rmtree, self.base)
        self.root = self.base / "sys-fs-cgroup"
        self.root.mkdir()
        self.proc = self.base / "cgroup"
        self.proc.write_text(cgroups)

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def quota(self) -> float | None:
        return cpuQuota(self.root, self.proc)


class CgroupV2Tests(SynchronousTestCase):
    def test_quotaOfItsOwnCgroup(self) -> None:
        tree = CgroupTree(self, "0::/system.slice/timerserver.service\n")
        tree.write("system.slice/timerserver.service/cpu.max", "150000 100000\n")
        self.assertEqual(tree.quota(), 1.5)

    def test_noQuota(self) -> None:
        tree = CgroupTree(self, "0::/system.slice/timerserver.service\n")
        tree.write("system.slice/timerserver.service/cpu.max", "max 100000\n")
        self.assertIsNone(tree.quota())

    def test_anAncestorsQuotaBinds(self) -> None:
        tree = CgroupTree(self, "0::/a/b/c\n")
        tree.write("a/b/c/cpu.max", "max 100000\n")
        tree.write("a/b/cpu.max", "400000 100000\n")
        tree.write("a/cpu.max", "50000 50000\n")  # 1 CPU: the smallest binds
        self.assertEqual(tree.quota(), 1.0)

    def test_insideAContainersNamespace(self) -> None:
        """In its own cgroup namespace a container's cgroup is the root."""
        tree = CgroupTree(self, "0::/\n")
        tree.write("cpu.max", "200000 100000\n")
        self.assertEqual(tree.quota(), 2.0)

    def test_nonsenseIsNoQuota(self) -> None:
        for text in ("", "banana 100000", "100000 0", "-5 100000", "1 2 3", "\xff"):
            tree = CgroupTree(self, "0::/x\n")
            tree.write("x/cpu.max", text)
            self.assertIsNone(tree.quota(), text)

    def test_noCpuControllerFiles(self) -> None:
        tree = CgroupTree(self, "0::/x\n")
        self.assertIsNone(tree.quota())


class CgroupV1Tests(SynchronousTestCase):
    def test_quotaOverPeriod(self) -> None:
        tree = CgroupTree(self, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
        tree.write("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "200000\n")
        tree.write("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
        self.assertEqual(tree.quota(), 2.0)

    def test_unlimited(self) -> None:
        tree = CgroupTree(self, "1:cpu:/\n")
        tree.write("cpu/cpu.cfs_quota_us", "-1\n")
        tree.write("cpu/cpu.cfs_period_us", "100000\n")
        self.assertIsNone(tree.quota())

    def test_mountedAsCpuAlone(self) -> None:
        tree = CgroupTree(self, "2:cpuacct,cpu:/job\n")
        tree.write("cpu/job/cpu.cfs_quota_us", "50000\n")
        tree.write("cpu/job/cpu.cfs_period_us", "100000\n")
        self.assertEqual(tree.quota(), 0.5)

    def test_otherControllersAreNotRead(self) -> None:
        tree = CgroupTree(self, "9:name=systemd:/\n8:cpuset:/\n")
        tree.write("cpuset/cpu.cfs_quota_us", "100000\n")
        tree.write("cpuset/cpu.cfs_period_us", "100000\n")
        self.assertIsNone(tree.quota())


class UsableCoresTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(os, "sched_getaffinity", lambda pid: set(range(16)))

    def test_affinityWithoutQuota(self) -> None:
        self.patch(cores, "cpuQuota", lambda: None)
        self.assertEqual(usableCores(), 16)

    def test_aQuotaRoundedUp(self) -> None:
        for quota, expected in ((1.5, 2), (2.0, 2), (0.2, 1), (64.0, 16)):
            self.patch(cores, "cpuQuota", lambda quota=quota: quota)
            self.assertEqual(usableCores(), expected, quota)


class ThisMachineTests(SynchronousTestCase):
    def test_noProcFile(self) -> None:
        missing = Path(tempfile.gettempdir()) / "timerserver-no-such-cgroup-file"
        self.assertIsNone(cpuQuota(procCgroup=missing))

    def test_thisMachine(self) -> None:
        """Whatever this machine's cgroups say, the answer is a sane number of cores."""
        quota = cpuQuota()
        self.assertTrue(quota is None or quota > 0, quota)
        self.assertGreaterEqual(usableCores(), 1)
        self.assertLessEqual(usableCores(), len(os.sched_getaffinity(0)))


def makeCgroup(testCase: SynchronousTestCase, cpus: float) -> Path:
    """
    A real cgroup allowing C{cpus} CPUs' worth of time: its C{cgroup.procs}.
    Skips the test where this process may not make one (not root, no CPU
    controller to write).
    """
    name = f"timerserver-test-{os.getpid()}"
    period = 100_000
    v1 = cores.CGROUP_ROOT / "cpu"
    v2 = cores.CGROUP_ROOT
    controlled = v2 / "cgroup.subtree_control"
    if (v1 / "cpu.cfs_quota_us").exists() and os.access(v1, os.W_OK):
        group = v1 / name
        files = {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(int(cpus * period))}
    elif controlled.exists() and "cpu" in controlled.read_text().split():
        group = v2 / name
        files = {"cpu.max": f"{int(cpus * period)} {period}"}
    else:
        raise SkipTest("no writable cgroup CPU controller here (needs root: CI runs as root)")
    try:
        group.mkdir()
        for file, value in files.items():
            (group / file).write_text(value)
    except OSError as e:
        if group.exists():
            group.rmdir()
        raise SkipTest(f"cannot make a cgroup at {group}: {e}") from None
    testCase.addCleanup(group.rmdir)
    return group / "cgroup.procs"


class RealCgroupTests(SynchronousTestCase):
    def test_aQuotaTheKernelHolds(self) -> None:
        """A process in a real cgroup of 1 CPU counts one core, and --workers auto is 1."""
        procs = makeCgroup(self, 1.0)
        script = (
            "import json; from timerserver.cores import cpuQuota, usableCores; "
            "from timerserver.tap import Options; o = Options(); "
            "o.parseOptions(['--workers', 'auto']); "
            "print(json.dumps([cpuQuota(), usableCores(), o.config.workers]))"
        )
        # The shell joins the cgroup, then becomes Python: it leaves as it exits.
        done = subprocess.run(
            ["sh", "-c", f'echo $$ > "{procs}" && exec "$0" -c "$1"', sys.executable, script],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        self.assertEqual(json.loads(done.stdout), [1.0, 1, 1])
