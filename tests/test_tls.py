"""
C{ssl:} endpoints against a real C{twistd timerserver} process: the
handshake completes, and every rule of the server (echo, periodic messages,
half-close, backpressure and the stall timeout, shutdown) holds over TLS.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import warnings

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import MESSAGE, WELCOME, ServerProcess, recvExactly, sendWhileReading
from tests.tlshelpers import Certificates


class TLSTests(SynchronousTestCase):
    def start(self, *args: str) -> ServerProcess:
        self.certs = Certificates()
        server = ServerProcess(*args, port=self.certs.endpoint())
        self.addCleanup(server.kill)
        return server

    def connect(self, server: ServerProcess, rcvbuf: int | None = None) -> ssl.SSLSocket:
        sock = self.certs.connect(server.port, rcvbuf)
        self.addCleanup(sock.close)
        return sock

    def test_welcomeEchoPeriodic(self) -> None:
        server = self.start("--interval", "0.2")
        sock = self.connect(server)
        self.assertIn(sock.version(), ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        sock.sendall(b"secret \x00\xff\r\n")
        self.assertEqual(recvExactly(sock, 11), b"secret \x00\xff\r\n")
        for _ in range(3):
            self.assertEqual(recvExactly(sock, len(MESSAGE)), MESSAGE)

    def test_multiMegabyteEchoByteForByte(self) -> None:
        server = self.start("--interval", "0.1")
        sock = self.connect(server)
        recvExactly(sock, len(WELCOME))
        payload = bytes(range(256)) * 4096 * 4  # 4 MiB
        self.assertEqual(sendWhileReading(sock, payload), payload)

    def test_closeNotifyClosesCleanly(self) -> None:
        """The client's close_notify: what was echoed arrives, then the server's close."""
        server = self.start("--interval", "0.2")
        sock = self.connect(server)
        recvExactly(sock, len(WELCOME))
        sock.sendall(b"last words")
        self.assertEqual(recvExactly(sock, 10), b"last words")
        plain = sock.unwrap()  # sends close_notify, waits for the server's
        plain.settimeout(5)
        self.assertEqual(plain.recv(100), b"")
        plain.close()
        self.assertServing(server)
        server.stop()
        self.assertIn("closed 0 connections, cancelled 0 timers", server.output)

    def fillWithUnreadEcho(
        self, server: ServerProcess
    ) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO]:
        """
        Connect over TLS and send echo data, 16 KiB at a time, without
        reading, until the server's socket takes no more (the kernel holds
        about 64 KiB unsent, TCP_NOTSENT_LOWAT) and Twisted's buffer holds
        the rest.
        """
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(5)
        raw.connect(("127.0.0.1", server.port))
        self.addCleanup(raw.close)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.certs.clientContext().wrap_bio(incoming, outgoing, server_hostname="localhost")
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        last, unchanged = -1, 0
        for _ in range(2048):
            tls.write(b"x" * 16384)
            raw.sendall(outgoing.read())
            time.sleep(0.02)
            queued = _serverSendQueue(server.port)
            unchanged = unchanged + 1 if queued == last else 0
            if unchanged == 2:  # 32 KiB not taken: they wait in Twisted's buffer
                break
            last = queued
        self.assertGreater(last, 32 * 1024)
        return raw, tls, outgoing

    def test_closeNotifyFromAClientThatStopsReadingIsAbortedInTime(self) -> None:
        """
        The client's close_notify, with echo queued that it never reads: the
        close is aborted after --stall-timeout, not held open for ever by a
        flush that cannot complete.
        """
        server = self.start("--interval", "3600", "--no-welcome", "--stall-timeout", "1")
        raw, tls, outgoing = self.fillWithUnreadEcho(server)
        try:
            tls.unwrap()  # close_notify, without reading the server's
        except ssl.SSLWantReadError:
            pass
        raw.sendall(outgoing.read())
        server.waitForLine(r"aborted connection from .*close timed out", 10)
        self.assertIsNone(_serverSendQueue(server.port))
        self.assertNotIn("stalled", server.output)
        self.assertNotIn("Traceback", server.output)

    def test_aBadRecordIsDroppedAtOnceWhateverIsQueued(self) -> None:
        server = self.start("--interval", "3600", "--no-welcome", "--stall-timeout", "30")
        raw, _, _ = self.fillWithUnreadEcho(server)
        raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))  # application data that is not
        server.waitForLine(r"dropped connection from .*TLS error", 10)
        self.assertIsNone(_serverSendQueue(server.port))
        self.assertNotIn("Traceback", server.output)

    def test_aSecondClientHelloPastTheHandshakeBoundIsDropped(self) -> None:
        """
        A TLS 1.3 client that offers x25519 with no key share gets a
        HelloRetryRequest; its second ClientHello skips the first record's
        check, and OpenSSL would hold one of up to 128 KiB until the
        handshake deadline.  Past MAX_HANDSHAKE_BYTES it is dropped at once.
        """
        server = self.start("--handshake-timeout", "60")
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.addCleanup(raw.close)
        raw.sendall(_helloAskingForARetry())
        reply = b""
        while len(reply) < 5 or len(reply) < 5 + int.from_bytes(reply[3:5], "big"):
            chunk = raw.recv(4096)
            self.assertTrue(chunk, "closed before its HelloRetryRequest")
            reply += chunk
        self.assertIn(HELLO_RETRY_RANDOM, reply)
        started = time.monotonic()
        raw.sendall(b"\x14\x03\x03\x00\x01\x01")  # a ChangeCipherSpec, as clients send
        second = b"\x01" + (131_000).to_bytes(3, "big") + bytes(16_380)
        records = [second] + [bytes(16_384)] * 3  # 64 KiB of a 128 KiB ClientHello
        try:
            for body in records:
                raw.sendall(b"\x16\x03\x03" + len(body).to_bytes(2, "big") + body)
            while raw.recv(65536):
                pass
        except ConnectionResetError:
            pass
        self.assertLess(time.monotonic() - started, 10)  # not the handshake deadline
        server.waitForLine(r"dropped connection from .*bytes before its TLS handshake was done", 5)
        self.assertServing(server)
        self.assertNotIn("Traceback", server.output)

    def test_closeNotifyRightAfterTheClientHelloIsNoTraceback(self) -> None:
        """
        pyOpenSSL reports it as a ZeroReturnError with no reason, which
        Twisted's TLS layer could not read (an IndexError traceback per
        connection): it is one rate-limited line instead.
        """
        server = self.start()
        for _ in range(30):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            self.addCleanup(raw.close)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self.certs.clientContext().wrap_bio(
                incoming, outgoing, server_hostname="localhost"
            )
            with self.assertRaises(ssl.SSLWantReadError):
                tls.do_handshake()
            raw.sendall(outgoing.read() + b"\x15\x03\x03\x00\x02\x01\x00")  # close_notify
            try:
                while raw.recv(65536):
                    pass
            except OSError:
                pass
        server.waitForLine(r"dropped connection from .*TLS error", 10)
        self.assertServing(server)
        self.assertNotIn("Traceback", server.output)
        self.assertNotIn("Unhandled", server.output)

    def assertServing(self, server: ServerProcess) -> None:
        sock = self.connect(server)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        sock.sendall(b"ok?")
        self.assertEqual(recvExactly(sock, 3), b"ok?")
        # Close as a TLS client does and wait for the server's close, so that
        # a stop right after counts no connection open.
        plain = sock.unwrap()
        plain.settimeout(5)
        self.assertEqual(plain.recv(100), b"")
        plain.close()

    def test_nonReadingClientIsAbortedWhileOthersAreServed(self) -> None:
        big = "x" * 20000 + "\\r\\n"
        server = self.start("--interval", "0.01", "--message", big, "--stall-timeout", "1")
        stuck = self.connect(server, rcvbuf=4096)
        reader = self.connect(server)
        recvExactly(reader, len(WELCOME))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "stalled" not in server.output:
            self.assertTrue(reader.recv(65536))  # the reading client keeps its messages
        self.assertIn("stalled", server.output)
        # The stalled client's connection ends (an RST, which ssl may report as EOF).
        try:
            while stuck.recv(1 << 20):
                pass
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            pass
        server.stop()
        skipped = re.search(r"skipped (\d+) messages", server.output)
        self.assertIsNotNone(skipped, server.output)
        self.assertGreater(int(skipped.group(1)), 0)  # type: ignore[union-attr]
        self.assertNotIn("Traceback", server.output)

    def test_plainTCPClientIsDroppedAndLogged(self) -> None:
        server = self.start()
        plain = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(plain.close)
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = plain.recv(1000)
        self.assertNotIn(b"Welcome", data)
        server.waitForLine(r"dropped connection from .*TLS error", 10)
        self.assertServing(server)
        self.assertNotIn("Traceback", server.output)

    def test_protocolsOlderThanTLS12AreRefused(self) -> None:
        server = self.start()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.certs.ca.configure_trust(context)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with self.assertRaises(ssl.SSLError):
            self.certs.connect(server.port, context=context)
        self.assertServing(server)

    def test_aServedConnectionOutlivesTheHandshakeTimeout(self) -> None:
        server = self.start("--handshake-timeout", "0.5", "--interval", "60")
        sock = self.connect(server)
        self.assertEqual(recvExactly(sock, len(WELCOME)), WELCOME)
        time.sleep(1.5)
        sock.sendall(b"still here")
        self.assertEqual(recvExactly(sock, 10), b"still here")
        self.assertNotIn("no TLS handshake", server.output)

    def test_shutdownSaysGoodbyeOverTLS(self) -> None:
        server = self.start()
        sock = self.connect(server)
        recvExactly(sock, len(WELCOME))
        server.stop()
        self.assertEqual(recvExactly(sock, 22), b"Server shutting down\r\n")
        self.assertIn("closed 1 connections", server.output)

    def test_idleTimeoutOverTLS(self) -> None:
        server = self.start("--idle-timeout", "0.5")
        sock = self.connect(server)
        recvExactly(sock, len(WELCOME))
        self.assertEqual(recvExactly(sock, 14), b"Idle timeout\r\n")


HELLO_RETRY_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
)
"""The ServerHello random that makes it a HelloRetryRequest (RFC 8446, 4.1.3)."""


def _helloAskingForARetry() -> bytes:
    """A TLS 1.3 ClientHello record offering x25519 with an empty key share."""

    def extension(kind: int, data: bytes) -> bytes:
        return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data

    extensions = (
        extension(0x002B, b"\x02\x03\x04")  # supported_versions: TLS 1.3
        + extension(0x000A, b"\x00\x02\x00\x1d")  # supported_groups: x25519
        + extension(0x0033, b"\x00\x00")  # key_share: none
        + extension(0x000D, b"\x00\x06\x04\x03\x08\x04\x04\x01")  # signature_algorithms
    )
    body = (
        b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32)  # version, random, session id
        + b"\x00\x02\x13\x01" + b"\x01\x00"  # TLS_AES_128_GCM_SHA256; no compression
        + len(extensions).to_bytes(2, "big") + extensions
    )  # fmt: skip
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def _serverSendQueue(port: int) -> int | None:
    """
    Bytes in the send queue of the server's established connection on
    C{port} (C{/proc/net/tcp}); C{None} if there is none.
    """
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if int(local.split(":")[1], 16) == port and state == "01":
                return int(queues.split(":")[0], 16)
    return None
