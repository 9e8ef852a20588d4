"""
L{buildServer}: one server process from its L{ServerConfig}: the queue, the
factory, and the connection path from the socket up (admission, PROXY, TLS,
protocol).  L{TimerServerService} listens with it and, on stop, runs the
graceful shutdown: stop listening, drop sockets still in their handshake,
goodbye to every client, abort what is left after the shutdown timeout,
cancel every timer.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from timerserver.acceptguard import guardAccept
from timerserver.admission import Admission
from timerserver.config import DEFAULT_SHUTDOWN_TIMEOUT, ServerConfig
from timerserver.factory import TimerServerFactory
from timerserver.interfaces import IQueueTimers
from timerserver.kernelbuffers import boundKernelBuffers
from timerserver.lateness import LatenessHistogram
from timerserver.listener import Listener
from timerserver.monitor import TimerQueueCounters
from timerserver.outofmemory import ExitOnMemoryError
from timerserver.proxyheader import ProxyHeaderFactory
from timerserver.reactorqueue import ReactorTimerQueue
from timerserver.transport import serveLean
from timerserver.wheel import TimerWheel

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


class ServerRoot(MultiService):
    """
    The service C{twistd timerserver} runs: once the reactor begins to stop,
    a second SIGTERM or SIGINT is one log line, not Twisted's
    C{ReactorNotRunning} traceback (the stop is already under way, bounded
    by C{--shutdown-timeout}); and while it runs, a C{MemoryError} ends the
    process (L{ExitOnMemoryError}).
    """

    _log = Logger()

    def __init__(self, reactor: Any) -> None:
        MultiService.__init__(self)
        self._reactor = reactor
        self._outOfMemory = ExitOnMemoryError()

    def startService(self) -> None:
        globalLogPublisher.addObserver(self._outOfMemory)
        MultiService.startService(self)
        addTrigger = getattr(self._reactor, "addSystemEventTrigger", None)
        if addTrigger is not None:
            addTrigger("before", "shutdown", self._stopping)

    def stopService(self) -> defer.Deferred[None]:
        globalLogPublisher.removeObserver(self._outOfMemory)
        stopped: defer.Deferred[None] = MultiService.stopService(self)
        return stopped

    def _stopping(self) -> None:
        try:
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, self._again)
        except ValueError:  # not the main thread: Twisted installed none either
            pass

    def _again(self, number: int, frame: object) -> None:
        self._log.info(
            "{signal} again: already stopping (within --shutdown-timeout)",
            signal=signal.Signals(number).name,
        )


class TimerServerService(Service):
    """
    Listens as C{listener} says (on C{fd}, a listening socket it inherited,
    if given) with C{admission}, the bottom of the stack that ends in
    C{factory}.  A listen failure is one line on exit (C{SystemExit}), not a
    traceback.

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
        listener: Listener,
        factory: TimerServerFactory,
        admission: Admission,
        shutdownTimeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        reactor: Any = None,
        fd: int | None = None,
    ) -> None:
        self.listener = listener
        self.description = listener.description
        self.factory = factory
        self.admission = admission
        self.shutdownTimeout = shutdownTimeout
        self.reactor = reactor
        self.fd = fd
        self.endpoint: IStreamServerEndpoint | None = None
        """Where it listens; made from C{listener} at start unless set."""

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        endpoint = self.endpoint or self.listener.endpoint(reactor, self.fd)
        port = listen(endpoint, self.admission, self.description, self._listening, self.reactor)
        if port is not None:
            self._listening(port)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        guardAccept(port, self.factory.events, self.factory.clock)
        serveLean(port)
        boundKernelBuffers(port)  # the master did too: for a socket of its own
        self._log.info(
            "timerserver listening on {address}, {queue!r}, interval {interval}s",
            address=port.getHost(),
            queue=self.factory.queue,
            interval=self.factory.interval,
        )
        if self.listener.proxy and self.listener.trustsAll:
            self._log.warn(
                "--proxy-from any: every address may send a PROXY header and claim any "
                "client address; make the port reachable from your proxies only"
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
        open = len(factory.connections) + len(self.admission.handshaking)
        d.addCallback(lambda _: self.admission.abortHandshaking())
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


def makeQueue(
    config: ServerConfig, reactor: IReactorTime, monitor: TimerQueueCounters | None = None
) -> IQueueTimers:
    """The timer queue C{config} asks for."""
    if config.queue == "reactor":
        return ReactorTimerQueue(reactor, monitor=monitor)
    # Connections come and go: a wheel that empties keeps its reactor call
    # (the service shuts the queue down on stop, which cancels it).
    return TimerWheel(reactor, granularity=config.granularity, monitor=monitor, keepCall=True)


def buildServer(
    config: ServerConfig, reactor: IReactorTime, fd: int | None = None
) -> TimerServerService:
    """
    One server process's service, from the socket up: admission, the PROXY
    header (C{haproxy:}), TLS (C{ssl:}), the factory and its queue; on
    C{fd}, if given, a listening socket this process inherited.  With
    metrics on, the queue's counters (C{service.monitor}) and the lateness
    histogram too.
    """
    monitor = TimerQueueCounters() if config.metrics else None
    factory = TimerServerFactory(
        makeQueue(config, reactor, monitor),
        welcome=config.welcome,
        message=config.message,
        interval=config.interval,
        idleTimeout=config.idleTimeout,
        idleMessage=config.idleMessage,
        stallTimeout=config.stallTimeout,
        maxBuffer=config.maxBuffer,
        goodbye=config.goodbye,
    )
    if monitor is not None:
        factory.lateness = LatenessHistogram()
    listener = config.listener
    handshake = listener.tls is not None or listener.proxy
    admission = Admission(
        listener.layers(factory, ProxyHeaderFactory),
        factory.queue,
        factory.events,
        maxConnections=config.maxConnections,
        maxPerPeer=config.maxPerPeer,
        peerPrefix6=config.peerPrefix6,
        nat64Prefixes=config.nat64Prefixes,
        handshakeTimeout=config.handshakeTimeout if handshake else None,
        trusted=listener.networks if listener.proxy else None,
        busy=not handshake,
        served=factory.connections,
    )
    service = TimerServerService(
        listener, factory, admission, config.shutdownTimeout, reactor=reactor, fd=fd
    )
    service.monitor = monitor
    return service
