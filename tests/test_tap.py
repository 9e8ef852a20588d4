"""The twistd command line and the service it builds."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import captureLog
from tests.serverprocess import runTwistd
from timerserver import ReactorTimerQueue, TimerWheel, cores, messages
from timerserver.admission import Busy
from timerserver.config import (
    DEFAULT_MESSAGE,
    DEFAULT_WELCOME,
    FILE_RESERVE,
    ServerConfig,
    defaultGranularity,
)
from timerserver.service import TimerServerService
from timerserver.tap import Options, makeService, openFileLimit


def parse(*args: str) -> Options:
    options = Options(reactor=MemoryReactorClock())
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        o = parse()
        self.assertEqual(o.config.listener.description, "tcp:5050:interface=127.0.0.1")
        self.assertEqual(o.config.interval, 2.0)
        self.assertEqual(o.config.welcome, DEFAULT_WELCOME)
        self.assertEqual(o.config.message, DEFAULT_MESSAGE)
        self.assertEqual(o.config.queue, "wheel")
        self.assertEqual(o.config.granularity, 0.01)
        self.assertEqual(o.config.stallTimeout, 30.0)
        self.assertEqual(o.config.maxBuffer, 1024 * 1024)
        self.assertEqual(o.config.idleTimeout, 0.0)
        self.assertEqual(o.config.idleMessage, b"Idle timeout\r\n")
        self.assertEqual(o.config.maxPerPeer, 0)
        self.assertEqual(o.config.goodbye, b"Server shutting down\r\n")
        self.assertEqual(o.config.shutdownTimeout, 5.0)
        self.assertEqual(o.config.listener.backlog, 4096)
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.assertEqual(o.config.maxConnections, limit - 64)

    def test_granularityFollowsWorkersPerCore(self) -> None:
        # Up to 5 workers a core keep the 10 ms tick; more make it coarser, so
        # that all the wheels together wake a core at most 500 times a second.
        self.assertEqual(defaultGranularity(1, 2), 0.01)
        self.assertEqual(defaultGranularity(10, 2), 0.01)
        self.assertEqual(defaultGranularity(11, 2), 0.011)
        self.assertEqual(defaultGranularity(52, 2), 0.052)
        self.assertEqual(defaultGranularity(52, 0), 0.104)  # no cores known: one
        # Never coarser than a tenth of the interval (skips start at two intervals late).
        self.assertEqual(defaultGranularity(52, 2, interval=0.2), 0.02)
        self.assertEqual(defaultGranularity(52, 2, interval=0.05), 0.01)
        self.assertEqual(defaultGranularity(52, 2, interval=30), 0.052)
        # Nor coarser than the interval itself: 80% of messages were skipped.
        self.assertEqual(defaultGranularity(1, 2, interval=0.002), 0.002)
        self.assertEqual(defaultGranularity(52, 2, interval=0.001), 0.001)
        self.assertEqual(parse("--interval", "0.002").config.granularity, 0.002)
        # Options counts the cores it may use: 2 here, whatever the machine.
        self.patch(os, "sched_getaffinity", lambda pid: set(range(2)))
        self.patch(cores, "cpuQuota", lambda: None)
        self.assertEqual(parse("--workers", "52").config.granularity, 0.052)
        self.assertEqual(parse("--workers", "10").config.granularity, 0.01)
        self.assertEqual(parse("--workers", "auto").config.granularity, 0.01)
        self.assertEqual(parse("--workers", "52", "--interval", "0.2").config.granularity, 0.02)
        self.assertEqual(parse("--workers", "52", "--interval", "0.05").config.granularity, 0.01)
        # Given, it wins.
        self.assertEqual(
            parse("--workers", "52", "--granularity", "0.002").config.granularity, 0.002
        )
        # What the metrics report as the tick: none for the reactor queue.
        self.assertEqual(parse("--workers", "52").config.tick, 0.052)
        self.assertEqual(parse("--timer-queue", "reactor", "--workers", "52").config.tick, 0.0)

    def test_everyOption(self) -> None:
        o = parse(
            "-p",
            "tcp:6000",
            "-i",
            "0.25",
            "--welcome",
            "hi\\tthere\\r\\n",
            "-m",
            "tick \\\\ \u00e9\\n",
            "--timer-queue",
            "wheel",
            "--granularity",
            "0.005",
        )
        self.assertEqual(o.config.listener.description, "tcp:6000")
        self.assertEqual(o.config.interval, 0.25)
        self.assertEqual(o.config.welcome, b"hi\tthere\r\n")
        self.assertEqual(o.config.message, "tick \\ \u00e9\n".encode())
        self.assertEqual(o.config.granularity, 0.005)
        self.assertEqual(
            parse("--port=unix:/tmp/x.sock").config.listener.description, "unix:/tmp/x.sock"
        )
        self.assertEqual(parse("--port", "tcp6:5050:interface=\\:\\:1").config.interval, 2.0)
        self.assertEqual(parse("--interval", "3").config.interval, 3.0)
        self.assertEqual(parse("--timer-queue", "reactor").config.queue, "reactor")
        for off in ("0", "0.0", "0.00"):
            self.assertEqual(parse("--idle-timeout", off).config.idleTimeout, 0.0)
        o = parse(
            "--stall-timeout", "3", "--max-buffer", "4096", "--idle-timeout", "60",
            "--idle-message", "bye\\n", "--max-connections", "10", "--max-per-peer", "2",
            "--goodbye", "later\\r\\n", "--shutdown-timeout", "1.5",
        )  # fmt: skip
        self.assertEqual(
            (o.config.stallTimeout, o.config.maxBuffer, o.config.idleTimeout, o.config.idleMessage),
            (3.0, 4096, 60.0, b"bye\n"),
        )
        self.assertEqual(
            (
                o.config.maxConnections,
                o.config.maxPerPeer,
                o.config.goodbye,
                o.config.shutdownTimeout,
            ),
            (10, 2, b"later\r\n", 1.5),
        )

    def test_bytesThatAreNotUTF8AreSentExactly(self) -> None:
        """bash's --welcome $'\\xff': the command line's own bytes, not an encoding error."""
        import os

        raw = os.fsdecode(b"caf\xe9 \xff\\r\\n")  # as Python hands argv over
        self.assertEqual(parse("--welcome", raw).config.welcome, b"caf\xe9 \xff\r\n")
        self.assertEqual(parse("-m", "\u00e9").config.message, "\u00e9".encode())

    def test_helpShowsTheEscapes(self) -> None:
        text = " ".join(str(Options(reactor=MemoryReactorClock())).split())  # unwrapped
        self.assertIn("Welcome to the timer server\\r\\n", text)
        self.assertIn("Periodic per connection message\\r\\n", text)
        self.assertNotIn("server\r", text)

    def test_escapeRoundTrips(self) -> None:
        from timerserver.tap import escape, unescape

        for data in (b"a\\b\r\n\t", b"\xff\x00", b""):
            self.assertEqual(unescape(escape(data), "x"), data)

    def test_noWelcome(self) -> None:
        self.assertEqual(parse("--no-welcome").config.welcome, b"")
        self.assertEqual(parse("--no-welcome", "--welcome", "x").config.welcome, b"")

    def assertUsageError(self, args: list[str], *words: str) -> None:
        e = self.assertRaises(usage.UsageError, parse, *args)
        for word in words:
            self.assertIn(word, str(e))
        self.assertNotIn("\n", str(e))

    def test_badValues(self) -> None:
        for value in ("-1", "0", "abc", "nan", "inf", "", "1e12"):
            self.assertUsageError(["--interval", value], "--interval")
        for value in ("0", "-0.1", "x", "nan", "61"):
            self.assertUsageError(["--granularity", value], "--granularity")
        self.assertUsageError(["--port", "nonsense:1"], "--port", "nonsense")
        self.assertUsageError(["--port", "tcp:notaport"], "--port")
        self.assertUsageError(["--timer-queue", "heap"], "--timer-queue", "heap")
        self.assertUsageError(["--timer-queue", "reactor", "--granularity", "0.1"], "--granularity")
        self.assertUsageError(["--welcome", "bad \\q escape"], "--welcome", "\\q")
        self.assertUsageError(["--message", "trailing \\"], "--message")
        self.assertUsageError(["--bogus"], "bogus")
        for option in ("--stall-timeout", "--idle-timeout", "--shutdown-timeout"):
            for value in ("-1", "nan", "x", "inf"):
                self.assertUsageError([option, value], option)
        for option, bad in (("--max-buffer", "0"), ("--max-connections", "0"),
                            ("--max-per-peer", "-1")):  # fmt: skip
            for value in (bad, "1.5", "many"):
                self.assertUsageError([option, value], option)
        self.assertUsageError(["--interval"], "interval")
        for value in ("0", "-5", "many", "1.5"):
            self.assertUsageError(["--backlog", value], "--backlog")
        for value in ("0", "-1", "x", "65", "1.5", ""):
            self.assertUsageError(["--workers", value], "--workers")

    def test_workers(self) -> None:
        import os

        self.assertEqual(parse().config.workers, 1)
        self.assertEqual(parse("--workers", "3").config.workers, 3)
        self.assertEqual(parse("--workers", "64").config.workers, 64)
        self.assertEqual(parse("--workers", "auto").config.workers, cores.usableCores())
        self.patch(os, "sched_getaffinity", lambda pid: set(range(16)))
        self.patch(cores, "cpuQuota", lambda: 1.5)  # a container's --cpus 1.5
        self.assertEqual(parse("--workers", "auto").config.workers, 2)

    def test_asTwistdSubcommandExitsWithOneLine(self) -> None:
        """Under twistd a bad value is one line on exit, not twistd's usage."""
        options = Options(reactor=MemoryReactorClock())
        options.parent = usage.Options()  # type: ignore[attr-defined]
        e = self.assertRaises(SystemExit, options.parseOptions, ["--interval", "nan"])
        self.assertIsInstance(e.code, str)
        self.assertIn("--interval", e.code)
        self.assertNotIn("\n", e.code)


