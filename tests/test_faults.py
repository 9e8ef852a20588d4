"""
Hostile clients and faults, at the protocol level: slow readers, idle
clients, and any sequence of them (hypothesis); connection limits are in
L{tests.test_admission}.  Driven
by StringTransport and task.Clock.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests import helpers
from tests.helpers import peer
from timerserver import TimerQueueCounters, TimerWheel, reasons
from timerserver.config import DEFAULT_MESSAGE, DEFAULT_WELCOME
from timerserver.factory import TimerServerFactory


class GuardedTransport(StringTransport):
    """A StringTransport that fails the test on a write after the connection is gone."""

    lost = False

    def write(self, data: bytes) -> None:
        if self.lost or self.disconnected:
            raise AssertionError(f"write after close: {data!r}")
        super().write(data)


class PausingTransport(GuardedTransport):
    """Pauses its streaming producer inside write(), as Twisted's FileDescriptor.write does."""

    bufferSize = 10

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming and len(self.value()) > self.bufferSize:
            self.producer.pauseProducing()


class Harness:
    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.clock.advance(50)
        self.counters = TimerQueueCounters()
        self.queue = TimerWheel(self.clock, monitor=self.counters)
        options.setdefault("welcome", None)
        self.factory = TimerServerFactory(self.queue, reactor=self.clock, **options)

    def connect(self, host: str = "127.0.0.1", port: int = 40000) -> tuple[Any, GuardedTransport]:
        transport = GuardedTransport(peerAddress=peer(host, port))
        return helpers.connect(self.factory, host, port, transport)

    def lose(self, proto: Any, transport: GuardedTransport) -> None:
        transport.lost = True
        helpers.lose(proto)

    def elapse(self, seconds: float, step: float = 0.01) -> None:
        helpers.elapse(self.clock, seconds, step)


