"""
L{ServerConfig}: the server's whole configuration, frozen, with every
default in one place.

C{twistd timerserver}'s options yield one (L{timerserver.tap.Options}); the
service, the supervisor and the workers take it, and nothing changes it.  A
worker receives it from its master as data (L{ServerConfig.toData} and
L{ServerConfig.fromData}), not as a command line to parse again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from timerserver.listener import Listener
from timerserver.peers import DEFAULT_PEER_PREFIX6, nat64Prefix

DEFAULT_PORT = "tcp:5050:interface=127.0.0.1"
DEFAULT_WELCOME = b"Welcome to the timer server\r\n"
DEFAULT_MESSAGE = b"Periodic per connection message\r\n"
DEFAULT_IDLE_MESSAGE = b"Idle timeout\r\n"
DEFAULT_GOODBYE = b"Server shutting down\r\n"
DEFAULT_INTERVAL = 2.0
DEFAULT_STALL_TIMEOUT = 30.0
DEFAULT_MAX_BUFFER = 1024 * 1024
DEFAULT_CLOSE_GRACE = 2.0
DEFAULT_GRANULARITY = 0.01
WAKES_PER_CORE = 500
"""How often, by default, the wheels of all the server's processes together
wake each core: a wheel wakes once a tick when it has work, and at 52 workers
on 2 cores the 10 ms tick alone cost 0.6 of a core (bench/server.py)."""
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a socket may take to finish its TLS handshake or send its PROXY
header: nginx's C{client_header_timeout} and HAProxy's C{timeout client}
are both in this range; a real client needs well under a second."""
FILE_RESERVE = 64
"""Descriptors kept back from C{--max-connections} for the listening port,
logs and the refusals themselves."""
QUEUES = ("wheel", "reactor")


def defaultGranularity(workers: int, cores: int, interval: float = DEFAULT_INTERVAL) -> float:
    """
    The wheel's tick when C{--granularity} is not given: L{DEFAULT_GRANULARITY},
    or coarser (to the millisecond) when C{workers} ticking that often would
    wake each of C{cores} more than L{WAKES_PER_CORE} times a second; but
    not coarser than a tenth of the periodic C{interval} (to the millisecond)
    unless that is under the default, so that a tick's lateness stays well
    short of the two intervals at which messages are skipped; and never
    coarser than C{interval} itself (an interval under the default tick).
    """
    coarse = min(workers / (max(1, cores) * WAKES_PER_CORE), interval / 10)
    return min(max(DEFAULT_GRANULARITY, round(coarse, 3)), interval)


_BYTES_FIELDS = ("welcome", "message", "idleMessage", "goodbye")


@dataclass(frozen=True)
class ServerConfig:
    """
    What one server process (or every worker of a pool) runs with.

    @ivar listener: where and how it listens (L{Listener}).
    @ivar maxConnections: sockets at once, in any stage, per process.
    @ivar maxPerPeer: sockets at once from one peer, per process; 0: none.
    @ivar peerPrefix6: the bits of an IPv6 address that name its peer (64: its /64).
    @ivar nat64Prefixes: the NAT64/SIIT translator prefixes (C{2001:db8:46::/96})
        whose addresses C{maxPerPeer} counts as the IPv4 client they carry.
    @ivar metrics: the C{--metrics} endpoint string, or C{None}.
    """

    listener: Listener = field(default_factory=lambda: Listener.parse(DEFAULT_PORT))
    interval: float = DEFAULT_INTERVAL
    welcome: bytes = DEFAULT_WELCOME
    message: bytes = DEFAULT_MESSAGE
    queue: str = "wheel"
    granularity: float = DEFAULT_GRANULARITY
    stallTimeout: float = DEFAULT_STALL_TIMEOUT
    maxBuffer: int = DEFAULT_MAX_BUFFER
    idleTimeout: float = 0.0
    idleMessage: bytes = DEFAULT_IDLE_MESSAGE
    goodbye: bytes = DEFAULT_GOODBYE
    shutdownTimeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    maxConnections: int = 1024 - FILE_RESERVE
    maxPerPeer: int = 0
    peerPrefix6: int = DEFAULT_PEER_PREFIX6
    nat64Prefixes: tuple[str, ...] = ()
    workers: int = 1
    metrics: str | None = None

    @property
    def tick(self) -> float:
        """The wheel's tick (L{granularity}), or 0.0 for the reactor queue, which has none."""
        return self.granularity if self.queue == "wheel" else 0.0

    def toData(self) -> dict[str, Any]:
        """This configuration as JSON-able data (bytes as Latin-1 text)."""
        data = dataclasses.asdict(self)
        data["listener"] = self.listener.toData()
        data["nat64Prefixes"] = list(self.nat64Prefixes)
        for name in _BYTES_FIELDS:
            data[name] = data[name].decode("latin-1")
        return data

    @classmethod
    def fromData(cls, data: dict[str, Any]) -> ServerConfig:
        """The configuration L{toData} gave; C{ValueError} if it is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"not a configuration: {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown configuration fields: {sorted(unknown)}")
        values = dict(data)
        values["listener"] = Listener.fromData(data.get("listener", {}))
        prefixes = values.get("nat64Prefixes", ())
        if not isinstance(prefixes, (list, tuple)) or not all(isinstance(p, str) for p in prefixes):
            raise ValueError(f"nat64Prefixes: not a list of prefixes: {prefixes!r}")
        values["nat64Prefixes"] = tuple(str(nat64Prefix(p)) for p in prefixes)
        for name in _BYTES_FIELDS:
            if name in values:
                values[name] = str(values[name]).encode("latin-1")
        return cls(**values)
