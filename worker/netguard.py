"""Which network addresses the worker's outbound requests may reach (DESIGN.md, "Trust boundary").

A tenant chooses the webhook URL. Without a policy, a signed POST with a path
and query of the tenant's choosing could be sent to the worker's own loopback,
the cluster's private network, or a cloud metadata service (169.254.169.254).
So only *public* unicast addresses are allowed:

* :func:`refusal` says why an address is not public (``None`` when it is). It
  uses :mod:`ipaddress`'s properties plus explicit networks, because those
  properties differ between Python versions (``fec0::/10``, 6to4 and multicast
  count as "global" in some) and know nothing of addresses *embedded* in IPv6
  forms such as 6to4 or NAT64.
* :func:`parse_literal` reads a host as an IP address in every spelling a
  resolver accepts (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``
  all mean 127.0.0.1 to ``getaddrinfo``), so an intake check cannot be dodged
  by an unusual spelling.
* :func:`is_local_name` catches ``localhost`` and ``*.localhost`` (RFC 6761),
  which resolve to loopback without DNS.
* :func:`resolve` is the one DNS lookup of a delivery; its answers are checked
  and then connected to as they are, so a second lookup (DNS rebinding) never
  gets a say.

Pure apart from :func:`resolve`; settings (``RENDER_WEBHOOK_ALLOW_PRIVATE``)
are the caller's business.
"""

from __future__ import annotations

import ipaddress
import re
import socket

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Everything here is refused on top of what ipaddress says is not global, so the
# policy is the same on every Python version. Sources: the IANA special-purpose
# address registries.
_FORBIDDEN_V4 = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
    )
)
_FORBIDDEN_V6 = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        # A dual-stack socket connecting to ::ffff:a.b.c.d reaches the IPv4
        # a.b.c.d; no public receiver is published that way, so these forms are
        # refused outright rather than trusted to an embedded-address check.
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::/96", "IPv4-compatible"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
# IPv6 forms that carry an IPv4 address a gateway will connect to: the policy
# applies to the embedded address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")

# What inet_aton might take for an address: digits, hex and dots only. Checked
# first because glibc's inet_aton ignores anything after a space ("1.2.3.4 x").
_AS_NUMBERS = re.compile(r"[0-9a-fA-FxX.]+")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def refusal(addr: Address) -> str | None:
    """Why ``addr`` is not a public unicast address, or ``None`` if it is."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
            inner = refusal(embedded)
            return f"NAT64 form of a {inner} address ({embedded})" if inner else None
        if addr.sixtofour is not None:
            inner = refusal(addr.sixtofour)
            return f"6to4 form of a {inner} address ({addr.sixtofour})" if inner else None
        for net6, why in _FORBIDDEN_V6:
            if addr in net6:
                return why
    else:
        for net4, why in _FORBIDDEN_V4:
            if addr in net4:
                return why
    # Whatever the tables above missed (new IANA assignments known to a newer
    # Python): the ipaddress flags, in the spirit of "public unicast only".
    for flag in ("is_loopback", "is_private", "is_link_local", "is_multicast", "is_reserved", "is_unspecified"):
        if getattr(addr, flag):
            return flag.removeprefix("is_").replace("_", "-")
    if not addr.is_global:
        return "non-global"
    return None


def is_public(addr: Address) -> bool:
    return refusal(addr) is None


def parse_literal(host: str) -> Address | None:
    """``host`` as an IP address if a resolver would read it as one, in any spelling; else ``None``.

    Accepts ``[...]`` brackets, an IPv6 zone (``fe80::1%eth0``), one trailing
    dot, and the inet_aton shorthands (``127.1``, ``0x7f000001``,
    ``0177.0.0.1``, ``2130706433``) that getaddrinfo and therefore http.client
    accept too.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.endswith(".") and ":" not in h:
        h = h[:-1]
    if not h:
        return None
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if ":" in h or not _AS_NUMBERS.fullmatch(h):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except OSError:
        return None


def is_local_name(host: str) -> bool:
    """``localhost``, ``*.localhost`` and the usual /etc/hosts aliases of loopback."""
    h = host.strip().rstrip(".").lower()
    return h in _LOCAL_NAMES or h.endswith(".localhost")


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection, in the resolver's order, without duplicates.

    ``getaddrinfo`` normalises every spelling of a literal (``127.1`` →
    ``127.0.0.1``), so checking its answers covers literals as well as names.
    Raises :class:`OSError` (``socket.gaierror``) when the name does not resolve.
    """
    seen: list[str] = []
    for family, _type, _proto, _canon, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6):
            address = str(sockaddr[0])
            if address not in seen:
                seen.append(address)
    return seen
