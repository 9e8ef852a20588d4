"""
The front door against a real C{twistd timerserver} on loopback, as an
attacker on the network would try it: TLS sockets that never handshake,
sockets that never send their PROXY header, headers from untrusted hosts or
that lie, a full server; and half-close behind C{haproxy:}.  Every wait is
bounded.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import urllib.request

import psutil
from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import (
    WELCOME,
    ServerProcess,
    connectFrom,
    recvExactly,
    recvUntilClosed,
)
from tests.tlshelpers import Certificates

PAYLOAD = bytes(range(256)) * 16384  # 4 MiB


def header(client: str = "192.0.2.7", port: int = 50000) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 5050\r\n".encode()


def openSockets(pid: int) -> int:
    """The server's open TCP sockets, listening one excluded."""
    return sum(1 for c in psutil.Process(pid).net_connections("tcp") if c.status != "LISTEN")


class FrontDoorCase(SynchronousTestCase):
    def start(self, *args: str, port: str = "tcp:0:interface=127.0.0.1") -> ServerProcess:
        server = ServerProcess(*args, port=port)
        self.addCleanup(server.kill)
        return server

    def connect(self, server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
        sock = connectFrom(server.port, source)
        self.addCleanup(sock.close)
        return sock

    def waitFor(self, condition: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.05)
        self.fail(f"not within {timeout}s: {what}")

    def assertClosedAtOnce(self, sock: socket.socket, within: float = 3) -> None:
        """The server closed (or reset) C{sock} without a word, C{within} seconds."""
        try:
            self.assertEqual(recvUntilClosed(sock, timeout=within), b"")
        except ConnectionResetError:
            pass


class TLSFrontDoorTests(FrontDoorCase):
    def setUp(self) -> None:
        self.certs = Certificates()

    def test_socketsThatNeverHandshakeAreClosedAtTheDeadline(self) -> None:
        server = self.start(
            "--handshake-timeout", "6", "--max-connections", "50", "--interval", "60",
            port=self.certs.endpoint(),
        )  # fmt: skip
        silent = [self.connect(server) for _ in range(40)]
        self.waitFor(lambda: openSockets(server.pid) == 40, 4, "40 silent sockets accepted")
        served = self.certs.connect(server.port)
        self.addCleanup(served.close)
        self.assertEqual(recvExactly(served, len(WELCOME)), WELCOME)
        for sock in silent:
            self.assertClosedAtOnce(sock, within=12)
        self.waitFor(lambda: openSockets(server.pid) == 1, 5, "only the served socket left")
        served.sendall(b"still here")
        self.assertEqual(recvExactly(served, 10), b"still here")
        server.waitForLine(r"dropped connection from .*no TLS handshake or PROXY header within", 5)

    def test_closesOfEveryKindLeaveNoErrorInTheLog(self) -> None:
        """A TCP close (FIN) in each stage: once a FIN looped between TLS and the gate."""
        for port in (self.certs.endpoint(), "haproxy:" + self.certs.endpoint()):
            server = self.start(port=port)
            proxied = port.startswith("haproxy:")
            for _ in range(20):
                raw = self.connect(server)
                if proxied:
                    raw.sendall(header())
                raw.close()  # before the handshake
                client = (
                    self.certs.clientContext().wrap_socket(
                        self.connect(server),
                        server_hostname="localhost",
                        do_handshake_on_connect=False,
                    )
                    if not proxied
                    else None
                )
                if client is not None:
                    client.do_handshake()
                    self.assertEqual(recvExactly(client, len(WELCOME)), WELCOME)
                    client.close()  # a FIN, with no close_notify
            self.waitFor(lambda s=server: openSockets(s.pid) == 0, 5, "every socket closed")
            server.stop()
            for bad in ("Unhandled", "Traceback", "RecursionError"):
                self.assertNotIn(bad, server.output)

    def test_overTheLimitIsClosedWithoutAHandshake(self) -> None:
        server = self.start("--max-connections", "3", port=self.certs.endpoint())
        silent = [self.connect(server) for _ in range(3)]
        self.waitFor(lambda: openSockets(server.pid) == 3, 5, "three sockets held")
        for _ in range(40):
            self.assertClosedAtOnce(self.connect(server))
        self.assertEqual(openSockets(server.pid), 3)
        for sock in silent:
            sock.close()
        client = self.certs.connect(server.port)  # room again
        self.addCleanup(client.close)
        self.assertEqual(recvExactly(client, len(WELCOME)), WELCOME)

    def test_perPeerCountsSocketsThatNeverHandshake(self) -> None:
        server = self.start("--max-per-peer", "5", port=self.certs.endpoint())
        held = [self.connect(server, "127.0.0.2") for _ in range(5)]
        self.waitFor(lambda: openSockets(server.pid) == 5, 5, "five sockets held")
        for _ in range(35):
            self.assertClosedAtOnce(self.connect(server, "127.0.0.2"))
        self.assertEqual(openSockets(server.pid), 5)
        other = self.certs.connect(server.port)  # another address still gets in
        self.addCleanup(other.close)
        self.assertEqual(recvExactly(other, len(WELCOME)), WELCOME)
        del held


class ProxyFrontDoorTests(FrontDoorCase):
    def test_headerlessSocketsCountAndAreClosedAtTheDeadline(self) -> None:
        server = self.start(
            "--max-connections", "5", "--handshake-timeout", "6",
            port="haproxy:tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        held = time.monotonic()
        silent = [self.connect(server) for _ in range(5)]
        self.waitFor(lambda: openSockets(server.pid) == 5, 3, "five sockets held")
        refused = 0
        # (The log's burst is 20 lines: leave room for the drops.  On a slow
        # machine stop before the silent ones' deadline frees room.)
        while refused < 10 and time.monotonic() - held < 4:
            self.assertClosedAtOnce(self.connect(server))
            self.assertLessEqual(openSockets(server.pid), 5)
            refused += 1
        self.assertGreater(refused, 0)
        for sock in silent:
            self.assertClosedAtOnce(sock, within=10)
        server.waitForLine(r"no TLS handshake or PROXY header within 6.0s", 5)
        client = self.connect(server)
        client.sendall(header())
        self.assertEqual(recvExactly(client, len(WELCOME)), WELCOME)

    def test_untrustedSourcesAreClosedAtAccept(self) -> None:
        server = self.start(
            "--proxy-from", "127.0.0.2/32", port="haproxy:tcp:0:interface=127.0.0.1"
        )
        for _ in range(10):
            sock = self.connect(server, "127.0.0.3")
            sock.sendall(header("9.9.9.1"))
            self.assertClosedAtOnce(sock)
        server.waitForLine(r"refused connection from .*127\.0\.0\.3.*--proxy-from", 5)
        trusted = self.connect(server, "127.0.0.2")
        trusted.sendall(header())
        self.assertEqual(recvExactly(trusted, len(WELCOME)), WELCOME)

    def test_trustingAnyoneIsAWarningAtStart(self) -> None:
        server = self.start("--proxy-from", "any", port="haproxy:tcp:0:interface=127.0.0.1")
        server.waitForLine(r"--proxy-from any: every address may send a PROXY header", 5)
        sock = self.connect(server, "127.0.0.9")
        sock.sendall(header())
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)

    def test_overThePerPeerLimitOverTLSIsClosedWithoutAWord(self) -> None:
        """haproxy:ssl: a header over --max-per-peer gets no clear-text Server busy."""
        certs = Certificates()
        server = self.start("--max-per-peer", "1", port="haproxy:" + certs.endpoint())
        first, second = self.connect(server), self.connect(server)
        first.sendall(header("9.9.9.1"))
        time.sleep(0.3)  # the first is in
        second.sendall(header("9.9.9.1", 50001))
        self.assertClosedAtOnce(second)
        server.waitForLine(r"refused connection from .*9[.]9[.]9[.]1", 5)
        self.assertNotIn("Traceback", server.output)

    def test_behindHAProxyOverTLSDropsAreTheClientsAndCountedAsWhatTheyAre(self) -> None:
        """
        A bad handshake is counted as C{tls}, a silent one as C{handshake}, and
        both are logged under the address the header named, not the proxy's.
        """
        certs = Certificates()
        server = self.start(
            "--handshake-timeout", "1", "--metrics", "tcp:0:interface=127.0.0.1",
            port="haproxy:" + certs.endpoint(),
        )  # fmt: skip
        metrics = int(server.waitForLine(r"metrics on .*port=(\d+)", 20).group(1))
        bad, silent = self.connect(server), self.connect(server)
        bad.sendall(header("192.0.2.50") + b"GET / HTTP/1.0\r\n\r\n")
        silent.sendall(header("198.51.100.77"))
        self.assertClosedAtOnce(bad)
        self.assertClosedAtOnce(silent, within=5)
        server.waitForLine(r"dropped connection from .*192[.]0[.]2[.]50.*TLS error", 5)
        server.waitForLine(r"dropped connection from .*198[.]51[.]100[.]77.*no TLS handshake", 5)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as reply:
            scrape = reply.read().decode()
        self.assertIn('timerserver_connections_closed_total{reason="tls"} 1.0', scrape)
        self.assertIn('timerserver_connections_closed_total{reason="handshake"} 1.0', scrape)
        self.assertNotIn("Traceback", server.output)

    def test_badHeadersAreOneLineEachNeverATraceback(self) -> None:
        server = self.start("--max-per-peer", "1", port="haproxy:tcp:0:interface=127.0.0.1")
        for bad in (
            b"PROXY TCP4 192.0.2.7 127.0.0.1 x 5050\r\n",
            b"PROXY TCP4 \xff\xfe 127.0.0.1 1 5050\r\n",
            b"PROXY TCP4 evil\nFAKE\x1b[31m 127.0.0.1 1 5050\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 -5 5050\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 1 99999999\r\n",
            b"PROXY TCP4 " + b"1" * 60000 + b"\r\n",
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\xd8" + b"/etc/passwd".ljust(216, b"\x00"),
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff" + b"\x00" * 1000,
        ):
            sock = self.connect(server)
            try:
                sock.sendall(bad)
            except OSError:
                pass  # closed while we were still sending: fine
            self.assertClosedAtOnce(sock)
        server.waitForLine(r"invalid PROXY header", 5)
        # Claiming two addresses from one host is two clients; the limit holds per address.
        first, second, again = self.connect(server), self.connect(server), self.connect(server)
        first.sendall(header("9.9.9.1"))
        second.sendall(header("9.9.9.2"))
        again.sendall(header("9.9.9.1", 50001))
        self.assertEqual(recvExactly(first, len(WELCOME)), WELCOME)
        self.assertEqual(recvExactly(second, len(WELCOME)), WELCOME)
        self.assertEqual(recvExactly(again, 13), b"Server busy\r\n")
        self.assertNotIn("Traceback", server.output)
        self.assertNotIn("Unhandled", server.output)


class HalfCloseTests(FrontDoorCase):
    """A client sends 4 MiB, shuts down its sending side, reads late: every byte comes back."""

    def sendThenHalfClose(self, send: object, halfClose: object) -> threading.Thread:
        def run() -> None:
            send(PAYLOAD)  # type: ignore[operator]
            halfClose()  # type: ignore[operator]

        sender = threading.Thread(target=run, daemon=True)
        sender.start()
        return sender

    def test_behindHAProxy(self) -> None:
        server = self.start("--interval", "60", port="haproxy:tcp:0:interface=127.0.0.1")
        sock = self.connect(server)
        sock.sendall(header())
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        sender = self.sendThenHalfClose(sock.sendall, lambda: sock.shutdown(socket.SHUT_WR))
        time.sleep(1)  # reading late
        self.assertEqual(recvUntilClosed(sock, timeout=20), PAYLOAD)
        sender.join(5)

    def test_behindHAProxyOverTLS(self) -> None:
        from OpenSSL import SSL

        certs = Certificates()
        server = self.start("--interval", "60", port="haproxy:" + certs.endpoint())
        raw = self.connect(server)
        raw.sendall(header())
        # pyOpenSSL needs a blocking socket; the kernel bounds each wait instead.
        raw.setblocking(True)
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            raw.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", 20, 0))
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        conn = SSL.Connection(context, raw)
        conn.set_connect_state()
        conn.do_handshake()
        received = b""
        while len(received) < len(WELCOME):
            received += conn.recv(4096)
        self.assertEqual(received, WELCOME)
        conn.sendall(PAYLOAD)
        conn.shutdown()  # close_notify: TLS's half-close; reading goes on
        time.sleep(1)
        received = b""
        while True:
            try:
                data = conn.recv(1 << 16)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not data:
                break
            received += data
        self.assertEqual(len(received), len(PAYLOAD))
        self.assertEqual(received, PAYLOAD)
