"""
The protocol between the master of C{--workers N} and its workers: named
message types, each with its fields, and the one codec both sides use.

Every message is one line of JSON (an object whose C{"type"} names it),
ended by a newline; JSON escapes newlines inside strings, so a line is
always a whole message.  The master writes L{Configure} (always first) and
L{StatsRequest} to a worker's standard input; the worker writes
L{LogEvent}, L{Load}, L{StatsAnswer} and L{StopFigures} to its standard
output.

L{decode} checks every field: a line that is not a message of a known type
with fields of the right types raises L{MalformedMessage}, so that neither
side ever acts on half a message.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from timerserver.lateness import DEFAULT_BUCKETS

MAX_LINE = 256 * 1024
"""The longest line either side accepts: a snapshot is a few KiB, a log
event with a traceback a few tens; longer lines are dropped and counted."""


class MalformedMessage(ValueError):
    """A line that is not a well-formed message."""


@dataclass(frozen=True)
class Configure:
    """
    Master to worker, first: the server's configuration, as JSON-able data,
    which worker this process is to be, and which of the listening
    descriptors it holds is that worker's.  Until it comes, a worker serves
    nothing (a spare waits for it).
    """

    TYPE: ClassVar[str] = "configure"
    config: dict[str, Any]
    number: int
    fd: int


@dataclass(frozen=True)
class StatsRequest:
    """Master to worker: send a L{StatsAnswer} with this C{id}."""

    TYPE: ClassVar[str] = "stats-request"
    id: int


@dataclass(frozen=True)
class StatsAnswer:
    """Worker to master: the worker's metrics snapshot, answering request C{id}."""

    TYPE: ClassVar[str] = "stats-answer"
    id: int
    stats: dict[str, Any]


@dataclass(frozen=True)
class LogEvent:
    """
    Worker to master: one log event, formatted by the worker.

    @ivar level: a C{twisted.logger.LogLevel} name (C{"info"}, C{"error"}, ...).
    @ivar traceback: the event's failure, as text, if it had one.
    """

    TYPE: ClassVar[str] = "log"
    level: str
    text: str
    traceback: str | None = None


MAX_LOAD = 2**31
"""More connections than a process can hold: a L{Load} at or over it is malformed."""


@dataclass(frozen=True)
class Load:
    """
    Worker to master, every half second: how many connections (sockets in
    any stage) it holds now, and how many it can hold now (C{None}: not
    said, no limit known), which the master steers new connections by.
    """

    TYPE: ClassVar[str] = "load"
    open: int
    capacity: int | None = None

    def __post_init__(self) -> None:
        for name in ("open", "capacity"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < MAX_LOAD:
                raise MalformedMessage(f"{self.TYPE}: field {name!r} is {value}, out of range")


@dataclass(frozen=True)
class StopFigures:
    """Worker to master, last: what its graceful shutdown did."""

    TYPE: ClassVar[str] = "stop-figures"
    closed: int
    cancelled: int
    skipped: int


Message = Configure | StatsRequest | StatsAnswer | LogEvent | Load | StopFigures
TYPES: dict[str, type[Any]] = {
    kind.TYPE: kind for kind in (Configure, StatsRequest, StatsAnswer, LogEvent, Load, StopFigures)
}
_CHECKS: dict[str, tuple[type, ...]] = {
    "dict[str, Any]": (dict,),
    "int": (int,),
    "int | None": (int, type(None)),
    "str": (str,),
    "str | None": (str, type(None)),
}


def encode(message: Message) -> bytes:
    """C{message} as one line: JSON, newline-terminated."""
    body = {"type": message.TYPE, **dataclasses.asdict(message)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    """
    The message on C{line} (with or without its newline).

    @raise MalformedMessage: not JSON, not an object, an unknown type, a
        missing or unknown field, a field of the wrong type, or a value out
        of its range.
    """
    if len(line) > MAX_LINE:
        raise MalformedMessage(f"line of {len(line)} bytes, over {MAX_LINE}")
    try:
        body = json.loads(line)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is one too; "[[[[..."
        raise MalformedMessage(f"not JSON: {type(e).__name__}: {e}") from None
    if not isinstance(body, dict):
        raise MalformedMessage(f"not a JSON object: {type(body).__name__}")
    name = body.pop("type", None)
    kind = TYPES.get(name) if isinstance(name, str) else None
    if kind is None:
        raise MalformedMessage("no known message type")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = body.keys() - fields.keys()
    if unknown:
        raise MalformedMessage(f"{kind.TYPE}: unknown fields {sorted(unknown)}")
    for name, field in fields.items():
        if name not in body:
            if field.default is dataclasses.MISSING:
                raise MalformedMessage(f"{kind.TYPE}: no field {name!r}")
            continue
        value = body[name]
        allowed = _CHECKS[str(field.type)]
        if not isinstance(value, allowed) or isinstance(value, bool):
            raise MalformedMessage(f"{kind.TYPE}: field {name!r} is {type(value).__name__}")
    message: Message = kind(**body)
    return message


MAX_FIGURE = 2**63
"""A figure in a L{StatsAnswer} at or over this is malformed (no counter gets there)."""
_STATS_NUMBERS = frozenset(
    {
        "connections_open", "accepted", "periodic", "skipped", "echo_bytes", "lateness_sum",
        "timers_pending", "log_lines_dropped", "granularity",
    }
)  # fmt: skip
_STATS_TABLES = frozenset({"refused", "closed", "operations", "process"})
_STATS_LISTS = frozenset({"lateness_bounds", "lateness_counts"})
STATS_FIELDS = _STATS_NUMBERS | _STATS_TABLES | _STATS_LISTS
"""The fields a worker's figures (a L{timerserver.metrics.snapshot}) may have."""


def _figure(value: object) -> bool:
    """Whether C{value} is a figure: a finite number, not negative, not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 <= value < MAX_FIGURE and (isinstance(value, int) or math.isfinite(value))


def checkStats(stats: dict[str, Any]) -> None:
    """
    Check that C{stats}, a L{StatsAnswer}'s figures, has the shape of a
    snapshot, so that the master's sums of them cannot fail: known fields
    only (any may be missing), each a figure, a table of figures, or the
    lateness histogram's bounds (none, or the server's) and counts (one
    more than the bounds).

    @raise MalformedMessage: if it has not.
    """
    unknown = stats.keys() - STATS_FIELDS
    if unknown:
        raise MalformedMessage(f"stats: unknown fields {sorted(unknown)[:5]}")
    for name, value in stats.items():
        if name in _STATS_NUMBERS:
            good = _figure(value)
        elif name in _STATS_TABLES:
            good = isinstance(value, dict) and all(map(_figure, value.values()))
        else:
            good = isinstance(value, list) and all(map(_figure, value))
        if not good:
            raise MalformedMessage(f"stats: field {name!r} is not of its kind")
    bounds = stats.get("lateness_bounds", [])
    if bounds not in ([], list(DEFAULT_BUCKETS)):
        raise MalformedMessage("stats: lateness bounds other than the server's")
    counts = stats.get("lateness_counts", [])
    if len(counts) != (len(bounds) + 1 if bounds else 0):
        raise MalformedMessage("stats: lateness counts do not match its bounds")
