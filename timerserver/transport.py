"""
L{writeNow}: write to a TCP transport the way asyncio does, sending at once
when nothing is queued.

Twisted's C{transport.write} always queues: it registers the socket for
writability, sends on the next reactor turn and unregisters, which costs two
C{epoll_ctl} calls and a wake-up per small message.  When the transport's
buffer is empty, sending straight away gives the same bytes in the same
order; whatever the socket does not take goes through C{transport.write}, so
backpressure (C{pauseProducing}), C{loseConnection}'s flush and error
handling stay Twisted's own.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def writeNow(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}: sent at once if it is a TCP server
    connection with nothing queued, else (and for any part not sent) queued
    with C{transport.write}.
    """
    if (
        type(transport) is tcp.Server
        and not getattr(transport, "_tempDataLen", 1)
        and transport.offset == len(transport.dataBuffer)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, EINTR, or a failing connection: write() queues the data
            # and the reactor finds out about the connection in its own way.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def isFlushed(transport: Any) -> bool:
    """
    Whether C{transport} is a TCP server connection with nothing left to
    write: its C{loseConnection} then completes on the next reactor turn and
    needs no timeout to watch it.
    """
    return (
        type(transport) is tcp.Server
        and not getattr(transport, "_tempDataLen", 1)
        and transport.offset == len(transport.dataBuffer)
    )
