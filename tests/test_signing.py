"""The signing scheme (lbproxy.signing): exact strings-to-sign, sign/verify round trips, every
failure message with its status, replays and the bounded nonce cache."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from lbproxy.signing import (
    MAX_NONCE_LENGTH,
    SignatureError,
    VerifiedApp,
    Verifier,
    content_md5,
    debug_string,
    is_debug_requested,
    not_granted,
    sign,
    string_to_sign,
)

NOW = 1_700_000_000.0
TS = b"1700000000000"
KEY, SECRET = "app-key-1", "s3cret"
X_CA = [
    (b"X-Ca-Key", b"k"),
    (b"X-Ca-Nonce", b"n"),
    (b"X-Ca-Timestamp", TS),
    (b"X-Ca-Signature-Headers", b"x-ca-timestamp,x-ca-key,x-ca-nonce"),
]
CANON = b"x-ca-key:k\nx-ca-nonce:n\nx-ca-timestamp:1700000000000\n"
Headers = list[tuple[bytes, bytes]]


def verifier(**kwargs: int) -> Verifier:
    return Verifier({KEY: ("orders", SECRET.encode()), "other": ("billing", b"x")}, **kwargs)


def signed(
    method: str = "GET",
    url: str = "/p",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    now: float = NOW,
    nonce: str | None = "nonce-1",
    key: str = KEY,
) -> Headers:
    """A request's headers as sent: the caller's, then those ``sign`` adds."""
    given = headers or []
    added = sign(method, url, given, body, key=key, secret=SECRET, now=now, nonce=nonce)
    return [(n.encode(), v.encode()) for n, v in [*given, *added]]


def refusal(
    method: bytes, target: bytes, headers: Headers, now: float = NOW, v: Verifier | None = None
) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        (v or verifier()).verify(method, target, headers, now)
    return info.value


@pytest.mark.parametrize(
    ("method", "target", "extra", "expected"),
    [
        (b"GET", b"/p", [], b"GET\n\n\n\n\n" + CANON + b"/p"),
        (
            b"post",
            b"/a/b",
            [
                (b"ACCEPT", b" application/json "),
                (b"content-md5", b"XUFAKrxLKna5cZ2REBfFkg=="),
                (b"Content-Type", b"text/plain\t"),
                (b"Date", b"Tue, 14 Nov 2023 22:13:20 GMT"),
            ],
            b"post\napplication/json\nXUFAKrxLKna5cZ2REBfFkg==\ntext/plain\n"
            b"Tue, 14 Nov 2023 22:13:20 GMT\n" + CANON + b"/a/b",
        ),
        (b"GET", b"/p?b=2&a=1&c&d=&a=0", [], b"GET\n\n\n\n\n" + CANON + b"/p?a=1&a=0&b=2&c&d"),
        (b"GET", b"/p?q=a%26b=c&Z=1", [], b"GET\n\n\n\n\n" + CANON + b"/p?Z=1&q=a%26b=c"),
        (b"GET", b"/p?", [], b"GET\n\n\n\n\n" + CANON + b"/p"),
        (b"GET", b"/p?&&b=1&", [], b"GET\n\n\n\n\n" + CANON + b"/p?b=1"),
        (b"GET", b"/p?==x&=y", [], b"GET\n\n\n\n\n" + CANON + b"/p?==x&=y"),
        (b"GET", b"http://example.com:8080/p?b=1&a", [], b"GET\n\n\n\n\n" + CANON + b"/p?a&b=1"),
        (b"GET", b"https://example.com?a=1", [], b"GET\n\n\n\n\n" + CANON + b"/?a=1"),
        (b"GET", b"https://example.com", [], b"GET\n\n\n\n\n" + CANON + b"/"),
        (b"OPTIONS", b"*", [], b"OPTIONS\n\n\n\n\n" + CANON + b"*"),
    ],
    ids=[
        "minimal",
        "fixed-headers-case-and-whitespace",
        "query-sorted-stable",
        "query-kept-percent-encoded",
        "empty-query",
        "empty-params-dropped",
        "empty-names",
        "absolute-form",
        "absolute-form-no-path",
        "absolute-form-bare",
        "asterisk",
    ],
)
def test_string_to_sign_vectors(
    method: bytes, target: bytes, extra: Headers, expected: bytes
) -> None:
    assert string_to_sign(method, target, [*extra, *X_CA]) == expected


def test_extra_signed_headers_are_sorted_lower_case_in_the_canonical_part() -> None:
    headers = [
        *X_CA[:3],
        (b"X-Ca-Signature-Headers", b" X-Zeta , x-ca-key,X-Alpha,x-ca-nonce,x-ca-timestamp,"),
        (b"x-zeta", b"last"),
        (b"X-ALPHA", b" first "),
        (b"X-Unsigned", b"ignored"),
        (b"X-Unsigned", b"repeated, still ignored"),
    ]
    assert string_to_sign(b"GET", b"/", headers) == (
        b"GET\n\n\n\n\nx-alpha:first\n" + CANON + b"x-zeta:last\n/"
    )


def test_sign_vector_is_exact() -> None:
    added = sign("GET", "http://h/p?b=2&a=1#frag", {}, b"", key="k", secret="s", now=NOW, nonce="n")
    expected_sts = b"GET\n\n\n\n\n" + CANON + b"/p?a=1&b=2"
    mac = base64.b64encode(hmac.new(b"s", expected_sts, hashlib.sha256).digest()).decode()
    assert mac == "7nkF87VpC15Gy34kpM+Wdh/z6b1beVFMsuNl6b3ef4s="
    assert added == [
        ("X-Ca-Key", "k"),
        ("X-Ca-Timestamp", "1700000000000"),
        ("X-Ca-Nonce", "n"),
        ("X-Ca-Signature-Headers", "x-ca-key,x-ca-nonce,x-ca-timestamp"),
        ("X-Ca-Signature", mac),
    ]


def test_sign_signs_every_given_header_and_the_body_md5() -> None:
    given = {"Content-Type": "application/json", "X-Trace": "t1", "Accept": "*/*"}
    added = dict(sign("PUT", "/x", given, b"hello", key="k", secret=b"s", now=NOW, nonce="n"))
    assert added["Content-MD5"] == "XUFAKrxLKna5cZ2REBfFkg==" == content_md5(b"hello")
    assert added["X-Ca-Signature-Headers"] == "x-ca-key,x-ca-nonce,x-ca-timestamp,x-trace"
    sts = b"PUT\n*/*\nXUFAKrxLKna5cZ2REBfFkg==\napplication/json\n\n" + CANON + b"x-trace:t1\n/x"
    mac = base64.b64encode(hmac.new(b"s", sts, hashlib.sha256).digest()).decode()
    assert added["X-Ca-Signature"] == mac


def test_sign_is_deterministic_given_now_and_nonce_and_draws_a_uuid4_otherwise() -> None:
    assert signed() == signed()
    first, second = dict(signed(nonce=None)), dict(signed(nonce=None))
    assert first[b"X-Ca-Nonce"] != second[b"X-Ca-Nonce"]
    assert len(first[b"X-Ca-Nonce"]) == 36 and first[b"X-Ca-Nonce"][14:15] == b"4"


def test_no_body_no_content_md5() -> None:
    assert b"Content-MD5" not in dict(signed(body=b""))


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ([("X-Ca-Key", "mine")], b"", "header X-Ca-Key is set by sign()"),
        ([("x-ca-signature", "x")], b"", "header x-ca-signature is set by sign()"),
        ([("X-A", "1"), ("x-a", "2")], b"", "header x-a given twice"),
        ([("Content-MD5", "AAAA")], b"hello", "the Content-MD5 given is not the body's"),
    ],
)
def test_sign_refuses_what_the_verifier_would(
    headers: list[tuple[str, str]], body: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sign("GET", "/", headers, body, key="k", secret="s", now=NOW)


def test_a_given_content_md5_of_the_body_is_used_not_repeated() -> None:
    headers = [("Content-MD5", content_md5(b"hello"))]
    request = signed("POST", "/p", headers, b"hello")
    assert [n for n, _ in request].count(b"Content-MD5") == 1
    assert verifier().verify(b"POST", b"/p", request, NOW) == VerifiedApp("orders", KEY)


@pytest.mark.parametrize(
    ("method", "url", "target", "headers", "body"),
    [
        ("GET", "/p", b"/p", [], b""),
        ("GET", "http://h:80/p?z=1&a=%20&a=2&flag", b"/p?z=1&a=%20&a=2&flag", [], b""),
        ("POST", "/orders", b"/orders", [("Content-Type", "application/json")], b'{"n":1}'),
        (
            "DELETE",
            "/o/1",
            b"/o/1",
            [("Accept", "application/json"), ("Date", "Tue, 14 Nov 2023 22:13:20 GMT")],
            b"",
        ),
        ("PATCH", "/o", b"/o", [("X-Ca-Stage", "TEST"), ("X-Custom", "v")], b"x"),
        ("GET", "/caf%C3%A9", b"/caf%C3%A9", [("X-Name", "café")], b""),
    ],
)
def test_round_trip(
    method: str, url: str, target: bytes, headers: list[tuple[str, str]], body: bytes
) -> None:
    request = signed(method, url, headers, body)
    assert verifier().verify(method.encode(), target, request, NOW) == VerifiedApp("orders", KEY)


def test_header_names_are_case_insensitive_on_the_wire() -> None:
    request = signed("GET", "/p", [("X-Custom", "v")])
    wire = [(n.lower() if i % 2 else n.upper(), v) for i, (n, v) in enumerate(request)]
    wire = [(n, v.upper() if n.lower() == b"x-ca-signature-headers" else v) for n, v in wire]
    assert {n.lower(): v for n, v in wire}[b"x-ca-signature-headers"] == (
        b"X-CA-KEY,X-CA-NONCE,X-CA-TIMESTAMP,X-CUSTOM"
    )
    assert {n for n, _ in wire} >= {b"X-CUSTOM", b"x-ca-key", b"X-CA-TIMESTAMP", b"x-ca-nonce"}
    assert verifier().verify(b"GET", b"/p", wire, NOW).name == "orders"


def replace(headers: Headers, name: bytes, value: bytes | None) -> Headers:
    """``headers`` with ``name`` given ``value``, or removed when None."""
    out = [(n, v) for n, v in headers if n.lower() != name.lower()]
    return out if value is None else [*out, (name, value)]


BASE = signed("POST", "/p?a=1", [("X-Custom", "v"), ("Accept", "*/*")], b"body")
FAILURES: list[tuple[str, bytes, bytes, Headers, int, str]] = [
    ("no-key", b"POST", b"/p?a=1", replace(BASE, b"X-Ca-Key", None), 401, "missing X-Ca-Key"),
    (
        "unknown-key",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Key", b"nope"),
        401,
        "unknown X-Ca-Key",
    ),
    (
        "no-signature",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Signature", None),
        401,
        "missing X-Ca-Signature",
    ),
    (
        "no-timestamp",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Timestamp", None),
        401,
        "missing X-Ca-Timestamp",
    ),
    ("no-nonce", b"POST", b"/p?a=1", replace(BASE, b"X-Ca-Nonce", None), 401, "missing X-Ca-Nonce"),
    (
        "no-signature-headers",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Signature-Headers", None),
        401,
        "missing X-Ca-Signature-Headers",
    ),
    (
        "nonce-unsigned",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Signature-Headers", b"x-ca-key,x-ca-timestamp,x-custom"),
        401,
        "x-ca-nonce not in X-Ca-Signature-Headers",
    ),
    (
        "timestamp-unsigned",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Signature-Headers", b"x-ca-key,x-ca-nonce"),
        401,
        "x-ca-timestamp not in X-Ca-Signature-Headers",
    ),
    (
        "key-unsigned",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Signature-Headers", b"x-ca-nonce,x-ca-timestamp"),
        401,
        "x-ca-key not in X-Ca-Signature-Headers",
    ),
    (
        "signed-header-absent",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Custom", None),
        401,
        "signed header missing: x-custom",
    ),
    (
        "signature-headers-twice",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Signature-Headers", b"x-ca-key,x-ca-nonce,X-CA-KEY,x-ca-timestamp"),
        400,
        "X-Ca-Signature-Headers lists x-ca-key twice",
    ),
    (
        "signature-headers-lists-signature",
        b"POST",
        b"/p?a=1",
        replace(
            BASE, b"X-Ca-Signature-Headers", b"x-ca-key,x-ca-nonce,x-ca-timestamp,x-ca-signature"
        ),
        400,
        "X-Ca-Signature-Headers lists x-ca-signature",
    ),
    (
        "duplicate-x-ca",
        b"POST",
        b"/p?a=1",
        [*BASE, (b"x-ca-nonce", b"other")],
        400,
        "duplicate header: x-ca-nonce",
    ),
    (
        "duplicate-unsigned-x-ca",
        b"POST",
        b"/p?a=1",
        [*BASE, (b"X-Ca-Stage", b"a"), (b"X-CA-STAGE", b"b")],
        400,
        "duplicate header: x-ca-stage",
    ),
    (
        "duplicate-fixed",
        b"POST",
        b"/p?a=1",
        [*BASE, (b"accept", b"text/html")],
        400,
        "duplicate header: accept",
    ),
    (
        "duplicate-signed",
        b"POST",
        b"/p?a=1",
        [*BASE, (b"x-custom", b"w")],
        400,
        "duplicate header: x-custom",
    ),
    *[
        (
            f"bad-timestamp-{i}",
            b"POST",
            b"/p?a=1",
            replace(BASE, b"X-Ca-Timestamp", value),
            400,
            "invalid X-Ca-Timestamp",
        )
        for i, value in enumerate([b"", b"1_700", b"+1700", b"17e11", b"1" * 17, "\u0661".encode()])
    ],
    *[
        (
            f"bad-nonce-{i}",
            b"POST",
            b"/p?a=1",
            replace(BASE, b"X-Ca-Nonce", value),
            400,
            "invalid X-Ca-Nonce",
        )
        for i, value in enumerate([b"", b"n" * (MAX_NONCE_LENGTH + 1)])
    ],
    ("method", b"PUT", b"/p?a=1", BASE, 401, "signature mismatch"),
    ("path", b"POST", b"/q?a=1", BASE, 401, "signature mismatch"),
    ("query", b"POST", b"/p?a=2", BASE, 401, "signature mismatch"),
    ("query-added", b"POST", b"/p?a=1&b", BASE, 401, "signature mismatch"),
    ("query-decoded", b"POST", b"/p?a=%31", BASE, 401, "signature mismatch"),
    (
        "accept",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"Accept", b"text/html"),
        401,
        "signature mismatch",
    ),
    (
        "content-md5",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"Content-MD5", content_md5(b"other").encode()),
        401,
        "signature mismatch",
    ),
    (
        "content-type-added",
        b"POST",
        b"/p?a=1",
        [*BASE, (b"Content-Type", b"text/plain")],
        401,
        "signature mismatch",
    ),
    (
        "signed-header",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Custom", b"w"),
        401,
        "signature mismatch",
    ),
    (
        "nonce",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Nonce", b"nonce-2"),
        401,
        "signature mismatch",
    ),
    (
        "other-apps-key",
        b"POST",
        b"/p?a=1",
        replace(BASE, b"X-Ca-Key", b"other"),
        401,
        "signature mismatch",
    ),
]


@pytest.mark.parametrize(
    ("method", "target", "headers", "status", "message"),
    [f[1:] for f in FAILURES],
    ids=[f[0] for f in FAILURES],
)
def test_each_failure_names_its_cause(
    method: bytes, target: bytes, headers: Headers, status: int, message: str
) -> None:
    assert verifier().verify(b"POST", b"/p?a=1", BASE, NOW).name == "orders"  # the base is good
    error = refusal(method, target, headers)
    assert (error.status, error.message) == (status, message)
    assert error.response_headers(False) == [(b"X-Ca-Error-Message", message.encode())]


@pytest.mark.parametrize(
    ("offset", "message"),
    [(900.001, "timestamp expired"), (-900.001, "timestamp too far in the future")],
)
def test_timestamp_outside_the_window(offset: float, message: str) -> None:
    error = refusal(b"POST", b"/p?a=1", BASE, now=NOW + offset)
    assert (error.status, error.message) == (401, message)


@pytest.mark.parametrize("offset", [900.0, -900.0, 0.0])
def test_timestamp_at_the_edges_of_the_window(offset: float) -> None:
    assert verifier().verify(b"POST", b"/p?a=1", BASE, NOW + offset).key == KEY


def test_a_replay_is_refused_within_the_window_and_the_nonce_is_free_after_it() -> None:
    v = verifier()
    v.verify(b"POST", b"/p?a=1", BASE, NOW)
    for later in (0.0, 1.0, 900.0):  # 900 s: the last instant the timestamp is valid
        error = refusal(b"POST", b"/p?a=1", BASE, NOW + later, v)
        assert (error.status, error.message) == (401, "nonce reused")
    error = refusal(b"POST", b"/p?a=1", BASE, NOW + 900.001, v)
    assert error.message == "timestamp expired"
    # Re-signed now with the same nonce: the old entry has expired, the nonce is free again.
    fresh = signed(
        "POST", "/p?a=1", [("X-Custom", "v"), ("Accept", "*/*")], b"body", now=NOW + 900.001
    )
    assert v.verify(b"POST", b"/p?a=1", fresh, NOW + 900.001).name == "orders"
    assert repr(v) == "<Verifier [2 apps, 1 nonces]>"


def test_nonces_are_per_app() -> None:
    v = verifier()
    v.verify(b"GET", b"/p", signed(nonce="shared"), NOW)
    other = sign("GET", "/p", [], b"", key="other", secret=b"x", now=NOW, nonce="shared")
    headers = [(n.encode(), val.encode()) for n, val in other]
    assert v.verify(b"GET", b"/p", headers, NOW) == VerifiedApp("billing", "other")


def test_refused_requests_spend_no_nonce() -> None:
    v = verifier()
    forged = replace(BASE, b"X-Ca-Signature", base64.b64encode(b"x" * 32))
    assert refusal(b"POST", b"/p?a=1", forged, v=v).message == "signature mismatch"
    assert refusal(b"POST", b"/p?a=1", BASE, NOW + 901, v).message == "timestamp expired"
    assert repr(v) == "<Verifier [2 apps, 0 nonces]>"
    assert v.verify(b"POST", b"/p?a=1", BASE, NOW).name == "orders"


def test_the_nonce_cache_is_bounded_and_refuses_rather_than_forgets() -> None:
    v = verifier(nonce_capacity=3)
    # Timestamps 0, 10, 20 s after NOW: they expire 900 s after each.
    for i in range(3):
        v.verify(b"GET", b"/p", signed(nonce=f"n{i}", now=NOW + 10 * i), NOW + 30)
    assert repr(v) == "<Verifier [2 apps, 3 nonces]>"
    error = refusal(b"GET", b"/p", signed(nonce="n3", now=NOW + 30), NOW + 30, v)
    assert (error.status, error.message, error.reason) == (
        503,
        "nonce cache full",
        "nonce_cache_full",
    )
    assert repr(v) == "<Verifier [2 apps, 3 nonces]>"
    # Every remembered nonce is still live: none was forgotten, so each replay is still refused.
    for i in range(3):
        replay = signed(nonce=f"n{i}", now=NOW + 10 * i)
        assert refusal(b"GET", b"/p", replay, NOW + 30, v).message == "nonce reused"
    # Another app's cache is its own.
    other = [
        (n.encode(), x.encode())
        for n, x in sign("GET", "/p", [], b"", key="other", secret="x", now=NOW + 30, nonce="n3")
    ]
    assert v.verify(b"GET", b"/p", other, NOW + 30).name == "billing"
    # Once the oldest (timestamp NOW) expires, there is room again.
    late = NOW + 900.001
    assert v.verify(b"GET", b"/p", signed(nonce="n3", now=late), late).name == "orders"
    assert repr(v) == "<Verifier [2 apps, 4 nonces]>"


def test_debug_string_to_sign_in_the_response_headers() -> None:
    error = refusal(b"POST", b"/p?a=1", replace(BASE, b"X-Custom", b"w"))
    assert error.string_to_sign is not None
    assert error.string_to_sign.endswith(b"\nx-custom:w\n/p?a=1")
    assert error.response_headers(True) == [
        (b"X-Ca-Error-Message", b"signature mismatch"),
        (b"X-Ca-Debug-String-To-Sign", error.string_to_sign.replace(b"\n", b"#")),
    ]
    assert debug_string(b"GET\n\n/p") == b"GET##/p"


def test_errors_before_the_string_to_sign_carry_none() -> None:
    error = refusal(b"POST", b"/p?a=1", replace(BASE, b"X-Ca-Key", None))
    assert error.string_to_sign is None
    assert error.response_headers(True) == [(b"X-Ca-Error-Message", b"missing X-Ca-Key")]


def test_unknown_key_still_shows_the_string_to_sign() -> None:
    error = refusal(b"POST", b"/p?a=1", replace(BASE, b"X-Ca-Key", b"nope"))
    assert error.string_to_sign is not None and b"x-ca-key:nope\n" in error.string_to_sign


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"X-Ca-Request-Mode", b"debug")], True),
        ([(b"x-ca-request-mode", b" DEBUG ")], True),
        ([(b"X-Ca-Request-Mode", b"release")], False),
        ([(b"Accept", b"debug")], False),
        ([], False),
    ],
)
def test_is_debug_requested(headers: Headers, expected: bool) -> None:
    assert is_debug_requested(headers) is expected


def test_not_granted_is_403() -> None:
    error = not_granted()
    assert (error.status, error.message, error.reason) == (
        403,
        "app not granted",
        "app_not_granted",
    )
    assert repr(error) == "SignatureError(403, 'app not granted')"


def test_signature_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    verifier().verify(b"POST", b"/p?a=1", BASE, NOW)
    assert calls == [(dict(BASE)[b"X-Ca-Signature"], dict(BASE)[b"X-Ca-Signature"])]
