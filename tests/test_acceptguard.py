"""
guardAccept: a real C{tcp.Port} whose accepts fail (its socket swapped for
one that raises), on a L{MemoryReactorClock}.
"""

from __future__ import annotations

import errno
import math
from typing import Any

from twisted.internet import protocol, tcp
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import captureLog
from timerserver import acceptguard
from timerserver.acceptguard import FIRST_PAUSE, LONGEST_PAUSE, guardAccept
from timerserver.eventlog import EventLog


class FailingSocket:
    """A listening socket whose accept raises C{errno}, or finds nobody (EAGAIN)."""

    def __init__(self, error: int = errno.EMFILE) -> None:
        self.error = error
        self.accepts = 0
        self.closed = False

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def accept(self) -> Any:
        self.accepts += 1
        raise OSError(self.error, "accept failed")


class LostSpare:
    """Twisted's spare descriptor, gone and never reserved again (a limit under its number)."""

    def __init__(self) -> None:
        self.reserves = 0

    def available(self) -> bool:
        return False

    def reserve(self) -> None:
        self.reserves += 1


class GuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.spare = LostSpare()
        self.patch(tcp, "_reservedFD", self.spare)
        self.reactor = MemoryReactorClock()
        self.logged: list[dict[str, Any]] = []
        # The log's window on a clock of its own: the reactor's calls are the guard's.
        self.events = EventLog(Clock(), Logger(observer=self.logged.append))
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        self.port = tcp.Port(0, factory, interface="127.0.0.1", reactor=self.reactor)
        self.port.startListening()
        self.addCleanup(self.port.socket.close)
        self.failing = FailingSocket()
        self.port.socket = self.failing
        guardAccept(self.port, self.events, self.reactor)
        self.spare.reserves = 0  # startListening reserves it too

    def reading(self) -> bool:
        return self.port in self.reactor.getReaders()

    def pauses(self, count: int) -> list[float]:
        """The pauses of C{count} failing accept turns, each run once the port reads again."""
        pauses = []
        for _ in range(count):
            self.assertTrue(self.reading())
            self.port.doRead()
            self.assertFalse(self.reading())
            [call] = self.reactor.getDelayedCalls()
            pauses.append(round(call.getTime() - self.reactor.seconds(), 6))
            self.reactor.advance(pauses[-1])
        return pauses

    def test_aFailedAcceptPausesThePortAndBacksOff(self) -> None:
        """
        Out of descriptors with no spare left, the port stops reading (it
        would be called again at once: a busy loop) for 0.1 s, doubling to
        1 s; a turn that accepts (or finds nobody) starts again from 0.1 s.
        """
        self.assertEqual(self.pauses(6), [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual((FIRST_PAUSE, LONGEST_PAUSE), (0.1, 1.0))
        self.assertEqual(self.failing.accepts, 6)  # one accept a turn, not a loop
        self.failing.error = errno.EAGAIN  # the limit was raised: nobody left, or accepted
        self.port.doRead()
        self.assertTrue(self.reading())
        self.failing.error = errno.EMFILE
        self.assertEqual(self.pauses(2), [0.1, 0.2])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_eachFailureIsCountedAndLoggedOnceAMinute(self) -> None:
        """It retries every second while it lasts: a line a second was never summarised."""
        self.pauses(30)  # 27.5 s
        self.assertEqual(self.events.totals["unaccepted"], 30)
        self.assertEqual(len(self.logged), 1)
        self.assertIn("accept failed (EMFILE), left queued", self.logged[0]["detail"])
        self.pauses(34)  # the last at 60.5 s
        self.assertEqual(self.events.totals["unaccepted"], 64)
        self.assertEqual(len(self.logged), 2)
        self.assertIn("; 62 more since the last such line", self.logged[1]["detail"])
        self.assertEqual(self.events.totals["dropped"], 0)  # nobody was dropped
        self.events.stop()

    def test_theSpareIsReservedAgainBeforeThePortReads(self) -> None:
        self.pauses(3)
        self.assertEqual(self.spare.reserves, 3)  # a descriptor was free each time

    def test_anAcceptErrorTwistedDoesNotKnowIsAPauseNotATraceback(self) -> None:
        """
        Twisted logs an unknown accept error as a traceback and leaves the
        socket readable: a traceback a turn, at a full core.
        """
        errors = captureLog(self)
        self.failing.error = errno.EPROTO
        self.assertEqual(self.pauses(3), [0.1, 0.2, 0.4])
        self.assertEqual(self.failing.accepts, 3)
        self.assertEqual(self.events.totals["unaccepted"], 3)
        self.assertIn("accept failed (EPROTO), left queued", self.logged[0]["detail"])
        self.assertEqual([e for e in errors if e.get("log_failure") is not None], [])
        self.assertIs(self.port.socket, self.failing)  # the port's own, between turns

    def test_aClientThatWentAwayDoesNotPause(self) -> None:
        """ECONNABORTED is the client's doing: the port goes on reading."""
        self.failing.error = errno.ECONNABORTED
        self.port.doRead()
        self.assertTrue(self.reading())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.events.totals["unaccepted"], 1)
        self.assertIn("the client went away", self.logged[0]["detail"])
        self.events.stop()

    def test_readingStartedByAnotherIsPausedAgain(self) -> None:
        """Whoever starts the port reading during a pause (the metrics slots) does not undo it."""
        self.port.doRead()
        self.port.startReading()
        self.port.doRead()
        self.assertFalse(self.reading())
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(FIRST_PAUSE)
        self.assertTrue(self.reading())

    def test_aPortThatStopsListeningEndsItsPause(self) -> None:
        """Stopping the port cancels the pause: nothing is left pending, nothing reads."""
        self.port.doRead()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        d = self.port.stopListening()
        self.reactor.advance(0)  # Twisted closes the port on the next turn
        self.successResultOf(d)
        self.assertTrue(self.failing.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.reading())
        self.assertEqual(self.spare.reserves, 0)

    def test_aPortStoppingDuringAPauseIsNotResumed(self) -> None:
        self.port.doRead()
        self.port.loseConnection()  # stopping: the guard's call comes first
        self.reactor.advance(FIRST_PAUSE)
        self.assertFalse(self.reading())
        self.assertEqual(self.spare.reserves, 0)

    def test_otherPortsAreLeftAlone(self) -> None:
        class OtherPort:
            def doRead(self) -> None:
                pass

            _logger = Logger()

        other = OtherPort()
        guardAccept(other, self.events, self.reactor)
        self.assertEqual(vars(other), {})  # a guarded port gets its own doRead and _logger


class SpareTests(SynchronousTestCase):
    def test_theSparesFailureIsALineAMinuteNotATraceback(self) -> None:
        """
        Twisted logs its failure to reserve the spare as a critical error
        with a traceback: here, one warning a minute at most.
        """

        def noDescriptor() -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        spare = tcp._FileDescriptorReservation(noDescriptor)  # type: ignore[no-untyped-call]
        self.patch(tcp, "_reservedFD", spare)
        logged: list[dict[str, Any]] = []
        self.patch(acceptguard, "_log", Logger(observer=logged.append))
        self.patch(acceptguard, "_spareLogged", -math.inf)
        now = [1000.0]
        self.patch(acceptguard, "monotonic", lambda: now[0])
        reactor = MemoryReactorClock()
        port = tcp.Port(0, protocol.Factory(), interface="127.0.0.1", reactor=reactor)
        guardAccept(port, EventLog(Clock(), Logger()), reactor)
        for _ in range(3):
            spare.reserve()  # type: ignore[no-untyped-call]
            now[0] += 20
        self.assertFalse(spare.available())  # type: ignore[no-untyped-call]
        [line] = logged
        self.assertNotIn("log_failure", line)
        self.assertIn("none spare for Twisted's EMFILE recovery", line["log_format"])
        spare.reserve()  # type: ignore[no-untyped-call]
        self.assertEqual(len(logged), 2)  # a minute later
        self.assertEqual(self.flushLoggedErrors(), [])
