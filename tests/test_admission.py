"""
Admission at the socket: every socket counted from accept, whatever its
stage; refusals before a byte is read; the handshake deadline.
"""

from __future__ import annotations

import gc
import ipaddress
import weakref
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv6Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests import helpers
from tests.proxyheaders import v1, v2v6
from timerserver import TimerQueueCounters, TimerWheel
from timerserver.admission import BUSY, Admission, Busy, Gate
from timerserver.factory import TimerServerFactory
from timerserver.listener import parseTrusted
from timerserver.peers import Translators, nat64Prefix, peerKey
from timerserver.protocol import TimerServerProtocol

LOCAL = tuple(__import__("ipaddress").ip_network(n) for n in parseTrusted("127.0.0.0/8,::1"))


class Harness:
    def __init__(self, proxy: bool = False, **options: Any) -> None:
        self.clock = Clock()
        self.clock.advance(10)
        self.counters = TimerQueueCounters()
        self.factory = TimerServerFactory(
            TimerWheel(self.clock, monitor=self.counters), welcome=b"hi\r\n", reactor=self.clock
        )
        self.logged: list[tuple[Any, ...]] = []
        self.factory.events.event = lambda *a: self.logged.append(a)  # type: ignore[method-assign]
        self.admission = helpers.admission(self.factory, proxy=proxy, **options)

    def accept(self, host: str = "127.0.0.1", port: int = 40000) -> tuple[Any, StringTransport]:
        """What the listening port does at accept: buildProtocol, then makeConnection."""
        address = helpers.peer(host, port)
        proto = self.admission.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        if proto is not None:
            proto.makeConnection(transport)
        return proto, transport

    def elapse(self, seconds: float) -> None:
        helpers.elapse(self.clock, seconds, 0.05)


