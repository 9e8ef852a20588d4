"""
What a client can make the kernel hold for it, bounded: the options of the
listening TCP socket, which every socket it accepts inherits (so they cost
nothing per connection).

 - C{TCP_NOTSENT_LOWAT}: the kernel takes at most L{NOTSENT_LOWAT} bytes
   not yet sent from the server's writes; past that C{send} takes nothing,
   Twisted buffers the rest, pauses the connection, and C{--stall-timeout}
   and C{--max-buffer} apply.  Without it the kernel's send buffer, which
   grows by itself up to C{tcp_wmem}'s maximum (4 MiB), took a non-reading
   client's echo: 50 such clients held 144 MiB of kernel memory, and none
   was ever paused or aborted.
 - C{TCP_USER_TIMEOUT}: data the client leaves unacknowledged (it does not
   read: a zero window) for C{--stall-timeout} and a second ends the
   connection in the kernel.  This reaches what the server no longer holds:
   a client that half-closed and never read left, once the server closed,
   an orphan socket holding its unsent data for minutes (2 MiB each,
   measured past 300 s).  The server's own stall deadline, a second
   earlier, ends the connections it still holds.
"""

from __future__ import annotations

import socket

from twisted.logger import Logger

NOTSENT_LOWAT = 64 * 1024
"""Twisted's own pause point (C{FileDescriptor.bufferSize}): the kernel holds
no more unsent data than Twisted would before pausing."""
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's, since 3.12
USER_TIMEOUT_MARGIN = 1.0
"""Seconds the kernel's deadline comes after the server's own."""

_log = Logger()


def boundKernelBuffers(port: object, stallTimeout: float) -> bool:
    """
    Set the bounds on C{port}'s listening socket, if it is TCP; whether they
    were set (not on a Unix socket, nor where the system has no such options).
    """
    sock = getattr(port, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return False
    userTimeout = int((stallTimeout + USER_TIMEOUT_MARGIN) * 1000)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, min(userTimeout, 2**31 - 1))
    except (OSError, AttributeError) as e:
        _log.warn(
            "cannot bound what the kernel holds for a client ({error}): a client that "
            "stops reading may hold its kernel send buffer past --stall-timeout",
            error=e,
        )
        return False
    return True
