"""
The README's shell commands, run as written with the real tools (C{nc} from
netcat-openbsd, C{socat}, C{openssl}, C{curl}): each command's text is read
from README.md, so a README edit that breaks a command fails here.  Only the
fixed ports (5050, 5051, 9050) are replaced by free loopback ports, and
C{.venv/bin/twistd} by this checkout's twistd (the tests run from the
repository root; installing is L{tests.test_packaging}'s).

Commands run elsewhere, not here: the wheel build and install
(C{test_packaging}), C{systemd-socket-activate} (C{test_systemd}), the
benchmarks (C{test_bench}, C{test_chaos}), pydoctor (C{test_docs}), stopping
with Ctrl-C or SIGTERM (C{test_endtoend}), C{haproxy:} behind HAProxy
(C{test_haproxy}, on loopback: the README's C{interface=0.0.0.0} is not for
tests).  Not run at all: the install-and-test command (it is what runs this
suite: C{.ci/run}), the C{sudo} commands of the systemd section (they write to
C{/opt} and C{/etc} and start a unit; C{test_systemd} checks the unit files
they copy), C{pip install} of an extra (no index in tests: the extras named
must exist, checked below), and C{openssl dhparam -out dh.pem 2048} (it takes
from 1 to 50 s here, at random).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import (
    MESSAGE,
    ROOT,
    WELCOME,
    ServerProcess,
    recvExactly,
    twistdCommand,
)
from timerserver.cores import usableCores

README = ROOT / "README.md"
TWISTD = ".venv/bin/twistd "


def section(heading: str) -> str:
    """The text of the README under C{heading}, up to the next heading of its level or above."""
    lines = README.read_text(encoding="utf-8").splitlines()
    if heading not in lines:
        raise AssertionError(f"README.md has no heading {heading!r}")
    level = heading.split(" ", 1)[0]
    body: list[str] = []
    inBlock = False
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("```"):
            inBlock = not inBlock
        elif not inBlock and line.startswith("#") and line.split(" ", 1)[0] <= level:
            break
        body.append(line)
    return "\n".join(body)


def words(heading: str) -> str:
    """The text under C{heading}, its lines joined and its spaces single: what it says."""
    return " ".join(section(heading).split())


def intro() -> str:
    """The text of the README before its first C{##} heading."""
    return README.read_text(encoding="utf-8").split("\n## ", 1)[0]


def shellLines(text: str) -> list[str]:
    """The lines of every C{```sh} block of C{text}."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, re.S | re.M)
    return [line for block in blocks for line in block.splitlines()]


def commandLine(heading: str, start: str) -> str:
    """The command of C{heading}'s sh block that starts with C{start}, without its comment."""
    found = [line for line in shellLines(section(heading)) if line.startswith(start)]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} commands starting {start!r} under {heading!r}")
    return found[0].split("  #", 1)[0].strip()


def inlineCommand(heading: str, pattern: str) -> str:
    """The one inline code span under C{heading} that matches C{pattern}."""
    prose = re.sub(r"^```.*?^```$", "", section(heading), flags=re.S | re.M)
    found = [s for s in re.findall(r"`([^`]+)`", prose) if re.search(pattern, s)]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} inline commands matching {pattern!r} under {heading!r}")
    return found[0]


def withPort(command: str, readme: int, port: int) -> str:
    """C{command} with the README's port C{readme} replaced by C{port}."""
    replaced, count = re.subn(rf"(?<![\d.]){readme}(?!\d)", str(port), command)
    if count != 1:
        raise AssertionError(f"{command!r} names port {readme} {count} times, not once")
    return replaced


def twistdArgs(command: str, port: str | None = None) -> list[str]:
    """
    The arguments of a README C{.venv/bin/twistd ...} command, with
    C{-p PORT} added after C{timerserver} when the command names no port
    (the default, 5050, is replaced by a free one).
    """
    if not command.startswith(TWISTD):
        raise AssertionError(f"not a twistd command: {command!r}")
    args = shlex.split(command[len(TWISTD) :])
    if port is not None:
        at = args.index("timerserver") + 1
        args[at:at] = ["-p", port]
    return args


