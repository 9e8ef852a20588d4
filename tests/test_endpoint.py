"""The endpoint string the server listens on: the default backlog, TLS checks."""

from __future__ import annotations

from unittest import mock

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from timerserver.endpoint import endpointKind, serverEndpoint, splitFields, withBacklog


class BacklogTests(SynchronousTestCase):
    def test_addedWhereTheTypeTakesOne(self) -> None:
        for description in (
            "tcp:5050",
            "tcp:5050:interface=127.0.0.1",
            "tcp6:5050:interface=\\:\\:1",
            "unix:/tmp/x.sock",
            "ssl:5050:privateKey=k.pem",
            "TCP:5050",
        ):
            self.assertEqual(withBacklog(description, 1024), description + ":backlog=1024")

    def test_insideHAProxy(self) -> None:
        self.assertEqual(
            withBacklog("haproxy:tcp:5050:interface=127.0.0.1", 7),
            "haproxy:tcp:5050:interface=127.0.0.1:backlog=7",
        )
        self.assertEqual(withBacklog("haproxy:ssl:443", 7), "haproxy:ssl:443:backlog=7")

    def test_theStringsOwnBacklogWins(self) -> None:
        for description in (
            "tcp:5050:backlog=50",
            "tcp:5050:backlog=50:interface=127.0.0.1",
            "haproxy:tcp:5050:backlog=9",
            "unix:/tmp/x.sock:backlog=3",
        ):
            self.assertEqual(withBacklog(description, 1024), description)

    def test_leftAloneWhereItDoesNotApply(self) -> None:
        for description in ("systemd:domain=INET:name=web", "haproxy:systemd:domain=INET:index=0"):
            self.assertEqual(withBacklog(description, 1024), description)

    def test_escapedColonsAreNotSeparators(self) -> None:
        fields = splitFields("tcp6:80:interface=\\:\\:1")
        self.assertEqual(fields, ["tcp6", "80", "interface=\\:\\:1"])
        # "backlog=" inside an escaped value is not a backlog argument.
        self.assertEqual(
            withBacklog("unix:/tmp/a\\:backlog=1", 5), "unix:/tmp/a\\:backlog=1:backlog=5"
        )

    def test_kind(self) -> None:
        self.assertEqual(endpointKind("tcp:1"), "tcp")
        self.assertEqual(endpointKind("haproxy:ssl:1"), "haproxy:ssl")
        self.assertEqual(endpointKind("SSL:1"), "ssl")

    def test_reachesTheReactor(self) -> None:
        reactor = MemoryReactorClock()
        serverEndpoint(reactor, "tcp:5051:interface=127.0.0.1", 333).listen(mock.Mock())
        serverEndpoint(reactor, "tcp:5052:backlog=12", 333).listen(mock.Mock())
        self.assertEqual([s[2] for s in reactor.tcpServers], [333, 12])


class BadEndpointTests(SynchronousTestCase):
    def test_unknownTypeIsOneLine(self) -> None:
        e = self.assertRaises(usage.UsageError, serverEndpoint, MemoryReactorClock(), "bogus:1", 5)
        self.assertIn("--port", str(e))
        self.assertNotIn("\n", str(e))

    def test_sslWithoutPyOpenSSLNamesTheExtra(self) -> None:
        with mock.patch.dict("sys.modules", {"OpenSSL": None}):
            for description in ("ssl:5050:privateKey=k.pem", "haproxy:ssl:5050"):
                e = self.assertRaises(
                    usage.UsageError, serverEndpoint, MemoryReactorClock(), description, 5
                )
                self.assertIn("timerserver[tls]", str(e))
                self.assertNotIn("\n", str(e))
