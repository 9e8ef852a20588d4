"""
What the server does to the endpoint string it is given before listening:
a listen backlog that survives a reconnect storm, TLS that refuses
protocols older than TLS 1.2 and says which extra to install when pyOpenSSL
is missing, and C{haproxy:} endpoints that read the PROXY header before the
server sees the connection (L{timerserver.proxyheader}).

Behind C{haproxy:ssl:...} the PROXY header comes first, in clear, as HAProxy
sends it in front of a TLS connection it passes through; the TLS layer sits
inside it.  (Twisted's own C{haproxy:ssl:} puts TLS outside, where the
header can never arrive.)

Twisted gives every listening endpoint string without C{backlog=} a listen
queue of 50.  When thousands of clients reconnect at once the kernel
completes their handshakes, finds the accept queue full and drops them; the
clients believe they are connected and wait for a welcome that never comes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.python import usage

from timerserver.proxyheader import ProxyHeaderFactory

DEFAULT_BACKLOG = 4096
"""Linux's own cap (C{net.core.somaxconn}) since 5.4; the kernel lowers a larger
value to its cap.  1024 still let a storm of 1,000 connects in flight from
fast clients overflow the queue (p99 welcome 1.1 s, SYN retransmits); 4096
did not (185 ms)."""
BACKLOG_TYPES = frozenset({"tcp", "tcp6", "unix", "ssl"})
"""Endpoint types that take C{backlog=}; C{systemd:} sockets are already
listening, with the backlog systemd gave them."""
WRAPPERS = frozenset({"haproxy"})
TLS_EXTRA = "pip install 'timerserver[tls]'"


def splitFields(description: str) -> list[str]:
    """Split an endpoint string on its unescaped colons, keeping escapes."""
    fields, current = [], []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(char + next(chars, ""))
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def endpointKind(description: str) -> str:
    """The endpoint type of C{description}, wrappers included: C{haproxy:ssl}."""
    fields = splitFields(description)
    kind = fields[0].strip().lower()
    if kind in WRAPPERS and len(fields) > 1:
        return f"{kind}:{endpointKind(description.split(':', 1)[1])}"
    return kind


def withBacklog(description: str, backlog: int) -> str:
    """
    C{description} with C{backlog=BACKLOG} added where its type takes one and
    it does not name one itself (inside C{haproxy:} too).
    """
    fields = splitFields(description)
    kind = fields[0].strip().lower()
    if kind in WRAPPERS and len(fields) > 1:
        head, inner = description.split(":", 1)
        return f"{head}:{withBacklog(inner, backlog)}"
    if kind not in BACKLOG_TYPES:
        return description
    if any(field.strip().lower().startswith("backlog=") for field in fields[1:]):
        return description
    return f"{description}:backlog={backlog}"


def _hasOpenSSL() -> bool:
    try:
        import OpenSSL  # noqa: F401
    except ImportError:
        return False
    return True


def serverEndpoint(reactor: Any, description: str, backlog: int) -> Any:
    """
    Build the server endpoint for C{description} with the default C{backlog},
    or raise C{twisted.python.usage.UsageError} with one line naming C{--port}.
    """
    full = withBacklog(description, backlog)
    layers = endpointKind(description).split(":")
    if "ssl" in layers and not _hasOpenSSL():
        raise usage.UsageError(
            f"--port: {description!r} needs TLS support (pyOpenSSL): {TLS_EXTRA}"
        )
    proxied = layers[0] == "haproxy" and len(layers) > 1
    try:
        endpoint = serverFromString(reactor, full.split(":", 1)[1] if proxied else full)
        requireModernTLS(endpoint)
    except Exception as e:
        raise usage.UsageError(f"--port: cannot use {description!r}: {e}") from None
    return ProxyHeaderEndpoint(endpoint) if proxied else endpoint


def layered(factory: Any, tls: Any = None, proxy: bool = False) -> Any:
    """
    C{factory} with TLS (given C{tls}, a context factory) inside a PROXY
    header reader (C{proxy}), as the server listens behind C{haproxy:}.
    """
    clock: Any = getattr(factory, "clock", None)
    events = getattr(factory, "events", None)
    if tls is not None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        factory = TLSMemoryBIOFactory(tls, False, factory)
    if proxy:
        if clock is None:
            from twisted.internet import reactor as clock
        factory = ProxyHeaderFactory(factory, clock, events)
    return factory


class ProxyHeaderEndpoint:
    """
    A C{haproxy:} endpoint: listens on the inner endpoint's TCP socket with
    the PROXY header read first, and TLS inside it for C{haproxy:ssl:}.
    """

    def __init__(self, wrappedEndpoint: Any) -> None:
        self._wrappedEndpoint = wrappedEndpoint

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        """Listen on the inner endpoint with C{factory} wrapped as C{haproxy:} needs."""
        inner = self._wrappedEndpoint
        tls = getattr(inner, "_sslContextFactory", None)
        if tls is not None:
            inner = TCP4ServerEndpoint(
                inner._reactor, inner._port, inner._backlog, inner._interface
            )
        listening: defer.Deferred[Any] = inner.listen(layered(factory, tls, proxy=True))
        return listening


def tlsContextFactory(endpoint: Any) -> Any:
    """The TLS context factory of an C{ssl:} endpoint (wrapped or not), or C{None}."""
    while endpoint is not None:
        factory = getattr(endpoint, "_sslContextFactory", None)
        if factory is not None:
            return factory
        endpoint = getattr(endpoint, "_wrappedEndpoint", None)
    return None


def requireModernTLS(endpoint: Any) -> None:
    """Refuse protocols older than TLS 1.2 on C{endpoint}, whatever C{sslmethod=} says."""
    factory = tlsContextFactory(endpoint)
    if factory is not None:
        from OpenSSL import SSL

        factory.getContext().set_min_proto_version(SSL.TLS1_2_VERSION)