class SlowConsumerTests(SynchronousTestCase):
    def test_registersAsStreamingProducer(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)

    def test_pausedSkipsMessagesAndStopsReading(self) -> None:
        h = Harness(interval=1.0)
        proto, transport = h.connect()
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        h.elapse(3.5)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.factory.skippedMessages, 3)
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        h.elapse(1.0)
        self.assertEqual(transport.value(), DEFAULT_MESSAGE)  # back on its schedule at t+4

    def test_pauseFromAWrapperKeepsReading(self) -> None:
        """
        A TLS layer pauses its producer while its handshake is pending, with
        the socket's buffer empty: reading goes on (the handshake needs it),
        messages are skipped, and the stall timer still runs.
        """
        h = Harness(interval=1.0, stallTimeout=5.0)
        proto, transport = h.connect()
        transport.transport = StringTransport()  # type: ignore[attr-defined]
        transport.transport.producerPaused = False  # type: ignore[attr-defined]
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "producing")
        h.elapse(1.5)
        self.assertEqual(h.factory.skippedMessages, 1)
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        proto.pauseProducing()
        h.elapse(5.1, step=0.1)
        self.assertTrue(transport.disconnected)

    def test_pauseWithTheSocketFullStopsReadingThroughWrappers(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        transport.transport = StringTransport()  # type: ignore[attr-defined]
        transport.transport.producerPaused = True  # type: ignore[attr-defined]
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_stalledClientIsAborted(self) -> None:
        h = Harness(stallTimeout=5.0)
        proto, transport = h.connect()
        proto.pauseProducing()
        h.elapse(4.9, step=0.1)
        self.assertFalse(transport.disconnected)
        h.elapse(0.2)
        self.assertTrue(transport.disconnected)
        h.lose(proto, transport)
        self.assertEqual((h.counters.pending, h.counters.live), (0, 0))

    def test_drainingInTimeCancelsTheStallTimer(self) -> None:
        h = Harness(stallTimeout=5.0)
        proto, transport = h.connect()
        for _ in range(3):
            proto.pauseProducing()
            h.elapse(4.0, step=0.1)
            proto.resumeProducing()
        h.elapse(10, step=0.1)
        self.assertFalse(transport.disconnected)
        self.assertEqual(h.counters.pending, 1)  # only the periodic timer

    def test_overTheBufferCapAbortsAtOnce(self) -> None:
        h = Harness(maxBuffer=100_000)
        proto, transport = h.connect()
        proto.pauseProducing()
        proto.dataReceived(b"x" * 60_000)
        self.assertFalse(transport.disconnected)
        proto.dataReceived(b"x" * 60_000)
        self.assertTrue(transport.disconnected)
        h.elapse(5)  # nothing more is written: GuardedTransport would fail
        h.lose(proto, transport)
        self.assertEqual((h.counters.pending, h.counters.live), (0, 0))

    def test_aTickThatFillsTheBufferCountsTowardsMaxBuffer(self) -> None:
        """The periodic write that pauses the connection counts as queued, as any write does."""
        h = Harness(message=b"m" * 100, interval=1.0, maxBuffer=50)
        transport = PausingTransport(peerAddress=peer())
        proto, _ = helpers.connect(h.factory, transport=transport)
        h.elapse(1.05)
        self.assertTrue(proto.paused)
        self.assertTrue(transport.disconnected)
        self.assertEqual(proto.closeReason, reasons.BUFFER)

    def test_bigBurstIsEchoedExactly(self) -> None:
        h = Harness()
        proto, transport = h.connect()
        burst = bytes(range(256)) * (16 * 4096)  # 16 MiB
        for i in range(0, len(burst), 65536):
            proto.dataReceived(burst[i : i + 65536])
        self.assertEqual(transport.value(), burst)


class IdleTests(SynchronousTestCase):
    def test_idleClientIsToldAndClosed(self) -> None:
        h = Harness(idleTimeout=10.0, interval=100.0)
        _, transport = h.connect()
        h.elapse(9.9, step=0.1)
        self.assertFalse(transport.disconnecting)
        h.elapse(0.2)
        self.assertEqual(transport.value(), b"Idle timeout\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        h.elapse(2.1)  # the close did not complete within the grace: abort
        self.assertTrue(transport.disconnected)

    def test_readsPushTheIdleTimeoutBack(self) -> None:
        h = Harness(idleTimeout=10.0, interval=100.0)
        proto, transport = h.connect()
        self.assertEqual((h.counters.created, h.counters.pending), (2, 2))  # armed at start
        for _ in range(5):
            h.elapse(8.0, step=0.1)
            operations = (h.counters.set, h.counters.updated, h.counters.created)
            proto.dataReceived(b"ping")
            # A read is no timer operation: the watchdog reads the time when it fires.
            self.assertEqual((h.counters.set, h.counters.updated, h.counters.created), operations)
        self.assertEqual(h.counters.created, 2)
        self.assertFalse(transport.disconnecting)
        h.elapse(9.9, step=0.1)
        self.assertFalse(transport.disconnecting)
        h.elapse(0.2, step=0.1)
        self.assertTrue(transport.disconnecting)

    def test_noWatchdogUntilTheTickBeforeTheDeadline(self) -> None:
        h = Harness(idleTimeout=60.0, interval=2.0)
        proto, transport = h.connect()
        h.elapse(31.0, step=0.1)
        proto.dataReceived(b"ping")
        h.elapse(55.0, step=0.1)
        # 86 s in, 55 s after the read: only the periodic handle so far.
        self.assertEqual((h.counters.created, h.counters.pending), (1, 1))
        # The tick at 88 s is the first with the deadline (91 s) before the one after next.
        h.elapse(2.5, step=0.1)
        self.assertEqual((h.counters.created, h.counters.pending), (2, 2))
        h.elapse(2.45, step=0.05)
        self.assertFalse(transport.disconnecting)
        h.elapse(0.2, step=0.05)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().endswith(b"Idle timeout\r\n"))

    def test_aShortConnectionMakesNoWatchdog(self) -> None:
        h = Harness(idleTimeout=60.0, interval=2.0)
        for port in range(3):
            proto, transport = h.connect(port=port)
            h.elapse(5.0, step=0.1)
            proto.dataReceived(b"ping")
            h.lose(proto, transport)
        self.assertEqual(h.counters.created, 3)  # the three periodic handles
        self.assertEqual((h.counters.pending, h.counters.live), (0, 0))

    def test_resumingStartsTheIdleTimeAgain(self) -> None:
        h = Harness(idleTimeout=5.0, interval=100.0, stallTimeout=30.0)
        proto, transport = h.connect()
        h.elapse(4.0, step=0.1)
        proto.pauseProducing()  # no reading while paused: it cannot be idle
        h.elapse(10.0, step=0.1)
        self.assertFalse(transport.disconnecting)
        proto.resumeProducing()
        h.elapse(4.9, step=0.1)
        self.assertFalse(transport.disconnecting)
        h.elapse(0.2, step=0.1)
        self.assertTrue(transport.disconnecting)

    @settings(max_examples=100, deadline=None)
    @given(
        interval=st.sampled_from([0.25, 1.0, 3.0, 20.0]),
        timeout=st.sampled_from([0.5, 2.0, 7.5]),
        gaps=st.lists(st.floats(0.0, 10.0), max_size=8),
    )
    def test_closedAtTheIdleDeadlineWhateverTheInterval(
        self, interval: float, timeout: float, gaps: list[float]
    ) -> None:
        h = Harness(idleTimeout=timeout, interval=interval)
        proto, transport = h.connect()
        lastRead = h.clock.seconds()
        for gap in gaps:
            gap = round(gap, 1)
            if gap >= timeout:
                break  # the client is idle before its next read
            h.elapse(gap, step=0.05)
            self.assertFalse(transport.disconnecting)
            proto.dataReceived(b"x")
            lastRead = h.clock.seconds()
        h.elapse(lastRead + timeout - 0.05 - h.clock.seconds(), step=0.05)
        self.assertFalse(transport.disconnecting)
        h.elapse(0.1, step=0.05)  # the deadline, within the wheel's 10 ms tick
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.value().endswith(b"Idle timeout\r\n"))

    def test_idleMessageIsConfigurable(self) -> None:
        h = Harness(idleTimeout=1.0, idleMessage=b"bye\n", interval=100.0)
        _, transport = h.connect()
        h.elapse(1.1)
        self.assertEqual(transport.value(), b"bye\n")


