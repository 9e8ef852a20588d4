"""
Who a client is under C{--max-per-peer}: L{peerKey} turns an address into
the key admission counts it by (an IPv4 address; an IPv6 network of
C{--ipv6-peer-prefix} bits; an IPv4 client behind a NAT64/SIIT translator
of L{Translators} as its IPv4 address).
"""

from __future__ import annotations

import ipaddress
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

DEFAULT_PEER_PREFIX6 = 64
"""The leading bits of an IPv6 address that C{--max-per-peer} counts as one
host: a host is given a whole /64 (SLAAC, a home's or a cloud VM's prefix)
and can use any of its 2**64 addresses, so counting single addresses
limited nothing."""

NAT64_LENGTHS = (32, 40, 48, 56, 64, 96)
"""The prefix lengths of RFC 6052 (section 2.2) an IPv4 address can be embedded under."""
_ALWAYS = (
    0xFFFF,  # ::ffff:0:0/96, IPv4-mapped
    0xFFFF0000,  # ::ffff:0:0:0/96, IPv4-translated (SIIT, RFC 7915)
    0x64FF9B << 64,  # 64:ff9b::/96, NAT64's well-known prefix
)
_LOW56 = (1 << 56) - 1
_LINK_LOCAL = 0xFE80 >> 6
"""fe80::/10, the top 10 bits."""


def nat64Prefix(text: str) -> ipaddress.IPv6Network:
    """
    The translator prefix C{text} names (C{2001:db8:46::/96}); C{ValueError},
    naming the lengths allowed, if it is not an IPv6 network of one of
    L{NAT64_LENGTHS} without host bits.
    """
    try:
        network = ipaddress.IPv6Network(text)
    except ValueError as e:
        network, why = None, f" ({e})"
    else:
        why = ""
    if network is None or network.prefixlen not in NAT64_LENGTHS:
        lengths = ", ".join(map(str, NAT64_LENGTHS[:-1])) + " or 96"
        raise ValueError(
            f"must be an IPv6 prefix/length of length {lengths}, "
            f"with no host bits (as 2001:db8:46::/96), not {text!r}{why}"
        )
    return network


class Translators:
    """
    The NAT64/SIIT prefixes whose addresses are IPv4 clients (RFC 6052: the
    IPv4 address in the 32 bits after the prefix, skipping bits 64-71, the
    C{u} octet): C{prefixes} (L{nat64Prefix} checks each), and always
    C{64:ff9b::/96} and C{::ffff:0:0:0/96}; worked out once, for L{peerKey}.

    @ivar whole: bits 0-95 of each /96 prefix (IPv4-mapped's too).
    @ivar split: (shift, the prefix's bits, shift of the C{u}-less address)
        of each shorter prefix.
    """

    def __init__(self, prefixes: tuple[str, ...] = ()) -> None:
        networks = [nat64Prefix(text) for text in prefixes]
        self.whole = frozenset(
            [*_ALWAYS, *(int(n.network_address) >> 32 for n in networks if n.prefixlen == 96)]
        )
        self.split = tuple(
            (128 - n.prefixlen, int(n.network_address) >> (128 - n.prefixlen), 88 - n.prefixlen)
            for n in dict.fromkeys(networks)
            if n.prefixlen < 96
        )


_BUILTIN = Translators()


def peerKey(host: str, prefix6: int = DEFAULT_PEER_PREFIX6, nat64: Translators = _BUILTIN) -> str:
    """
    What C{host} is counted as under C{maxPerPeer}: an IPv4 address itself
    (also spelled as IPv4-mapped IPv6, C{::ffff:192.0.2.7}, or through a
    translator of C{nat64}, C{64:ff9b::192.0.2.7}); an IPv6 address as its
    network of C{prefix6} bits (C{2001:db8:1:2::/64}), except where a prefix
    names no one host: a link-local address (with its zone), C{::1}, C{::/96}.
    """
    if ":" not in host:
        return host
    text, _, zone = host.partition("%")
    try:  # the socket module's, ten times quicker than ipaddress's (this runs at accept)
        value = int.from_bytes(inet_pton(AF_INET6, text), "big")
    except (OSError, ValueError):
        return host
    if value >> 32 in nat64.whole:
        return inet_ntop(AF_INET, (value & 0xFFFFFFFF).to_bytes(4, "big"))
    for shift, prefix, at in nat64.split:
        if value >> shift == prefix:
            unspread = (value >> 64 << 56) | (value & _LOW56)  # the u octet out
            return inet_ntop(AF_INET, (unspread >> at & 0xFFFFFFFF).to_bytes(4, "big"))
    if value >> 32 == 0 or value >> 118 == _LINK_LOCAL:
        address = str(ipaddress.IPv6Address(value))
        return f"{address}%{zone}" if zone else address
    bits = 128 - prefix6
    return f"{inet_ntop(AF_INET6, (value >> bits << bits).to_bytes(16, 'big'))}/{prefix6}"
