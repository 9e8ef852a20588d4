"""
PROXY headers for the tests and C{bench/attack.py}: valid ones, and every
malformed kind the server must refuse (without importing the test runners).
"""

from __future__ import annotations

import socket
import struct

from timerserver.proxyheader import V2_SIGNATURE


def v1(client: str, port: int = 50000) -> bytes:
    return f"PROXY TCP4 {client} 192.0.2.9 {port} 5050\r\n".encode()


def v2(
    client: str, port: int = 50000, command: int = 0x21, family: int = 0x11, tlvs: bytes = b""
) -> bytes:
    body = socket.inet_aton(client) + socket.inet_aton("192.0.2.9") + struct.pack("!HH", port, 5050)
    body += tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body)) + body


def v2v6(client: str, port: int = 50000) -> bytes:
    body = (
        socket.inet_pton(socket.AF_INET6, client)
        + socket.inet_pton(socket.AF_INET6, "2001:db8::9")
        + struct.pack("!HH", port, 5050)
    )
    return V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body


INVALID = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"PROXY nonsense\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.9 50000\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.9 x 5050\r\n",  # Twisted: ValueError
    b"PROXY TCP4 \xff\xfe 192.0.2.9 1 5050\r\n",  # Twisted: UnicodeDecodeError
    b"PROXY TCP4 evil\nFAKE\x1b[31m 192.0.2.9 1 5050\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.9 -5 5050\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.9 0 5050\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.9 1 99999999\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.9 1 65536\r\n",
    b"PROXY TCP4 192.0.2.7 192.0.2.9 01 5050\r\n",
    b"PROXY TCP4 2001:db8::7 192.0.2.9 1 5050\r\n",  # the wrong family
    b"PROXY TCP6 192.0.2.7 2001:db8::9 1 5050\r\n",
    b"PROXY TCP6 fe80::1%eth0 2001:db8::9 1 5050\r\n",
    b"PROXY TCP4 192.0.2.7  192.0.2.9 1 5050\r\n",
    b"PROXY TCP4 " + b"1" * 200 + b"\r\n",
    b"PROXY TCP4 " + b"1" * 200,  # no CRLF within 107 bytes
    V2_SIGNATURE + b"\x99\x11\x00\x00",
    V2_SIGNATURE + b"\x22\x11\x00\x0c",  # an unknown command
    v2("192.0.2.7", family=0x12),  # UDP
    V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"/etc/passwd".ljust(216, b"\x00"),  # UNIX
    V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8,  # too short for IPv4
    v2("192.0.2.7", port=0),
    V2_SIGNATURE + b"\x21\x11\xff\xff",  # 64 KiB declared
]
"""Headers the reader must refuse; the comments name what Twisted's own parser did."""
