"""Source-IP allow and deny lists, and whose ``X-Forwarded-For`` to believe. Pure.

Theory of operation. A listener and an API may each carry an ``AccessList``; a request passes
only if every list on its way permits the client address. One list decides in this order:

1. an address in any ``deny`` network is refused (deny wins over allow);
2. otherwise, an empty ``allow`` list permits it;
3. otherwise, it is permitted only if it is in some ``allow`` network.

IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack ``::`` socket reports for an
IPv4 client) are judged as the IPv4 address they carry, and mapped networks in a list
(``::ffff:10.0.0.0/104``) as the IPv4 network they cover, so one IPv4 rule holds on both kinds
of socket. Other IPv6 networks never match an IPv4 client: ``deny = ["::/0"]`` refuses IPv6
clients only.

Refusals come back as a reason for the 403 body and the log ("source 203.0.113.9 is denied by
api `items` deny 203.0.113.0/24"). ``check_text`` is the relay's path: it caches the verdict by
the address string as the transport reported it, since the same clients come back on keep-alive
connections; the cache is bounded, oldest entry out first.

Which address is judged is ``client_address``'s business; see its docstring.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CACHE_SIZE = 4096

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def normalise_address(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def normalise_network(net: IPNetwork) -> IPNetwork:
    """The IPv4 network a mapped IPv6 network (``::ffff:a.b.c.d/96+n``) covers; any other
    network unchanged."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        inner = normalise_address(net.network_address)
        return ipaddress.IPv4Network((inner, net.prefixlen - 96))
    return net


@functools.lru_cache(maxsize=CACHE_SIZE)
def parse_address(text: str) -> IPAddress | None:
    """The normalised address in ``text``, or None if it is not a bare IP address. Cached:
    the same proxies and clients come back, and parsing costs about 2 us."""
    try:
        return normalise_address(ipaddress.ip_address(text))
    except ValueError:
        return None


def _first_match(ip: IPAddress, networks: Sequence[IPNetwork]) -> IPNetwork | None:
    for net in networks:
        if ip in net:
            return net
    return None


def _is_in(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return _first_match(ip, networks) is not None


class AccessList:
    """One allow/deny pair, named as the 403 reason should name it (``api `items```,
    ``listener 0.0.0.0:8080``)."""

    __slots__ = ("_cache", "_cache_size", "allow", "deny", "name")

    def __init__(
        self,
        allow: Sequence[IPNetwork],
        deny: Sequence[IPNetwork],
        name: str = "the access list",
        *,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, not {cache_size}")
        self.allow = tuple(normalise_network(n) for n in allow)
        self.deny = tuple(normalise_network(n) for n in deny)
        self.name = name
        self._cache: dict[str, str | None] = {}
        self._cache_size = cache_size

    def is_unrestricted(self) -> bool:
        """True when the list permits every address, so the caller may skip it."""
        return not self.allow and not self.deny

    def check(self, ip: IPAddress) -> str | None:
        """None if ``ip`` is permitted, else the reason it is refused."""
        ip = normalise_address(ip)
        denied_by = _first_match(ip, self.deny)
        if denied_by is not None:
            return f"source {ip} is denied by {self.name} deny {denied_by}"
        if self.allow and not _is_in(ip, self.allow):
            return f"source {ip} is not in the allow list of {self.name}"
        return None

    def permits(self, ip: IPAddress) -> bool:
        return self.check(ip) is None

    def check_text(self, ip: str) -> str | None:
        """``check`` for an address string, cached by that string. Text that is not an IP
        address is refused by any list that restricts something (fail closed)."""
        cache = self._cache
        if ip in cache:
            return cache[ip]
        parsed = parse_address(ip)
        if parsed is not None:
            reason = self.check(parsed)
        elif self.is_unrestricted():
            reason = None
        else:
            reason = f"source {ip!r} is not an IP address, refused by {self.name}"
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[ip] = reason
        return reason

    def permits_text(self, ip: str) -> bool:
        return self.check_text(ip) is None

    def __repr__(self) -> str:
        allow = ", ".join(map(str, self.allow))
        deny = ", ".join(map(str, self.deny))
        return (
            f"<AccessList {self.name} allow [{allow}] deny [{deny}]"
            f" ({len(self._cache)}/{self._cache_size} cached)>"
        )


def client_address(peer: str, forwarded_for: bytes | None, trusted: Sequence[IPNetwork]) -> str:
    """The address to judge and log for a request from ``peer`` (the direct TCP peer).

    ``X-Forwarded-For`` is believed only when ``peer`` itself is a trusted proxy; from anyone
    else it is ignored, so a client cannot pick its own address by sending the header. From a
    trusted peer the header is walked from the right (each proxy appends the address it saw):
    an entry that is itself a trusted proxy is skipped, and the first one that is not is the
    client. This is the right-most untrusted address, as nginx finds it with
    ``real_ip_recursive on``: entries to the left of it were written by the client and are not
    believed. A malformed entry (a port, ``unknown``, an empty item) ends the walk, and so does
    the end of the header: the answer is then the last trusted hop reached (the peer itself
    when the right-most entry is already malformed).

    Several ``X-Forwarded-For`` header lines must be joined with ``", "`` in order before the
    call. The result is ``peer`` unchanged when the header is not consulted, and otherwise the
    canonical text of the chosen address (IPv4-mapped addresses as IPv4).
    """
    if forwarded_for is None or not trusted:
        return peer
    hop = parse_address(peer)
    trusted = [normalise_network(n) for n in trusted]
    if hop is None or not _is_in(hop, trusted):
        return peer
    text = forwarded_for.decode("latin-1")
    for item in reversed(text.split(",")):
        ip = parse_address(item.strip(" \t"))
        if ip is None:
            break
        hop = ip
        if not _is_in(ip, trusted):
            break
    return str(hop)
