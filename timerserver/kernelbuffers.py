"""
What a client can make the kernel hold for it, bounded.

 - C{TCP_NOTSENT_LOWAT}, on the listening TCP socket (L{boundKernelBuffers}),
   which every socket it accepts inherits, at no cost per connection: the
   kernel takes at most about L{NOTSENT_LOWAT} bytes not yet sent; past
   that C{send} takes nothing, Twisted buffers the rest, pauses the
   connection, and C{--stall-timeout} and C{--max-buffer} apply.  Without
   it the kernel's send buffer, which grows by itself up to C{tcp_wmem}'s
   maximum (4 MiB), took a non-reading client's echo: 50 such clients held
   144 MiB of kernel memory, and none was ever paused or aborted.
 - C{TCP_USER_TIMEOUT}, on a connection the server closes (L{lingerAtMost}):
   the kernel drops what it still holds for the client once that has gone
   unacknowledged (the client does not read: a zero window) for
   C{--stall-timeout}.  A client that half-closed and never read left,
   once the server closed, an orphan socket holding its unsent data for
   minutes (2 MiB each, measured past 300 s).  It is set at the close, not
   on every connection: on a live one it would end a client that stopped
   reading for a moment before the server had paused it, uncounted.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

NOTSENT_LOWAT = 64 * 1024
"""Twisted's own pause point (C{FileDescriptor.bufferSize}): the kernel holds
no more unsent data than Twisted would before pausing."""
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's, since 3.12
_MAX_USER_TIMEOUT = 2**31 - 1
"""Milliseconds: the longest C{TCP_USER_TIMEOUT} the kernel takes (24.8 days)."""

_log = Logger()
# Looked up once: lingerAtMost runs on every close the server makes.
_SERVER = tcp.Server
_TCP = socket.IPPROTO_TCP
_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux's, since 2.6.37


def boundKernelBuffers(listening: object) -> bool:
    """
    Bound the unsent data the kernel takes for each connection of
    C{listening} (a listening port, or its socket), if it is TCP; whether
    it was (not on a Unix socket, nor where the system has no such option).
    """
    sock = listening if isinstance(listening, socket.socket) else getattr(listening, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    except OSError as e:
        _log.warn(
            "cannot bound the unsent data the kernel takes for a client ({error}): a "
            "client that stops reading may hold its kernel send buffer (up to 4 MiB) "
            "before the server pauses it",
            error=e,
        )
        return False
    return True


def lingerAtMost(transport: Any, seconds: float) -> None:
    """
    Once C{transport} (a TCP connection, or a layer over one) is closed, have
    the kernel drop what it still holds for it when that has gone
    unacknowledged for C{seconds}.
    """
    while type(transport) is not _SERVER:
        transport = getattr(transport, "transport", None)
        if transport is None:
            return  # not TCP (a unix socket, a test's transport)
    milliseconds = int(seconds * 1000)
    try:
        transport.socket.setsockopt(
            _TCP,
            _USER_TIMEOUT,
            milliseconds if milliseconds < _MAX_USER_TIMEOUT else _MAX_USER_TIMEOUT,
        )
    except OSError:
        pass  # gone already, or not supported: the kernel's own orphan limits apply
