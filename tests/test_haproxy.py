"""
A real HAProxy (TCP mode, C{send-proxy-v2}) in front of two real server
instances.  Skips, saying why, where haproxy is not installed.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.serverprocess import (
    MESSAGE,
    ServerProcess,
    connectFrom,
    freePort,
    recvExactly,
    recvUntilClosed,
)
from tests.tlshelpers import Certificates

CONFIG = """\
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend plain
    bind 127.0.0.1:{plain}
    default_backend servers
backend servers
    balance source
    server a 127.0.0.1:{a} send-proxy-v2
    server b 127.0.0.1:{b} send-proxy-v2
frontend tls
    bind 127.0.0.1:{tls}
    default_backend tlsservers
frontend edge
    bind 127.0.0.1:{edge} ssl crt {pem}
    default_backend edgeservers
backend edgeservers
    server b 127.0.0.1:{b} send-proxy-v2
backend tlsservers
    server c 127.0.0.1:{c} send-proxy-v2
"""


class HAProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        haproxy = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
        if haproxy is None:
            raise SkipTest("haproxy is not installed (Debian package haproxy)")
        self.certs = Certificates()
        self.a = self.server("A", "--workers", "2", port="haproxy:tcp:0:interface=127.0.0.1")
        self.b = self.server("B", port="haproxy:tcp:0:interface=127.0.0.1")
        self.c = self.server("C", port="haproxy:" + self.certs.endpoint())
        self.plain, tls, self.edge = freePort(), freePort(), freePort()
        directory = Path(tempfile.mkdtemp())
        pem = directory / "edge.pem"  # what HAProxy's crt takes: certificate, then key
        pem.write_bytes(self.certs.cert.read_bytes() + self.certs.key.read_bytes())
        config = directory / "haproxy.cfg"
        config.write_text(
            CONFIG.format(
                plain=self.plain,
                tls=tls,
                edge=self.edge,
                pem=pem,
                a=self.a.port,
                b=self.b.port,
                c=self.c.port,
            )
        )
        self.tls = tls
        self.haproxy = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.stopHAProxy)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.plain), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.fail("haproxy did not start")

    def server(self, name: str, *args: str, port: str) -> ServerProcess:
        server = ServerProcess(
            "--welcome", f"Welcome from {name}\\r\\n", "--max-per-peer", "1",
            "--interval", "0.3", *args, port=port,
        )  # fmt: skip
        self.addCleanup(server.kill)
        if "--workers" in args:
            server.waitForLine(r"worker 2: timerserver listening", 20)
        return server

    def stopHAProxy(self) -> None:
        self.haproxy.kill()
        self.haproxy.wait(10)
        if self.haproxy.stdout:
            self.haproxy.stdout.close()

    def connect(self, source: str, port: int | None = None) -> socket.socket:
        sock = connectFrom(port or self.plain, source)
        self.addCleanup(sock.close)
        return sock

    def welcome(self, sock: socket.socket) -> bytes:
        return recvExactly(sock, len(b"Welcome from A\r\n"))

    def test_clientsReachBothInstancesWithTheirOwnAddress(self) -> None:
        socks = {f"127.0.0.{i}": self.connect(f"127.0.0.{i}") for i in range(2, 12)}
        welcomes = {source: self.welcome(sock) for source, sock in socks.items()}
        self.assertEqual(set(welcomes.values()), {b"Welcome from A\r\n", b"Welcome from B\r\n"})
        for sock in socks.values():
            sock.sendall(b"ping")
            self.assertEqual(recvExactly(sock, 4), b"ping")

        # --max-per-peer 1 counts the client's address, not HAProxy's (on B,
        # one process: with --workers, as on A, the limit is per worker).
        source = next(s for s, w in welcomes.items() if w.endswith(b"B\r\n"))
        again = self.connect(source)
        self.assertEqual(recvExactly(again, 13), b"Server busy\r\n")
        pattern = rf"refused connection from .*host='{source.replace('.', '[.]')}'"
        self.b.waitForLine(pattern, 5)
        self.assertNotRegex(self.b.output, r"refused connection from .*host='127\.0\.0\.1'")

    def test_stoppingOneInstanceGracefully(self) -> None:
        socks = {f"127.0.0.{i}": self.connect(f"127.0.0.{i}") for i in range(2, 12)}
        onA = [s for s in socks.values() if self.welcome(s).endswith(b"A\r\n")]
        onB = [s for s in socks.values() if s not in onA]
        self.assertTrue(onA and onB)
        self.b.stop()
        for sock in onB:
            self.assertEqual(
                recvUntilClosed(sock).replace(MESSAGE, b""), b"Server shutting down\r\n"
            )
        for sock in onA:  # the other instance keeps serving
            data = recvExactly(sock, 3 * len(MESSAGE))
            self.assertEqual(data, 3 * MESSAGE)

    def test_tlsTerminatedByTheServerBehindHAProxy(self) -> None:
        raw = self.connect("127.0.0.5", self.tls)
        sock = self.certs.clientContext().wrap_socket(raw, server_hostname="localhost")
        self.assertEqual(self.welcome(sock), b"Welcome from C\r\n")
        sock.sendall(b"secret")
        self.assertEqual(recvExactly(sock, 6), b"secret")
        # Over --max-per-peer: closed after the header, without a TLS handshake.
        with self.assertRaises((ssl.SSLError, OSError)):
            self.certs.clientContext().wrap_socket(
                self.connect("127.0.0.5", self.tls), server_hostname="localhost"
            )
        self.c.waitForLine(r"refused connection from .*host='127[.]0[.]0[.]5'", 5)

    def test_tlsTerminatedByHAProxy(self) -> None:
        raw = self.connect("127.0.0.6", self.edge)
        sock = self.certs.clientContext().wrap_socket(raw, server_hostname="localhost")
        self.assertEqual(self.welcome(sock), b"Welcome from B\r\n")
        sock.sendall(b"edge")
        self.assertEqual(recvExactly(sock, 4), b"edge")
