"""
The PROXY protocol (HAProxy's C{send-proxy}, v1 and v2) in front of the
server: the header is read and checked before anything above it sees the
connection, and the client's address it gives is the connection's peer from
the protocol's first line of code.

Twisted's own reader calls the wrapped protocol's C{connectionMade} before
the header, raises C{ValueError} and C{UnicodeDecodeError} that nobody
catches on some malformed v1 headers, checks neither addresses nor ports,
and buffers up to 64 KiB of a v2 header before looking at it.  This one:

 - takes a v1 line of at most 107 bytes (the specification's own bound) and
   a v2 header of at most L{V2_MAX} bytes, refused as soon as its length
   field is read;
 - accepts addresses only as IP addresses of the header's family and ports
   from 1 to 65535;
 - serves C{LOCAL} (HAProxy's health checks with C{check-send-proxy}) and
   C{UNKNOWN}/C{UNSPEC} with the socket's own addresses, as the
   specification says; refuses UDP and UNIX addresses, which a TCP server
   has no use for.

A malformed header drops the socket with one rate-limited log line, counted
as C{proxy}; its deadline is admission's handshake timeout.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import INegotiated

from timerserver import reasons
from timerserver.admission import gateOf
from timerserver.clienthello import ClientHelloLayer
from timerserver.layer import Layer, LayerFactory, halfCloseableTwin

V1_PREFIX = b"PROXY "
V1_MAX = 107
"""The longest v1 line, CRLF included (the specification's figure)."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 4096
"""The longest v2 header we take, fixed part and TLVs included.  HAProxy
sends 16 + 12 (IPv4) or 36 (IPv6) bytes plus a few TLVs (ALPN, authority,
TLS details, a unique ID of at most 128 bytes); AWS, Azure and Google add
one TLV of under 300 bytes.  4 KiB leaves room for all of them together."""

Address = IPv4Address | IPv6Address


class InvalidHeader(ValueError):
    """A PROXY header that is malformed, or not one we serve."""


@dataclass(frozen=True)
class ProxyInfo:
    """
    What a header says: the client's and the proxy's addresses, or C{None}
    for C{LOCAL}/C{UNKNOWN} (serve with the socket's own).
    """

    source: Address | None
    destination: Address | None


class HeaderReader:
    """
    Reads one PROXY header, however it is split: L{feed} returns C{None}
    until the header is complete, then the header and the bytes after it.
    Holds at most L{V2_MAX} bytes.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[ProxyInfo, bytes] | None:
        """Take C{data}; C{InvalidHeader} as soon as it cannot be a valid header."""
        buffer = self._buffer + data
        self._buffer = b""
        if buffer[:12] == V2_SIGNATURE[: len(buffer[:12])] and buffer[:1] == b"\r":
            result = _v2(buffer)
        elif buffer[:6] == V1_PREFIX[: len(buffer[:6])]:
            result = _v1(buffer)
        else:
            raise InvalidHeader("not a PROXY header")
        if result is None:
            self._buffer = buffer
        return result


def _v1(buffer: bytes) -> tuple[ProxyInfo, bytes] | None:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX:
            raise InvalidHeader("v1 line longer than 107 bytes")
        return None
    fields = buffer[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return ProxyInfo(None, None), buffer[end + 2 :]
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise InvalidHeader("v1 line is not PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if fields[1] == b"TCP4" else 6
    source = _address(version, fields[2], fields[4])
    destination = _address(version, fields[3], fields[5])
    return ProxyInfo(source, destination), buffer[end + 2 :]


def _address(version: int, host: bytes, port: bytes) -> Address:
    if not (port.isdigit() and len(port) <= 5 and port[:1] != b"0"):
        raise InvalidHeader("v1 port is not a number from 1 to 65535")
    try:
        address = ipaddress.ip_address(host.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidHeader("v1 address is not an IP address") from None
    return _checked(version, address, int(port))


def _checked(
    version: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> Address:
    if address.version != version or getattr(address, "scope_id", None):
        raise InvalidHeader("address of the wrong family")
    if not 1 <= port <= 65535:
        raise InvalidHeader("port out of range")
    if version == 4:
        return IPv4Address("TCP", str(address), port)
    return IPv6Address("TCP", str(address), port)


_V2_FAMILIES = {0x11: (4, 4), 0x21: (6, 16)}
"""TCP over IPv4 and IPv6: the address version and its size in bytes."""


def _v2(buffer: bytes) -> tuple[ProxyInfo, bytes] | None:
    if len(buffer) < 16:
        return None
    if buffer[:12] != V2_SIGNATURE:
        raise InvalidHeader("not a v2 signature")
    versionCommand, family = buffer[12], buffer[13]
    (length,) = struct.unpack("!H", buffer[14:16])
    if versionCommand >> 4 != 2 or versionCommand & 0x0F > 1:
        raise InvalidHeader("v2 version or command unknown")
    if 16 + length > V2_MAX:
        raise InvalidHeader(f"v2 header longer than {V2_MAX} bytes")
    if len(buffer) < 16 + length:
        return None
    rest = buffer[16 + length :]
    if versionCommand & 0x0F == 0 or family == 0x00:  # LOCAL, or UNSPEC
        return ProxyInfo(None, None), rest
    if family not in _V2_FAMILIES:
        raise InvalidHeader("v2 address family is not TCP over IPv4 or IPv6")
    version, size = _V2_FAMILIES[family]
    if length < 2 * size + 4:
        raise InvalidHeader("v2 address block too short")
    body = buffer[16 : 16 + 2 * size + 4]
    sourcePort, destinationPort = struct.unpack("!HH", body[2 * size :])
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size : 2 * size])
    return ProxyInfo(
        _checked(version, source, sourcePort), _checked(version, destination, destinationPort)
    ), rest


@halfCloseableTwin
class ProxyHeaderLayer(Layer):
    """
    Connects the layer above only once a valid PROXY header is read; its
    C{getPeer()} and C{getHost()} are then the header's addresses.  It
    sits directly on admission's L{Gate<timerserver.admission.Gate>}, which
    counts the header's client against C{--max-per-peer}.
    """

    info: ProxyInfo | None = None

    def __init__(self, wrappedProtocol: Any) -> None:
        Layer.__init__(self, wrappedProtocol)
        self._reader: HeaderReader | None = HeaderReader()

    def connectionMade(self) -> None:
        """Wait for the header."""

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if self.info is not None:
                self.wrappedProtocol.dataReceived(data)
            return
        try:
            result = reader.feed(data)
        except InvalidHeader as e:
            self._reader = None
            gate = gateOf(self.transport)
            if gate is not None:
                gate.drop(reasons.PROXY, f"invalid PROXY header ({e})")
            else:
                self.transport.abortConnection()
            return
        if result is None:
            return
        self._reader = None
        info, rest = result
        gate = gateOf(self.transport)
        # LOCAL and UNKNOWN are served with the socket's own address, and
        # counted against it (the proxy's): uncounted, any trusted source
        # had unlimited sockets for 16 bytes each.
        source = info.source if info.source is not None else self.transport.getPeer()
        if gate is not None and getattr(source, "host", None) is not None:
            # Busy in clear only where no TLS handshake would come first.
            above = self.wrappedProtocol
            plain = not (isinstance(above, ClientHelloLayer) or INegotiated.providedBy(above))
            if not gate.claimPeer(source, busy=plain):
                return
        self.info = info
        self.wrappedProtocol.makeConnection(self)
        if rest and self.connected and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def connectionLost(self, reason: Any = None) -> None:
        self._reader = None
        if self.info is not None:
            Layer.connectionLost(self, reason)
        else:
            self.connected = 0

    def readConnectionLost(self) -> None:
        if self.info is not None:
            Layer.readConnectionLost(self)
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self.info is not None:
            Layer.writeConnectionLost(self)
        else:
            self.transport.loseConnection()

    def getPeer(self) -> Any:
        info = self.info
        return info.source if info is not None and info.source else self.transport.getPeer()

    def getHost(self) -> Any:
        info = self.info
        if info is not None and info.destination:
            return info.destination
        return self.transport.getHost()


class ProxyHeaderFactory(LayerFactory):
    """Puts a L{ProxyHeaderLayer} under each of C{wrappedFactory}'s connections."""

    layer = ProxyHeaderLayer
    suffix = " (PROXY)"
