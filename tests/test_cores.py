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
        self.mountinfo = self.base / "mountinfo"
        self.mountinfo.write_text("")  # none listed: the usual layout under root

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def mount(self, relative: str, mountRoot: str, kind: str) -> None:
        """List a mount of C{mountRoot} at C{root/relative}: C{kind} "cgroup2" or "cgroup"."""
        point = str(self.root / relative).replace(" ", "\\040")
        options = "rw,cpu,cpuacct" if kind == "cgroup" else "rw"
        with self.mountinfo.open("a") as f:
            f.write(f"40 31 0:37 {mountRoot} {point} rw,relatime - {kind} {kind} {options}\n")

    def quota(self) -> float | None:
        return cpuQuota(self.root, self.proc, self.mountinfo)


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
        for text in ("", "banana 100000", "100000 0", "-5 100000", "1 2 3", "1" + "0" * 400 + " 1"):
            tree = CgroupTree(self, "0::/x\n")
            tree.write("x/cpu.max", text)
            self.assertIsNone(tree.quota(), text)
        tree = CgroupTree(self, "0::/x\n")
        (tree.root / "x").mkdir()
        (tree.root / "x" / "cpu.max").write_bytes(b"\xff 100000")
        self.assertIsNone(tree.quota())

    def test_noCpuControllerFiles(self) -> None:
        tree = CgroupTree(self, "0::/x\n")
        self.assertIsNone(tree.quota())

    def test_aContainersOwnSubtreeMounted(self) -> None:
        """The mount holds /docker/abc: the path below it is what is read."""
        tree = CgroupTree(self, "0::/docker/abc/sub\n")
        tree.mount("v2 here", "/docker/abc", "cgroup2")
        tree.write("v2 here/sub/cpu.max", "100000 100000\n")
        tree.write("v2 here/cpu.max", "300000 100000\n")
        self.assertEqual(tree.quota(), 1.0)

    def test_theLastMountWins(self) -> None:
        tree = CgroupTree(self, "0::/\n")
        tree.mount("hidden", "/", "cgroup2")
        tree.mount("visible", "/", "cgroup2")
        tree.write("hidden/cpu.max", "100000 100000\n")
        tree.write("visible/cpu.max", "300000 100000\n")
        self.assertEqual(tree.quota(), 3.0)

    def test_aPathOutsideItsMountIsNotRead(self) -> None:
        for path in ("/elsewhere/x", "/../other", "/docker/abc/../../other"):
            tree = CgroupTree(self, f"0::{path}\n")
            tree.mount("v2", "/docker/abc", "cgroup2")
            tree.write("v2/cpu.max", "100000 100000\n")
            tree.write("other/cpu.max", "100000 100000\n")
            tree.write("v2/other/cpu.max", "100000 100000\n")
            self.assertIsNone(tree.quota(), path)


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

    def test_filesOnlyAtTheMountRoot(self) -> None:
        """Docker on v1 mounts the container's cgroup as the root: the walk goes on up."""
        tree = CgroupTree(self, "2:cpu,cpuacct:/docker/abc\n")
        tree.write("cpu,cpuacct/cpu.cfs_quota_us", "200000\n")
        tree.write("cpu,cpuacct/cpu.cfs_period_us", "100000\n")
        self.assertEqual(tree.quota(), 2.0)

    def test_aSubtreeMountedByMountinfo(self) -> None:
        tree = CgroupTree(self, "2:cpu,cpuacct:/docker/abc/sub\n")
        tree.mount("cpu", "/docker/abc", "cgroup")
        tree.write("cpu/sub/cpu.cfs_quota_us", "50000\n")
        tree.write("cpu/sub/cpu.cfs_period_us", "100000\n")
        self.assertEqual(tree.quota(), 0.5)

    def test_v1AndV2TheSmallerWins(self) -> None:
        tree = CgroupTree(self, "2:cpu:/a\n0::/b\n")
        tree.write("cpu/a/cpu.cfs_quota_us", "300000\n")
        tree.write("cpu/a/cpu.cfs_period_us", "100000\n")
        tree.write("b/cpu.max", "150000 100000\n")
        self.assertEqual(tree.quota(), 1.5)

    def test_anUnsearchableControllerIsNoQuota(self) -> None:
        """Path.is_dir raises ENAMETOOLONG and EACCES: no quota, not a failed start."""
        tree = CgroupTree(self, "2:cpu," + "x" * 300 + ":/\n")
        self.assertIsNone(tree.quota())

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

    def test_withoutAffinityTheCpuCount(self) -> None:
        self.patch(os, "sched_getaffinity", None)
        del os.sched_getaffinity  # as on macOS and the BSDs
        self.patch(os, "cpu_count", lambda: 6)
        self.patch(cores, "cpuQuota", lambda: 2.5)
        self.assertEqual(usableCores(), 3)

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
        if quota is None:
            self.assertEqual(usableCores(), len(os.sched_getaffinity(0)))


