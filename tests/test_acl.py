"""Source-IP lists: deny wins, an empty allow list allows, IPv4 and IPv6, mapped addresses judged
as IPv4, the reasons given, the bounded verdict cache; and whose X-Forwarded-For is believed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbproxy.acl import (
    AccessList,
    IPNetwork,
    client_address,
    normalise_address,
    normalise_network,
    parse_address,
)


def nets(*texts: str) -> list[IPNetwork]:
    return [ipaddress.ip_network(t) for t in texts]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# --- one list's verdict --------------------------------------------------------------------------

ALLOW = nets("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")
DENY = nets("10.9.0.0/16", "2001:db8:bad::/48", "::ffff:192.0.2.0/120")


@pytest.mark.parametrize(
    ("allow", "deny", "address", "permitted"),
    [
        # deny wins over allow
        (ALLOW, DENY, "10.1.2.3", True),
        (ALLOW, DENY, "10.9.2.3", False),
        (ALLOW, DENY, "11.0.0.1", False),
        (ALLOW, DENY, "192.0.2.7", False),  # allowed as a /32, denied by the mapped /120
        (ALLOW, DENY, "192.0.2.8", False),
        # IPv6
        (ALLOW, DENY, "2001:db8::1", True),
        (ALLOW, DENY, "2001:db8:bad::1", False),
        (ALLOW, DENY, "2001:db9::1", False),
        # IPv4-mapped IPv6 addresses are judged as IPv4
        (ALLOW, DENY, "::ffff:10.1.2.3", True),
        (ALLOW, DENY, "::ffff:10.9.2.3", False),
        (ALLOW, DENY, "::ffff:11.0.0.1", False),
        # an empty allow list allows everything not denied
        ([], DENY, "203.0.113.9", True),
        ([], DENY, "2001:db8:1::1", True),
        ([], DENY, "10.9.0.1", False),
        ([], DENY, "::ffff:10.9.0.1", False),
        ([], [], "203.0.113.9", True),
        ([], [], "::1", True),
        # an allow list of one family refuses the other
        (nets("0.0.0.0/0"), [], "::1", False),
        (nets("::/0"), [], "127.0.0.1", False),
        # ...and a mapped client is IPv4, not IPv6
        (nets("::/0"), [], "::ffff:127.0.0.1", False),
        ([], nets("::/0"), "::ffff:127.0.0.1", True),
        ([], nets("::/0"), "::1", False),
        ([], nets("0.0.0.0/0"), "::ffff:127.0.0.1", False),
        # a mapped network in the list covers IPv4 clients
        (nets("::ffff:10.0.0.0/104"), [], "10.200.0.1", True),
        (nets("::ffff:10.0.0.0/104"), [], "11.0.0.1", False),
    ],
)
def test_permits(
    allow: list[IPNetwork], deny: list[IPNetwork], address: str, permitted: bool
) -> None:
    acl = AccessList(allow, deny, "api `items`")
    assert acl.permits(ip(address)) is permitted
    assert acl.permits_text(address) is permitted
    assert (acl.check(ip(address)) is None) is permitted


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", None),
        ("10.9.0.1", "source 10.9.0.1 is denied by api `items` deny 10.9.0.0/16"),
        ("::ffff:10.9.0.1", "source 10.9.0.1 is denied by api `items` deny 10.9.0.0/16"),
        ("192.0.2.9", "source 192.0.2.9 is denied by api `items` deny 192.0.2.0/24"),
        ("11.0.0.1", "source 11.0.0.1 is not in the allow list of api `items`"),
        (
            "2001:db8:bad::9",
            "source 2001:db8:bad::9 is denied by api `items` deny 2001:db8:bad::/48",
        ),
        ("fe80::1", "source fe80::1 is not in the allow list of api `items`"),
    ],
)
def test_reasons(address: str, reason: str | None) -> None:
    acl = AccessList(ALLOW, DENY, "api `items`")
    assert acl.check(ip(address)) == reason
    assert acl.check_text(address) == reason


def test_reason_names_the_list() -> None:
    acl = AccessList(nets("10.0.0.0/8"), [], "listener 0.0.0.0:8080")
    assert acl.check(ip("203.0.113.9")) == (
        "source 203.0.113.9 is not in the allow list of listener 0.0.0.0:8080"
    )


@pytest.mark.parametrize(
    ("allow", "deny", "text", "reason"),
    [
        ([], [], "not-an-ip", None),
        ([], DENY, "not-an-ip", "source 'not-an-ip' is not an IP address, refused by l"),
        (ALLOW, [], "10.0.0.1:80", "source '10.0.0.1:80' is not an IP address, refused by l"),
        (ALLOW, [], "", "source '' is not an IP address, refused by l"),
    ],
)
def test_text_that_is_not_an_address_fails_closed(
    allow: list[IPNetwork], deny: list[IPNetwork], text: str, reason: str | None
) -> None:
    assert AccessList(allow, deny, "l").check_text(text) == reason


def test_is_unrestricted() -> None:
    assert AccessList([], [], "l").is_unrestricted()
    assert not AccessList(ALLOW, [], "l").is_unrestricted()
    assert not AccessList([], DENY, "l").is_unrestricted()


def test_repr_shows_lists_and_cache() -> None:
    acl = AccessList(nets("10.0.0.0/8"), nets("::ffff:10.9.0.0/112"), "api `items`", cache_size=8)
    assert (
        repr(acl) == "<AccessList api `items` allow [10.0.0.0/8] deny [10.9.0.0/16] (0/8 cached)>"
    )
    acl.check_text("10.0.0.1")
    acl.check_text("10.0.0.1")
    acl.check_text("10.9.0.1")
    assert repr(acl).endswith("(2/8 cached)>")


def test_cache_is_bounded_and_drops_the_oldest() -> None:
    acl = AccessList(nets("10.0.0.0/8"), [], "l", cache_size=3)
    for last in range(10):
        assert acl.permits_text(f"10.0.0.{last}")
    assert repr(acl).endswith("(3/3 cached)>")
    assert acl.check_text("11.0.0.1") is not None
    assert repr(acl).endswith("(3/3 cached)>")
    # The newest entries are still there: asking again for them adds nothing, and the
    # cached verdicts are the right ones.
    assert acl.permits_text("10.0.0.9")
    assert not acl.permits_text("11.0.0.1")
    assert repr(acl).endswith("(3/3 cached)>")


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        AccessList([], [], "l", cache_size=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::ffff:a00:1", "10.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("::10.0.0.1", "::a00:1"),  # IPv4-compatible (deprecated) is not mapped
        ("64:ff9b::10.0.0.1", "64:ff9b::a00:1"),  # NAT64 is not mapped either
    ],
)
def test_normalise_address(text: str, expected: str) -> None:
    assert str(normalise_address(ip(text))) == expected
    assert str(parse_address(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
        ("::ffff:10.1.2.3/128", "10.1.2.3/32"),
        ("::ffff:0:0/95", "::fffe:0:0/95"),  # wider than the mapped range: left as IPv6
        ("::/0", "::/0"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("2001:db8::/32", "2001:db8::/32"),
    ],
)
def test_normalise_network(text: str, expected: str) -> None:
    assert str(normalise_network(ipaddress.ip_network(text, strict=False))) == expected


@pytest.mark.parametrize("text", ["", "unknown", "10.0.0.1:80", "[::1]", " 10.0.0.1", "010.0.0.1"])
def test_parse_address_refuses(text: str) -> None:
    assert parse_address(text) is None


V4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
V4_NETS = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False), V4, st.integers(0, 32)
)


@given(
    allow=st.lists(V4_NETS, max_size=3),
    deny=st.lists(V4_NETS, max_size=3),
    addresses=st.lists(V4, min_size=1, max_size=20),
)
def test_matches_the_rule_as_written(
    allow: list[IPNetwork], deny: list[IPNetwork], addresses: list[ipaddress.IPv4Address]
) -> None:
    acl = AccessList(allow, deny, "l", cache_size=4)
    for address in addresses + addresses:  # the second round comes from the cache, or not
        expected = not any(address in n for n in deny) and (
            not allow or any(address in n for n in allow)
        )
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        assert acl.permits_text(str(address)) is expected
        assert acl.permits_text(str(mapped)) is expected
        assert acl.permits(mapped) is expected


# --- X-Forwarded-For -----------------------------------------------------------------------------

TRUSTED = nets("10.0.0.0/24", "2001:db8:f::/48")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # no header: the peer
        ("203.0.113.9", None, "203.0.113.9"),
        ("10.0.0.1", None, "10.0.0.1"),
        # a trusted proxy's header is believed
        ("10.0.0.1", b"198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", b" 198.51.100.7 ", "198.51.100.7"),
        # an untrusted peer's header never is, whatever it says
        ("203.0.113.9", b"10.0.0.5", "203.0.113.9"),
        ("203.0.113.9", b"198.51.100.7, 10.0.0.1", "203.0.113.9"),
        ("10.0.1.1", b"198.51.100.7", "10.0.1.1"),  # just outside the trusted /24
        # forged entries to the left of what the trusted proxy appended are not believed
        ("10.0.0.1", b"1.2.3.4, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", b"10.0.0.9, 198.51.100.7", "198.51.100.7"),
        # a chain of trusted proxies is walked through, right to left
        ("10.0.0.1", b"198.51.100.7, 10.0.0.2, 10.0.0.3", "198.51.100.7"),
        ("10.0.0.1", b"1.2.3.4, 198.51.100.7, 10.0.0.2", "198.51.100.7"),
        ("10.0.0.1", b"198.51.100.7,10.0.0.2,10.0.0.3", "198.51.100.7"),
        # every entry trusted: the left-most, the last trusted hop reached
        ("10.0.0.1", b"10.0.0.2, 10.0.0.3", "10.0.0.2"),
        # a malformed entry ends the walk at the last trusted hop
        ("10.0.0.1", b"unknown", "10.0.0.1"),
        ("10.0.0.1", b"198.51.100.7, unknown", "10.0.0.1"),
        ("10.0.0.1", b"198.51.100.7, garbage, 10.0.0.2", "10.0.0.2"),
        ("10.0.0.1", b"198.51.100.7:4711", "10.0.0.1"),
        ("10.0.0.1", b"198.51.100.7,", "10.0.0.1"),
        ("10.0.0.1", b"", "10.0.0.1"),
        ("10.0.0.1", b"\xff\xfe", "10.0.0.1"),
        ("10.0.0.1", b"198.51.100.7, , 10.0.0.2", "10.0.0.2"),
        # but a malformed entry left of the client does not matter
        ("10.0.0.1", b"garbage, 198.51.100.7", "198.51.100.7"),
        # IPv6 peers, entries and proxies
        ("2001:db8:f::1", b"2001:db8:1::7", "2001:db8:1::7"),
        ("2001:db8:f::1", b"2001:db8:1::7, 2001:db8:f::2, 10.0.0.3", "2001:db8:1::7"),
        ("2001:db8:f::1", b"[2001:db8:1::7]", "2001:db8:f::1"),
        ("2001:db8:1::1", b"198.51.100.7", "2001:db8:1::1"),
        ("2001:db8:f::1", b"2001:DB8:0001:0:0:0:0:7", "2001:db8:1::7"),  # canonical text
        # IPv4-mapped peers and entries count as IPv4
        ("::ffff:10.0.0.1", b"198.51.100.7", "198.51.100.7"),
        ("::ffff:203.0.113.9", b"198.51.100.7", "::ffff:203.0.113.9"),
        ("10.0.0.1", b"::ffff:198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", b"198.51.100.7, ::ffff:10.0.0.2", "198.51.100.7"),
        # a peer that is not an IP address (a Unix socket) is never trusted
        ("", b"198.51.100.7", ""),
    ],
)
def test_client_address(peer: str, xff: bytes | None, expected: str) -> None:
    assert client_address(peer, xff, TRUSTED) == expected


@pytest.mark.parametrize(
    ("peer", "xff"), [("10.0.0.1", b"198.51.100.7"), ("::ffff:10.0.0.1", b"198.51.100.7")]
)
def test_no_trusted_proxies_believes_no_one(peer: str, xff: bytes) -> None:
    assert client_address(peer, xff, []) == peer


def test_mapped_trusted_network_trusts_ipv4_peers() -> None:
    trusted = nets("::ffff:10.0.0.0/120")
    assert client_address("10.0.0.1", b"198.51.100.7", trusted) == "198.51.100.7"
    assert client_address("10.0.1.1", b"198.51.100.7", trusted) == "10.0.1.1"


def test_a_forged_header_does_not_get_past_a_deny_list() -> None:
    # The integration the relay does: judge what client_address says.
    acl = AccessList([], nets("203.0.113.0/24"), "api `items`")
    forged = b"10.0.0.7"
    direct = client_address("203.0.113.9", forged, TRUSTED)
    assert acl.check_text(direct) == (
        "source 203.0.113.9 is denied by api `items` deny 203.0.113.0/24"
    )
    via_proxy = client_address("10.0.0.1", forged + b", 203.0.113.9", TRUSTED)
    assert not acl.permits_text(via_proxy)
