"""Reading one TOML table with its key path: types, ranges and unknown keys, every problem kept.

``configload`` and ``configlb`` build the model with it; nothing here knows what the keys mean.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

from lbproxy.config import HostPort, IPAddress, IPNetwork

T = TypeVar("T")
MISSING: Any = object()
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class Reader:
    """Reads one TOML table, recording a problem (with its key path) for every bad value."""

    def __init__(self, data: dict[str, Any], path: str, problems: list[tuple[str, str]]) -> None:
        self._data = data
        self._path = path
        self._problems = problems
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def problem(self, name: str, message: str) -> None:
        self._problems.append((self.key(name), message))

    def value(self, name: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        """The raw value when it has type ``kind``; ``default`` (and a problem) otherwise."""
        self._seen.add(name)
        if name not in self._data:
            if default is MISSING:
                self.problem(name, f"missing; add {name} = <{what}>")
            return default
        value = self._data[name]
        # bool is an int subclass in Python, but `port = true` is a mistake, not a port.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            self.problem(name, f"expected {what}, got {value!r}")
            return default
        if not isinstance(value, kind):
            self.problem(name, f"expected {what}, got {describe(value)}")
            return default
        return value

    def string(self, name: str, default: Any = MISSING) -> Any:
        value = self.value(name, default, str, "a string")
        if isinstance(value, str) and not value.strip():
            self.problem(name, "must not be empty")
        return value

    def boolean(self, name: str, default: Any = MISSING) -> Any:
        return self.value(name, default, bool, "true or false")

    def integer(self, name: str, default: Any = MISSING, lo: int = 0, hi: int = 2**63) -> Any:
        value = self.value(name, default, int, "an integer")
        if isinstance(value, int) and value is not default and not lo <= value <= hi:
            self.problem(name, f"{value} is out of range; use {lo}..{hi}")
            return default
        return value

    def port(self, name: str, default: Any = MISSING) -> Any:
        return self.integer(name, default, 1, 65535)

    def seconds(self, name: str, default: Any = MISSING, zero_ok: bool = False) -> Any:
        """A positive duration; ``zero_ok`` also admits 0, for durations where 0 means off."""
        value = self.value(name, default, (int, float), "a number of seconds")
        if not isinstance(value, int | float) or value is default:
            return value
        if zero_ok and not 0 <= value < 1e9:
            self.problem(
                name, f"{value} is not a usable number of seconds; use 0 (off) or e.g. 30.0"
            )
            return default
        if not zero_ok and not 0 < value < 1e9:
            self.problem(name, f"{value} is not a usable number of seconds; use e.g. 10.0")
            return default
        return float(value)

    def fraction(self, name: str, default: Any = MISSING) -> Any:
        value = self.value(name, default, (int, float), "a fraction like 0.2")
        if isinstance(value, int | float) and value is not default and not 0 <= value <= 1:
            self.problem(name, f"{value} is out of range; use a fraction 0.0..1.0")
            return default
        return float(value) if isinstance(value, int | float) else value

    def str_list(self, name: str, default: Any = MISSING) -> Any:
        value = self.value(name, default, list, "a list of strings")
        if isinstance(value, list) and value is not default:
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    self.problem(f"{name}[{i}]", f"expected a string, got {describe(item)}")
                    return default
        return value

    def ip(self, name: str, default: Any = MISSING) -> IPAddress | None:
        text = self.string(name, default)
        if not isinstance(text, str) or not text.strip():
            return None
        return parse(self, name, text, ipaddress.ip_address, "an IP address")

    def networks(self, name: str) -> tuple[IPNetwork, ...]:
        """A list of CIDRs; a bare address is a /32 (or /128), IPv4-mapped ones become IPv4."""
        texts = self.str_list(name, [])
        nets = []
        for i, text in enumerate(texts or []):
            what = "a CIDR like 10.0.0.0/16 or an address like 10.0.0.5"
            net = parse(self, f"{name}[{i}]", text, network, what)
            if net is not None:
                nets.append(net)
        return tuple(nets)

    def refuse(self, name: str, message: str) -> None:
        """A key that is known but does not belong here: a problem if it is present."""
        self._seen.add(name)
        if name in self._data:
            self.problem(name, message)

    def has(self, name: str) -> bool:
        return name in self._data

    def table(self, name: str) -> Reader | None:
        value = self.value(name, None, dict, "a table")
        return None if value is None else Reader(value, self.key(name), self._problems)

    def tables(self, name: str) -> list[Reader]:
        value = self.value(name, [], list, "an array of tables ([[...]])")
        readers = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                readers.append(Reader(item, f"{self.key(name)}[{i}]", self._problems))
            else:
                self._problems.append((f"{self.key(name)}[{i}]", "expected a table"))
        return readers

    def finish(self) -> None:
        for name in self._data:
            if name not in self._seen:
                known = ", ".join(sorted(self._seen))
                self.problem(name, f"unknown key; known keys here: {known}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def describe(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    names |= {list: "an array", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def parse(reader: Reader, name: str, text: str, convert: Callable[[str], T], what: str) -> T | None:
    try:
        return convert(text)
    except ValueError:
        reader.problem(name, f"{text!r} is not {what}")
        return None


def network(text: str) -> IPNetwork:
    """``"10.0.0.0/8"``, ``"10.0.0.5"`` (a /32) or ``"::ffff:10.0.0.0/104"`` (as 10.0.0.0/8);
    host bits set are a mistake (ValueError), as in a VPC's CIDRs."""
    net = ipaddress.ip_network(text, strict=True)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        mapped = ipaddress.IPv6Address(net.network_address).ipv4_mapped
        assert mapped is not None  # inside ::ffff:0:0/96
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def normalise_address(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_host_port(text: str) -> HostPort:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> ``("127.0.0.1", 8080)``; raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(text)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ipaddress.ip_address(host)
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return host, port
