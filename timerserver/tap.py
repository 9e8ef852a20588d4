"""
C{twistd timerserver}: the command line, and the service it builds.
"""

from __future__ import annotations

import math
import re
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from timerserver._queuebase import DEFAULT_MAXIMUM_TIMEOUT
from timerserver.interfaces import IQueueTimers
from timerserver.protocol import (
    DEFAULT_INTERVAL,
    DEFAULT_MESSAGE,
    DEFAULT_WELCOME,
    TimerServerFactory,
)
from timerserver.reactorqueue import ReactorTimerQueue
from timerserver.wheel import TimerWheel

DEFAULT_PORT = "tcp:5050:interface=127.0.0.1"
DEFAULT_GRANULARITY = 0.01
QUEUES = ("wheel", "reactor")

_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str, option: str) -> bytes:
    """
    Turn the escapes C{\\r}, C{\\n}, C{\\t} and C{\\\\} of C{text} into their
    characters and encode it as UTF-8.
    """

    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in _ESCAPES:
            raise usage.UsageError(
                f"--{option}: unknown escape {match.group(0)!r} (use \\r, \\n, \\t or \\\\)"
            )
        return _ESCAPES[char]

    return re.sub(r"\\(.?)", replace, text, flags=re.DOTALL).encode("utf-8")


def positiveSeconds(value: str, option: str, maximum: float) -> float:
    """Parse a number of seconds, > 0 and <= C{maximum}."""
    try:
        seconds = float(value)
    except ValueError:
        raise usage.UsageError(f"--{option}: not a number of seconds: {value!r}") from None
    if not (0 < seconds <= maximum) or math.isnan(seconds):
        raise usage.UsageError(f"--{option}: must be > 0 and <= {maximum}, not {value!r}")
    return seconds


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
        ["interval", "i", str(DEFAULT_INTERVAL), "Seconds between periodic messages."],
        ["welcome", None, DEFAULT_WELCOME.decode("utf-8"), "Welcome text (\\r \\n \\t \\\\)."],
        ["message", "m", DEFAULT_MESSAGE.decode("utf-8"), "Periodic text (\\r \\n \\t \\\\)."],
        ["timer-queue", None, "wheel", f"Timer queue: {' or '.join(QUEUES)}."],
        ["granularity", None, None, f"Wheel tick in seconds (default {DEFAULT_GRANULARITY})."],
    ]
    compData = usage.Completions(optActions={"timer-queue": usage.CompleteList(list(QUEUES))})

    def __init__(self, reactor: Any = None) -> None:
        usage.Options.__init__(self)
        self._reactor = reactor

    def parseOptions(self, options: Any = None) -> None:
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
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        try:
            self.endpoint = serverFromString(self._reactor, self["port"])
        except Exception as e:
            raise usage.UsageError(f"--port: cannot use {self['port']!r}: {e}") from None


def makeQueue(options: Options, reactor: IReactorTime) -> IQueueTimers:
    """The timer queue the options ask for."""
    if options["timer-queue"] == "reactor":
        return ReactorTimerQueue(reactor)
    return TimerWheel(reactor, granularity=options["granularity"])


class TimerServerService(Service):
    """
    Listens on an endpoint with a L{TimerServerFactory}; on stop, closes the
    port and cancels every timer of the queue.
    """

    _log = Logger()
    _port: IListeningPort | None = None

    def __init__(self, endpoint: Any, description: str, factory: TimerServerFactory) -> None:
        self.endpoint = endpoint
        self.description = description
        self.factory = factory

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        failures: list[Failure] = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            raise SystemExit(
                f"twistd timerserver: cannot listen on {self.description}: "
                f"{failures[0].getErrorMessage()}"
            )

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        self._log.info(
            "timerserver listening on {address}, {queue!r}, interval {interval}s",
            address=port.getHost(),
            queue=self.factory.queue,
            interval=self.factory.interval,
        )

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        port, self._port = self._port, None
        d = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)

        def stopped(_: object) -> None:
            cancelled = self.factory.queue.shutdown()
            self._log.info(
                "timerserver stopped listening on {description}; cancelled {cancelled} timers",
                description=self.description,
                cancelled=cancelled,
            )

        return d.addCallback(stopped)


def makeService(options: Options) -> IService:
    """Build the service C{twistd timerserver} runs."""
    reactor = cast(IReactorTime, options._reactor)
    queue = makeQueue(options, reactor)
    factory = TimerServerFactory(
        queue,
        welcome=options["welcome"],
        message=options["message"],
        interval=options["interval"],
        reactor=reactor,
    )
    parent = MultiService()
    parent.addService(TimerServerService(options.endpoint, options["port"], factory))
    return parent
