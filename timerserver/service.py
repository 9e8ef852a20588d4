"""
L{TimerServerService}: listens on an endpoint with a L{TimerServerFactory}
and, on stop, runs the graceful shutdown: stop listening, goodbye to every
client, abort what is left after the shutdown timeout, cancel every timer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from timerserver.factory import TimerServerFactory

DEFAULT_SHUTDOWN_TIMEOUT = 5.0


_log = Logger()


def listenOrExit(endpoint: Any, factory: Any, description: str) -> IListeningPort:
    """
    Listen on C{endpoint} now: the port, or C{SystemExit} with one line (no
    traceback) if it fails or does not answer at once (the master of
    C{--workers} and the metrics need the port before they go on).
    """
    port = listen(endpoint, factory, description, lambda port: port.stopListening())
    if port is None:
        raise SystemExit(
            f"twistd timerserver: cannot listen on {description}: it did not listen at once"
        )
    return port


def listen(
    endpoint: Any,
    factory: Any,
    description: str,
    later: Callable[[IListeningPort], object] | None = None,
    reactor: Any = None,
) -> IListeningPort | None:
    """
    Listen on C{endpoint}.  Most endpoints answer at once: the port is
    returned, and a failure is C{SystemExit} with one line (no traceback).
    An endpoint that answers later gives C{None} now; then its port goes to
    C{later}, and its failure is logged as that same line and stops
    C{reactor} (the global one if C{None}), as C{StreamServerEndpointService}
    would rather than dropping it.
    """
    results: list[IListeningPort | Failure] = []
    d = endpoint.listen(factory)
    d.addBoth(results.append)
    if not results:

        def answered(_: object) -> None:
            [result] = results
            if isinstance(result, Failure):
                _log.critical(
                    "twistd timerserver: cannot listen on {description}: {why}",
                    description=description,
                    why=result.getErrorMessage(),
                )
                stopping = reactor
                if stopping is None:
                    from twisted.internet import reactor as stopping
                stopping.stop()
            elif later is not None:
                later(result)

        d.addCallback(answered)
        return None
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
        reactor: Any = None,
    ) -> None:
        self.endpoint = endpoint
        self.description = description
        self.factory = factory
        self.shutdownTimeout = shutdownTimeout
        self.reactor = reactor

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        port = listen(self.endpoint, self.factory, self.description, self._listening, self.reactor)
        if port is not None:
            self._listening(port)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        self._log.info(
            "timerserver listening on {address}, {queue!r}, interval {interval}s",
            address=port.getHost(),
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
