"""Routing by method and path: precedence, 404 versus 405, and request targets that are refused."""

from __future__ import annotations

import pytest

from lbproxy.config import HTTP_METHODS
from lbproxy.errors import BadRequest, MethodNotAllowed, NotFound
from lbproxy.router import Router, request_path

Routes = list[tuple[tuple[str, ...], str, str]]

PRECEDENCE: Routes = [
    (("GET",), "/items/*", "items-prefix"),
    (("GET",), "/items/special/*", "special-prefix"),
    (("GET",), "/items/{id}", "item"),
    (("GET",), "/items/{id}/tags/{tag}", "item-tag"),
    (("GET",), "/items/42", "item-42"),
    (("GET",), "/items", "items-exact"),
    (("GET",), "/*", "root-prefix"),
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/items", "items-exact"),
        ("/items/42", "item-42"),
        ("/items/7", "item"),
        ("/items/special", "item"),
        ("/items/7/tags/red", "item-tag"),
        ("/items/7/tags", "items-prefix"),
        ("/items/7/tags/red/x", "items-prefix"),
        ("/items/special/7", "special-prefix"),
        ("/items/special/", "special-prefix"),
        ("/itemsx", "root-prefix"),
        ("/", "root-prefix"),
        ("/other/path", "root-prefix"),
    ],
)
def test_precedence_exact_then_param_then_longest_prefix(path: str, expected: str) -> None:
    assert Router(PRECEDENCE).match(b"GET", path.encode()) == expected


@pytest.mark.parametrize(
    ("routes", "path", "expected"),
    [
        ([(("GET",), "/items/*", "p")], "/items", "p"),
        ([(("GET",), "/items/*", "p")], "/items/", "p"),
        ([(("GET",), "/items/*", "p")], "/items/a/b/c", "p"),
        ([(("GET",), "/a/*", "short"), (("GET",), "/a/b/c/*", "long")], "/a/b/c/d", "long"),
        ([(("GET",), "/a/b/c/*", "long"), (("GET",), "/a/*", "short")], "/a/b/c/d", "long"),
        ([(("GET",), "/a/*", "short"), (("GET",), "/a/b/c/*", "long")], "/a/b/x", "short"),
        ([(("GET",), "/a/*", "short"), (("GET",), "/a/b/*", "long")], "/a/b", "long"),
        ([(("GET",), "/*", "root")], "/", "root"),
        ([(("GET",), "/", "slash")], "/", "slash"),
        ([(("GET",), "/a/{x}/c", "p")], "/a/b/c", "p"),
        # a literal segment is more specific than a parameter, whichever is declared first
        (
            [(("GET",), "/items/{id}", "items"), (("GET",), "/{kind}/{id}", "any")],
            "/items/3",
            "items",
        ),
        (
            [(("GET",), "/{kind}/{id}", "any"), (("GET",), "/items/{id}", "items")],
            "/items/3",
            "items",
        ),
    ],
    ids=[
        "prefix-matches-its-own-path",
        "prefix-matches-trailing-slash",
        "prefix-matches-deep-path",
        "longest-prefix-wins",
        "longest-prefix-wins-declared-first",
        "shorter-prefix-when-longer-does-not-match",
        "prefix-bare-path-prefers-longest",
        "root-prefix",
        "root-exact",
        "param-in-the-middle",
        "literal-beats-param-declared-first",
        "literal-beats-param-declared-last",
    ],
)
def test_match(routes: Routes, path: str, expected: str) -> None:
    assert Router(routes).match(b"GET", path.encode()) == expected


@pytest.mark.parametrize(
    "path",
    ["/item", "/itemsx", "/items/7/x", "/other", "/", "/items/7/"],
)
def test_no_route_is_404(path: str) -> None:
    router = Router([(("GET",), "/items/{id}", "item"), (("GET",), "/exact", "exact")])
    with pytest.raises(NotFound) as caught:
        router.match(b"GET", path.encode())
    assert caught.value.status == 404
    assert caught.value.reason == "no_route"
    assert str(caught.value) == f"no API matches {path}"


def test_param_does_not_match_an_empty_segment() -> None:
    router = Router([(("GET",), "/items/{id}", "item")])
    with pytest.raises(NotFound):
        router.match(b"GET", b"/items/")


def test_prefix_needs_a_segment_boundary() -> None:
    router = Router([(("GET",), "/items/*", "p")])
    with pytest.raises(NotFound):
        router.match(b"GET", b"/itemsx")


