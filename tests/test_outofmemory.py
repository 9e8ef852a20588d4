"""L{ExitOnMemoryError}: a logged C{MemoryError} ends the process; nothing else does."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from timerserver.outofmemory import EXIT_STATUS, ExitOnMemoryError


class ExitOnMemoryErrorTests(SynchronousTestCase):
    def observer(self, failWrite: bool = False) -> tuple[ExitOnMemoryError, list[object]]:
        calls: list[object] = []

        def write(fd: int, data: bytes) -> None:
            if failWrite:
                raise OSError("no stderr")
            calls.append((fd, data))

        return ExitOnMemoryError(exit=calls.append, write=write), calls

    def test_aLoggedMemoryErrorEndsTheProcess(self) -> None:
        observer, calls = self.observer()
        log = Logger(observer=observer)
        try:
            raise MemoryError()
        except MemoryError:
            log.failure("Unexpected error in main loop.")
        self.assertEqual(len(calls), 2)
        fd, line = calls[0]  # type: ignore[misc]
        self.assertEqual(fd, 2)
        self.assertIn(b"out of memory (MemoryError): exiting with status 70", line)
        self.assertEqual(calls[1], EXIT_STATUS)

    def test_aMemoryErrorLoggedByTheReactorEndsTheProcess(self) -> None:
        """The reactor logs doRead's and doWrite's exceptions through the legacy log.err."""
        from twisted.logger import globalLogPublisher
        from twisted.python import log

        observer, calls = self.observer()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        log.err(Failure(MemoryError()), "Unhandled Error")
        self.flushLoggedErrors(MemoryError)
        self.assertEqual(calls[-1], EXIT_STATUS)

    def test_theServersRootServiceWatchesWhileItRuns(self) -> None:
        import os

        from twisted.internet.testing import MemoryReactorClock

        from timerserver.service import ServerRoot

        exits: list[int] = []
        self.patch(os, "_exit", exits.append)
        self.patch(os, "write", lambda fd, data: len(data))
        root = ServerRoot(MemoryReactorClock())
        log = Logger()
        root.startService()
        log.failure("Unexpected error in main loop.", Failure(MemoryError()))
        self.assertEqual(exits, [EXIT_STATUS])
        root.stopService()
        log.failure("after the stop", Failure(MemoryError()))
        self.assertEqual(exits, [EXIT_STATUS])
        self.flushLoggedErrors(MemoryError)

    def test_itExitsEvenWithNowhereToSayIt(self) -> None:
        observer, calls = self.observer(failWrite=True)
        observer({"log_failure": Failure(MemoryError())})
        self.assertEqual(calls, [EXIT_STATUS])

    def test_otherEventsAndFailuresAreLeftAlone(self) -> None:
        observer, calls = self.observer()
        log = Logger(observer=observer)
        log.info("fine")
        log.failure("a bug", Failure(ValueError("x")))
        observer({"log_failure": "not a failure"})
        self.assertEqual(calls, [])