def requireTool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SkipTest(f"{name} is not installed (Debian package {package})")
    return path


def requireOpenBSDNetcat() -> None:
    requireTool("nc", "netcat-openbsd")
    usage = subprocess.run(["nc", "-h"], capture_output=True, text=True, timeout=10)
    if not re.search(r"^\s*-N\b", usage.stdout + usage.stderr, re.M):
        raise SkipTest("this nc has no -N (the README's nc is Debian's netcat-openbsd)")


def shell(command: str, cwd: Path, stdin: int) -> subprocess.Popen[bytes]:
    """C{command} run by C{sh -c} (pipes work as typed), in a process group of its own."""
    return subprocess.Popen(
        ["sh", "-c", command],
        cwd=cwd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


class Tool:
    """
    A README shell command (C{sh -c}, so pipes work as typed) in a process
    group of its own, its input a pipe we type into and close (Ctrl-D), its
    output read as it comes.
    """

    def __init__(self, command: str, cwd: Path = ROOT) -> None:
        self.command = command
        self.process = shell(command, cwd, subprocess.PIPE)
        self.stdout = b""
        self.stderr = b""
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, name), daemon=True)
            for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr"))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, name: str) -> None:
        fd = stream.fileno()  # type: ignore[attr-defined]
        while chunk := os.read(fd, 65536):
            with self._changed:
                setattr(self, name, getattr(self, name) + chunk)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def waitForOutput(self, expected: bytes, timeout: float) -> bytes:
        """Wait until standard output starts with C{expected}; return all of it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.stdout.startswith(expected):
                left = deadline - time.monotonic()
                if left <= 0 or (len(self.stdout) >= len(expected)) or not self._reading():
                    raise AssertionError(
                        f"{self.command!r} printed {self.stdout[:300]!r}, not {expected!r} "
                        f"(stderr {self.stderr[-2000:]!r})"
                    )
                self._changed.wait(min(left, 0.1))
            return self.stdout

    def _reading(self) -> bool:
        return self._readers[0].is_alive()

    def type(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def endOfInput(self) -> None:
        """Ctrl-D: the command reads the end of its input."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float) -> int:
        """The exit status, once the command has exited and its output is read."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.command!r} still running after {timeout}s") from None
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def runToEnd(
    command: str, timeout: float = 30, cwd: Path = ROOT
) -> subprocess.CompletedProcess[bytes]:
    """Run a README shell command with no input to its end; past C{timeout}, kill all of it."""
    process = shell(command, cwd, subprocess.DEVNULL)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=10)
        raise AssertionError(
            f"{command!r} still running after {timeout}s; it printed {stdout[-300:]!r}"
            f" {stderr[-2000:]!r}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


class CommandCase(SynchronousTestCase):
    def tool(self, command: str, cwd: Path = ROOT) -> Tool:
        tool = Tool(command, cwd)
        self.addCleanup(tool.kill)
        return tool

    def server(self, args: list[str], **kwargs: object) -> ServerProcess:
        server = ServerProcess(command=twistdCommand(*args), **kwargs)  # type: ignore[arg-type]
        self.addCleanup(server.kill)
        return server


TALKING = "## Talking to it"


class TalkingToItTests(CommandCase):
    """
    "Talking to it": the server as the README's first command runs it, and
    the clients its transcript shows, typed into and closed with Ctrl-D.
    """

    def setUp(self) -> None:
        [run] = [line for line in shellLines(intro()) if "pip install . " in line]
        command = run.split(" && ")[-1]
        self.assertIn("(listens on 127.0.0.1:5050)", intro())
        self.process = self.server(twistdArgs(command, "tcp:0:interface=127.0.0.1"))
        self.port = self.process.port

    def transcript(self) -> tuple[str, str, list[bytes], bytes]:
        """
        The transcript's client commands (nc, and socat after "or:"), what
        it shows printed (every line but the typed one) and what is typed.
        """
        first, *lines = shellLines(section(TALKING))
        self.assertTrue(first.startswith("$ "), first)
        nc, _, alternative = first[2:].partition("#")
        socat = alternative.strip().removeprefix("or:").strip()
        typed = [line for line in lines if "# what you type" in line]
        self.assertEqual(len(typed), 1, lines)
        printed = [line.split("#", 1)[0].rstrip().encode() for line in lines]
        printed.remove(typed[0].split("#", 1)[0].rstrip().encode())
        return nc.strip(), socat, printed, typed[0].split("#", 1)[0].rstrip().encode() + b"\n"

    def talk(self, command: str) -> None:
        """
        Type the transcript's line into C{command}, read what it shows, then
        Ctrl-D: the server flushes, closes, and the client exits.
        """
        _, _, printed, typed = self.transcript()
        client = self.tool(withPort(command, 5050, self.port))
        client.waitForOutput(WELCOME, 10)
        client.type(typed)
        expected = WELCOME + typed + 2 * MESSAGE
        shown = client.waitForOutput(expected, 10)
        # What a terminal shows: the same lines, CR LF or LF.
        self.assertEqual(shown[: len(expected)].replace(b"\r\n", b"\n").splitlines(), printed)
        client.endOfInput()
        self.assertEqual(client.wait(10), 0, client.stderr)
        # The close follows the echo at once: at most one more message in between.
        self.assertIn(client.stdout[len(expected) :], (b"", MESSAGE))

    def test_nc(self) -> None:
        requireOpenBSDNetcat()
        nc, _, _, _ = self.transcript()
        self.assertEqual(nc, "nc -N 127.0.0.1 5050")
        self.talk(nc)

    def test_socat(self) -> None:
        requireTool("socat", "socat")
        _, socat, _, _ = self.transcript()
        self.assertTrue(socat.startswith("socat "), socat)
        self.talk(socat)

    def test_ncWithoutDashNClosesNothing(self) -> None:
        """Without C{-N}, Ctrl-D closes nothing and the periodic messages go on."""
        requireOpenBSDNetcat()
        nc, _, _, _ = self.transcript()
        self.assertIn(" -N ", nc)
        client = self.tool(withPort(nc.replace(" -N ", " "), 5050, self.port))
        client.waitForOutput(WELCOME, 10)
        client.endOfInput()
        client.waitForOutput(WELCOME + MESSAGE, 10)
        self.assertIsNone(client.process.poll())

    def test_printfIntoNc(self) -> None:
        """C{printf 'hello\\n' | nc -N ...} prints the welcome and C{hello}, then exits."""
        requireOpenBSDNetcat()
        command = inlineCommand(TALKING, r"^printf .*\| nc ")
        self.assertIn("prints the welcome and `hello`, then exits", words(TALKING))
        done = runToEnd(withPort(command, 5050, self.port))
        self.assertEqual((done.returncode, done.stdout), (0, WELCOME + b"hello\n"), done.stderr)


# In a network namespace of its own (unshare -rn), the README's server and
# client run with its own port, 5050, which no other server there can hold.
# The server logs to standard error; standard output is the client's.
IN_NAMESPACE = """\
ip link set lo up || exit 97
"$@" >&2 &
server=$!
tries=0
until nc -z 127.0.0.1 5050 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -gt 300 ]; then kill -KILL "$server"; exit 98; fi
    sleep 0.1
