"""
C{twistd timerserver}: the command line, and the service it builds.
"""

from __future__ import annotations

import os
import re
from typing import Any, cast

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.python import usage

from timerserver._queuebase import DEFAULT_MAXIMUM_TIMEOUT
from timerserver.clock import useMonotonicTime
from timerserver.config import (
    DEFAULT_GOODBYE,
    DEFAULT_GRANULARITY,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_MESSAGE,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_BUFFER,
    DEFAULT_MESSAGE,
    DEFAULT_PORT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_WELCOME,
    FILE_RESERVE,
    QUEUES,
    WAKES_PER_CORE,
    ServerConfig,
    defaultGranularity,
)
from timerserver.cores import usableCores
from timerserver.listener import DEFAULT_BACKLOG, DEFAULT_PROXY_FROM, MAX_BACKLOG, Listener
from timerserver.peers import DEFAULT_PEER_PREFIX6, nat64Prefix

MIN_SECONDS = 0.001
"""The shortest time any option takes: below a millisecond a timer is noise."""
MAX_SECONDS = DEFAULT_MAXIMUM_TIMEOUT
MAX_COUNT = 10_000_000
"""The most connections any option counts (far above what a process can hold)."""
MAX_BUFFER = 1 << 30
MAX_WORKERS = 64

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


def seconds(value: str, option: str, maximum: float = MAX_SECONDS, off: bool = False) -> float:
    """
    Parse a number of seconds from L{MIN_SECONDS} to C{maximum}; with C{off},
    0 too (meaning never).
    """
    try:
        number = float(value)
    except ValueError:
        raise usage.UsageError(f"--{option}: not a number of seconds: {value!r}") from None
    if off and number == 0:
        return 0.0
    if not MIN_SECONDS <= number <= maximum:  # NaN fails this too
        zero = "0 or " if off else ""
        raise usage.UsageError(
            f"--{option}: must be {zero}{MIN_SECONDS} to {maximum} seconds, not {value!r}"
        )
    return number


def wholeNumber(value: str, option: str, minimum: int, maximum: int = MAX_COUNT) -> int:
    """Parse a whole number from C{minimum} to C{maximum}."""
    try:
        number = int(value)
    except ValueError:
        raise usage.UsageError(f"--{option}: not a whole number: {value!r}") from None
    if not minimum <= number <= maximum:
        raise usage.UsageError(f"--{option}: must be {minimum} to {maximum}, not {value!r}")
    return number