class PlainTests(SynchronousTestCase):
    def test_admittedSocketsReachTheServerAtOnce(self) -> None:
        """Plain TCP with no per-address limit: no gate, the server's own set counts."""
        h = Harness(maxConnections=2)
        proto, transport = h.accept()
        self.assertIsInstance(proto, TimerServerProtocol)
        self.assertIs(proto.transport, transport)
        self.assertEqual(transport.value(), b"hi\r\n")
        self.assertEqual((h.admission.open, h.admission.gated, h.admission.accepted), (1, 0, 1))
        self.assertEqual(h.admission.handshaking, set())
        helpers.lose(proto)
        self.assertEqual((h.admission.open, h.admission.accepted), (0, 1))

    def test_withoutTheServersSetEverySocketHasAGate(self) -> None:
        """Admission counts sockets itself over a factory that does not count its own."""
        h = Harness()
        admission = Admission(h.factory, h.factory.queue, h.factory.events, maxConnections=1)
        gate = admission.buildProtocol(helpers.peer("127.0.0.1", 1))
        self.assertIsInstance(gate, Gate)
        gate.makeConnection(StringTransport())
        self.assertEqual((admission.open, admission.gated), (1, 1))
        self.assertIsInstance(admission.buildProtocol(helpers.peer("127.0.0.1", 2)), Busy)
        helpers.lose(gate)
        self.assertEqual(admission.open, 0)

    def test_aPerAddressLimitNeedsAGate(self) -> None:
        h = Harness(maxConnections=2, maxPerPeer=1)
        gate, transport = h.accept()
        self.assertIsInstance(gate, Gate)
        self.assertIsInstance(gate.wrappedProtocol, TimerServerProtocol)
        self.assertEqual(transport.value(), b"hi\r\n")
        self.assertEqual((h.admission.open, h.admission.gated), (1, 1))
        helpers.lose(gate)
        self.assertEqual((h.admission.open, h.admission.gated), (0, 0))

    def test_overTheLimitIsToldBusyAndClosed(self) -> None:
        h = Harness(maxConnections=2)
        (a, _), _ = h.accept(port=1), h.accept(port=2)
        refused, transport = h.accept(port=3)
        self.assertIsInstance(refused, Busy)
        self.assertEqual(transport.value(), BUSY)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.admission.refused["full"], 1)
        self.assertEqual(h.counters.created, 2)  # one per admitted socket, none for the refused
        self.assertEqual([kind for kind, *_ in h.logged], ["refused"])
        helpers.lose(a)
        again, transport = h.accept(port=4)
        self.assertIsInstance(again, TimerServerProtocol)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(h.admission.open, 2)

    def test_perPeerIsCountedAtAccept(self) -> None:
        h = Harness(maxPerPeer=1)
        a, _ = h.accept("10.0.0.1", 1)
        _refused, tr = h.accept("10.0.0.1", 2)
        other, _ = h.accept("10.0.0.2", 3)
        self.assertEqual(tr.value(), BUSY)
        self.assertEqual(h.admission.refused["peer"], 1)
        self.assertEqual(h.admission.perPeer, {"10.0.0.1": 1, "10.0.0.2": 1})
        helpers.lose(a)
        helpers.lose(other)
        self.assertEqual((h.admission.perPeer, h.admission.open), ({}, 0))

    def test_anIPv6HostIsCountedByItsSlash64(self) -> None:
        """One host may use any address of its /64: the limit is on the /64."""
        h = Harness(maxPerPeer=2)
        first, _ = h.accept("2001:db8:1:2::1", 1)
        second, _ = h.accept("2001:db8:1:2:ffff:ffff:ffff:ffff", 2)
        refused, tr = h.accept("2001:db8:1:2::3", 3)
        other, _ = h.accept("2001:db8:1:3::1", 4)
        self.assertIsInstance(refused, Busy)
        self.assertEqual(tr.value(), BUSY)
        self.assertEqual(h.admission.refused["peer"], 1)
        self.assertEqual(h.admission.perPeer, {"2001:db8:1:2::/64": 2, "2001:db8:1:3::/64": 1})
        for proto in (first, second, other):
            helpers.lose(proto)
        self.assertEqual((h.admission.perPeer, h.admission.open), ({}, 0))

    def test_theIPv6PrefixIsTheOperators(self) -> None:
        exact = Harness(maxPerPeer=1, peerPrefix6=128)
        self.assertIsInstance(exact.accept("2001:db8:1:2::1", 1)[0], Gate)
        self.assertIsInstance(exact.accept("2001:db8:1:2::2", 2)[0], Gate)
        wide = Harness(maxPerPeer=1, peerPrefix6=48)
        self.assertIsInstance(wide.accept("2001:db8:1:2::1", 1)[0], Gate)
        self.assertIsInstance(wide.accept("2001:db8:1:ffff::1", 2)[0], Busy)
        self.assertIsInstance(wide.accept("2001:db8:2::1", 3)[0], Gate)

    @settings(deadline=None)  # no timing: a slow first example is not a failure
    @given(st.integers(0, 2**125 - 1), st.integers(1, 128), st.booleans())
    def test_anIPv6PeerIsItsNetworkHoweverSpelled(self, low: int, prefix: int, full: bool) -> None:
        """
        An IPv6 address outside the special ranges is keyed as its network of
        C{prefix} bits, as C{ipaddress} writes it, whichever way it is spelled.
        """
        # In 2000::/3 (global unicast), outside every special range by
        # construction: filtered with assume(), most small integers were.
        value = (1 << 125) | low
        address = ipaddress.IPv6Address(value)
        assume(value >> 32 not in (0, 0xFFFF, 0xFFFF0000, 0x64FF9B << 64))
        assume(not address.is_link_local)
        text = address.exploded.upper() if full else str(address)
        network = ipaddress.IPv6Network((value, prefix), strict=False)
        self.assertEqual(peerKey(text, prefix), f"{network.network_address}/{prefix}")

    def test_peerKeys(self) -> None:
        self.assertEqual(peerKey("192.0.2.7"), "192.0.2.7")
        self.assertEqual(peerKey("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(peerKey("64:ff9b::192.0.2.7"), "192.0.2.7")  # NAT64: an IPv4 client
        # Where a prefix names no one host: each address its own (a link's, with its zone).
        self.assertEqual(peerKey("fe80::1:2:3:4%eth0"), "fe80::1:2:3:4%eth0")
        self.assertEqual(peerKey("fe80::1:2:3:5%eth1"), "fe80::1:2:3:5%eth1")
        self.assertEqual(peerKey("::1"), "::1")
        self.assertEqual(peerKey("::192.0.2.7"), "::c000:207")
        self.assertEqual(peerKey("2001:DB8::1", 128), "2001:db8::1/128")
        self.assertEqual(peerKey("/run/sock"), "/run/sock")  # not an address: itself
        self.assertEqual(peerKey("nonsense:here"), "nonsense:here")

    def test_aTranslatedClientIsItsIPv4Address(self) -> None:
        """
        Behind a NAT64/SIIT translator of any RFC 6052 prefix length, a
        client is the IPv4 address its IPv6 one carries (RFC 6052 2.4's
        examples, 192.0.2.33), the u octet (bits 64-71) skipped.
        """
        for prefix, address in (
            ("2001:db8::/32", "2001:db8:c000:221::"),
            ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
            ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
            ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
            ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100::"),
            ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
        ):
            nat64 = Translators((prefix,))
            self.assertEqual(peerKey(address, 64, nat64), "192.0.2.33", prefix)
            # Not configured: an IPv6 host, by its /64.
            self.assertNotEqual(peerKey(address), "192.0.2.33", prefix)
            if not prefix.endswith("/96"):  # u, bits 64-71: not part of the address
                packed = bytearray(ipaddress.IPv6Address(address).packed)
                packed[8] = 0xFF
                spelled = str(ipaddress.IPv6Address(bytes(packed)))
                self.assertEqual(peerKey(spelled, 64, nat64), "192.0.2.33", spelled)
        every = Translators(("2001:db8::/32", "2001:db8:122:344::/96", "64:ff9b:1::/48"))
        self.assertEqual(peerKey("2001:db8:c000:221:ff00::", 64, every), "192.0.2.33")
        self.assertEqual(peerKey("64:ff9b:1:c000:2:2100::", 64, every), "192.0.2.33")
        # Always: NAT64's well-known prefix, SIIT's IPv4-translated addresses.
        for nat64 in (Translators(), every):
            self.assertEqual(peerKey("64:ff9b::c000:221", 64, nat64), "192.0.2.33")
            self.assertEqual(peerKey("::ffff:0:c000:201", 64, nat64), "192.0.2.1")
            self.assertEqual(peerKey("::ffff:0:192.0.2.1", 64, nat64), "192.0.2.1")
        # RFC 8215's local-use prefix only when given: it may be used for anything.
        self.assertEqual(peerKey("64:ff9b:1:c000:2:2100::"), "64:ff9b:1:c000::/64")
        # Outside every prefix: an IPv6 host, by --ipv6-peer-prefix bits.
        self.assertEqual(peerKey("2001:db9:1:2::7", 64, every), "2001:db9:1:2::/64")
        only96 = Translators(("2001:db8:122:344::/96",))
        self.assertEqual(peerKey("2001:db8:122:344::1:0:0", 64, only96), "2001:db8:122:344::/64")
        self.assertEqual(peerKey("2001:db9:1:2::7", 48, every), "2001:db9:1::/48")
        self.assertEqual(peerKey("fe80::1%eth0", 64, every), "fe80::1%eth0")

    def test_translatorPrefixesAreChecked(self) -> None:
        self.assertEqual(str(nat64Prefix("2001:DB8:46::/96")), "2001:db8:46::/96")
        for bad in (
            "2001:db8::1/96",
            "2001:db8::/33",
            "2001:db8::/128",
            "2001:db8::",
            "10.0.0.0/8",
            "x",
        ):
            e = self.assertRaises(ValueError, nat64Prefix, bad)
            self.assertIn("32, 40, 48, 56, 64 or 96", str(e))
            self.assertIn(repr(bad), str(e))
            self.assertRaises(ValueError, Translators, ("64:ff9b::/96", bad))

    def test_translatedClientsEachHaveTheirOwnAllowance(self) -> None:
        """
        Four IPv4 clients through one translator, two connections each at
        --max-per-peer 2: none is refused (they were all one /64 before);
        a third from one of them is.
        """
        for prefix, spell in (
            ("2001:db8:46::/96", lambda v4: f"2001:db8:46::{v4}"),
            (
                "2001:db8:46::/48",
                lambda v4: "2001:db8:46:{:02x}{:02x}:{:02x}:{:02x}00::".format(*v4.packed),
            ),
        ):
            h = Harness(maxPerPeer=2, nat64Prefixes=(prefix,))
            clients = [ipaddress.IPv4Address(f"192.0.2.{n}") for n in range(1, 5)]
            for v4 in clients:
                for port in (1, 2):
                    self.assertIsInstance(h.accept(spell(v4), port)[0], Gate, (prefix, v4))
            self.assertEqual(h.admission.perPeer, {str(v4): 2 for v4 in clients})
            refused, tr = h.accept(spell(clients[0]), 3)
            self.assertIsInstance(refused, Busy)
            self.assertEqual(tr.value(), BUSY)
            # The same IPv4 client direct, or as IPv4-mapped: the same host.
            self.assertIsInstance(h.accept(str(clients[1]), 3)[0], Busy)
            self.assertIsInstance(h.accept(f"::ffff:{clients[2]}", 3)[0], Busy)
            self.assertEqual(h.admission.refused["peer"], 3)
        # Without the option, the translator's prefix is one /64: one allowance for all.
        h = Harness(maxPerPeer=2)
        self.assertIsInstance(h.accept("2001:db8:46::192.0.2.1", 1)[0], Gate)
        self.assertIsInstance(h.accept("2001:db8:46::192.0.2.2", 1)[0], Gate)
        self.assertIsInstance(h.accept("2001:db8:46::192.0.2.3", 1)[0], Busy)

    def test_halfCloseReachesTheServer(self) -> None:
        h = Harness()
        gate, transport = h.accept()
        self.assertTrue(IHalfCloseableProtocol.providedBy(gate))
        gate.dataReceived(b"echo me")
        gate.readConnectionLost()
        self.assertTrue(transport.disconnecting)  # flushed, then closed
        self.assertTrue(transport.value().endswith(b"echo me"))

    def test_halfCloseOnlyWhereTheLayerAboveTakesIt(self) -> None:
        """
        Twisted's TLS layer copies its transport's interfaces: a gate that
        claimed half-close under it sent the socket's FIN round in a loop.
        """
        from twisted.internet.protocol import Factory, Protocol
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from tests.tlshelpers import Certificates
        from timerserver.listener import Listener

        h = Harness()
        served, _ = h.accept()
        self.assertTrue(IHalfCloseableProtocol.providedBy(served))
        plain = helpers.admission(h.factory)
        plain.wrappedFactory = Factory.forProtocol(Protocol)
        self.assertFalse(IHalfCloseableProtocol.providedBy(plain.buildProtocol(helpers.peer())))
        certs = Certificates()
        context = Listener.parse(f"ssl:0:privateKey={certs.key}:certKey={certs.cert}")
        tls = TLSMemoryBIOFactory(context.contextFactory(), False, h.factory)
        gate = helpers.admission(h.factory).__class__(tls, h.factory.queue, h.factory.events)
        layer = gate.buildProtocol(helpers.peer())
        layer.makeConnection(StringTransport())
        self.assertFalse(IHalfCloseableProtocol.providedBy(layer))
        self.assertFalse(IHalfCloseableProtocol.providedBy(layer.wrappedProtocol))
        helpers.lose(layer)

    @settings(max_examples=50, deadline=None)
    @given(
        st.lists(
            st.tuples(st.sampled_from(["open", "close", "abort"]), st.integers(0, 3)), max_size=60
        )
    )
    def test_countsNeverDrift(self, steps: list[tuple[str, int]]) -> None:
        h = Harness(maxConnections=5, maxPerPeer=2)
        open_: list[Gate] = []
        for action, host in steps:
            if action == "open":
                proto, _ = h.accept(f"10.0.0.{host}", len(open_))
                if isinstance(proto, Gate):
                    open_.append(proto)
            elif open_:
                gate = open_.pop(host % len(open_))
                if action == "abort":
                    gate.wrappedProtocol.abort("test", reason="stalled")
                helpers.lose(gate)
            self.assertEqual(h.admission.open, len(open_))
            self.assertEqual(len(h.factory.connections), len(open_))
            self.assertLessEqual(len(open_), 5)
            self.assertEqual(sum(h.admission.perPeer.values()), len(open_))
            self.assertTrue(all(n <= 2 for n in h.admission.perPeer.values()))
        for gate in open_:
            helpers.lose(gate)
        self.assertEqual((h.admission.open, h.admission.perPeer), (0, {}))
        self.assertEqual((h.counters.pending, h.counters.live), (0, 0))


class HandshakeTests(SynchronousTestCase):
    def test_silentSocketIsAbortedAtTheDeadline(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=2.0, trusted=LOCAL)
        gate, transport = h.accept()
        self.assertEqual(h.admission.handshaking, {gate})
        self.assertEqual(h.factory.connections, set())
        h.elapse(1.9)
        self.assertFalse(transport.disconnected)
        h.elapse(0.2)
        self.assertTrue(transport.disconnected)
        helpers.lose(gate)
        self.assertEqual(h.admission.closed["handshake"], 1)
        self.assertEqual(h.admission.open, 0)
        [(kind, _peer, why)] = h.logged
        self.assertEqual(kind, "dropped")
        self.assertIn("within 2.0s", why)
        self.assertEqual((h.counters.pending, h.counters.live), (0, 0))

    def test_headerInTimeEndsTheDeadline(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=2.0, trusted=LOCAL)
        gate, transport = h.accept()
        gate.dataReceived(v1("192.0.2.7"))
        self.assertEqual(h.admission.handshaking, set())
        h.elapse(3)
        self.assertFalse(transport.disconnected)
        self.assertEqual(helpers.server(gate).transport.getPeer().host, "192.0.2.7")

    def test_fullIsClosedWithoutAWord(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=2.0, trusted=LOCAL, maxConnections=1)
        h.accept()
        refused, _ = h.accept(port=2)
        self.assertIsNone(refused)  # the port closes the socket before reading
        self.assertEqual(h.admission.refused["full"], 1)

    def test_socketsInTheirHandshakeCountTowardTheLimit(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=LOCAL, maxConnections=3)
        results = [h.accept(port=i)[0] for i in range(10)]
        self.assertEqual(sum(isinstance(r, Gate) for r in results), 3)
        self.assertEqual(h.admission.refused["full"], 7)

    def test_shutdownAbortsThoseInTheirHandshake(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=LOCAL)
        waiting, tw = h.accept(port=1)
        served, ts = h.accept(port=2)
        served.dataReceived(v1("192.0.2.7"))
        self.assertEqual(h.admission.abortHandshaking(), 1)
        self.assertTrue(tw.disconnected)
        self.assertFalse(ts.disconnected)
        helpers.lose(waiting)
        self.assertEqual(h.admission.closed["shutdown"], 1)

    def test_headerPerPeerLimitUsesTheClientsAddress(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=LOCAL, maxPerPeer=1)
        first, _ = h.accept(port=1)
        first.dataReceived(v1("192.0.2.7"))
        second, t2 = h.accept(port=2)  # the same proxy: not counted at accept
        second.dataReceived(v1("192.0.2.7", 50001))
        self.assertTrue(t2.disconnecting)
        self.assertEqual(t2.value(), BUSY)
        self.assertEqual(h.admission.refused["peer"], 1)
        helpers.lose(second)
        # Accepted first, so refused and closed both: accepted = open + closed.
        self.assertEqual(h.admission.closed, {"peer": 1})
        self.assertEqual(h.admission.accepted, 2)
        self.assertEqual(h.admission.perPeer, {"192.0.2.7": 1})
        third, t3 = h.accept(port=3)
        third.dataReceived(v1("192.0.2.8"))
        self.assertFalse(t3.disconnected)

    def test_anIPv4ClientIsOneHostHoweverTheHeaderSpellsIt(self) -> None:
        """As IPv4-mapped IPv6 (a dual-stack proxy's socket), it is the same host."""
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=LOCAL, maxPerPeer=1)
        first, _ = h.accept(port=1)
        first.dataReceived(v1("192.0.2.7"))
        second, t2 = h.accept(port=2)
        second.dataReceived(v2v6("::ffff:192.0.2.7"))
        self.assertEqual(t2.value(), BUSY)
        self.assertEqual(h.admission.perPeer, {"192.0.2.7": 1})

    def test_aTranslatedClientIsItsIPv4AddressBehindAProxy(self) -> None:
        """The header's client, through a translator, is counted as its IPv4 address."""
        h = Harness(
            proxy=True,
            handshakeTimeout=5.0,
            trusted=LOCAL,
            maxPerPeer=1,
            nat64Prefixes=("2001:db8:46::/96",),
        )
        gates = [h.accept(port=port) for port in range(1, 5)]
        for (gate, _), client in zip(
            gates[:3],
            ("2001:db8:46::192.0.2.1", "2001:db8:46::c000:202", "::ffff:0:192.0.2.3"),
            strict=True,
        ):
            gate.dataReceived(v2v6(client))
        gates[3][0].dataReceived(v1("192.0.2.1"))
        self.assertEqual([t.value() for _, t in gates], [b"hi\r\n"] * 3 + [BUSY])
        self.assertEqual(h.admission.perPeer, {"192.0.2.1": 1, "192.0.2.2": 1, "192.0.2.3": 1})

    def test_aDropAfterTheHeaderNamesTheClient(self) -> None:
        """The log names the client the header gave, not the proxy."""
        h = Harness(proxy=True, handshakeTimeout=2.0, trusted=LOCAL)
        gate, _ = h.accept(port=1)
        gate.drop("shutdown", "before")
        gate, _ = h.accept(port=2)
        gate.dataReceived(v1("192.0.2.7"))
        gate.drop("shutdown", "after")
        self.assertEqual([peer.host for _, peer, _ in h.logged], ["127.0.0.1", "192.0.2.7"])


class FreedTests(SynchronousTestCase):
    """
    A closed connection's objects are freed by reference counting, the
    moment it closes: none is left for the garbage collector, whose full
    passes cost time in proportion to every object the server holds.
    """

    def assertFreedWhenLost(self, h: Harness, first: bytes = b"") -> None:
        gate, transport = h.accept()
        if first:
            gate.dataReceived(first)
        [server] = h.factory.connections
        refs = [weakref.ref(gate), weakref.ref(server), weakref.ref(server.transport)]
        gc.disable()
        self.addCleanup(gc.enable)
        transport.unregisterProducer()  # the socket lets its producer go when it closes
        helpers.lose(gate)
        del gate, server, transport
        self.assertEqual([ref() for ref in refs], [None] * len(refs))

    def test_plain(self) -> None:
        self.assertFreedWhenLost(Harness())

    def test_plainWithAGate(self) -> None:
        self.assertFreedWhenLost(Harness(maxPerPeer=5))

    def test_behindAProxy(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=LOCAL, maxPerPeer=5)
        self.assertFreedWhenLost(h, v1("192.0.2.7"))

    def test_withAnIdleTimeout(self) -> None:
        h = Harness()
        h.factory.idleTimeout = 30.0
        self.assertFreedWhenLost(h, b"echo")  # the echo arms the watchdog


class TrustedTests(SynchronousTestCase):
    def test_untrustedIsClosedAtAccept(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=LOCAL)
        refused, _ = h.accept("192.0.2.1")
        self.assertIsNone(refused)
        self.assertEqual(h.admission.refused["untrusted"], 1)
        self.assertEqual(h.admission.open, 0)
        [(kind, _peer, why)] = h.logged
        self.assertEqual(kind, "refused")
        self.assertIn("--proxy-from", why)

    def test_trustedAddresses(self) -> None:
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=LOCAL)
        for host, trusted in (
            ("127.0.0.1", True),
            ("127.200.0.1", True),
            ("::1", True),
            ("::ffff:127.0.0.1", True),
            ("::2", False),
            ("128.0.0.1", False),
            ("not an address", False),
        ):
            address = IPv6Address("TCP", host, 1) if ":" in host else helpers.peer(host)
            self.assertEqual(h.admission.buildProtocol(address) is not None, trusted, host)

    def test_anyTrustsEveryAddress(self) -> None:
        every = tuple(__import__("ipaddress").ip_network(n) for n in parseTrusted("any"))
        h = Harness(proxy=True, handshakeTimeout=5.0, trusted=every)
        self.assertIsNotNone(h.accept("192.0.2.1")[0])
        self.assertIsNotNone(h.admission.buildProtocol(IPv6Address("TCP", "2001:db8::1", 1)))