done
%s
status=$?
kill -TERM "$server"
wait "$server"
exit "$status"
"""


class DefaultPortTests(SynchronousTestCase):
    """
    The README's first command's server and its C{printf ... | nc} client,
    character for character: the server on its default port, 127.0.0.1:5050.
    """

    def test_listensOn5050(self) -> None:
        requireOpenBSDNetcat()
        requireTool("unshare", "util-linux")
        requireTool("ip", "iproute2")
        probe = subprocess.run(
            ["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10
        )
        if probe.returncode:
            raise SkipTest(f"no network namespace to run in: unshare -rn: {probe.stderr!r}")
        [run] = [line for line in shellLines(intro()) if "pip install . " in line]
        self.assertIn("(listens on 127.0.0.1:5050)", intro())
        server = twistdCommand(*twistdArgs(run.split(" && ")[-1]))
        client = inlineCommand(TALKING, r"^printf .*\| nc ")
        done = runToEnd(
            shlex.join(["unshare", "-rn", "sh", "-c", IN_NAMESPACE % client, "sh", *server]),
            timeout=30,
        )
        stdout, log = done.stdout, done.stderr.decode("utf-8", "replace")
        self.assertEqual((done.returncode, stdout), (0, WELCOME + b"hello\n"), log)
        self.assertIn("listening on IPv4Address(type='TCP', host='127.0.0.1', port=5050)", log)
        self.assertIn("stopped listening", log)
        self.assertNotIn("Traceback", log)


TLS = "## TLS"


class TLSCommandTests(CommandCase):
    """The TLS section: a certificate made by its openssl command, served and talked to."""

    def setUp(self) -> None:
        requireTool("openssl", "openssl")
        try:
            import OpenSSL  # noqa: F401
        except ImportError:
            raise SkipTest("ssl: endpoints need pyOpenSSL (pip install '.[tls]')") from None
        self.directory = Path(tempfile.mkdtemp(prefix="timerserver-readme-tls-"))
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_certificateServerAndClient(self) -> None:
        made = runToEnd(commandLine(TLS, "openssl req "), timeout=60, cwd=self.directory)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertTrue((self.directory / "key.pem").is_file())
        self.assertTrue((self.directory / "cert.pem").is_file())

        # Run where the key and certificate are, as the README's relative paths need;
        # the checkout on PYTHONPATH supplies the plugin.
        command = withPort(commandLine(TLS, TWISTD), 5051, 0)
        args = twistdArgs(command)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        inDirectory = ["sh", "-c", 'cd "$0" && exec "$@"', str(self.directory)]
        server = ServerProcess(command=inDirectory + twistdCommand(*args), env={"PYTHONPATH": path})
        self.addCleanup(server.kill)

        # openssl s_client -quiet ignores the end of its input (-ign_eof): typed into, then killed.
        client = self.tool(withPort(commandLine(TLS, "openssl s_client "), 5051, server.port))
        client.waitForOutput(WELCOME, 15)
        client.type(b"hello\n")
        client.waitForOutput(WELCOME + b"hello\n" + MESSAGE, 10)
        self.assertIn(b"CN = localhost", client.stderr)  # the certificate of -subj /CN=localhost
        self.assertIsNone(client.process.poll())
        server.stop()
        self.assertIn("stopped listening", server.output)
        self.assertNotIn("Traceback", server.output)


MONITORING = "## Monitoring"


class MonitoringCommandTests(CommandCase):
    def setUp(self) -> None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise SkipTest("--metrics needs prometheus-client (pip install '.[metrics]')") from None
        command = withPort(commandLine(MONITORING, TWISTD), 9050, 0)
        self.process = self.server(twistdArgs(command, "tcp:0:interface=127.0.0.1"))
        found = self.process.waitForLine(r"metrics on .*port=(\d+)", 20)
        self.metricsPort = int(found.group(1))

    def test_curl(self) -> None:
        """C{curl ... | grep ^timerserver_}: a line for every metric of the README's table."""
        requireTool("curl", "curl")
        with socket.create_connection(("127.0.0.1", self.process.port), timeout=5) as sock:
            self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        command = withPort(commandLine(MONITORING, "curl "), 9050, self.metricsPort)
        done = runToEnd(command)
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.decode().splitlines()
        self.assertTrue(lines)
        self.assertEqual([line for line in lines if not line.startswith("timerserver_")], [])
        table = [line for line in section(MONITORING).splitlines() if line.startswith("| `")]
        named = {name for row in table for name in re.findall(r"`(timerserver_\w+)", row)}
        # Only with --workers, as its row says:
        self.assertIn("with `--workers`", next(r for r in table if "timerserver_worker_up" in r))
        named.discard("timerserver_worker_up")
        self.assertGreater(len(named), 10)
        shown = {re.match(r"\w+", line).group(0) for line in lines}  # type: ignore[union-attr]
        histograms = {
            n for n in named for suffix in ("_bucket", "_sum", "_count") if n + suffix in shown
        }
        self.assertEqual(sorted(named - shown - histograms), [])
        self.assertIn("timerserver_connections_accepted_total 1.0", lines)

    def test_aScraperThatHalfClosesGetsItsAnswer(self) -> None:
        """ "A scraper may half-close once it has sent its request (C{nc -N})"."""
        requireOpenBSDNetcat()
        self.assertIn("half-close once it has sent its request (`nc -N`)", words(MONITORING))
        request = r"printf 'GET /metrics HTTP/1.0\r\n\r\n' | nc -N 127.0.0.1 %d"
        done = runToEnd(request % self.metricsPort)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith(b"HTTP/1.1 200 "), done.stdout[:200])
        self.assertIn(b"\ntimerserver_connections_open ", done.stdout)


