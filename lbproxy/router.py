"""Routing by method and path: exact paths first, then ``{param}`` patterns, then the longest
``/prefix/*``. Pure; raises ``NotFound`` (404) or ``MethodNotAllowed`` (405, with Allow)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from lbproxy.config import HTTP_METHODS
from lbproxy.errors import BadRequest, MethodNotAllowed, NotFound

T = TypeVar("T")
_DOT_SEGMENTS = (b"/./", b"/../", b"/%2e/", b"/%2e%2e/", b"/.%2e/", b"/%2e./")
# Bytes of the usual path, none of which starts a query ("?"), a fragment ("#"), a dot segment
# (".") or a percent-encoded one ("%"): a target made of these alone is its own path. One rstrip
# tells (Argument Clinic, cheap), where CPython 3.11's bytes.find/startswith/partition each
# parse their arguments the slow way, about a microsecond per request for the four of them.
_PLAIN = b"abcdefghijklmnopqrstuvwxyz/0123456789-_ABCDEFGHIJKLMNOPQRSTUVWXYZ~!$&'()*+,;=:@"


def request_path(target: bytes) -> bytes:
    """The path of an origin-form target; refuses targets a backend could read differently.

    Dot segments are refused rather than resolved: ``/items/../admin`` would match ``/items/*``
    here and reach ``/admin`` on a backend that resolves them.
    """
    if target and not target.rstrip(_PLAIN) and target[0] == 47:  # 47: "/"
        return target
    if not target.startswith(b"/"):
        raise BadRequest("the request target must be a path (origin-form)")
    # find() rather than ``in``: CPython 3.11's bytes.__contains__ first tries the operand as an
    # int and pays for a raised and cleared TypeError, several times the cost of the search.
    if target.find(b"#") >= 0:
        # A client never sends a fragment (RFC 9110 7.1); backends disagree on whether "#"
        # ends the path, so "/items/a#/../admin" could route here and reach another resource.
        raise BadRequest("fragment (#) in the request target")
    path = target.partition(b"?")[0]
    # Fast path: a dot segment needs "/." or a percent-encoded dot.
    if path.find(b"/.") >= 0 or path.find(b"%") >= 0:
        probe = path.lower() + b"/"
        if any(seg in probe for seg in _DOT_SEGMENTS):
            raise BadRequest("dot segments (. or ..) in the path are refused")
    return path


class _Routes(Generic[T]):
    """The APIs sharing one path pattern, by method."""

    __slots__ = ("by_method", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.by_method: dict[bytes, T] = {}

    def allow(self) -> tuple[str, ...]:
        return tuple(sorted(m.decode() for m in self.by_method))


class Router(Generic[T]):
    def __init__(self, routes: Iterable[tuple[tuple[str, ...], str, T]]) -> None:
        self._exact: dict[bytes, _Routes[T]] = {}
        self._params: list[tuple[tuple[bytes | None, ...], _Routes[T]]] = []
        self._prefixes: list[tuple[bytes, _Routes[T]]] = []
        for methods, path, value in routes:
            entry = self._entry(path)
            for method in methods:
                for m in HTTP_METHODS if method == "ANY" else (method,):
                    entry.by_method.setdefault(m.encode(), value)
        self._prefixes.sort(key=lambda p: len(p[0]), reverse=True)
        # Literal segments win over parameters, left to right: /items/{id} before /{kind}/{id}.
        self._params.sort(key=lambda p: tuple(s is None for s in p[0]))

    def _entry(self, path: str) -> _Routes[T]:
        if path.endswith("/*"):
            prefix = path[:-1].encode()
            for known, routes in self._prefixes:
                if known == prefix:
                    return routes
            new: _Routes[T] = _Routes(path)
            self._prefixes.append((prefix, new))
            return new
        if "{" in path:
            shape = tuple(None if s.startswith("{") else s.encode() for s in path.split("/"))
            for known_shape, routes in self._params:
                if known_shape == shape:
                    return routes
            routes = _Routes(path)
            self._params.append((shape, routes))
            return routes
        return self._exact.setdefault(path.encode(), _Routes(path))

    def _candidates(self, path: bytes) -> Iterable[_Routes[T]]:
        exact = self._exact.get(path)
        if exact is not None:
            yield exact
        if self._params:
            segments = path.split(b"/")
            for shape, routes in self._params:
                if len(shape) == len(segments) and all(
                    (s is None and seg != b"") or s == seg
                    for s, seg in zip(shape, segments, strict=True)
                ):
                    yield routes
        for prefix, routes in self._prefixes:
            if path.startswith(prefix) or path == prefix[:-1]:
                yield routes

    def match(self, method: bytes, path: bytes) -> T:
        exact = self._exact.get(path)
        if exact is not None:  # the common case, without a generator
            value = exact.by_method.get(method)
            if value is not None:
                return value
        if not self._params and exact is None:
            for prefix, routes in self._prefixes:  # the next most common case, inline
                if path.startswith(prefix) or path == prefix[:-1]:
                    value = routes.by_method.get(method)
                    if value is not None:
                        return value
                    break
        allowed: set[str] = set()
        for routes in self._candidates(path):
            value = routes.by_method.get(method)
            if value is not None:
                return value
            allowed.update(routes.allow())
        if allowed:
            raise MethodNotAllowed(tuple(sorted(allowed)), f"{method.decode()} is not allowed")
        raise NotFound(f"no API matches {path[:200].decode('latin-1')}")