SKIP = 77
"""The exit status of a child that could not join its cgroup: the test skips."""
SCRIPT = (
    "import json; from timerserver.cores import cpuQuota, usableCores; "
    "from timerserver.tap import Options; o = Options(); "
    "o.parseOptions(['--workers', 'auto']); "
    "print(json.dumps([cpuQuota(), usableCores(), o.config.workers]))"
)
"""What a child in a cgroup reports: the quota, the cores and C{--workers auto}."""


def cpuHierarchy() -> tuple[Path, bool]:
    """The writable CPU hierarchy here and whether it is v1; skips where there is none."""
    v1 = cores.CGROUP_ROOT / "cpu"
    controlled = cores.CGROUP_ROOT / "cgroup.subtree_control"
    if (v1 / "cpu.cfs_quota_us").exists() and os.access(v1, os.W_OK):
        return v1, True
    if controlled.exists() and "cpu" in controlled.read_text().split():
        return cores.CGROUP_ROOT, False
    raise SkipTest("no writable cgroup CPU controller here (needs root: CI runs as root)")


def makeCgroup(testCase: SynchronousTestCase, cpus: float, parent: Path | None = None) -> Path:
    """
    A real cgroup (under C{parent}, if given) allowing C{cpus} CPUs' worth of
    time, removed after the test.  Skips the test where this process may not
    make one (not root, no CPU controller to write).
    """
    hierarchy, v1 = cpuHierarchy()
    group = (parent or hierarchy) / f"timerserver-test-{os.getpid()}-{os.urandom(4).hex()}"
    period = 100_000
    if v1:
        files = {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(int(cpus * period))}
    else:
        files = {"cpu.max": f"{int(cpus * period)} {period}"}
    try:
        group.mkdir()
    except OSError as e:
        raise SkipTest(f"cannot make a cgroup at {group}: {e}") from None
    testCase.addCleanup(group.rmdir)
    try:
        for file, value in files.items():
            (group / file).write_text(value)
    except OSError as e:
        raise SkipTest(f"cannot set the quota of {group}: {e}") from None
    return group


def runIn(testCase: SynchronousTestCase, command: str) -> object:
    """
    Run C{command} (a shell line that joins a cgroup, then runs C{"$0" -c
    "$1"}: Python and L{SCRIPT}) and return what the script printed; skip
    where joining failed.
    """
    done = subprocess.run(
        ["sh", "-c", command, sys.executable, SCRIPT],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode == SKIP:
        raise SkipTest(f"cannot run in the cgroup here: {done.stderr.strip()}")
    testCase.assertEqual(done.returncode, 0, done.stderr)
    return json.loads(done.stdout)


class RealCgroupTests(SynchronousTestCase):
    def test_aQuotaTheKernelHolds(self) -> None:
        """A process in a real cgroup of 1 CPU counts one core, and --workers auto is 1."""
        group = makeCgroup(self, 1.0)
        # The shell joins the cgroup, then becomes Python: it leaves as it exits.
        joined = runIn(self, f'echo $$ > "{group}/cgroup.procs" || exit {SKIP}; exec "$0" -c "$1"')
        self.assertEqual(joined, [1.0, 1, 1])

    def test_aContainersSubtreeMountedAsTheRoot(self) -> None:
        """
        As in a container on cgroup v1: the outer cgroup (3 CPUs) is mounted
        over the hierarchy, and the process sits in an inner one (1 CPU)
        whose path /proc/self/cgroup gives from the real root.
        """
        hierarchy, v1 = cpuHierarchy()
        if not v1 or shutil.which("unshare") is None:
            raise SkipTest("needs cgroup v1 and unshare(1) to mount a subtree privately")
        outer = makeCgroup(self, 3.0)
        inner = makeCgroup(self, 1.0, parent=outer)
        command = (
            f'mount --bind "{outer}" "{hierarchy}" || exit {SKIP}; '
            f'echo $$ > "{hierarchy}/{inner.name}/cgroup.procs" || exit {SKIP}; '
            'exec "$0" -c "$1"'
        )
        joined = runIn(self, f'exec unshare -m sh -c \'{command}\' "$0" "$1"')
        self.assertEqual(joined, [1.0, 1, 1])
