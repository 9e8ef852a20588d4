"""
L{TimerServerService}: listens on an endpoint with a L{TimerServerFactory}
and, on stop, runs the graceful shutdown: stop listening, goodbye to every
client, abort what is left after the shutdown timeout, cancel every timer.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from timerserver.factory import TimerServerFactory

DEFAULT_SHUTDOWN_TIMEOUT = 5.0


def listenOrExit(endpoint: Any, factory: Any, description: str) -> IListeningPort:
    """
    Listen on C{endpoint} now; a failure is C{SystemExit} with one line (no
    traceback), as is an endpoint that does not listen at once.
    """
    results: list[IListeningPort | Failure] = []
    endpoint.listen(factory).addBoth(results.append)
    if not results:
        raise SystemExit(f"twistd timerserver: cannot listen on {description}: no answer")
    [result] = results
    if isinstance(result, Failure):
        raise SystemExit(
            f"twistd timerserver: cannot listen on {description}: {result.getErrorMessage()}"
        )
    return result


class TimerServerService(Service):
    """
    Listens on C{endpoint} with C{factory}.  A listen failure is one line on
    exit (C{SystemExit}), not a traceback.

    @ivar stopStats: after stop, the counts of the stop line: C{closed},
        C{cancelled} and C{skipped}.
    """

    _log = Logger()
    _port: IListeningPort | None = None
    stopStats: dict[str, int] | None = None
    monitor: Any = None
    """The queue's L{TimerQueueCounters} when metrics are on."""

    def __init__(
        self,
        endpoint: Any,
        description: str,
        factory: TimerServerFactory,
        shutdownTimeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.description = description
        self.factory = factory
        self.shutdownTimeout = shutdownTimeout

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self._port = listenOrExit(self.endpoint, self.factory, self.description)
        self._log.info(
            "timerserver listening on {address}, {queue!r}, interval {interval}s",
            address=self._port.getHost(),
            queue=self.factory.queue,
            interval=self.factory.interval,
        )

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening, say goodbye to every client and close it, abort what
        is still open after C{shutdownTimeout}, then cancel every timer.
        twistd waits for the returned Deferred.
        """
        Service.stopService(self)
        factory = self.factory
        port, self._port = self._port, None
        d = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        open = len(factory.connections)
        d.addCallback(lambda _: factory.closeAll(self.shutdownTimeout))

        def stopped(_: object) -> None:
            cancelled = factory.queue.shutdown()
            factory.events.stop()
            self.stopStats = {
                "closed": open,
                "cancelled": cancelled,
                "skipped": factory.skippedMessages,
            }
            self._log.info(
                "timerserver stopped listening on {description}; closed {closed} connections, "
                "cancelled {cancelled} timers, skipped {skipped} messages to slow clients",
                description=self.description,
                stopStats=self.stopStats,
                **self.stopStats,
            )

        return d.addCallback(stopped)
