"""
Why a connection was refused or closed: the names the protocol, admission
and the metrics share (the C{reason} label of
C{timerserver_connections_refused_total} and
C{timerserver_connections_closed_total}).
"""

from __future__ import annotations

# Refused: closed at accept, before anything of the client was read.
FULL = "full"
"""Over C{--max-connections}."""
PEER = "peer"
"""Over C{--max-per-peer} for its address."""
UNTRUSTED = "untrusted"
"""A C{haproxy:} connection from outside C{--proxy-from}."""
REFUSED = (FULL, PEER, UNTRUSTED)

# Closed: accepted, then ended by the client or the server.
CLIENT = "client"
"""The client closed (or reset) the connection."""
IDLE = "idle"
STALLED = "stalled"
BUFFER = "buffer"
CLOSE_TIMEOUT = "close_timeout"
SHUTDOWN = "shutdown"
TLS = "tls"
"""A TLS error: not a TLS client, an old protocol, a bad handshake."""
HANDSHAKE = "handshake"
"""No TLS handshake or PROXY header within C{--handshake-timeout}."""
PROXY = "proxy"
"""A malformed or invalid PROXY header."""
WORKER_EXIT = "worker_exit"
"""Open in a worker when it died (the master counts them, from the worker's last figures)."""
# And PEER: behind haproxy:, a socket over --max-per-peer for the address its
# header claims was accepted first, so it is refused and closed both.
CLOSED = (
    CLIENT, IDLE, STALLED, BUFFER, CLOSE_TIMEOUT, SHUTDOWN, TLS, HANDSHAKE, PROXY, PEER,
    WORKER_EXIT,
)  # fmt: skip
