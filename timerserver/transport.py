"""
L{writeNow}: write to a stream socket (TCP or unix) the way asyncio does, sending at once
when nothing is queued; L{closeNow}: close one with nothing queued at once;
L{unacknowledged}: what of it the client does not have yet;
L{discardUnread}: drop what a client sent, so that a close is a FIN.

Twisted's C{transport.write} always queues: it registers the socket for
writability, sends on the next reactor turn and unregisters, which costs two
C{epoll_ctl} calls and a wake-up per small message.  When the transport's
buffer is empty, sending straight away gives the same bytes in the same
order; whatever the socket does not take goes through C{transport.write}, so
backpressure (C{pauseProducing}), C{loseConnection}'s flush and error
handling stay Twisted's own.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from errno import ECONNRESET, ENOTCONN, EPIPE, ETIMEDOUT
from typing import Any

from twisted.internet import address, error, tcp, unix
from twisted.python.failure import Failure

_DONE = Failure(error.ConnectionDone())
_BROKEN = frozenset({ECONNRESET, ENOTCONN, EPIPE, ETIMEDOUT})
"""The errors of a send to a connection that is gone."""


class Server(tcp.Server):
    """
    Twisted's TCP server connection, without the work it does at every
    accept for its log and its C{repr}: it formats both strings, and asks
    C{zope.interface} whether the protocol names itself (5,100 instructions
    of a connection's 247,700, measured with C{bench.instructions}).  The
    log prefix is the same (the protocol's C{logPrefix()}, else its class's
    name); the C{repr} is made when asked.
    """

    def __init__(
        self,
        sock: Any,
        protocol: Any,
        client: tuple[Any, ...],
        server: Any,
        sessionno: int,
        reactor: Any,
    ) -> None:
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        prefix = getattr(protocol, "logPrefix", None)
        name = prefix() if prefix is not None else type(protocol).__name__
        self.logstr = f"{name},{sessionno},{self.hostname}"
        self.startReading()  # type: ignore[no-untyped-call]
        self.connected = 1

    def __repr__(self) -> str:
        port = self.server._realPortNumber if self.server is not None else None
        return f"<{type(self.protocol).__name__} #{self.sessionno} on {port}>"


SOCKETS = (Server, tcp.Server, unix.Server)
"""The connections straight on a socket (no TLS or PROXY layer between)."""


def serveLean(port: object) -> None:
    """Make C{port}'s connections L{Server}s, if it is a C{tcp.Port} making Twisted's."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = Server


def writeNow(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}: sent at once if it is a TCP or unix server
    connection with nothing queued, else (and for any part not sent) queued
    with C{transport.write}.
    """
    if (
        type(transport) in SOCKETS
        and not transport.dataBuffer  # b"" once drained (doWrite resets it)
        and not getattr(transport, "_tempDataLen", 1)  # else queue, whatever Twisted renamed
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0  # write() queues it all
        except OSError as e:
            if e.errno in _BROKEN:
                # Nothing written can arrive any more.  The socket reads as
                # closed, so the reactor closes the connection on its next
                # turn, with nothing queued to flush first.
                return
            sent = 0  # anything else: write() queues it and Twisted decides
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def isFlushed(transport: Any) -> bool:
    """
    Whether C{transport} is a TCP or unix server connection with nothing left to
    write: its C{loseConnection} then completes on the next reactor turn and
    needs no timeout to watch it.
    """
    return (
        type(transport) in SOCKETS
        and not transport.dataBuffer
        and not getattr(transport, "_tempDataLen", 1)
    )


def queuedBytes(transport: Any) -> int:
    """
    The bytes waiting in the buffer of the TCP or unix connection at the
    bottom of C{transport}'s layers (TLS, PROXY), or 0 if there is none.
    """
    while type(transport) not in SOCKETS:
        transport = getattr(transport, "transport", None)
        if transport is None:
            return 0
    return (
        len(transport.dataBuffer)
        - getattr(transport, "offset", 0)
        + getattr(transport, "_tempDataLen", 0)
    )


def unacknowledged(transport: Any) -> int | None:
    """
    The bytes written to C{transport} (through its layers: TLS, PROXY) that
    the client's kernel has not acknowledged: those in the buffer of the TCP
    or unix connection at the bottom, and in its socket's send queue
    (C{TIOCOUTQ}); 0 once the client can read all of it (an abort then cuts
    nothing off), C{None} if there is no socket to ask.
    """
    bottom = transport
    while type(bottom) not in SOCKETS:
        bottom = getattr(bottom, "transport", None)
        if bottom is None:
            return None
    try:
        queued = fcntl.ioctl(bottom.socket.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return None
    unsent: int = struct.unpack("i", queued)[0]
    return queuedBytes(bottom) + unsent


DISCARD_LIMIT = 1 << 20
"""The most L{discardUnread} reads of what a client sent (more than a socket's receive buffer)."""


def discardUnread(transport: Any) -> None:
    """
    Read and drop what the client of C{transport}, a TCP or unix server
    connection, has sent and the server has not read (up to
    L{DISCARD_LIMIT} bytes), so that a close the server begins now sends a
    FIN after what was written: with bytes unread, the kernel resets the
    connection instead, and a client may lose what was written before the
    reset.  It never waits: it reads what the socket holds now.
    """
    if type(transport) not in SOCKETS:
        return
    sock = transport.socket
    left = DISCARD_LIMIT
    try:
        while left > 0:
            unread = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            size = min(struct.unpack("i", unread)[0], left, 65536)
            if size <= 0:
                return
            chunk = sock.recv(size)
            if not chunk:
                return
            left -= len(chunk)
    except (OSError, ValueError):
        pass  # reset, or closed already: a close sends nothing either way


def closeNow(transport: Any) -> bool:
    """
    Close C{transport} in this turn if it is a TCP or unix server connection with
    nothing left to write, as Twisted closes a connection whose protocol
    does not take a half-close when the client's FIN arrives; whether it did.

    C{loseConnection} would instead register the socket for writing, wait a
    reactor turn to flush an empty buffer, and only then close.
    """
    if not isFlushed(transport) or not transport.connected:
        return False
    # The client's FIN was read (nothing unread is left) and nothing is
    # queued: close() alone sends our FIN.  Twisted's shutdown() first is one
    # more system call, and an error on a socket the client then reset.  (A
    # close the server begins keeps it: with unread bytes, close() alone
    # would reset the connection and drop what is still on its way.)
    transport._shouldShutdown = False
    transport.connectionLost(_DONE)
    return True
