"""
The published wheel: built from this tree as the README says (C{python -m
build}), installed into a fresh virtual environment, where twistd must find
the plugin and serve.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ROOT, WELCOME, ServerProcess, recvExactly


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
        run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", ROOT, cwd=tmp)
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

        # The server itself, from the installed twistd, in a folder that is not
        # the repository and with no PYTHONPATH: as the README's systemd unit runs it.
        twistd = [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "timerserver"]
        twistd += ["-p", "tcp:0:interface=127.0.0.1", "--interval", "0.2"]
        inTmp = ["sh", "-c", 'cd "$0" && unset PYTHONPATH && exec "$@"', str(tmp), *twistd]
        server = ServerProcess(command=inTmp)
        self.addCleanup(server.kill)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
            sock.sendall(b"from the wheel")
            self.assertEqual(recvExactly(sock, 14), b"from the wheel")
        self.assertIn(server.stop(signal.SIGTERM), (0, -signal.SIGTERM))
        self.assertIn("stopped listening", server.output)
        self.assertNotIn("Traceback", server.output)


class SdistTests(SynchronousTestCase):
    def test_sdistCarriesWhatTheTestsNeed(self) -> None:
        """Distributions build and test from the sdist: a test runs from the unpacked tree."""
        tmp = Path(tempfile.mkdtemp(prefix="timerserver-sdist-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        run(sys.executable, "-m", "build", "--sdist", "--outdir", tmp / "dist", ROOT, cwd=tmp)
        [sdist] = (tmp / "dist").glob("timerserver-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp / "unpacked", filter="data")
        [tree] = (tmp / "unpacked").iterdir()
        for path in (
            "tests/__init__.py",
            "tests/contract.py",
            "tests/serverprocess.py",
            "tests/tlshelpers.py",
            "CHANGELOG.md",
            "bench/server.py",
            "bench/loadclient.py",
            "contrib/systemd/timerserver.service",
            "contrib/grafana/timerserver-dashboard.json",
            "twisted/plugins/timerserver_plugin.py",
        ):
            self.assertTrue((tree / path).is_file(), path)
        self.assertFalse((tree / "twisted" / "__init__.py").exists())
        result = run(sys.executable, "-m", "twisted.trial", "tests.test_periodic", cwd=tree)
        self.assertIn("PASSED", result.stdout)
        self.assertIn(
            str(tree),
            run(
                sys.executable, "-c", "import timerserver; print(timerserver.__file__)", cwd=tree
            ).stdout,
        )