NUMERIC = {
    "--backlog": (),
    "--interval": (),
    "--granularity": (),
    "--stall-timeout": (),
    "--max-buffer": (),
    "--idle-timeout": ("0",),
    "--max-connections": (),
    "--max-per-peer": ("0",),
    "--ipv6-peer-prefix": (),
    "--workers": (),
    "--shutdown-timeout": (),
    "--handshake-timeout": (),
}
"""Every numeric option, and which of the hostile values it takes (0 means off)."""
HOSTILE = ("0", "-1", "nan", "inf", "5e-324", "1e300", "99999999999", "x")


class RangeTests(SynchronousTestCase):
    """Every numeric option has a range: anything outside it is one line naming it."""

    def test_hostileValuesAreOneLineNamingTheOption(self) -> None:
        for option, allowed in NUMERIC.items():
            for value in HOSTILE:
                for workers in ([], ["--workers", "2"]):
                    args = [option, value, *workers]
                    if option == "--workers":
                        args = [option, value]
                    options = Options(reactor=MemoryReactorClock())
                    options.parent = usage.Options()  # type: ignore[attr-defined]
                    if value in allowed:
                        options.parseOptions(args)
                        continue
                    e = self.assertRaises(SystemExit, options.parseOptions, args)
                    self.assertIsInstance(e.code, str, args)
                    self.assertIn(option, e.code, args)
                    self.assertNotIn("\n", e.code)

    def test_boundsAreAccepted(self) -> None:
        for args in (
            ["--backlog", "1"], ["--backlog", "65535"], ["--interval", "0.001"],
            ["--interval", "4294967.294"],
            ["--max-connections", str(openFileLimit() - FILE_RESERVE)],
            ["--interval", "0.5", "--granularity", "0.5"],
            ["--handshake-timeout", "0.001"], ["--max-buffer", str(1 << 30)],
        ):  # fmt: skip
            parse(*args)
        self.assertEqual(parse().config.peerPrefix6, 64)
        for value in ("1", "128"):
            self.assertEqual(parse("--ipv6-peer-prefix", value).config.peerPrefix6, int(value))
        for value in ("129", "1.5"):
            self.assertRaises(usage.UsageError, parse, "--ipv6-peer-prefix", value)

    def test_nat64Prefixes(self) -> None:
        """
        C{--nat64-prefix}, repeatable: each a translator's prefix of an RFC
        6052 length, carried in the configuration, to the workers too.
        """
        self.assertEqual(parse().config.nat64Prefixes, ())
        config = parse(
            "--nat64-prefix", "2001:DB8:46::/96", "--nat64-prefix", "64:ff9b:1::/48",
            "--nat64-prefix", "2001:db8:46::/96", "--max-per-peer", "2", "--workers", "2",
        ).config  # fmt: skip
        self.assertEqual(config.nat64Prefixes, ("2001:db8:46::/96", "64:ff9b:1::/48"))
        for length in (32, 40, 48, 56, 64, 96):
            self.assertEqual(
                parse("--nat64-prefix", f"2001:db8::/{length}").config.nat64Prefixes,
                (f"2001:db8::/{length}",),
            )
        # As a worker receives it: JSON, in its master's Configure message.
        line = messages.encode(messages.Configure(config.toData(), 1, 3))
        message = messages.decode(line)
        assert isinstance(message, messages.Configure)
        received = ServerConfig.fromData(message.config)
        self.assertEqual(received, config)
        self.assertEqual(received.nat64Prefixes, ("2001:db8:46::/96", "64:ff9b:1::/48"))
        for bad in (["2001:db8::/33"], [1], "2001:db8::/96", ["2001:db8::1/96"]):
            data = {**message.config, "nat64Prefixes": bad}
            self.assertRaises(ValueError, ServerConfig.fromData, data)

    def test_badNat64PrefixesAreOneLineNamingTheLengths(self) -> None:
        for value in (
            "2001:db8::1/96", "2001:db8::/33", "2001:db8::/128", "2001:db8::", "10.0.0.0/8",
            "192.0.2.0/24", "x", "", "2001:db8::/96/96",
        ):  # fmt: skip
            options = Options(reactor=MemoryReactorClock())
            options.parent = usage.Options()  # type: ignore[attr-defined]
            e = self.assertRaises(SystemExit, options.parseOptions, ["--nat64-prefix", value])
            self.assertIsInstance(e.code, str, value)
            self.assertIn("--nat64-prefix: ", e.code)
            self.assertIn("32, 40, 48, 56, 64 or 96", e.code)
            self.assertNotIn("\n", e.code)
            self.assertRaises(usage.UsageError, parse, "--nat64-prefix", value)

    def test_limitsTheProcessCannotMeetAreRefused(self) -> None:
        """
        More connections than the open-file limit allows (the kernel would
        refuse them, not admission), or a tick longer than the interval.
        """
        room = openFileLimit() - FILE_RESERVE
        for args, expected in (
            (["--max-connections", str(room + 1)], f"--max-connections: at most {room} "),
            (["--interval", "0.5", "--granularity", "0.6"], "--granularity: at most --interval"),
        ):
            e = self.assertRaises(usage.UsageError, Options().parseOptions, args)
            self.assertIn(expected, str(e))
            self.assertNotIn("\n", str(e))

    def test_twistdExitsWithStatusOneAndOneLine(self) -> None:
        """The end-to-end path, for the two values the issue found."""
        for args in (["--backlog", "99999999999", "--workers", "2"], ["-i", "5e-324"]):
            result = runTwistd(*args)
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertNotIn("Traceback", result.stdout + result.stderr)
            [line] = [x for x in (result.stdout + result.stderr).splitlines() if x.strip()]
            self.assertIn(args[0].lstrip("-")[:4], line)


