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
from dataclasses import dataclass
from typing import Any, ClassVar

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
    any stage) it holds now, which the master steers new connections by.
    """

    TYPE: ClassVar[str] = "load"
    open: int

    def __post_init__(self) -> None:
        if not 0 <= self.open < MAX_LOAD:
            raise MalformedMessage(f"{self.TYPE}: field 'open' is {self.open}, out of range")


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
    except ValueError as e:  # UnicodeDecodeError is one too
        raise MalformedMessage(f"not JSON: {e}") from None
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
