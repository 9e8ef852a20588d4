"""
L{Listener}: C{--port} parsed once into a typed description of where and
how the server listens, and every use of Twisted's private endpoint and
PROXY parsing API, here only (its private TLS API: L{timerserver.tlstransport};
its adopted unix port: L{timerserver.adopted}).

The server always listens on a bare socket (C{tcp}, C{tcp6}, C{unix} or
C{systemd}) and builds the layers above it itself, in the order a
connection meets them: admission (L{timerserver.admission}), the PROXY
header (C{haproxy:}, L{timerserver.proxyheader}), TLS (C{ssl:}), then the
protocol.  So an C{ssl:} port is a TCP socket with TLS layered by us, which
puts admission below TLS; behind C{haproxy:ssl:...} the PROXY header comes
first, in clear, as HAProxy sends it in front of a TLS connection it passes
through.

Twisted gives every listening endpoint string without C{backlog=} a listen
queue of 50.  When thousands of clients reconnect at once the kernel
completes their handshakes, finds the accept queue full and drops them; the
clients believe they are connected and wait for a welcome that never comes.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import endpoints
from twisted.internet.abstract import isIPv6Address
from twisted.internet.interfaces import (
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python import usage

from timerserver.adopted import FAMILIES, adoptedEndpoint

DEFAULT_BACKLOG = 4096
"""Linux's own cap (C{net.core.somaxconn}) since 5.4; the kernel lowers a larger
value to its cap.  1024 still let a storm of 1,000 connects in flight from
fast clients overflow the queue (p99 welcome 1.1 s, SYN retransmits); 4096
did not (185 ms)."""
MAX_BACKLOG = 65535
DEFAULT_PROXY_FROM = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"
"""Who may send a PROXY header unless C{--proxy-from} says otherwise:
loopback and the private ranges, where a load balancer normally sits."""
TRUST_ANY = "any"
TLS_EXTRA = "pip install 'timerserver[tls]'"
KINDS = ("tcp", "tcp6", "ssl", "unix", "systemd")
OLD_TLS_METHODS = frozenset({"SSLv2_METHOD", "SSLv3_METHOD", "TLSv1_METHOD", "TLSv1_1_METHOD"})
"""C{sslmethod=} values that fix a protocol older than TLS 1.2 (the others negotiate)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _escape(value: str) -> str:
    """C{value} as one field of an endpoint string."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _fail(description: str, why: str) -> usage.UsageError:
    return usage.UsageError(f"--port: cannot use {description!r}: {why}")


def parseTrusted(value: str) -> tuple[str, ...]:
    """
    C{--proxy-from}: comma-separated CIDRs (an address alone is one host), or
    C{any}; the networks in their normal form.  C{UsageError} if one is not.
    """
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise usage.UsageError("--proxy-from: give CIDRs (10.0.0.0/8,::1) or 'any'")
    if items == [TRUST_ANY]:
        return ("0.0.0.0/0", "::/0")
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise usage.UsageError(f"--proxy-from: not a CIDR or address: {item!r}") from None
    return tuple(networks)


@dataclass(frozen=True)
class Listener:
    """
    Where and how the server listens.

    @ivar description: C{--port} as given.
    @ivar kind: the bare socket: C{tcp}, C{tcp6}, C{unix} or C{systemd}.
    @ivar socket: the endpoint string of that bare socket, backlog included.
    @ivar family: C{INET}, C{INET6} or C{UNIX}.
    @ivar host: the interface (TCP).
    @ivar port: the port (TCP; 0 asks the kernel for one).
    @ivar backlog: the listen queue (TCP and UNIX).
    @ivar tls: the C{ssl:} arguments (certificate files and such), or C{None}.
    @ivar proxy: whether a PROXY header comes first (C{haproxy:}).
    @ivar trusted: the networks that may send a PROXY header.
    """

    description: str
    kind: str
    socket: str
    family: str = "INET"
    host: str = ""
    port: int = 0
    backlog: int = DEFAULT_BACKLOG
    tls: tuple[tuple[str, str], ...] | None = None
    proxy: bool = False
    trusted: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        description: str,
        backlog: int = DEFAULT_BACKLOG,
        proxyFrom: str | None = None,
    ) -> Listener:
        """
        Parse C{--port}, with C{backlog} where it names none, and C{proxyFrom}
        (C{--proxy-from}) for C{haproxy:}.  C{UsageError} with one line
        naming the option if anything is wrong.
        """
        try:
            args, kw = endpoints._parse(description)
        except Exception as e:
            raise _fail(description, str(e)) from None
        kind = str(args[0]).strip().lower() if args else ""
        proxy = kind == "haproxy"
        inner = description.split(":", 1)[1] if proxy and ":" in description else description
        if proxy:
            args, kw = endpoints._parse(inner)
            kind = str(args[0]).strip().lower() if args else ""
        if proxyFrom is not None and not proxy:
            raise usage.UsageError("--proxy-from: only applies to haproxy: ports")
        trusted = (
            parseTrusted(DEFAULT_PROXY_FROM if proxyFrom is None else proxyFrom) if proxy else ()
        )
        if kind not in KINDS:
            raise _fail(description, f"unknown endpoint type {kind!r} (use {', '.join(KINDS)})")
        if "backlog" in kw:
            backlog = _number(description, "backlog", kw["backlog"], 1, MAX_BACKLOG)
        kw["backlog"] = str(backlog)
        listener = cls._parseKind(description, kind, args[1:], kw, backlog)
        if proxy and proxyFrom is not None and listener.family == "UNIX":
            raise usage.UsageError(
                "--proxy-from: a unix socket's peers have no address to check;"
                " its file permissions (mode=) decide who may send a PROXY header"
            )
        listener = cls(**{**listener.__dict__, "proxy": proxy, "trusted": trusted})
        listener.check()
        return listener

    @classmethod
    def _parseKind(
        cls, description: str, kind: str, args: list[str], kw: dict[str, str], backlog: int
    ) -> Listener:
        if kind == "systemd":
            kw.pop("backlog")  # already listening, with systemd's backlog
            domain = kw.get("domain", "INET").upper()
            if domain not in FAMILIES:
                raise _fail(description, f"unknown domain {domain!r}")
            fields = ":".join(f"{k}={_escape(v)}" for k, v in kw.items())
            return cls(description, kind, f"systemd:{fields}", family=domain)
        if kind == "unix":
            if len(args) != 1 or not args[0]:
                raise _fail(description, "give one socket path")
            fields = ":".join(f"{k}={_escape(v)}" for k, v in kw.items())
            return cls(description, kind, f"unix:{_escape(args[0])}:{fields}", family="UNIX")
        # tcp, tcp6, ssl: a TCP socket (TLS is layered above it).
        if not args:
            raise _fail(description, "give a port number")
        port = _number(description, "port", args[0], 0, 65535)
        # An IPv6 address's unescaped colons end up as empty or extra fields:
        # taken as they come, "interface=::1" would listen on every interface.
        if len(args) > 1 or kw.get("interface") == "":
            if kind == "ssl" and kw.get("interface") != "":
                raise _fail(description, "give TLS files as privateKey= and certKey=")
            raise _fail(
                description,
                "fields after the port that are not name=value, or an empty interface= "
                "(escape an IPv6 address's colons: interface=\\:\\:1)",
            )
        host = kw.pop("interface", "::" if kind == "tcp6" else "")
        tls = None
        if kind == "ssl":
            tls = tuple(sorted((k, v) for k, v in kw.items() if k != "backlog"))
        elif set(kw) != {"backlog"}:
            raise _fail(description, f"unknown arguments {sorted(set(kw) - {'backlog'})}")
        ipv6 = isIPv6Address(host)
        if kind == "tcp6" and not ipv6:
            raise _fail(description, f"not an IPv6 interface: {host!r}")
        socketKind = "tcp6" if ipv6 else "tcp"
        fields = f"{socketKind}:{port}:interface={_escape(host)}:backlog={backlog}"
        return cls(
            description,
            socketKind,
            fields,
            family="INET6" if ipv6 else "INET",
            host=host,
            port=port,
            backlog=backlog,
            tls=tls,
        )

    def check(self) -> None:
        """Build what this listener needs once, so that mistakes are found at start."""
        try:
            endpoints._parseServer(self.socket, None)
        except Exception as e:
            raise _fail(self.description, str(e)) from None
        if self.tls is not None:
            self.contextFactory()

    @property
    def reusePort(self) -> bool:
        """Whether each worker can have a socket of its own (C{SO_REUSEPORT}, TCP)."""
        return self.kind in ("tcp", "tcp6") and hasattr(socket, "SO_REUSEPORT")

    @property
    def networks(self) -> tuple[Network, ...]:
        """L{trusted} as networks."""
        return tuple(ipaddress.ip_network(n) for n in self.trusted)

    @property
    def trustsAll(self) -> bool:
        """Whether every address may send a PROXY header (C{--proxy-from any})."""
        return any(ipaddress.ip_network(n).prefixlen == 0 for n in self.trusted)

    def contextFactory(self) -> Any:
        """
        The TLS context of an C{ssl:} port, refusing protocols older than
        TLS 1.2 whatever C{sslmethod=} says.
        """
        try:
            from OpenSSL import SSL
        except ImportError:
            raise _fail(self.description, f"TLS needs pyOpenSSL: {TLS_EXTRA}") from None
        method = dict(self.tls or ()).get("sslmethod")
        if method in OLD_TLS_METHODS:
            raise _fail(
                self.description,
                f"sslmethod={method} allows only protocols older than TLS 1.2, which are "
                "refused: every client would be (leave sslmethod= out)",
            )
        try:
            ((_, _, factory), _) = endpoints._parseSSL(None, str(self.port), **dict(self.tls or ()))
            factory.getContext().set_min_proto_version(SSL.TLS1_2_VERSION)
        except Exception as e:
            raise _fail(self.description, str(e)) from None
        return factory

    def layers(
        self, factory: IProtocolFactory, proxied: Callable[[IProtocolFactory], IProtocolFactory]
    ) -> IProtocolFactory:
        """C{factory} inside TLS (C{ssl:}) inside the PROXY reader C{proxied} (C{haproxy:})."""
        if self.tls is not None:
            from timerserver.tlstransport import tlsLayer

            factory = tlsLayer(self.contextFactory(), factory)
        if self.proxy:
            factory = proxied(factory)
        return factory

    def endpoint(self, reactor: Any, fd: int | None = None) -> IStreamServerEndpoint:
        """
        The endpoint of the bare socket: bound here, or with C{fd} the
        inherited listening socket (a worker's).
        """
        if fd is None:
            try:
                endpoint: IStreamServerEndpoint = endpoints.serverFromString(reactor, self.socket)
            except (KeyError, IndexError) as e:  # systemd: no such descriptor name or index
                if self.kind != "systemd":
                    raise
                names = os.environ.get("LISTEN_FDNAMES", "")
                pid = os.environ.get("LISTEN_PID", "")
                if pid and pid != str(os.getpid()):
                    # systemd passed them to another process: a wrapper that forks
                    why = (
                        f"the sockets systemd passed are for process {pid} (LISTEN_PID), "
                        f"not this one ({os.getpid()}): a wrapper must start twistd with exec"
                    )
                else:
                    why = (
                        f"no socket {e} passed by systemd (LISTEN_FDNAMES={names!r}; a unit's "
                        f"FileDescriptorName=, systemd-socket-activate's --fdname=)"
                    )
                raise SystemExit(
                    f"twistd timerserver: cannot listen on {self.description}: {why}"
                ) from None
            if self.kind != "systemd":
                return endpoint
            fd = cast(endpoints.AdoptedStreamServerEndpoint, endpoint).fileno
        return adoptedEndpoint(reactor, fd, self.description)

    def toData(self) -> dict[str, Any]:
        """This listener as JSON-able data."""
        data = dict(self.__dict__)
        data["tls"] = None if self.tls is None else [list(pair) for pair in self.tls]
        data["trusted"] = list(self.trusted)
        return data

    @classmethod
    def fromData(cls, data: dict[str, Any]) -> Listener:
        """The listener L{toData} gave; C{ValueError} if it is not one."""
        try:
            values = dict(data)
            tls = values.get("tls")
            values["tls"] = None if tls is None else tuple((str(k), str(v)) for k, v in tls)
            values["trusted"] = tuple(str(n) for n in values.get("trusted", ()))
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"not a listener: {data!r}: {e}") from None


def _number(description: str, name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _fail(description, f"{name} is not a whole number: {value!r}") from None
    if not low <= number <= high:
        raise _fail(description, f"{name} must be {low}-{high}, not {value!r}")
    return number
