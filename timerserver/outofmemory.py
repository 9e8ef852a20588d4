"""
L{ExitOnMemoryError}: a process of the server that runs out of memory exits,
so that whoever supervises it starts it again.

Under an address-space limit (or a container's memory limit) an allocation
fails with C{MemoryError}, and Twisted logs it and goes on.  In its main
loop that is for ever: C{epoll}'s poll allocates an event array every turn,
so every turn fails (230,000 tracebacks in 45 s at a full core, measured),
nothing is read or closed again, and the process stays up holding its port
and every socket, where systemd's C{Restart=on-failure} never sees it.  Now
the first C{MemoryError} logged ends the process with status 70
(C{EX_SOFTWARE}): the master starts another worker, systemd another server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.logger import ILogObserver
from zope.interface import implementer

EXIT_STATUS = 70
_LINE = (
    b"twistd timerserver: out of memory (MemoryError): exiting with status 70 "
    b"for the supervisor to start it again\n"
)
"""Made now: there may be no memory for it then."""


@implementer(ILogObserver)
class ExitOnMemoryError:
    """A log observer that ends the process on a logged C{MemoryError}."""

    def __init__(
        self,
        exit: Callable[[int], object] | None = None,
        write: Callable[[int, bytes], object] | None = None,
    ) -> None:
        self._exit = exit if exit is not None else os._exit
        self._write = write if write is not None else os.write

    def __call__(self, event: dict[str, Any]) -> None:
        # twisted.logger's failures, and twisted.python.log.err's (the
        # reactor's doRead and doWrite: every protocol's dataReceived).
        failure = event.get("log_failure")
        if failure is None and event.get("isError"):
            failure = event.get("failure")
        if failure is None or not isinstance(getattr(failure, "value", None), MemoryError):
            return
        try:
            self._write(2, _LINE)
        except OSError:
            pass  # the exit status says it too
        self._exit(EXIT_STATUS)
