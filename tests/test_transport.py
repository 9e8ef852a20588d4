"""
writeNow over real loopback TCP: same bytes, same order, same backpressure;
closing at once with closeNow.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet import defer, error, protocol, reactor, task, tcp
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from timerserver.transport import Server, closeNow, discardUnread, isFlushed, serveLean, writeNow


@implementer(IPushProducer)
class ServerSide(protocol.Protocol):
    """Records pause/resume; the test drives its writes."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.ready: defer.Deferred[ServerSide] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.ready.callback(self)

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        pass


class ClientSide(protocol.Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.chunks: list[bytes] = []
        self.received = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.ready: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.ready.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if self.received >= self.expected and not self.done.called:
            self.done.callback(b"".join(self.chunks))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.chunks))


class WriteNowTests(TestCase):
    lean = False
    """Whether the port makes L{Server}s, as the server's does, or Twisted's own."""

    @defer.inlineCallbacks
    def connect(self, expected: int) -> Any:
        server = ServerSide()
        port = reactor.listenTCP(
            0, protocol.Factory.forProtocol(lambda: server), interface="127.0.0.1"
        )
        if self.lean:
            serveLean(port)
        self.addCleanup(port.stopListening)
        client = ClientSide(expected)
        connector = reactor.connectTCP(
            "127.0.0.1", port.getHost().port, protocol.ClientFactory.forProtocol(lambda: client)
        )
        self.addCleanup(connector.disconnect)
        yield server.ready
        yield client.ready
        return server, client

    @defer.inlineCallbacks
    def test_mixedWritesArriveInOrder(self) -> Any:
        pieces = [bytes([i % 251]) * (1 + (i * 7919) % 200000) for i in range(60)]
        expected = b"".join(pieces)
        server, client = yield self.connect(len(expected))
        for i, piece in enumerate(pieces):
            if i % 3:
                writeNow(server.transport, piece)
            else:
                server.transport.write(piece)
        received = yield client.done
        self.assertEqual(len(received), len(expected))
        self.assertEqual(received, expected)

    @defer.inlineCallbacks
    def test_smallWriteLeavesNothingQueued(self) -> Any:
        """
        Pins the fast path to the Twisted internals it reads: if a Twisted
        release renames them, writeNow still works but queues, and this fails.
        """
        server, client = yield self.connect(5)
        transport = server.transport
        for name in ("_tempDataLen", "dataBuffer", "offset", "_writeDisconnecting"):
            self.assertTrue(hasattr(transport, name), name)
        writeNow(transport, b"hello")
        self.assertEqual((transport._tempDataLen, len(transport.dataBuffer)), (0, 0))
        received = yield client.done
        self.assertEqual(received, b"hello")

    @defer.inlineCallbacks
    def test_withoutTempDataLenWriteNowStillWrites(self) -> Any:
        """Were Twisted to rename C{_tempDataLen}, writeNow would queue, not fail."""
        server, client = yield self.connect(1)
        transport = server.transport
        written: list[bytes] = []
        saved = transport._tempDataLen
        del transport._tempDataLen  # as if a Twisted release renamed it
        transport.write = written.append  # that release's write, standing in
        try:
            writeNow(transport, b"x")
            flushed = isFlushed(transport)
        finally:
            del transport.write
            transport._tempDataLen = saved
        self.assertEqual(written, [b"x"])
        self.assertFalse(flushed)
        transport.write(b"x")
        received = yield client.done
        self.assertEqual(received, b"x")

    @defer.inlineCallbacks
    def test_backpressureStillPausesAndResumes(self) -> Any:
        """What the socket does not take is queued, and the producer paused."""
        big = b"x" * (16 * 1024 * 1024)
        server, client = yield self.connect(len(big) + 4)
        client.transport.pauseProducing()
        writeNow(server.transport, big)
        writeNow(server.transport, b"tail")
        # Twisted pauses on every write over its buffer size.
        self.assertEqual(set(server.events), {"pause"})
        client.transport.resumeProducing()
        received = yield client.done
        self.assertEqual(received, big + b"tail")
        self.assertEqual(server.events[-1], "resume")
        self.assertEqual(set(server.events[:-1]), {"pause"})

    @defer.inlineCallbacks
    def test_loseConnectionFlushesWhatWasWritten(self) -> Any:
        server, client = yield self.connect(10**9)
        # A registered producer holds the close back until it unregisters.
        server.transport.unregisterProducer()
        writeNow(server.transport, b"a" * 3_000_000)
        writeNow(server.transport, b"end")
        server.transport.loseConnection()
        writeNow(server.transport, b"+")  # still flushed, as write() would
        received = yield client.done
        self.assertEqual(received, b"a" * 3_000_000 + b"end+")

    @defer.inlineCallbacks
    def test_isFlushed(self) -> Any:
        """Only a TCP connection with nothing queued is flushed."""
        big = b"x" * (16 * 1024 * 1024)
        server, client = yield self.connect(len(big))
        transport = server.transport
        self.assertTrue(isFlushed(transport))
        client.transport.pauseProducing()
        writeNow(transport, big)
        self.assertFalse(isFlushed(transport))
        self.assertFalse(isFlushed(StringTransport()))
        client.transport.resumeProducing()
        yield client.done


