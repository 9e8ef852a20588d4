"""
L{guardAccept}: what a listening port's accept loop may log, and how hard it
may spin when it cannot accept.

Twisted's C{tcp.Port} accepts in a loop each time its socket is readable.
Out of file descriptors (a lowered limit, or more sockets than it allows):

 - its EMFILE recovery closes every socket it can then accept and logs each
   one: a connect flood would be a log flood.  Each such socket is a
   C{dropped} event of the port's L{EventLog} instead, which rate-limits them.
 - that recovery needs a spare descriptor, which Twisted reserves once.
   When it cannot reserve it again (a soft limit at or below its number),
   it logs a traceback, and from then on every accept fails and leaves its
   client queued: the socket stays readable and the reactor calls accept
   again at once, a busy loop for as long as anybody waits.  Now a port
   whose accept failed stops reading for 0.1 s (doubling to 1 s while it
   keeps failing), and before it reads again the spare is reserved again if
   a descriptor is free.  Each failure is an C{unaccepted} event (the client
   still waits in the listen queue), logged once a minute at most; Twisted's
   failure to reserve the spare is one line a minute at most, without a
   traceback.  So is an accept error Twisted does not know: it would log a
   traceback each turn, the socket still readable, at a full core.
"""

from __future__ import annotations

import errno
import math
import os
from time import monotonic
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, Logger
from zope.interface import provider

from timerserver.eventlog import EventLog

FIRST_PAUSE = 0.1
LONGEST_PAUSE = 1.0
SPARE_LOG_INTERVAL = 60.0
UNACCEPTED_LOG_INTERVAL = 60.0
"""A port that cannot accept retries every second: it says so at most once in this many seconds."""
_TWISTED_HANDLES = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EPERM, *tcp._ACCEPT_ERRORS})
"""The accept errors Twisted's accept loop handles itself."""
_NOT_OURS = "ECONNABORTED"
"""An accept error a client causes (it went away): the port has nothing to wait for."""
_log = Logger()
_spareLogged = -math.inf
"""When L{_spareFailed} last wrote its line (C{monotonic()})."""


def guardAccept(port: object, events: EventLog, clock: IReactorTime) -> None:
    """
    Route the log of C{port}'s accept loop through C{events}' rate limit,
    and pause the port when an accept fails for want of a resource.  Any
    port but a C{tcp.Port} (or a subclass) is left as it is.
    """
    if not isinstance(port, tcp.Port):
        return
    guard = _AcceptGuard(port, events, clock)
    port._logger = Logger(namespace=port._logger.namespace, observer=guard.observe)
    spare: Any = tcp._reservedFD  # one for the process
    spare._log = Logger(namespace=__name__, observer=_spareFailed)
    accept: Any = port.doRead
    lost: Any = port.connectionLost
    listening = _ListeningSocket(guard)

    def doRead() -> object:
        guard.failed = False
        listening.socket = port.socket
        port.socket = listening  # for Twisted's accept loop only
        try:
            result = accept()  # Twisted's accept loop logs what it raises
        finally:
            port.socket = listening.socket
        if guard.failed or guard.pause != FIRST_PAUSE:
            guard.turnDone()
        return result

    def connectionLost(reason: object) -> object:
        guard.stop()
        return lost(reason)

    port.doRead = doRead  # type: ignore[method-assign]
    port.connectionLost = connectionLost  # type: ignore[method-assign]


@provider(ILogObserver)
def _spareFailed(event: dict[str, Any]) -> None:
    """Twisted could not reserve its spare descriptor: a line a minute, no traceback."""
    global _spareLogged
    now = monotonic()
    if now - _spareLogged >= SPARE_LOG_INTERVAL:
        _spareLogged = now
        _log.warn(
            "Out of file descriptors, with none spare for Twisted's EMFILE recovery: "
            "clients wait in the listen queue until one is free (logged once a minute)"
        )


class _ListeningSocket:
    """
    The port's socket as its accept loop sees it: an accept error Twisted
    does not know (it logs a traceback and the socket stays readable: one a
    turn, at a full core) is a failed turn instead, logged as the others
    are, and the loop ends as if nobody waited.
    """

    def __init__(self, guard: _AcceptGuard) -> None:
        self.guard = guard
        self.socket: Any = None

    def accept(self) -> Any:
        try:
            return self.socket.accept()
        except OSError as e:
            if e.errno in _TWISTED_HANDLES:
                raise
            self.guard.observe({"acceptError": errno.errorcode.get(e.errno or 0, str(e))})
            raise BlockingIOError(errno.EAGAIN, "accept failed") from None


class _AcceptGuard:
    """The state of one guarded port."""

    def __init__(self, port: tcp.Port, events: EventLog, clock: IReactorTime) -> None:
        self.port = port
        self.events = events
        self.clock = clock
        self.failed = False
        self.pause = FIRST_PAUSE
        self._resume: IDelayedCall | None = None
        self._failureLogged = -math.inf
        self._unlogged = 0

    @provider(ILogObserver)
    def observe(self, event: dict[str, Any]) -> None:
        if "address" in event:
            self.events.event("dropped", event["address"], ": out of file descriptors (EMFILE)")
        elif "acceptError" in event:
            error = event["acceptError"]
            if error == _NOT_OURS:
                detail = f": accept failed ({error}), the client went away"
            else:
                self.failed = True
                now = self.clock.seconds()
                if now - self._failureLogged < UNACCEPTED_LOG_INTERVAL:
                    # Counted, not logged: it retries every second while it lasts.
                    self.events.totals["unaccepted"] += 1
                    self._unlogged += 1
                    return
                self._failureLogged = now
                more = f"; {self._unlogged} more since the last such line" if self._unlogged else ""
                self._unlogged = 0
                detail = f": accept failed ({error}), left queued (logged once a minute{more})"
            self.events.event("unaccepted", "an unknown address", detail)

    def turnDone(self) -> None:
        """An accept turn ended: pause the port if an accept failed, else start afresh."""
        if not self.failed:
            self.pause = FIRST_PAUSE
            return
        if not self.port.connected or self.port.disconnecting:
            return
        self.port.stopReading()  # whoever started it reading again meanwhile
        if self._resume is None:
            self._resume = self.clock.callLater(self.pause, self._read)
            self.pause = min(2 * self.pause, LONGEST_PAUSE)

    def _read(self) -> None:
        self._resume = None
        if not self.port.connected or self.port.disconnecting:
            return  # it is stopping
        _reserveSpare()
        self.port.startReading()

    def stop(self) -> None:
        """The port stopped listening: no pause goes on."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None


def _reserveSpare() -> None:
    """Reserve Twisted's spare descriptor again, if it is gone and one is free."""
    spare: Any = tcp._reservedFD
    if spare.available():
        return
    try:
        probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # still none free: the next pause tries again
    os.close(probe)
    spare.reserve()
