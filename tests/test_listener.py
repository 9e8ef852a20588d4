"""C{--port} parsed once into a L{Listener}: kinds, backlog, TLS, PROXY, trusted sources."""

from __future__ import annotations

import json
from unittest import mock

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.tlshelpers import Certificates
from timerserver.listener import DEFAULT_PROXY_FROM, Listener, parseTrusted


class ParseTests(SynchronousTestCase):
    def test_kinds(self) -> None:
        for description, kind, family, socket in (
            ("tcp:5050", "tcp", "INET", "tcp:5050:interface=:backlog=4096"),
            ("TCP:5050:interface=127.0.0.1", "tcp", "INET", None),
            ("tcp6:5050", "tcp6", "INET6", "tcp6:5050:interface=\\:\\::backlog=4096"),
            ("tcp:5050:interface=\\:\\:1", "tcp6", "INET6", None),
            ("unix:/tmp/x.sock", "unix", "UNIX", "unix:/tmp/x.sock:backlog=4096"),
            ("systemd:domain=INET:index=0", "systemd", "INET", "systemd:domain=INET:index=0"),
            ("systemd:domain=UNIX:name=web", "systemd", "UNIX", None),
        ):
            listener = Listener.parse(description)
            self.assertEqual((listener.kind, listener.family), (kind, family), description)
            if socket is not None:
                self.assertEqual(listener.socket, socket)
            self.assertFalse(listener.proxy)
            self.assertIsNone(listener.tls)
            self.assertEqual(listener.trusted, ())

    def test_backlog(self) -> None:
        self.assertEqual(Listener.parse("tcp:5050", 7).backlog, 7)
        self.assertEqual(Listener.parse("tcp:5050:backlog=50", 7).backlog, 50)
        self.assertEqual(Listener.parse("haproxy:tcp:5050:backlog=9", 7).backlog, 9)
        self.assertIn("backlog=3", Listener.parse("unix:/tmp/x.sock:backlog=3").socket)
        self.assertNotIn("backlog", Listener.parse("systemd:domain=INET:index=0").socket)
        # An escaped colon is part of the value.
        listener = Listener.parse("unix:/tmp/a\\:b", 5)
        self.assertEqual(listener.socket, "unix:/tmp/a\\:b:backlog=5")

    def test_haproxyAndTrustedSources(self) -> None:
        listener = Listener.parse("haproxy:tcp:5050:interface=127.0.0.1")
        self.assertTrue(listener.proxy)
        self.assertEqual(listener.trusted, parseTrusted(DEFAULT_PROXY_FROM))
        self.assertFalse(listener.trustsAll)
        listener = Listener.parse("haproxy:tcp:5050", proxyFrom="10.1.2.3, 2001:db8::/32")
        self.assertEqual(listener.trusted, ("10.1.2.3/32", "2001:db8::/32"))
        self.assertTrue(Listener.parse("haproxy:tcp:5050", proxyFrom="any").trustsAll)

    def test_tls(self) -> None:
        certs = Certificates()
        key, cert = str(certs.key), str(certs.cert)
        listener = Listener.parse(f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
        self.assertEqual((listener.kind, listener.host), ("tcp", "127.0.0.1"))
        self.assertIn(("privateKey", key), listener.tls or ())
        self.assertIsNotNone(listener.contextFactory().getContext())
        proxied = Listener.parse(f"haproxy:ssl:0:privateKey={key}:certKey={cert}")
        self.assertTrue(proxied.proxy and proxied.tls)

    def test_roundTripsAsData(self) -> None:
        certs = Certificates()
        key, cert = str(certs.key), str(certs.cert)
        for description in (
            "tcp:5050",
            "haproxy:tcp6:0:interface=\\:\\:1",
            f"haproxy:ssl:0:privateKey={key}:certKey={cert}",
            "systemd:domain=INET:index=0",
        ):
            listener = Listener.parse(description)
            data = json.loads(json.dumps(listener.toData()))
            self.assertEqual(Listener.fromData(data), listener)
        self.assertRaises(ValueError, Listener.fromData, {"bogus": 1})

    def test_reachesTheReactor(self) -> None:
        reactor = MemoryReactorClock()
        Listener.parse("tcp:5051:interface=127.0.0.1", 333).endpoint(reactor).listen(mock.Mock())
        Listener.parse("tcp:5052:backlog=12", 333).endpoint(reactor).listen(mock.Mock())
        self.assertEqual([s[2] for s in reactor.tcpServers], [333, 12])
        self.assertEqual([s[3] for s in reactor.tcpServers], ["127.0.0.1", ""])


class BadListenerTests(SynchronousTestCase):
    def assertOneLine(self, *args: object, option: str = "--port") -> None:
        e = self.assertRaises(usage.UsageError, Listener.parse, *args)
        self.assertIn(option, str(e))
        self.assertNotIn("\n", str(e))

    def test_bad(self) -> None:
        for description in (
            "bogus:1",
            "tcp:notaport",
            "tcp:70000",
            "tcp:-1",
            "tcp",
            "tcp:1:backlog=0",
            "tcp:1:backlog=99999999999",
            "tcp:1:backlog=x",
            "tcp:1:colour=blue",
            "tcp6:1:interface=127.0.0.1",
            "unix:",
            "systemd:domain=APPLETALK:index=0",
            "haproxy:bogus:1",
            # An IPv6 address's colons unescaped: not every interface instead.
            "tcp:5050:interface=::1",
            "tcp6:5050:interface=::1",
            "haproxy:tcp:5050:interface=::1",
            "tcp:5050:::",
            "tcp:5050:interface=",
            "tcp:5050:interface=127.0.0.1:junk",
            "ssl:1:privateKey=/nonexistent.pem",
            "",
        ):
            self.assertOneLine(description)

    def test_anEscapedIPv6InterfaceIsThatInterface(self) -> None:
        listener = Listener.parse("tcp:5050:interface=\\:\\:1")
        self.assertEqual((listener.host, listener.family), ("::1", "INET6"))

    def test_badProxyFrom(self) -> None:
        for value in ("", "10.0.0.0/33", "nonsense", "any,10.0.0.0/8", ","):
            self.assertOneLine("haproxy:tcp:1", 50, value, option="--proxy-from")
        self.assertOneLine("tcp:1", 50, "10.0.0.0/8", option="--proxy-from")

    def test_proxyFromOnAUnixSocketIsAnErrorNotIgnored(self) -> None:
        """A unix socket's peers have no address: --proxy-from could check nothing."""
        for description in ("haproxy:unix:/tmp/ts.sock", "haproxy:systemd:domain=UNIX:index=0"):
            self.assertOneLine(description, 50, "10.0.0.0/8", option="--proxy-from")
            self.assertEqual(Listener.parse(description).family, "UNIX")

    def test_anSSLMethodOlderThanTLS12IsRefusedAtStart(self) -> None:
        """It would start, and refuse every client: TLS 1.2 is the minimum."""
        endpoint = Certificates().endpoint(5050)
        for method in ("TLSv1_METHOD", "TLSv1_1_METHOD"):
            description = f"{endpoint}:sslmethod={method}"
            e = self.assertRaises(usage.UsageError, Listener.parse, description)
            self.assertIn(f"sslmethod={method} allows only protocols older than TLS 1.2", str(e))
            self.assertNotIn("\n", str(e))
        for method in ("TLSv1_2_METHOD", "SSLv23_METHOD", "TLS_METHOD"):
            listener = Listener.parse(f"{endpoint}:sslmethod={method}")
            self.assertEqual(dict(listener.tls or ())["sslmethod"], method)

    def test_sslWithoutPyOpenSSLNamesTheExtra(self) -> None:
        certs = Certificates()
        key = str(certs.key)
        with mock.patch.dict("sys.modules", {"OpenSSL": None}):
            for description in (f"ssl:5050:privateKey={key}", f"haproxy:ssl:5050:privateKey={key}"):
                e = self.assertRaises(usage.UsageError, Listener.parse, description)
                self.assertIn("timerserver[tls]", str(e))
                self.assertNotIn("\n", str(e))
