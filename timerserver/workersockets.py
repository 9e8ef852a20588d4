"""
L{WorkerSockets}: the listening sockets the master of C{--workers N} hands
its workers.

Where C{--port} is TCP (C{tcp}, C{tcp6}, C{ssl}, and those inside
C{haproxy:}), the master binds N sockets to the same address with
C{SO_REUSEPORT}, one per worker: the kernel spreads new connections over
them by a hash of their addresses.  With 2 workers and 2,000 clients from 50
addresses, one shared socket split them 590/1,410, 637/1,363, 401/1,599 and
219/1,781 in four runs (whichever worker is awake first accepts a burst); a
socket each split them 1,024/976, 986/1,014 and 1,037/963.  The master keeps every socket open,
so connections that arrive for a worker while it is being replaced wait in
its socket's backlog for the new worker instead of being refused.

Any process of the same user that sets C{SO_REUSEPORT} joins such a group,
so before it binds its own the master binds the address once without it
(unless the port is 0): a port another server listens on, a second
C{--workers} master included, is the one-line "Address already in use" of a
single server and exit status 1, rather than a second group member that
serves nothing and replaces the first master's steering program.

Other endpoints (C{unix:}, C{systemd:}) are listened on through Twisted as
a single server would, and their one socket is shared by every worker.

L{WorkerSockets.steer} replaces the hash with a weighted choice of socket
(L{timerserver.steering}): the group's sockets are indexed in the order
they were listened on, which is the workers' order.
"""

from __future__ import annotations

import errno
import math
import socket
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from timerserver import steering
from timerserver.adopted import FAMILIES
from timerserver.kernelbuffers import boundKernelBuffers
from timerserver.listener import Listener
from timerserver.service import listenOrExit


class _NeverServes(Factory):
    """The master's factory: it stops reading its port at once, so this builds nothing."""

    noisy = False
    protocol = Protocol

    def logPrefix(self) -> str:
        """How the master's port is named in the log."""
        return "timerserver master"


CANNOT_STEER = frozenset({errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM})
"""Errors that say the kernel (or the socket) cannot take the program: nothing more is tried."""
STEER_FAILURE_LOG_INTERVAL = 60.0


class WorkerSockets:
    """
    Listens for C{count} workers as C{listener} says.

    @ivar fds: the descriptor each worker gets (worker K gets C{fds[K - 1]}).
    @ivar address: where it listens, as Twisted prints an address.
    """

    _log = Logger()

    def __init__(self, listener: Listener, reactor: Any, count: int) -> None:
        self.listener = listener
        self.reactor = reactor
        self.description = listener.description
        self.count = count
        self.fds: list[int] = []
        self.address: object = None
        self._sockets: list[socket.socket] = []
        self._port: IListeningPort | None = None
        self._steerRefused = False
        self._steerFailedLogged = -math.inf

    @property
    def perWorker(self) -> bool:
        """Whether each worker has a socket of its own (SO_REUSEPORT)."""
        return bool(self._sockets)

    def listen(self) -> None:
        """Listen now, or exit with one line (as a single server would)."""
        if self.listener.reusePort:
            self._listenReusePort()
        else:
            endpoint = self.listener.endpoint(self.reactor)
            port = listenOrExit(endpoint, _NeverServes(), self.description)
            boundKernelBuffers(port)  # before a worker accepts what waits
            descriptor = cast(FileDescriptor, port)  # tcp.Port or unix.Port
            descriptor.stopReading()
            self._port = port
            self.address = port.getHost()
            self.fds = [descriptor.fileno()] * self.count

    def _listenReusePort(self) -> None:
        listener = self.listener
        family = FAMILIES[listener.family]
        port = listener.port
        try:
            if port:
                _probe(family, listener.host, port)
            for _ in range(self.count):
                sock = socket.socket(family, socket.SOCK_STREAM)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((listener.host, port))
                port = sock.getsockname()[1]
                boundKernelBuffers(sock)  # before a client can be accepted
                sock.listen(listener.backlog)
                sock.setblocking(False)
        except OSError as e:
            self.close()
            why = CannotListenError(listener.host, port, e)  # worded as a single server's
            raise SystemExit(
                f"twistd timerserver: cannot listen on {self.description}: {why}"
            ) from None
        host = self._sockets[0].getsockname()[0]
        self.address = (IPv6Address if family == socket.AF_INET6 else IPv4Address)(
            "TCP", host, port
        )
        self.fds = [sock.fileno() for sock in self._sockets]

    def steer(self, weights: Sequence[float]) -> bool | None:
        """
        Send new connections to worker K's socket in proportion to
        C{weights[K - 1]}.  Whether the kernel took it: where it cannot
        (one shared socket, not Linux, an old kernel), one line is logged,
        once, and the hash stays; C{None} where it failed for now (any
        other error), to be tried again.

        @raise ValueError: bad weights (as L{steering.program}).
        """
        code = steering.program(weights)
        if len(weights) != self.count:
            raise ValueError(f"{len(weights)} weights for {self.count} workers")
        if self._steerRefused:
            return False
        try:
            if not self._sockets:
                raise OSError(f"{self.description} is one socket shared by every worker")
            steering.attach(self._sockets[0], code)
        except OSError as e:
            if e.errno is not None and e.errno not in CANNOT_STEER:
                # Not "cannot" but "not now" (ENOMEM under a memory cgroup at
                # its limit: the program is allocated at each attach): the
                # next update tries again; one line a minute at most.
                now = self.reactor.seconds()
                if now - self._steerFailedLogged >= STEER_FAILURE_LOG_INTERVAL:
                    self._steerFailedLogged = now
                    self._log.warn(
                        "new connections could not be steered this time, tried again "
                        "at the next report (logged once a minute): {why}",
                        why=e.strerror or str(e),
                    )
                return None
            self._steerRefused = True
            self._log.info(
                "new connections are not steered to the emptier workers "
                "(the kernel spreads them by address): {why}",
                why=e.strerror or str(e),
            )
            return False
        return True

    def close(self) -> None:
        """Stop listening (the workers' own descriptors close with them)."""
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        if self._port is not None:
            self._port.stopListening()
            self._port = None


def _probe(family: int, host: str, port: int) -> None:
    """
    Bind C{(host, port)} the way a single server would, without
    C{SO_REUSEPORT}, and let go of it: whoever listens there already (a
    single server, or another C{--workers} master, whose group would
    otherwise take our sockets in and our steering program with them)
    makes it fail with C{EADDRINUSE}.

    @raise OSError: the address is in use, or cannot be bound.
    """
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listenTCP
        probe.bind((host, port))