ACTIONS = st.sampled_from(
    ["data", "bigdata", "pause", "resume", "halfclose", "lose", "tick", "wait"]
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(ACTIONS, st.integers(0, 2)), max_size=40))
    def test_anySequenceLeavesNoTimersAndNeverWritesAfterClose(
        self, steps: list[tuple[str, int]]
    ) -> None:
        h = Harness(interval=0.5, idleTimeout=3.0, stallTimeout=2.0, maxBuffer=200_000)
        conns = [h.connect(port=i) for i in range(3)]
        gone: set[int] = set()
        for action, i in steps:
            proto, transport = conns[i]
            if i in gone:
                continue
            if transport.disconnected and action != "lose":
                action = "lose"  # an aborted connection is lost on the next turn
            if action == "data" and not proto.closing:
                proto.dataReceived(b"hello \x00\xff")
            elif action == "bigdata" and not proto.closing:
                proto.dataReceived(b"x" * 65536)
            elif action == "pause":
                proto.pauseProducing()
            elif action == "resume":
                proto.resumeProducing()
            elif action == "halfclose" and not proto.closing:
                proto.readConnectionLost()
            elif action == "lose":
                h.lose(proto, transport)
                gone.add(i)
            elif action == "tick":
                h.elapse(0.5, step=0.05)
            elif action == "wait":
                h.elapse(2.5, step=0.1)
        for i, (proto, transport) in enumerate(conns):
            if i not in gone:
                h.lose(proto, transport)
        h.elapse(5, step=0.5)
        self.assertEqual((h.counters.pending, h.counters.live), (0, 0))
        h.factory.events.stop()  # its rate-limit window is the only other call
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.factory.connections, set())


class WelcomeTests(SynchronousTestCase):
    def test_welcomeGoesFirst(self) -> None:
        h = Harness(welcome=DEFAULT_WELCOME)
        proto, transport = h.connect()
        proto.dataReceived(b"x")
        self.assertEqual(transport.value(), DEFAULT_WELCOME + b"x")