class ServiceTests(SynchronousTestCase):
    def build(self, *args: str) -> tuple[IService, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        options = Options(reactor=reactor)
        options.parseOptions(list(args))
        return makeService(options), reactor

    def service(self, parent: IService) -> TimerServerService:
        [child] = list(parent)  # type: ignore[call-overload]
        assert isinstance(child, TimerServerService)
        return child

    def test_thePeerOptionsReachAdmission(self) -> None:
        """
        C{--ipv6-peer-prefix} and C{--nat64-prefix} reach the admission the
        port calls: two IPv4 clients behind the translator are two peers
        under C{--max-per-peer 1}, two addresses of one /48 are one.
        """
        from twisted.internet.address import IPv6Address

        parent, reactor = self.build(
            "-p", "tcp:5055:interface=127.0.0.1", "--max-per-peer", "1",
            "--ipv6-peer-prefix", "48", "--nat64-prefix", "2001:db8:46::/96",
        )  # fmt: skip
        parent.privilegedStartService()
        parent.startService()
        [(_, admission, _, _)] = reactor.tcpServers

        def admitted(host: str) -> bool:
            proto = admission.buildProtocol(IPv6Address("TCP", host, 40000))
            return not isinstance(proto, Busy)

        self.assertTrue(admitted("2001:db8:46::c000:201"))  # 192.0.2.1
        self.assertTrue(admitted("2001:db8:46::c000:202"))  # 192.0.2.2
        self.assertFalse(admitted("2001:db8:46::c000:201"))
        self.assertTrue(admitted("2001:db8:1:1::1"))
        self.assertFalse(admitted("2001:db8:1:2::1"))  # the same /48
        parent.stopService()

    def test_listensAndStops(self) -> None:
        parent, reactor = self.build("-p", "tcp:5055:interface=127.0.0.1", "-i", "0.5")
        parent.privilegedStartService()
        parent.startService()
        [(port, admission, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, backlog, interface), (5055, 4096, "127.0.0.1"))
        factory = admission.wrappedFactory
        self.assertEqual(factory.interval, 0.5)
        self.assertIsInstance(factory.queue, TimerWheel)
        from twisted.internet.testing import StringTransport

        quick, stuck = admission.buildProtocol(None), admission.buildProtocol(None)
        quickTransport, stuckTransport = StringTransport(), StringTransport()
        quick.makeConnection(quickTransport)
        stuck.makeConnection(stuckTransport)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)  # the wheel's one call
        d = parent.stopService()
        for transport in (quickTransport, stuckTransport):
            self.assertTrue(transport.value().endswith(b"Server shutting down\r\n"))
            self.assertTrue(transport.disconnecting)
        quick.connectionLost(None)
        self.assertNoResult(d)
        reactor.advance(4.9)
        self.assertFalse(stuckTransport.disconnected)
        reactor.advance(0.2)  # the shutdown timeout: abort what is left
        self.assertTrue(stuckTransport.disconnected)
        stuck.connectionLost(None)
        self.successResultOf(d)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, factory.queue.setOneShotTimer, print, 1)

    def test_theWheelKeepsItsCallWhileConnectionsComeAndGo(self) -> None:
        """
        The server's wheel keeps its one reactor call when its last
        connection closes, so the next connection makes none; stopping the
        service cancels it.
        """
        from twisted.internet.testing import StringTransport

        parent, reactor = self.build("-p", "tcp:5055:interface=127.0.0.1")
        parent.privilegedStartService()
        parent.startService()
        [(_, admission, _, _)] = reactor.tcpServers
        calls = []
        for _ in range(3):
            proto = admission.buildProtocol(None)
            proto.makeConnection(StringTransport())
            proto.connectionLost(None)
            calls.append(reactor.getDelayedCalls())
        [kept] = calls[0]
        self.assertEqual(calls, [[kept]] * 3)
        self.assertTrue(kept.active())
        self.successResultOf(parent.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_reactorQueue(self) -> None:
        parent, reactor = self.build("--timer-queue", "reactor")
        parent.privilegedStartService()
        self.assertIsInstance(reactor.tcpServers[0][1].queue, ReactorTimerQueue)
        self.assertIsInstance(reactor.tcpServers[0][1].wrappedFactory.queue, ReactorTimerQueue)

    def test_cannotListenIsOneLine(self) -> None:
        parent, _ = self.build()
        service = self.service(parent)

        class FailingEndpoint:
            def listen(self, factory: object) -> object:
                from twisted.internet import defer, error

                return defer.fail(error.CannotListenError("127.0.0.1", 5050, OSError(98, "in use")))

        service.endpoint = FailingEndpoint()  # type: ignore[assignment]
        e = self.assertRaises(SystemExit, parent.privilegedStartService)
        self.assertIn("cannot listen on tcp:5050:interface=127.0.0.1", e.code)
        self.assertNotIn("\n", e.code)


class LateListenTests(SynchronousTestCase):
    """An endpoint that answers after privilegedStartService: nothing is dropped."""

    def service(self) -> tuple[Any, Any, MemoryReactorClock]:
        from twisted.internet import defer

        from timerserver.service import TimerServerService

        reactor = MemoryReactorClock()
        options = Options(reactor=reactor)
        options.parseOptions([])
        server = makeService(options)
        [service] = list(server)  # type: ignore[call-overload]
        assert isinstance(service, TimerServerService)
        pending: defer.Deferred[Any] = defer.Deferred()

        class LateEndpoint:
            def listen(self, factory: object) -> defer.Deferred[Any]:
                return pending

        service.endpoint = LateEndpoint()  # type: ignore[assignment]
        service.reactor = reactor
        return service, pending, reactor

    def test_lateFailureIsLoggedAndStopsTheReactor(self) -> None:
        from twisted.internet import error

        service, pending, reactor = self.service()
        events = captureLog(self)
        service.privilegedStartService()
        self.assertFalse(reactor.hasStopped)
        pending.errback(error.CannotListenError("127.0.0.1", 5050, OSError(98, "in use")))
        self.assertTrue(reactor.hasStopped)
        [event] = [e for e in events if "cannot listen" in e.get("log_format", "")]
        self.assertEqual(event["description"], "tcp:5050:interface=127.0.0.1")

    def test_lateSuccessIsServedAndStopped(self) -> None:
        service, pending, reactor = self.service()
        service.privilegedStartService()
        stopped: list[bool] = []

        class Port:
            def getHost(self) -> str:
                return "late"

            def stopListening(self) -> None:
                stopped.append(True)

        pending.callback(Port())
        self.successResultOf(service.stopService())
        self.assertEqual(stopped, [True])
        self.assertFalse(reactor.hasStopped)