def workerCount(value: str) -> int:
    """Parse C{--workers}: a whole number from 1 to L{MAX_WORKERS}, or C{auto}."""
    if value == "auto":
        return max(1, min(MAX_WORKERS, usableCores()))
    return wholeNumber(value, "workers", 1, MAX_WORKERS)


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
        ["backlog", None, str(DEFAULT_BACKLOG), "Listen queue (1-65535) unless --port says."],
        ["interval", "i", str(DEFAULT_INTERVAL), "Seconds between periodic messages."],
        ["welcome", None, escape(DEFAULT_WELCOME), "Welcome text (\\r \\n \\t \\\\)."],
        ["message", "m", escape(DEFAULT_MESSAGE), "Periodic text (\\r \\n \\t \\\\)."],
        ["timer-queue", None, "wheel", f"Timer queue: {' or '.join(QUEUES)}."],
        [
            "granularity",
            None,
            None,
            f"Wheel tick in seconds (default {DEFAULT_GRANULARITY}, or workers / "
            f"({WAKES_PER_CORE} x cores) if larger, up to interval / 10).",
        ],
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
        [
            "ipv6-peer-prefix",
            None,
            str(DEFAULT_PEER_PREFIX6),
            "Leading bits of an IPv6 address that --max-per-peer counts as one host, 1-128.",
        ],
        ["metrics", None, None, "Serve Prometheus metrics at /metrics on this endpoint."],
        ["workers", None, "1", f"Worker processes, 1-{MAX_WORKERS} or auto (one per core)."],
        ["goodbye", None, escape(DEFAULT_GOODBYE), "Text sent to every client on shutdown."],
        ["shutdown-timeout", None, str(DEFAULT_SHUTDOWN_TIMEOUT), "Seconds to wait for closes."],
        [
            "handshake-timeout",
            None,
            str(DEFAULT_HANDSHAKE_TIMEOUT),
            "Seconds to finish the TLS handshake / send the PROXY header.",
        ],
        [
            "proxy-from",
            None,
            None,
            "CIDRs that may send PROXY headers (haproxy: ports), or 'any'. "
            f"Default: {DEFAULT_PROXY_FROM.replace(',', ', ')}.",
        ],
    ]
    compData = usage.Completions(optActions={"timer-queue": usage.CompleteList(list(QUEUES))})

    def __init__(self, reactor: Any = None) -> None:
        usage.Options.__init__(self)
        self._reactor = reactor
        self["nat64-prefix"] = []

    def opt_nat64_prefix(self, value: str) -> None:
        """NAT64/SIIT prefix, /32 /40 /48 /56 /64 or /96, counted as IPv4 (repeatable)."""
        try:
            prefix = str(nat64Prefix(value))
        except ValueError as e:
            raise usage.UsageError(f"--nat64-prefix: {e}") from None
        if prefix not in self["nat64-prefix"]:
            self["nat64-prefix"].append(prefix)

    def parseOptions(self, options: Any = None) -> None:
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # A twistd subcommand: twistd would print its whole usage text.
            raise SystemExit(f"twistd timerserver: {e}") from None

    def postOptions(self) -> None:
        """Check every value and build L{config}: the frozen L{ServerConfig}."""
        if self["timer-queue"] not in QUEUES:
            raise usage.UsageError(
                f"--timer-queue: must be one of {', '.join(QUEUES)}, not {self['timer-queue']!r}"
            )
        workers = workerCount(self["workers"])
        interval = seconds(self["interval"], "interval")
        granularity = defaultGranularity(workers, usableCores(), interval)
        if self["granularity"] is not None:
            if self["timer-queue"] != "wheel":
                raise usage.UsageError("--granularity: only applies to --timer-queue wheel")
            granularity = seconds(self["granularity"], "granularity", 60.0)
            if granularity > interval:
                raise usage.UsageError(
                    f"--granularity: at most --interval ({interval:g}), not "
                    f"{self['granularity']!r}: every message would be more than an interval late"
                )
        # What the process can hold, its own descriptors aside: a limit above
        # it would be met by the kernel instead (EMFILE), not by admission.
        limit = openFileLimit()
        room = max(1, limit - FILE_RESERVE)
        maxConnections = room
        if self["max-connections"] is not None:
            maxConnections = wholeNumber(self["max-connections"], "max-connections", 1)
            if maxConnections > room:
                raise usage.UsageError(
                    f"--max-connections: at most {room} with this process's open-file limit "
                    f"of {limit} ({FILE_RESERVE} kept for its own use), not {maxConnections}: "
                    "raise the limit (ulimit -n, systemd's LimitNOFILE=) or lower the value"
                )
        backlog = wholeNumber(self["backlog"], "backlog", 1, MAX_BACKLOG)
        self.config = ServerConfig(
            listener=Listener.parse(self["port"], backlog, self["proxy-from"]),
            interval=interval,
            welcome=b"" if self["no-welcome"] else unescape(self["welcome"], "welcome"),
            message=unescape(self["message"], "message"),
            queue=self["timer-queue"],
            granularity=granularity,
            stallTimeout=seconds(self["stall-timeout"], "stall-timeout"),
            maxBuffer=wholeNumber(self["max-buffer"], "max-buffer", 1, MAX_BUFFER),
            idleTimeout=seconds(self["idle-timeout"], "idle-timeout", off=True),
            idleMessage=unescape(self["idle-message"], "idle-message"),
            goodbye=unescape(self["goodbye"], "goodbye"),
            shutdownTimeout=seconds(self["shutdown-timeout"], "shutdown-timeout"),
            handshakeTimeout=seconds(self["handshake-timeout"], "handshake-timeout"),
            maxConnections=maxConnections,
            maxPerPeer=wholeNumber(self["max-per-peer"], "max-per-peer", 0),
            peerPrefix6=wholeNumber(self["ipv6-peer-prefix"], "ipv6-peer-prefix", 1, 128),
            nat64Prefixes=tuple(self["nat64-prefix"]),
            workers=workers,
            metrics=self["metrics"],
        )
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        if self["metrics"]:
            metricsEndpoint(self._reactor, self["metrics"])


def metricsEndpoint(reactor: Any, description: str) -> Any:
    """The endpoint C{--metrics} names; prometheus-client must be installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise usage.UsageError(
            "--metrics: needs prometheus-client: pip install 'timerserver[metrics]'"
        ) from None
    try:
        return serverFromString(reactor, description)
    except Exception as e:
        raise usage.UsageError(f"--metrics: cannot use {description!r}: {e}") from None


def makeService(options: Options) -> IService:
    """
    Build the service C{twistd timerserver} runs: the server itself, or with
    C{--workers} N > 1 the master that supervises N worker processes.
    """
    config: ServerConfig = options.config
    reactor = cast(IReactorTime, options._reactor)
    # Before anything is scheduled: a wall-clock step moves no timer.
    useMonotonicTime(reactor)
    from timerserver.service import ServerRoot

    parent: MultiService = ServerRoot(reactor)
    if config.workers > 1:
        from timerserver.supervisor import WorkerPoolService

        pool = WorkerPoolService(config, reactor)
        parent.addService(pool)
        source = pool.metricsSource
    else:
        from timerserver.service import buildServer

        server = buildServer(config, reactor)
        parent.addService(server)
        if config.metrics:
            from timerserver.metrics import localSource

            source = localSource(server.factory, server.monitor, server.admission)
    if config.metrics:
        from timerserver.metrics import MetricsService

        endpoint = metricsEndpoint(reactor, config.metrics)
        parent.addService(MetricsService(endpoint, config.metrics, source))
    return parent
