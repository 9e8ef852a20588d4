"""
Listening sockets the server is handed rather than makes: by systemd, or by
the master to its workers.  L{adoptedEndpoint} checks that one is a socket
the server can serve on, reads it as what it is, and leaves a unix socket's
file to its owner.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

from twisted.internet import defer, endpoints, tcp, unix
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}
"""The address families the server listens on, by the name C{domain=} gives them."""


def adoptedEndpoint(reactor: Any, fd: int, description: str) -> IStreamServerEndpoint:
    """
    The endpoint of C{fd}, an inherited listening socket, in its own
    family; C{SystemExit} with one line naming C{description} (the port
    given) if it is not one the server can serve on.
    """
    family = adoptedFamily(fd, description)
    if family == socket.AF_UNIX:
        return _AdoptedUNIXEndpoint(reactor, fd)
    return endpoints.AdoptedStreamServerEndpoint(reactor, fd, family)


def adoptedFamily(fd: int, description: str) -> int:
    """
    The address family of C{fd}, a listening stream socket passed to the
    server, or C{SystemExit} with one line if it is not one.  The socket's
    own family, whatever C{domain=} says: systemd makes C{ListenStream=5050}
    an IPv6 socket (every address, IPv4 ones mapped), and read as the family
    named, every client's address was the same garbage.
    """

    def fail(why: str) -> SystemExit:
        return SystemExit(f"twistd timerserver: cannot listen on {description}: {why}")

    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        raise fail(f"descriptor {fd}: {e.strerror}") from None
    with probe:  # its family and type as the kernel says (SO_DOMAIN, SO_TYPE)
        kind, family = probe.type, probe.family
        listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if kind != socket.SOCK_STREAM:
        raise fail(
            f"descriptor {fd} is not a stream socket (ListenDatagram=? the server "
            "needs ListenStream=)"
        )
    if not listening:
        raise fail(
            f"descriptor {fd} is not listening (a connected socket, as a unit with "
            "Accept=yes passes each instance, or one bound without listen()): the "
            "server needs the listening socket (Accept=no)"
        )
    if family not in FAMILIES.values():
        raise fail(
            f"descriptor {fd} is a socket of address family {family}, not INET, INET6 or UNIX"
        )
    return family


@implementer(IStreamServerEndpoint)
class _AdoptedUNIXEndpoint:
    """
    A unix socket someone else made (the master, for its workers; systemd):
    Twisted's adopted unix port would set its file's mode to 0666 (a
    C{mode=600} socket, or systemd's C{SocketMode=}, open to every user once
    the workers started) and remove the file when it stops (a socket systemd
    keeps for the next start, unreachable).  Its owner decides both.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        try:
            os.set_blocking(self.fd, False)
            adopt: Any = _AdoptedUNIXPort._fromListeningDescriptor
            port = adopt(self.reactor, self.fd, factory)
            port.startListening()
            os.close(self.fd)  # the port holds its own copy (as Twisted's adopted endpoint)
        except BaseException:
            return defer.fail()
        return defer.succeed(port)


class _AdoptedUNIXPort(unix.Port):
    """Twisted's unix port, leaving its socket file's mode and existence to its owner."""

    def startListening(self) -> None:
        try:  # Twisted sets the file's mode: to the one it has
            self.mode = stat.S_IMODE(os.stat(self._bindPath).st_mode)
        except (OSError, TypeError, ValueError):
            pass
        super().startListening()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Any) -> None:
        # Twisted's, without removing the file.
        if self.lockFile is not None:
            self.lockFile.unlock()
        tcp.Port.connectionLost(self, reason)
