"""
C{twistd timerserver}: the command line, and the service it builds.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Any, cast

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from timerserver._queuebase import DEFAULT_MAXIMUM_TIMEOUT
from timerserver.clock import useMonotonicTime
from timerserver.endpoint import DEFAULT_BACKLOG, serverEndpoint
from timerserver.factory import TimerServerFactory
from timerserver.interfaces import IQueueTimers
from timerserver.lateness import LatenessHistogram
from timerserver.monitor import TimerQueueCounters
from timerserver.protocol import (
    DEFAULT_GOODBYE,
    DEFAULT_IDLE_MESSAGE,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_BUFFER,
    DEFAULT_MESSAGE,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_WELCOME,
)
from timerserver.reactorqueue import ReactorTimerQueue
from timerserver.service import DEFAULT_SHUTDOWN_TIMEOUT, TimerServerService
from timerserver.wheel import TimerWheel

DEFAULT_PORT = "tcp:5050:interface=127.0.0.1"
DEFAULT_GRANULARITY = 0.01
FILE_RESERVE = 64
"""Descriptors kept back from --max-connections for the listening port, logs
and the refusals themselves."""
QUEUES = ("wheel", "reactor")

_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "\\": "\\"}


def escape(data: bytes) -> str:
    """The command-line form of C{data}: L{unescape} gives C{data} back."""
    text = os.fsdecode(data).replace("\\", "\\\\")
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def unescape(text: str, option: str) -> bytes:
    """
    Turn the escapes C{\\r}, C{\\n}, C{\\t} and C{\\\\} of C{text} into their
    characters and give the command line's own bytes (C{os.fsencode}): UTF-8
    for text, and exactly the bytes given where they are not UTF-8.
    """

    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in _ESCAPES:
            raise usage.UsageError(
                f"--{option}: unknown escape {match.group(0)!r} (use \\r, \\n, \\t or \\\\)"
            )
        return _ESCAPES[char]

    return os.fsencode(re.sub(r"\\(.?)", replace, text, flags=re.DOTALL))


def positiveSeconds(value: str, option: str, maximum: float) -> float:
    """Parse a number of seconds, > 0 and <= C{maximum}."""
    try:
        seconds = float(value)
    except ValueError:
        raise usage.UsageError(f"--{option}: not a number of seconds: {value!r}") from None
    if not (0 < seconds <= maximum) or math.isnan(seconds):
        raise usage.UsageError(f"--{option}: must be > 0 and <= {maximum}, not {value!r}")
    return seconds


def _isZero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False


def wholeNumber(value: str, option: str, minimum: int) -> int:
    """Parse a whole number >= C{minimum}."""
    try:
        number = int(value)
    except ValueError:
        raise usage.UsageError(f"--{option}: not a whole number: {value!r}") from None
    if number < minimum:
        raise usage.UsageError(f"--{option}: must be >= {minimum}, not {value!r}")
    return number


MAX_WORKERS = 64


def workerCount(value: str) -> int:
    """Parse C{--workers}: a whole number from 1 to L{MAX_WORKERS}, or C{auto}."""
    if value == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    number = wholeNumber(value, "workers", 1)
    if number > MAX_WORKERS:
        raise usage.UsageError(f"--workers: at most {MAX_WORKERS}, not {value!r}")
    return number


def openFileLimit() -> int:
    """
    The open-file limit of this process, raised to its hard limit first so
    that the server's own limit, not the kernel's, is what clients meet.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Options(usage.Options):
    """
    The command line of C{twistd timerserver}.

    Run as a twistd subcommand, a bad value exits with one line naming the
    option, instead of twistd's full usage text.
    """

    synopsis = "[options]"
    longdesc = (
        "An echo server that greets each connection and writes a periodic "
        "message on it from the connection's own timer."
    )

    optFlags = [["no-welcome", None, "Send no welcome message."]]
    optParameters: list[list[Any]] = [
        ["port", "p", DEFAULT_PORT, "Server endpoint string to listen on."],
        ["backlog", None, str(DEFAULT_BACKLOG), "Listen queue, unless --port names backlog=."],
        ["interval", "i", str(DEFAULT_INTERVAL), "Seconds between periodic messages."],
        ["welcome", None, escape(DEFAULT_WELCOME), "Welcome text (\\r \\n \\t \\\\)."],
        ["message", "m", escape(DEFAULT_MESSAGE), "Periodic text (\\r \\n \\t \\\\)."],
        ["timer-queue", None, "wheel", f"Timer queue: {' or '.join(QUEUES)}."],
        ["granularity", None, None, f"Wheel tick in seconds (default {DEFAULT_GRANULARITY})."],
        ["stall-timeout", None, str(DEFAULT_STALL_TIMEOUT), "Seconds a client may not read."],
        ["max-buffer", None, str(DEFAULT_MAX_BUFFER), "Bytes queued for a non-reading client."],
        ["idle-timeout", None, "0", "Seconds without client data before closing; 0: never."],
        ["idle-message", None, escape(DEFAULT_IDLE_MESSAGE), "Text sent on idle timeout."],
        [
            "max-connections",
            None,
            None,
            "Connections at once per worker (default: file limit - 64).",
        ],
        ["max-per-peer", None, "0", "Connections at once from one host, per worker; 0: none."],
        ["metrics", None, None, "Serve Prometheus metrics at /metrics on this endpoint."],
        ["workers", None, "1", f"Worker processes, 1-{MAX_WORKERS} or auto (one per core)."],
        ["goodbye", None, escape(DEFAULT_GOODBYE), "Text sent to every client on shutdown."],
        ["shutdown-timeout", None, str(DEFAULT_SHUTDOWN_TIMEOUT), "Seconds to wait for closes."],
    ]
    compData = usage.Completions(optActions={"timer-queue": usage.CompleteList(list(QUEUES))})

    def __init__(self, reactor: Any = None) -> None:
        usage.Options.__init__(self)
        self._reactor = reactor

    def parseOptions(self, options: Any = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # A twistd subcommand: twistd would print its whole usage text.
            raise SystemExit(f"twistd timerserver: {e}") from None

    def postOptions(self) -> None:
        if self["timer-queue"] not in QUEUES:
            raise usage.UsageError(
                f"--timer-queue: must be one of {', '.join(QUEUES)}, not {self['timer-queue']!r}"
            )
        if self["granularity"] is None:
            self["granularity"] = DEFAULT_GRANULARITY
        elif self["timer-queue"] != "wheel":
            raise usage.UsageError("--granularity: only applies to --timer-queue wheel")
        else:
            self["granularity"] = positiveSeconds(self["granularity"], "granularity", 60.0)
        self["interval"] = positiveSeconds(self["interval"], "interval", DEFAULT_MAXIMUM_TIMEOUT)
        self["welcome"] = b"" if self["no-welcome"] else unescape(self["welcome"], "welcome")
        self["message"] = unescape(self["message"], "message")
        self["idle-message"] = unescape(self["idle-message"], "idle-message")
        self["goodbye"] = unescape(self["goodbye"], "goodbye")
        limit = DEFAULT_MAXIMUM_TIMEOUT
        self["stall-timeout"] = positiveSeconds(self["stall-timeout"], "stall-timeout", limit)
        self["shutdown-timeout"] = positiveSeconds(
            self["shutdown-timeout"], "shutdown-timeout", limit
        )
        idle = self["idle-timeout"]
        self["idle-timeout"] = (
            0.0 if _isZero(idle) else positiveSeconds(idle, "idle-timeout", limit)
        )
        self["max-buffer"] = wholeNumber(self["max-buffer"], "max-buffer", 1)
        self["max-per-peer"] = wholeNumber(self["max-per-peer"], "max-per-peer", 0)
        if self["max-connections"] is None:
            self["max-connections"] = max(1, openFileLimit() - FILE_RESERVE)
        else:
            self["max-connections"] = wholeNumber(self["max-connections"], "max-connections", 1)
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self["backlog"] = wholeNumber(self["backlog"], "backlog", 1)
        self["workers"] = workerCount(self["workers"])
        self.endpoint = self.makeEndpoint()
        self.metricsEndpoint = self.makeMetricsEndpoint() if self["metrics"] else None

    def makeMetricsEndpoint(self) -> Any:
        """The endpoint C{--metrics} names; prometheus-client must be installed."""
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise usage.UsageError(
                "--metrics: needs prometheus-client: pip install 'timerserver[metrics]'"
            ) from None
        try:
            return serverFromString(self._reactor, self["metrics"])
        except Exception as e:
            raise usage.UsageError(f"--metrics: cannot use {self['metrics']!r}: {e}") from None

    def makeEndpoint(self) -> Any:
        """The endpoint C{--port} names, with the default backlog."""
        return serverEndpoint(self._reactor, self["port"], self["backlog"])


def makeQueue(
    options: Options, reactor: IReactorTime, monitor: TimerQueueCounters | None = None
) -> IQueueTimers:
    """The timer queue the options ask for."""
    if options["timer-queue"] == "reactor":
        return ReactorTimerQueue(reactor, monitor=monitor)
    return TimerWheel(reactor, granularity=options["granularity"], monitor=monitor)


def makeServer(options: Options, reactor: IReactorTime, endpoint: Any) -> TimerServerService:
    """
    One server process's service: a queue, the factory, and the listening
    service; with C{--metrics}, the queue's counters (C{service.monitor}) and
    the lateness histogram too.
    """
    monitor = TimerQueueCounters() if options["metrics"] else None
    factory = TimerServerFactory(
        makeQueue(options, reactor, monitor),
        welcome=options["welcome"],
        message=options["message"],
        interval=options["interval"],
        idleTimeout=options["idle-timeout"],
        idleMessage=options["idle-message"],
        stallTimeout=options["stall-timeout"],
        maxBuffer=options["max-buffer"],
        maxConnections=options["max-connections"],
        maxPerPeer=options["max-per-peer"],
        goodbye=options["goodbye"],
    )
    if monitor is not None:
        factory.lateness = LatenessHistogram()
    service = TimerServerService(endpoint, options["port"], factory, options["shutdown-timeout"])
    service.monitor = monitor
    return service


def makeService(options: Options) -> IService:
    """
    Build the service C{twistd timerserver} runs: the server itself, or with
    C{--workers} N > 1 the master that supervises N worker processes.
    """
    reactor = cast(IReactorTime, options._reactor)
    # Before anything is scheduled: a wall-clock step moves no timer.
    useMonotonicTime(reactor)
    parent = MultiService()
    if options["workers"] > 1:
        from timerserver.supervisor import WorkerPoolService

        pool = WorkerPoolService(options, reactor)
        parent.addService(pool)
        source = pool.metricsSource
    else:
        server = makeServer(options, reactor, options.endpoint)
        parent.addService(server)
        if options["metrics"]:
            from timerserver.metrics import localSource

            source = localSource(server.factory, server.monitor)
    if options["metrics"]:
        from timerserver.metrics import MetricsService

        parent.addService(MetricsService(options.metricsEndpoint, options["metrics"], source))
    return parent