class LeanServerWriteNowTests(WriteNowTests):
    """The same, over the server's own connections."""

    lean = True

    @defer.inlineCallbacks
    def test_itIsTwistedsServerWithTheSameLogPrefix(self) -> Any:
        server, _ = yield self.connect(0)
        transport = server.transport
        self.assertIs(type(transport), Server)
        self.assertIsInstance(transport, tcp.Server)
        port = transport.server._realPortNumber
        self.assertEqual(transport.logPrefix(), f"ServerSide,{transport.sessionno},127.0.0.1")
        self.assertEqual(repr(transport), f"<ServerSide #{transport.sessionno} on {port}>")

    def test_onlyTwistedsOwnTCPPortsAreChanged(self) -> None:
        class Other(tcp.Server):
            pass

        port = tcp.Port(0, protocol.Factory())
        port.transport = Other
        serveLean(port)
        self.assertIs(port.transport, Other)
        serveLean(object())  # not a port: nothing


class OtherTransportTests(SynchronousTestCase):
    def test_fallsBackToWrite(self) -> None:
        transport = StringTransport()
        writeNow(transport, b"one")
        writeNow(transport, b"two")
        self.assertEqual(transport.value(), b"onetwo")


@implementer(IHalfCloseableProtocol)
class HalfCloseable(protocol.Protocol):
    """Closes with closeNow when the client half-closes; records what happens."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.ready: defer.Deferred[HalfCloseable] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")
        self.events.append(("closeNow", closeNow(self.transport)))

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append(type(reason.value))
        self.lost.callback(None)


class RecordingSocket:
    """A socket that records its shutdown and close calls."""

    def __init__(self, wrapped: socket.socket) -> None:
        self.wrapped = wrapped
        self.calls: list[str] = []

    def shutdown(self, how: int) -> None:
        self.calls.append("shutdown")
        self.wrapped.shutdown(how)

    def close(self) -> None:
        self.calls.append("close")
        self.wrapped.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class CloseNowTests(TestCase):
    @defer.inlineCallbacks
    def accept(self) -> Any:
        server = HalfCloseable()
        port = reactor.listenTCP(
            0, protocol.Factory.forProtocol(lambda: server), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        yield server.ready
        return server, client

    @defer.inlineCallbacks
    def test_finWithNothingQueuedClosesInTheSameTurn(self) -> Any:
        server, client = yield self.accept()
        client.shutdown(socket.SHUT_WR)
        yield server.lost
        yield task.deferLater(reactor, 0, lambda: None)  # closeNow returned
        self.assertEqual(
            server.events, ["readConnectionLost", error.ConnectionDone, ("closeNow", True)]
        )
        client.settimeout(5)
        self.assertEqual(client.recv(10), b"")  # the server's FIN

    @defer.inlineCallbacks
    def test_somethingQueuedIsNotClosed(self) -> Any:
        server, client = yield self.accept()
        big = b"x" * (16 * 1024 * 1024)
        writeNow(server.transport, big)  # more than the socket takes
        client.shutdown(socket.SHUT_WR)
        while not server.events:
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(server.events, ["readConnectionLost", ("closeNow", False)])
        self.assertTrue(server.transport.connected)
        server.transport.loseConnection()
        client.setblocking(False)
        received = 0
        for _ in range(1000):
            try:
                chunk = client.recv(1 << 20)
            except BlockingIOError:
                yield task.deferLater(reactor, 0.01, lambda: None)
                continue
            if not chunk:
                break
            received += len(chunk)
        self.assertEqual(received, len(big))
        yield server.lost

    @defer.inlineCallbacks
    def test_finWithNothingQueuedClosesWithoutShutdown(self) -> Any:
        """
        After the client's FIN, close() alone sends the server's: no
        shutdown() first, which is a system call more, and an error on a
        socket the client reset.
        """
        server, client = yield self.accept()
        recording = server.transport.socket = RecordingSocket(server.transport.socket)
        client.shutdown(socket.SHUT_WR)
        yield server.lost
        self.assertEqual(recording.calls, ["close"])
        client.settimeout(5)
        self.assertEqual(client.recv(10), b"")  # a FIN, not a reset

    @defer.inlineCallbacks
    def test_aCloseTheServerBeginsKeepsShutdown(self) -> Any:
        """
        A close the server begins, with bytes from the client still unread,
        shuts the socket down first: what it wrote arrives, then a FIN
        (close() alone would reset it, and drop what was still on its way).
        """
        server, client = yield self.accept()
        server.transport.stopReading()
        client.sendall(b"x" * 1000)  # never read by the server
        yield task.deferLater(reactor, 0.1, lambda: None)
        recording = server.transport.socket = RecordingSocket(server.transport.socket)
        server.transport.write(b"goodbye\r\n")
        server.transport.loseConnection()
        yield server.lost
        self.assertEqual(recording.calls, ["shutdown", "close"])
        client.settimeout(5)
        received = b""
        while chunk := client.recv(1 << 16):  # up to the FIN; a reset would raise
            received += chunk
        self.assertEqual(received, b"goodbye\r\n")

    def test_otherTransportsAreNotClosed(self) -> None:
        transport = StringTransport()
        self.assertFalse(closeNow(transport))
        self.assertTrue(transport.connected)

    @defer.inlineCallbacks
    def test_writeToAResetSocketQueuesNothing(self) -> Any:
        """
        Data for a socket the client reset can never arrive: it is not kept
        for a flush, and the reactor closes the connection on the read side.
        """
        server, client = yield self.accept()
        server.transport.stopReading()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        yield task.deferLater(reactor, 0.1, lambda: None)  # the RST arrives
        writeNow(server.transport, b"welcome")
        self.assertTrue(isFlushed(server.transport))
        server.transport.startReading()
        yield server.lost
        self.assertIn(server.events[-1], (error.ConnectionDone, error.ConnectionLost))


class DiscardUnreadTests(SynchronousTestCase):
    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A connected loopback pair, the server's side taking a megabyte unread."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        server, _ = listener.accept()
        self.addCleanup(server.close)
        server.setblocking(False)
        return client, server

    def transport(self, sock: socket.socket) -> Any:
        server = tcp.Server.__new__(tcp.Server)
        server.socket = sock
        return server

    def unread(self, sock: socket.socket) -> int:
        import fcntl
        import termios

        return int(struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0])

    def test_everythingTheClientSentIsDroppedAndTheCloseIsAFIN(self) -> None:
        """More than one read's worth (64 KiB): a close with any of it unread is a reset."""
        import time

        client, server = self.pair()
        client.sendall(b"x" * 300_000)
        deadline = time.monotonic() + 5
        while self.unread(server) < 300_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.unread(server), 300_000)
        discardUnread(self.transport(server))
        self.assertEqual(self.unread(server), 0)
        server.close()
        client.settimeout(5)
        self.assertEqual(client.recv(10), b"")  # the end of the stream, not ECONNRESET

    def test_nothingSentIsNothingRead(self) -> None:
        client, server = self.pair()
        discardUnread(self.transport(server))  # never waits for bytes to come
        client.sendall(b"later")
        client.settimeout(5)
        server.settimeout(5)
        self.assertEqual(server.recv(10), b"later")

    def test_aSocketAlreadyGoneOrNoSocketAtAll(self) -> None:
        _, server = self.pair()
        server.close()
        discardUnread(self.transport(server))  # a closed socket: nothing, no error
        discardUnread(StringTransport())  # not a socket connection: nothing
