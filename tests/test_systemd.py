"""
Socket activation: C{systemd-socket-activate} (from the systemd package)
hands the server a listening socket by name, with and without workers; and
the unit files in contrib/systemd say what the README says they do.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import socket

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import ROOT, WELCOME, ServerProcess, freePort, recvExactly, twistdCommand

UNITS = ROOT / "contrib" / "systemd"


class SocketActivationTests(SynchronousTestCase):
    def activate(
        self,
        *args: str,
        fdname: str = "timerserver",
        listen: str = "127.0.0.1:{port}",
        tool: tuple[str, ...] = (),
        port: str = "systemd:domain=INET:name=timerserver",
    ) -> tuple[ServerProcess, int]:
        path = shutil.which("systemd-socket-activate")
        if path is None:
            raise SkipTest("systemd-socket-activate is not installed (Debian package systemd)")
        number = freePort()
        command = [path, *tool, f"--fdname={fdname}", "-l", listen.format(port=number)]
        command += twistdCommand("-n", "--pidfile=", "timerserver", "--port", port, *args)
        # systemd-socket-activate listens at once and starts the server on the
        # first connection, as systemd does: that client waits in the backlog.
        unix = listen.startswith("/")
        pattern = r"Listening on (\S+) as" if unix else r"Listening on \S+:(\d+) as"
        server = ServerProcess(command=command, portPattern=pattern)
        self.addCleanup(server.kill)
        self.assertEqual(server.port, 0 if unix else number)
        return server, number

    def assertWelcomed(self, port: int, count: int = 1) -> None:
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                self.assertEqual(recvExactly(sock, len(WELCOME), timeout=30), WELCOME)
                sock.sendall(b"activated")
                self.assertEqual(recvExactly(sock, 9), b"activated")

    def test_aClientIsWelcomed(self) -> None:
        server, port = self.activate()
        self.assertWelcomed(port)  # the first connection starts the server
        server.waitForLine(r"timerserver listening on .*port=(\d+)", 5)
        self.assertWelcomed(port)
        server.stop()
        self.assertIn("stopped listening on systemd:domain=INET:name=timerserver", server.output)

    def test_aSocketOfAnotherNameIsOneLine(self) -> None:
        """A unit whose FileDescriptorName= is not the --port's name: one line, no traceback."""
        for args in ((), ("--workers", "2")):
            server, port = self.activate(*args, fdname="other")
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                server.waitForLine(r"cannot listen on systemd:.*no socket 'timerserver'", 20)
            self.assertNotEqual(server.stop(timeout=20), 0)
            self.assertNotIn("Traceback", server.output)

    def test_anIPv6SocketUnderDomainINETIsReadAsWhatItIs(self) -> None:
        """
        systemd makes C{ListenStream=5050} an IPv6 socket (every address,
        IPv4 mapped); read as C{domain=INET}, every client's address was the
        same garbage: one allowance for all, and behind HAProxy none trusted.
        """
        for args in ((), ("--workers", "2")):
            server, port = self.activate("--max-per-peer", "1", *args, listen="{port}")
            first = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(first.close)
            self.assertEqual(recvExactly(first, len(WELCOME), timeout=30), WELCOME)
            second = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(second.close)
            self.assertEqual(recvExactly(second, 13), b"Server busy\r\n")  # one per host
            for source in ("127.0.0.2", "::1"):
                family = socket.AF_INET6 if ":" in source else socket.AF_INET
                with socket.socket(family) as other:
                    other.settimeout(5)
                    other.bind((source, 0))
                    other.connect(("::1" if ":" in source else "127.0.0.1", port))
                    self.assertEqual(recvExactly(other, len(WELCOME), timeout=30), WELCOME)
            server.stop(timeout=20)
            self.assertIn("host='::ffff:127.0.0.1'", server.output)
            self.assertNotIn("Traceback", server.output)
        server, port = self.activate(
            listen="{port}", port="haproxy:systemd:domain=INET:name=timerserver"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as proxied:
            proxied.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 5050\r\n")
            self.assertEqual(recvExactly(proxied, len(WELCOME), timeout=30), WELCOME)

    def test_aSocketTheServerCannotServeOnIsOneLine(self) -> None:
        """A datagram socket, or a connected one (Accept=yes): one line and exit, no spin."""
        for tool, why in (
            (("--datagram",), "is not a stream socket"),
            (("--accept",), "is not listening"),
        ):
            for args in ((), ("--workers", "2")):
                server, port = self.activate(*args, tool=tool)
                if tool == ("--datagram",):
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
                        datagram.sendto(b"x", ("127.0.0.1", port))  # starts the server
                    server.waitForLine(why, 20)
                else:
                    with socket.create_connection(("127.0.0.1", port), timeout=5):
                        server.waitForLine(why, 20)
                self.assertNotEqual(server.stop(timeout=20), 0)
                self.assertNotIn("Traceback", server.output)

    def test_aUnixSocketIsLeftAsSystemdMadeIt(self) -> None:
        """
        Twisted's adopted unix port made the socket's file mode 0666 and
        removed the file when it stopped: systemd's SocketMode= overridden,
        and the socket it keeps for the next start unreachable.
        """
        import os
        import stat
        import tempfile

        for args in ((), ("--workers", "2")):
            path = os.path.join(tempfile.mkdtemp(), "ts.sock")
            server, _ = self.activate(
                *args, listen=path, port="systemd:domain=UNIX:name=timerserver"
            )
            os.chmod(path, 0o600)  # as SocketMode=0600 would
            for _ in range(2):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(30)
                    sock.connect(path)
                    self.assertEqual(recvExactly(sock, len(WELCOME), timeout=30), WELCOME)
            if args:
                server.waitForLine(r"worker 2: timerserver listening", 20)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            server.stop(timeout=20)
            self.assertTrue(os.path.exists(path))  # systemd's, for the next start
            self.assertNotIn("Traceback", server.output)

    def test_aWrapperThatForksIsOneLineThatSaysSo(self) -> None:
        """systemd's sockets are for the process it started (LISTEN_PID), not its child."""
        path = shutil.which("systemd-socket-activate")
        if path is None:
            raise SkipTest("systemd-socket-activate is not installed (Debian package systemd)")
        port = freePort()
        twistd = shlex.join(
            twistdCommand(
                "-n", "--pidfile=", "timerserver", "--port", "systemd:domain=INET:name=timerserver"
            )
        )  # fmt: skip
        command = [path, "--fdname=timerserver", "-l", f"127.0.0.1:{port}"]
        command += ["sh", "-c", f"{twistd}; echo exited $?"]  # no exec: twistd is a child
        server = ServerProcess(command=command, portPattern=r"Listening on \S+:(\d+) as")
        self.addCleanup(server.kill)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            server.waitForLine(r"are for process \d+ \(LISTEN_PID\), not this one", 20)
            server.waitForLine(r"exited 1", 20)
        self.assertNotIn("Traceback", server.output)

    def test_theMasterHandsTheSocketToItsWorkers(self) -> None:
        server, port = self.activate("--workers", "2")
        self.assertWelcomed(port)
        server.waitForLine(r"worker 2: timerserver listening", 20)
        self.assertIn("one shared socket", server.output)
        self.assertWelcomed(port, 6)
        server.stop(timeout=20)
        self.assertRegex(server.output, r"and its 2 workers; closed \d+ connections")
        self.assertNotIn("Traceback", server.output)


class UnitFileTests(SynchronousTestCase):
    def read(self, name: str) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string((UNITS / name).read_text())
        return parser

    def test_theServiceUsesTheSocketByName(self) -> None:
        socketUnit, service = self.read("timerserver.socket"), self.read("timerserver.service")
        name = socketUnit["Socket"]["FileDescriptorName"]
        execStart = service["Service"]["ExecStart"].replace("\\\n", " ")
        self.assertIn(f"systemd:domain=INET:name={name}", execStart)
        self.assertEqual(service["Unit"]["Requires"], "timerserver.socket")

    def test_stopsGracefullyAndRunsWithoutRoot(self) -> None:
        unit = self.read("timerserver.service")["Service"]
        execStart = unit["ExecStart"]
        shutdown = float(re.search(r"--shutdown-timeout (\S+)", execStart).group(1))  # type: ignore[union-attr]
        self.assertGreater(float(unit["TimeoutStopSec"]), shutdown)
        self.assertEqual(unit["Restart"], "on-failure")
        self.assertEqual(unit["LimitNOFILE"], "20000")
        self.assertEqual(unit["DynamicUser"], "yes")
        self.assertNotIn("User=root", (UNITS / "timerserver.service").read_text())