METHOD_ROUTES: Routes = [
    (("GET", "HEAD"), "/a", "a-read"),
    (("POST",), "/a/{id}", "a-write"),
    (("PUT",), "/a/{key}", "a-put"),
    (("GET", "PUT"), "/b/*", "b"),
    (("DELETE",), "/b/special", "b-special"),
    (("ANY",), "/any", "any"),
]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/a", ("GET", "HEAD")),
        ("GET", "/a/1", ("POST", "PUT")),
        ("POST", "/b/x", ("GET", "PUT")),
        ("POST", "/b", ("GET", "PUT")),
        ("POST", "/b/special", ("DELETE", "GET", "PUT")),
        ("CONNECT", "/any", tuple(sorted(HTTP_METHODS))),
        ("get", "/a", ("GET", "HEAD")),
    ],
)
def test_wrong_method_is_405_with_allowed(method: str, path: str, allowed: tuple[str]) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        Router(METHOD_ROUTES).match(method.encode(), path.encode())
    assert caught.value.status == 405
    assert caught.value.allowed == allowed
    assert str(caught.value) == f"{method} is not allowed"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/a", "a-read"),
        ("HEAD", "/a", "a-read"),
        ("POST", "/a/1", "a-write"),
        ("PUT", "/a/1", "a-put"),
        ("PUT", "/b/x", "b"),
        ("DELETE", "/b/special", "b-special"),
        ("GET", "/b/special", "b"),
        *(pytest.param(m, "/any", "any", id=f"ANY-{m}") for m in HTTP_METHODS),
    ],
)
def test_method_match(method: str, path: str, expected: str) -> None:
    assert Router(METHOD_ROUTES).match(method.encode(), path.encode()) == expected


def test_first_declared_route_keeps_a_method_and_path() -> None:
    router = Router([(("GET",), "/x", "first"), (("GET", "POST"), "/x", "second")])
    assert router.match(b"GET", b"/x") == "first"
    assert router.match(b"POST", b"/x") == "second"


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/items/7", b"/items/7"),
        (b"/items/7?x=1", b"/items/7"),
        (b"/items/7?next=/../admin", b"/items/7"),
        (b"/items?", b"/items"),
        (b"/", b"/"),
        (b"/a/.b", b"/a/.b"),
        (b"/a/..b", b"/a/..b"),
        (b"/a/b.", b"/a/b."),
        (b"/a/...", b"/a/..."),
        (b"/.well-known/x", b"/.well-known/x"),
        (b"/a/%2eb", b"/a/%2eb"),
    ],
)
def test_request_path(target: bytes, path: bytes) -> None:
    assert request_path(target) == path


def test_query_string_does_not_affect_routing() -> None:
    router = Router(PRECEDENCE)
    assert router.match(b"GET", request_path(b"/items/42?id=7")) == "item-42"
    assert router.match(b"GET", request_path(b"/items?x=/items/42")) == "items-exact"


@pytest.mark.parametrize(
    "target",
    [
        b"/a/../b",
        b"/a/./b",
        b"/a/.",
        b"/a/..",
        b"/..",
        b"/.",
        b"/a/%2e%2e/b",
        b"/a/%2E%2E/b",
        b"/a/%2e%2E",
        b"/a/%2e/b",
        b"/a/.%2e/b",
        b"/a/%2e./b",
        b"/items/../admin?x=1",
    ],
)
def test_dot_segments_are_refused(target: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        request_path(target)
    assert caught.value.status == 400
    assert str(caught.value) == "dot segments (. or ..) in the path are refused"


@pytest.mark.parametrize(
    "target",
    [b"http://example.com/items", b"*", b"example.com:443", b"", b"items/7", b"?x=1"],
)
def test_non_origin_form_is_refused(target: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        request_path(target)
    assert str(caught.value) == "the request target must be a path (origin-form)"


@pytest.mark.parametrize(
    "target", [b"/items/7#frag", b"/items/a#/../admin", b"/items?x=1#f", b"/#"]
)
def test_fragments_are_refused(target: bytes) -> None:
    # A fragment is never sent by a client; backends disagree on where it ends the path.
    with pytest.raises(BadRequest) as caught:
        request_path(target)
    assert caught.value.status == 400
    assert str(caught.value) == "fragment (#) in the request target"
