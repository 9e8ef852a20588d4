"""
What a client can make the kernel hold for it, bounded.

C{TCP_NOTSENT_LOWAT}, on the listening TCP socket (L{boundKernelBuffers}),
which every socket it accepts inherits, at no cost per connection: the
kernel takes at most about L{NOTSENT_LOWAT} bytes not yet sent; past
that C{send} takes nothing, Twisted buffers the rest, pauses the
connection, and C{--stall-timeout} and C{--max-buffer} apply.  Without it
the kernel's send buffer, which grows by itself up to C{tcp_wmem}'s maximum
(4 MiB), took a non-reading client's echo: 50 such clients held 144 MiB of
kernel memory, and none was ever paused or aborted.

A connection the server closes while the kernel still holds data for it (a
client that half-closed and does not read) is aborted after
C{--stall-timeout} while Twisted's buffer is not empty; once it is, the
kernel holds at most about L{NOTSENT_LOWAT} for it, as an orphan socket,
under its own limits (C{tcp_orphan_retries}, C{tcp_max_orphans}).
C{TCP_USER_TIMEOUT} would end those sooner, but on the socket of a client
that reads slowly (a window that opens in small steps) the kernel counts
it from the first zero-window probe, and it reset clients still reading.
"""

from __future__ import annotations

import socket

from twisted.logger import Logger

NOTSENT_LOWAT = 64 * 1024
"""Twisted's own pause point (C{FileDescriptor.bufferSize}): the kernel holds
no more unsent data than Twisted would before pausing."""
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's, since 3.12

_log = Logger()


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
