"""
The published wheel: built from this tree, installed into a fresh virtual
environment, where twistd must find the plugin.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ROOT


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if result.returncode:
        raise AssertionError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result


class WheelTests(SynchronousTestCase):
    def test_wheelInstallsThePlugin(self) -> None:
        # Outside the repository, so that nothing there can be picked up.
        tmp = Path(tempfile.mkdtemp(prefix="timerserver-wheel-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            tmp / "dist",
            ROOT,
            cwd=tmp,
        )
        [wheel] = (tmp / "dist").glob("timerserver-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn("twisted/plugins/timerserver_plugin.py", names)
        self.assertIn("timerserver/wheel.py", names)
        self.assertIn("timerserver/py.typed", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse([n for n in names if n.startswith("tests/")])

        venv = tmp / "venv"
        run(sys.executable, "-m", "venv", venv, cwd=tmp)
        run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp)
        # From a folder that is not the repository: only the install counts.
        help = run(venv / "bin" / "twistd", "--help", cwd=tmp).stdout
        self.assertIn("timerserver", help)
        sub = run(venv / "bin" / "twistd", "timerserver", "--help", cwd=tmp).stdout
        self.assertIn("--timer-queue", sub)
        where = run(
            venv / "bin" / "python",
            "-c",
            "import timerserver; print(timerserver.__file__)",
            cwd=tmp,
        )
        self.assertTrue(where.stdout.startswith(str(venv)), where.stdout)
