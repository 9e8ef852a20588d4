"""The PROXY header is read and checked before the server sees the connection."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests import helpers
from tests.proxyheaders import INVALID, v1, v2, v2v6
from timerserver import TimerQueueCounters, TimerWheel
from timerserver.admission import BUSY
from timerserver.config import DEFAULT_WELCOME
from timerserver.factory import TimerServerFactory
from timerserver.listener import parseTrusted
from timerserver.proxyheader import V2_MAX, V2_SIGNATURE, HeaderReader, InvalidHeader

PROXY_ADDRESS = IPv4Address("TCP", "10.0.0.1", 40000)
TRUSTED = tuple(ipaddress.ip_network(n) for n in parseTrusted("10.0.0.0/8"))


class Harness:
    def __init__(self, maxPerPeer: int = 0, **options: Any) -> None:
        self.clock = Clock()
        self.counters = TimerQueueCounters()
        self.factory = TimerServerFactory(
            TimerWheel(self.clock, monitor=self.counters), reactor=self.clock, **options
        )
        self.admission = helpers.admission(
            self.factory, proxy=True, handshakeTimeout=5.0, trusted=TRUSTED, maxPerPeer=maxPerPeer
        )
        self.logged: list[tuple[str, object, str]] = []
        self.factory.events.event = lambda *a: self.logged.append(a)  # type: ignore[method-assign]

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.admission.buildProtocol(PROXY_ADDRESS)
        transport = StringTransport(peerAddress=PROXY_ADDRESS)
        proto.makeConnection(transport)
        return proto, transport


def read(data: bytes) -> Any:
    result = HeaderReader().feed(data)
    assert result is not None
    return result


class HeaderReaderTests(SynchronousTestCase):
    def test_v1AndV2(self) -> None:
        for header in (v1("192.0.2.7"), v2("192.0.2.7")):
            info, rest = read(header + b"after")
            self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 50000))
            self.assertEqual((info.destination.host, info.destination.port), ("192.0.2.9", 5050))
            self.assertEqual(rest, b"after")
        info, _ = read(b"PROXY TCP6 2001:db8::7 2001:db8::9 4000 5050\r\n")
        self.assertEqual(info.source.host, "2001:db8::7")
        info, _ = read(v2v6("2001:db8::7"))
        self.assertEqual(info.source.host, "2001:db8::7")

    def test_localAndUnknownUseTheSocketsAddresses(self) -> None:
        for header in (
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
            v2("192.0.2.7", command=0x20),  # LOCAL: a health check
            V2_SIGNATURE + b"\x20\x00\x00\x00",
            V2_SIGNATURE + b"\x21\x00\x00\x00",  # PROXY over UNSPEC
        ):
            info, rest = read(header + b"x")
            self.assertEqual((info.source, info.destination, rest), (None, None, b"x"))

    def test_tlvsAreSkipped(self) -> None:
        info, rest = read(v2("192.0.2.7", tlvs=b"\x01\x00\x02h2" + b"\x05" * 300) + b"x")
        self.assertEqual((info.source.host, rest), ("192.0.2.7", b"x"))

    def test_invalid(self) -> None:
        for garbage in INVALID:
            self.assertRaises(InvalidHeader, HeaderReader().feed, garbage)

    def test_oversizedV2IsRefusedBeforeItIsBuffered(self) -> None:
        reader = HeaderReader()
        header = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX - 16 + 1)
        self.assertRaises(InvalidHeader, reader.feed, header)
        self.assertIsNotNone(HeaderReader().feed(v2("192.0.2.7", tlvs=b"\x00" * (V2_MAX - 28))))

    def test_waitsForTheRest(self) -> None:
        for header in (v1("192.0.2.7"), v2("192.0.2.7"), v2v6("2001:db8::7")):
            reader = HeaderReader()
            for i in range(len(header) - 1):
                self.assertIsNone(reader.feed(header[i : i + 1]))
            self.assertIsNotNone(reader.feed(header[-1:]))

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([v1("192.0.2.7"), v2("192.0.2.7"), v2v6("2001:db8::7")]).flatmap(
                lambda h: st.tuples(st.integers(0, len(h)), st.binary(max_size=20)).map(
                    lambda cut: h[: cut[0]] + cut[1] + h[cut[0] :]
                )
            ),
        ),
        st.lists(st.integers(1, 50), max_size=10),
    )
    def test_anyBytesAnySplitIsAnAddressOrInvalid(self, data: bytes, cuts: list[int]) -> None:
        """Any bytes, split anywhere: a valid address, a clean InvalidHeader, or waiting."""
        reader = HeaderReader()
        pieces, at = [], 0
        for cut in cuts:
            pieces.append(data[at : at + cut])
            at += cut
        pieces.append(data[at:])
        for piece in pieces:
            try:
                result = reader.feed(piece)
            except InvalidHeader:
                return
            if result is not None:
                info, _ = result
                for address in (info.source, info.destination):
                    if address is not None:
                        ipaddress.ip_address(address.host)
                        self.assertTrue(1 <= address.port <= 65535)
                return
        self.assertLess(len(data), V2_MAX)  # still waiting: it holds no more than this


HEADERS = [v1("192.0.2.7"), v2("192.0.2.7"), v2v6("2001:db8::7"), v2("192.0.2.7", command=0x20)]


class ProxyLayerPropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from(HEADERS).flatmap(
                lambda h: st.tuples(st.integers(0, len(h)), st.binary(max_size=20)).map(
                    lambda cut: h[: cut[0]] + cut[1] + h[cut[0] :]
                )
            ),
            st.sampled_from(HEADERS).map(lambda h: h + b"after"),
        ),
        st.lists(st.integers(1, 60), max_size=10),
    )
    def test_anyBytesAnySplitIsAValidPeerOrAClose(self, data: bytes, cuts: list[int]) -> None:
        """
        Through the server's own stack: a welcome only with a valid parsed
        peer, or a close without a word; never an exception.
        """
        h = Harness()
        proto, transport = h.connect()
        at = 0
        for cut in [*cuts, len(data)]:
            proto.dataReceived(data[at : at + cut])
            at += cut
            if transport.disconnected or transport.disconnecting:
                break
        welcomed = transport.value().startswith(DEFAULT_WELCOME)
        if welcomed:
            [server] = h.factory.connections
            peer = server.transport.getPeer()
            ipaddress.ip_address(peer.host)
            self.assertTrue(1 <= peer.port <= 65535)
            self.assertFalse(transport.disconnecting)
        else:
            self.assertEqual(transport.value(), b"")
            self.assertEqual(h.factory.connections, set())
        proto.connectionLost(None)
        self.assertEqual((h.admission.open, h.counters.live), (0, 0))


class ProxyLayerTests(SynchronousTestCase):
    def test_nothingBeforeTheHeader(self) -> None:
        h = Harness()
        _proto, transport = h.connect()
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.factory.connections, set())
        self.assertEqual(h.counters.live, 1)  # the handshake deadline only

    def test_headerInPiecesThenWelcomeWithTheClientsAddress(self) -> None:
        for header in (v1("192.0.2.7"), v2("192.0.2.7")):
            h = Harness(maxPerPeer=2)
            proto, transport = h.connect()
            for i in range(len(header)):
                proto.dataReceived(header[i : i + 1])
            self.assertEqual(transport.value(), DEFAULT_WELCOME)
            [server] = h.factory.connections
            self.assertEqual(server.transport.getPeer().host, "192.0.2.7")
            self.assertEqual(server.transport.getHost().host, "192.0.2.9")
            self.assertEqual(h.admission.perPeer, {"192.0.2.7": 1})

    def test_localIsServedWithTheSocketsAddress(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(v2("192.0.2.7", command=0x20))
        self.assertEqual(transport.value(), DEFAULT_WELCOME)
        [server] = h.factory.connections
        self.assertEqual(server.transport.getPeer(), PROXY_ADDRESS)

    def test_localAndUnknownCountAgainstTheSocketsAddress(self) -> None:
        """Uncounted, any trusted source had unlimited sockets for 16 bytes each."""
        for header in (v2("192.0.2.7", command=0x20), b"PROXY UNKNOWN\r\n"):
            h = Harness(maxPerPeer=1)
            first, t1 = h.connect()
            first.dataReceived(header)
            self.assertEqual(t1.value(), DEFAULT_WELCOME)
            self.assertEqual(h.admission.perPeer, {PROXY_ADDRESS.host: 1})
            second, t2 = h.connect()
            second.dataReceived(header)
            self.assertEqual(t2.value(), BUSY)
            self.assertEqual(h.admission.refused["peer"], 1)
            helpers.lose(second)
            helpers.lose(first)
            self.assertEqual(h.admission.perPeer, {})

    def test_dataAfterTheHeaderInTheSameReadIsEchoed(self) -> None:
        h = Harness(welcome=None)
        proto, transport = h.connect()
        proto.dataReceived(v2("192.0.2.7") + b"hello")
        self.assertEqual(transport.value(), b"hello")
        proto.dataReceived(b" again")
        self.assertEqual(transport.value(), b"hello again")

    def test_halfCloseReachesTheServer(self) -> None:
        h = Harness(welcome=None)
        proto, transport = h.connect()
        proto.dataReceived(v1("192.0.2.7") + b"last words")
        proto.readConnectionLost()
        self.assertEqual(transport.value(), b"last words")
        self.assertTrue(transport.disconnecting)
        [server] = h.factory.connections
        self.assertTrue(server.closing)

    def test_invalidHeaderIsDroppedLoggedAndCounted(self) -> None:
        for garbage in (
            b"GET / HTTP/1.1\r\n\r\n",
            b"PROXY TCP4 192.0.2.7 192.0.2.9 x 5050\r\n",
            b"PROXY TCP4 \xff\xfe 192.0.2.9 1 5050\r\n",
            V2_SIGNATURE + b"\x21\x11\xff\xff",
        ):
            h = Harness()
            proto, transport = h.connect()
            proto.dataReceived(garbage)
            self.assertTrue(transport.disconnected)
            self.assertEqual(transport.value(), b"")
            [(kind, peer, detail)] = h.logged
            self.assertEqual((kind, peer), ("dropped", PROXY_ADDRESS))
            self.assertIn("invalid PROXY header", detail)
            proto.connectionLost(None)
            self.assertEqual(h.admission.closed, {"proxy": 1})
            self.assertEqual((h.counters.live, h.clock.getDelayedCalls()), (0, []))

    def test_closedBeforeTheHeader(self) -> None:
        h = Harness()
        proto, _transport = h.connect()
        proto.connectionLost(None)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.logged, [])
        self.assertEqual((h.admission.open, h.admission.closed), (0, {"client": 1}))
