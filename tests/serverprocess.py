"""
Run a real C{twistd -n timerserver} process on a free loopback port, for
end-to-end tests and benchmarks.  Everything it starts, it stops.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WELCOME = b"Welcome to the timer server\r\n"
MESSAGE = b"Periodic per connection message\r\n"

# Like the twistd script, but run with the repository root first on sys.path.
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


REACTOR = os.environ.get("TIMERSERVER_TEST_REACTOR", "")
"""A twistd reactor name (C{asyncio}) every server under test runs on; empty for the default."""


FIGURES = "TIMERSERVER_TEST_FIGURES"
"""The file that L{figuresObserver} writes the stop figures to."""


def figuresObserver() -> Any:
    """
    A twistd C{--logger}: the log as twistd writes it (text on standard
    output), and the C{stopStats} of every event that has them (the stop
    line's figures) as one JSON object a line to the file C{$FIGURES} names,
    so that tests read them as data, not from the text.
    """
    from twisted.logger import ILogObserver, textFileLogObserver
    from zope.interface import provider

    text = textFileLogObserver(sys.stdout)
    path = os.environ.get(FIGURES)

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        text(event)
        figures = event.get("stopStats")
        if path and isinstance(figures, dict):
            with open(path, "a") as f:
                f.write(json.dumps(figures) + "\n")

    return observe


_FIGURES_DIR: list[str] = []


def _figuresDir() -> str:
    """A directory for this test run's figures files, removed when it ends."""
    if not _FIGURES_DIR:
        import atexit
        import shutil

        _FIGURES_DIR.append(tempfile.mkdtemp(prefix="timerserver-figures-"))
        atexit.register(shutil.rmtree, _FIGURES_DIR[0], True)
    return _FIGURES_DIR[0]


def twistdCommand(*args: str) -> list[str]:
    reactor = ["-r", REACTOR] if REACTOR else []
    return [sys.executable, "-c", TWISTD, *reactor, *args]


def _limitFiles(count: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class ServerProcess:
    """
    C{twistd -n --pidfile= timerserver ARGS} listening on a loopback port the
    kernel picked; C{port} is read from its "listening on" log line.
    """

    def __init__(
        self,
        *args: str,
        port: str = "tcp:0:interface=127.0.0.1",
        startTimeout: float = 20,
        command: list[str] | None = None,
        openFiles: int | None = None,
        env: dict[str, str] | None = None,
        portPattern: str = r"listening on .*port=(\d+)",
    ) -> None:
        """
        @param command: run this instead of twistd; it must print a line with
            "listening on ... port=N".
        @param openFiles: the server's open-file limit, soft and hard.
        @param env: variables added to the server's environment.
        @param portPattern: the log line that says the server listens; its
            group, if a number, is the port (for a UNIX socket, 0).
        """
        figures = tempfile.NamedTemporaryFile(prefix="figures-", dir=_figuresDir(), delete=False)
        figures.close()
        self.figuresPath = Path(figures.name)
        if command is None:
            command = twistdCommand(
                "-n",
                "--pidfile=",
                "--logger=tests.serverprocess.figuresObserver",
                "timerserver",
                "-p",
                port,
                *args,
            )
        env = {**(env or {}), FIGURES: figures.name}
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=None if openFiles is None else lambda: _limitFiles(openFiles),
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found = self.waitForLine(portPattern, startTimeout).groups()
        self.port = int(found[0]) if found and found[0].isdigit() else 0

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stopFigures(self) -> dict[str, int]:
        """
        The figures of the server's stop line, as data: C{closed},
        C{cancelled}, C{skipped} (and, for C{--workers}, C{workers} and
        C{unreported}: how many workers sent none).
        """
        lines = self.figuresPath.read_text().splitlines()
        if not lines:
            raise AssertionError(f"no stop figures; the server's log:\n{self.output}")
        figures: dict[str, int] = json.loads(lines[-1])
        return figures

    def waitForLine(self, pattern: str, timeout: float, occurrence: int = 1) -> re.Match[str]:
        """The C{occurrence}th line matching C{pattern}, waiting up to C{timeout}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [m for m in map(re.compile(pattern).search, list(self.lines)) if m]
            if len(matches) >= occurrence:
                return matches[occurrence - 1]
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send C{sig} and wait; kill and fail if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit within {timeout}s of signal {sig}") from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def recvExactly(sock: socket.socket, size: int, timeout: float = 5) -> bytes:
    """Read C{size} bytes, or fewer if the peer closes first."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recvUntilClosed(sock: socket.socket, timeout: float = 5) -> bytes:
    """Read until the peer closes."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def freePort() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def holdPort() -> socket.socket:
    """A listening socket on a free loopback port: a port in use.  Close it when done."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def runTwistd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run C{twistd -n --pidfile= timerserver ARGS} to its end (for command-line errors)."""
    return subprocess.run(
        twistdCommand("-n", "--pidfile=", "timerserver", *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def connectFrom(
    port: int, source: str = "127.0.0.1", rcvbuf: int | None = None, timeout: float = 5
) -> socket.socket:
    """A TCP client of a loopback server, from the loopback address C{source}."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def sendWhileReading(sock: socket.socket, payload: bytes, timeout: float = 30) -> bytes:
    """
    Send C{payload} from a thread while reading what comes back, until as many
    bytes as were sent have come back besides the periodic messages; return
    them without the periodic messages (which fall between writes, never
    inside one).
    """
    sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
    sender.start()
    received = b""
    deadline = time.monotonic() + timeout
    while len(received.replace(MESSAGE, b"")) < len(payload) and time.monotonic() < deadline:
        try:
            received += sock.recv(1 << 20)
        except BlockingIOError:
            # A TLS socket written from the other thread can find its read
            # wanting more (Python 3.13 says so with EAGAIN): read again.
            time.sleep(0.001)
    sender.join(10)
    return received.replace(MESSAGE, b"")
