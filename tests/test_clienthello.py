"""The TLS layer is built only once the client's first record is whole."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from timerserver.clienthello import MAX_CLIENT_HELLO, MAX_RECORD, ClientHelloLayer


class Recorder(Protocol):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def makeConnection(self, transport: Any) -> None:
        self.events.append(("made", transport))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append(("lost",))


def record(body: bytes) -> bytes:
    return bytes([0x16, 3, 1]) + len(body).to_bytes(2, "big") + body


def layer() -> tuple[ClientHelloLayer, Recorder]:
    inner = Recorder()
    outer = ClientHelloLayer(inner)
    outer.makeConnection(StringTransport())
    return outer, inner


class ClientHelloTests(SynchronousTestCase):
    def test_nothingUntilTheRecordIsWhole(self) -> None:
        hello = record(b"h" * 300) + b"more"
        outer, inner = layer()
        for i in range(len(record(b"h" * 300)) - 1):
            outer.dataReceived(hello[i : i + 1])
        self.assertEqual(inner.events, [])
        outer.dataReceived(hello[len(record(b"h" * 300)) - 1 :])
        self.assertEqual(inner.events, [("made", outer), ("data", hello)])
        outer.dataReceived(b"after")
        self.assertEqual(inner.events[-1], ("data", b"after"))

    def test_notTLSGoesStraightThrough(self) -> None:
        for first in (b"GET / HTTP/1.1\r\n", b"\x17\x03\x03\x00\x05hello"):
            outer, inner = layer()
            outer.dataReceived(first)
            self.assertEqual(inner.events, [("made", outer), ("data", first)])

    def test_heldBytesAreBounded(self) -> None:
        outer, inner = layer()
        outer.dataReceived(bytes([0x16, 3, 1, 0xFF, 0xFF]))  # declares 64 KiB
        outer.dataReceived(b"x" * (MAX_RECORD - 6))
        self.assertEqual(inner.events, [])
        outer.dataReceived(b"x")
        self.assertEqual(len(inner.events[1][1]), MAX_RECORD)

    def test_goneBeforeItSpokeIsNotPassedOn(self) -> None:
        outer, inner = layer()
        outer.dataReceived(b"\x16\x03")
        outer.connectionLost(None)
        self.assertEqual(inner.events, [])
        connected, inner = layer()
        connected.dataReceived(record(b"hhhh"))
        connected.connectionLost(None)
        self.assertEqual(inner.events[-1], ("lost",))

    def test_aClientHelloDeclaringMoreThanItsLimitIsDropped(self) -> None:
        """
        OpenSSL would hold every record of a ClientHello that declares up to
        128 KiB: one declaring more than MAX_CLIENT_HELLO never reaches it.
        """
        body = bytes([1]) + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big") + b"h" * 2000
        outer, inner = layer()
        outer.dataReceived(record(body))
        self.assertEqual(inner.events, [])
        self.assertTrue(outer.transport.disconnecting)
        outer.dataReceived(record(b"h" * 2000))  # the rest of it, already on its way
        outer.connectionLost()
        self.assertEqual(inner.events, [])

    def test_aHandshakeHeaderSplitOverRecordsIsDropped(self) -> None:
        """A first record of 0 to 3 bytes would hide the length of the ClientHello."""
        big = bytes([1]) + (MAX_CLIENT_HELLO * 8).to_bytes(3, "big") + b"h" * 2000
        for cut in range(4):
            outer, inner = layer()
            outer.dataReceived(record(big[:cut]) + record(big[cut:]))
            self.assertEqual(inner.events, [], cut)
            self.assertTrue(outer.transport.disconnecting, cut)

    def test_aClientHelloUpToItsLimitIsPassedOn(self) -> None:
        body = bytes([1]) + MAX_CLIENT_HELLO.to_bytes(3, "big") + b"h" * 2000
        outer, inner = layer()
        outer.dataReceived(record(body))
        self.assertEqual(inner.events, [("made", outer), ("data", record(body))])