WORKERS = "## Workers"


class WorkersCommandTests(CommandCase):
    """C{--workers auto}: one worker per usable core, serving; the master serves none."""

    def test_auto(self) -> None:
        args = twistdArgs(commandLine(WORKERS, TWISTD), "tcp:0:interface=127.0.0.1")
        self.assertEqual(args[-2:], ["--workers", "auto"])
        server = self.server(args)
        self.addCleanup(self.killWorkers, server)
        cores = usableCores()
        for number in range(1, cores + 1):
            server.waitForLine(rf"worker {number}: timerserver listening on", 30)
        for _ in range(2 * cores):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        self.assertEqual(sorted(self.workerPids(server)), list(range(1, cores + 1)))
        server.stop(timeout=20)
        self.assertRegex(server.output, rf"and its {cores} workers; closed \d+ connections")
        self.assertNotIn("Traceback", server.output)

    def workerPids(self, server: ServerProcess) -> dict[int, int]:
        """The newest pid of each worker number, from the master's log."""
        found = re.findall(r"worker (\d+) started, pid (\d+)", server.output)
        return {int(number): int(pid) for number, pid in found}

    def killWorkers(self, server: ServerProcess) -> None:
        """The workers (and the spare) of a master that did not stop them: its children only."""
        import psutil

        try:
            workers = psutil.Process(server.pid).children()
        except psutil.NoSuchProcess:
            workers = []
        server.kill()
        for worker in workers:
            try:
                worker.kill()  # psutil checks that it is still the same process
            except psutil.NoSuchProcess:
                pass


class ExtrasTests(SynchronousTestCase):
    """Every C{pip install '.[extra,...]'} the README shows names extras setup.cfg defines."""

    def test_extrasExist(self) -> None:
        setup = configparser.ConfigParser()
        setup.read(ROOT / "setup.cfg")
        defined = set(setup["options.extras_require"])
        named = re.findall(r"pip install '\.\[([\w,]+)\]'", README.read_text(encoding="utf-8"))
        extras = {extra for group in named for extra in group.split(",")}
        self.assertGreaterEqual(extras, {"test", "tls", "metrics", "dev", "bench"})
        self.assertEqual(sorted(extras - defined), [])
