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

Other endpoints (C{unix:}, C{systemd:}) are listened on through Twisted as
a single server would, and their one socket is shared by every worker.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from twisted.internet.abstract import FileDescriptor, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from timerserver.service import listenOrExit

_FAMILY_NAMES: dict[int, str] = {
    socket.AF_INET: "INET",
    socket.AF_INET6: "INET6",
    socket.AF_UNIX: "UNIX",
}
_TCP_ENDPOINTS = frozenset({"TCP4ServerEndpoint", "TCP6ServerEndpoint", "SSL4ServerEndpoint"})


class _NeverServes(Factory):
    """The master's factory: it stops reading its port at once, so this builds nothing."""

    noisy = False
    protocol = Protocol

    def logPrefix(self) -> str:
        """How the master's port is named in the log."""
        return "timerserver master"


def _tcpEndpoint(endpoint: Any) -> Any:
    """The TCP endpoint (plain or TLS) inside C{endpoint}'s wrappers, or C{None}."""
    while endpoint is not None:
        if type(endpoint).__name__ in (
            "TCP4ServerEndpoint",
            "TCP6ServerEndpoint",
            "SSL4ServerEndpoint",
        ):
            return endpoint
        endpoint = getattr(endpoint, "_wrappedEndpoint", None)
    return None


class WorkerSockets:
    """
    Listens for C{count} workers on C{endpoint}.

    @ivar fds: the descriptor each worker gets (worker K gets C{fds[K - 1]}).
    @ivar family: the address family's name, for C{adoptStreamPort}.
    @ivar address: where it listens, as Twisted prints an address.
    """

    def __init__(self, endpoint: Any, description: str, count: int) -> None:
        self.endpoint = endpoint
        self.description = description
        self.count = count
        self.fds: list[int] = []
        self.family = "INET"
        self.address: object = None
        self._sockets: list[socket.socket] = []
        self._port: IListeningPort | None = None

    @property
    def perWorker(self) -> bool:
        """Whether each worker has a socket of its own (SO_REUSEPORT)."""
        return bool(self._sockets)

    def listen(self) -> None:
        """Listen now, or exit with one line (as a single server would)."""
        tcp = _tcpEndpoint(self.endpoint)
        if tcp is not None and hasattr(socket, "SO_REUSEPORT"):
            self._listenReusePort(tcp)
        else:
            port = listenOrExit(self.endpoint, _NeverServes(), self.description)
            descriptor = cast(FileDescriptor, port)  # tcp.Port or unix.Port
            descriptor.stopReading()
            self._port = port
            self.address = port.getHost()
            self.family = _FAMILY_NAMES[_family(self.address)]
            self.fds = [descriptor.fileno()] * self.count

    def _listenReusePort(self, tcp: Any) -> None:
        interface = tcp._interface
        family = (
            socket.AF_INET6
            if type(tcp).__name__ == "TCP6ServerEndpoint" or isIPv6Address(interface)
            else socket.AF_INET
        )
        port = tcp._port
        try:
            for _ in range(self.count):
                sock = socket.socket(family, socket.SOCK_STREAM)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((interface, port))
                port = sock.getsockname()[1]
                sock.listen(tcp._backlog)
                sock.setblocking(False)
        except OSError as e:
            self.close()
            raise SystemExit(
                f"twistd timerserver: cannot listen on {self.description}: {e.strerror}"
            ) from None
        host = self._sockets[0].getsockname()[0]
        self.family = _FAMILY_NAMES[family]
        self.address = (IPv6Address if family == socket.AF_INET6 else IPv4Address)(
            "TCP", host, port
        )
        self.fds = [sock.fileno() for sock in self._sockets]

    def close(self) -> None:
        """Stop listening (the workers' own descriptors close with them)."""
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        if self._port is not None:
            self._port.stopListening()
            self._port = None


def _family(address: object) -> int:
    if isinstance(address, UNIXAddress):
        return socket.AF_UNIX
    return socket.AF_INET6 if isinstance(address, IPv6Address) else socket.AF_INET
