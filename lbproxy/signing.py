"""Signed requests: the AppKey/AppSecret scheme of Alibaba Cloud API Gateway. Pure: no I/O; the
clock is passed in as ``now`` (seconds since the epoch, a float).

The format, enough to write a client from
===========================================

A request carries these headers (names are case-insensitive everywhere)::

    X-Ca-Key:               the app's key
    X-Ca-Timestamp:         milliseconds since the epoch, ASCII digits only
    X-Ca-Nonce:             a value never reused within the window, e.g. a uuid4 (1 to 128 bytes)
    X-Ca-Signature-Headers: the names of the extra headers signed, comma-separated; it MUST list
                            x-ca-key, x-ca-nonce and x-ca-timestamp, and may not list x-ca-signature
    X-Ca-Signature:         base64(HMAC-SHA256(secret, string_to_sign)), standard alphabet, padded
    Content-MD5:            base64(MD5(body)), when there is a body (the scheme signs the header;
                            the gateway streams bodies, so checking the body against it is the
                            upstream's business)

The string-to-sign is bytes, each part exactly as sent on the wire (UTF-8 for a client holding
text), header values with leading and trailing spaces and tabs removed::

    METHOD "\\n" Accept "\\n" Content-MD5 "\\n" Content-Type "\\n" Date "\\n"
    CanonicalHeaders
    PathAndQuery

- METHOD as sent (case kept). An absent Accept, Content-MD5, Content-Type or Date is an empty line.
- CanonicalHeaders: for each name in X-Ca-Signature-Headers, lower-cased and sorted (bytewise),
  ``name ":" value "\\n"``. Every listed header must be present exactly once.
- PathAndQuery: the path as sent; then, if the query has any parameter, ``"?"`` and the parameters
  joined by ``"&"``, sorted by name (bytewise; a name sent more than once keeps its order). A
  parameter is ``name "=" value``, or just ``name`` when it has no value or an empty one. Empty
  parameters (``a=1&&b=2``) are dropped. Names and values stay percent-encoded as sent.

Example (key ``k``, nonce ``n``, timestamp 1700000000000, ``GET /p?b=2&a=1``, no body)::

    GET\\n\\n\\n\\n\\nx-ca-key:k\\nx-ca-nonce:n\\nx-ca-timestamp:1700000000000\\n/p?a=1&b=2

Two deliberate departures from Alibaba, both against ambiguity: query values are signed
percent-encoded as sent, not decoded (decoding would give ``a=b%26c=d`` and ``a=b&c=d`` one
signature), and the timestamp and nonce must be signed (else a replay could change the nonce).
Form bodies are covered by Content-MD5, not merged into the query.

Failures raise ``SignatureError`` with an HTTP status and the message for ``X-Ca-Error-Message``:
400 for an ambiguous or malformed request (a duplicate header, a bad timestamp or nonce, a bad
X-Ca-Signature-Headers list), 401 for credentials (missing or unknown key, signature mismatch,
timestamp outside the 15-minute window, nonce reused), 503 when the app's nonce cache is full, and
403 (``not_granted()``, decided by the caller) for an app the API does not grant. When the client
sends ``X-Ca-Request-Mode: debug``, the response may carry ``X-Ca-Debug-String-To-Sign``: the
server's string-to-sign with each newline written as ``#``, as Alibaba does, so a client can see
where its own differs.

Replays: a nonce is remembered, per app, until its request's timestamp leaves the window
(timestamp + 15 minutes), which is exactly as long as a replay could otherwise pass. Only
requests whose signature verified are remembered, so only a holder of the secret can fill an
app's cache. When an app's cache is full of unexpired nonces, new nonces are refused (503) rather
than an unexpired one forgotten: forgetting would silently reopen a replay. The capacity divided by
the window is the sustained signed-request rate one app can keep (100,000 / 900 s, about 110 per
second, per worker process); each worker keeps its own cache.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from lbproxy.errors import HTTPError

WINDOW_SECONDS = 15 * 60
NONCE_CAPACITY = 100_000
MAX_NONCE_LENGTH = 128
_MAX_TIMESTAMP_DIGITS = 16

ERROR_MESSAGE_HEADER = b"X-Ca-Error-Message"
DEBUG_HEADER = b"X-Ca-Debug-String-To-Sign"

_FIXED = (b"accept", b"content-md5", b"content-type", b"date")
_REQUIRED_SIGNED = (b"x-ca-key", b"x-ca-nonce", b"x-ca-timestamp")
_SET_BY_SIGN = frozenset(
    {"x-ca-key", "x-ca-timestamp", "x-ca-nonce", "x-ca-signature", "x-ca-signature-headers"}
)
_REUSED = "nonce reused"
_FULL = "nonce cache full"
_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "app_not_granted",
    503: "nonce_cache_full",
}

Headers = Iterable[tuple[bytes, bytes]]


class SignatureError(HTTPError):
    """A signed request refused: ``status``, ``message`` (the ``X-Ca-Error-Message`` value) and,
    when it got that far, the server's ``string_to_sign``."""

    rejection = "signature"

    def __init__(self, status: int, message: str, string_to_sign: bytes | None = None) -> None:
        self.status = status
        self.reason = _REASONS.get(status, "unauthorized")
        self.message = message
        self.string_to_sign = string_to_sign
        super().__init__(message)

    def __repr__(self) -> str:
        return f"SignatureError({self.status}, {self.message!r})"

    def response_headers(self, debug: bool) -> list[tuple[bytes, bytes]]:
        """The headers to answer with; the string-to-sign only when ``debug`` (the client sent
        ``X-Ca-Request-Mode: debug``) and known."""
        headers = [(ERROR_MESSAGE_HEADER, self.message.encode("latin-1", "replace"))]
        if debug and self.string_to_sign is not None:
            headers.append((DEBUG_HEADER, debug_string(self.string_to_sign)))
        return headers


@dataclass(frozen=True, slots=True)
class VerifiedApp:
    """The app whose signature verified; the caller checks ``name`` against the API's grants."""

    name: str
    key: str


def not_granted() -> SignatureError:
    """The refusal for a verified app the API does not grant."""
    return SignatureError(403, "app not granted")


def debug_string(string_to_sign: bytes) -> bytes:
    """The string-to-sign as a header value: newlines as ``#`` (Alibaba's convention)."""
    return string_to_sign.replace(b"\n", b"#").replace(b"\r", b"")


def is_debug_requested(headers: Headers) -> bool:
    for name, value in headers:
        if name.lower() == b"x-ca-request-mode":
            return value.strip(b" \t").lower() == b"debug"
    return False


def content_md5(body: bytes) -> str:
    """The ``Content-MD5`` value for ``body``: base64 of its MD5 digest."""
    return base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


def string_to_sign(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The string-to-sign as the server builds it from a request: the names signed come from the
    request's own ``X-Ca-Signature-Headers``. Raises ``SignatureError`` as ``Verifier`` would."""
    index, repeated = _index(headers)
    _require(index, b"x-ca-signature-headers", "X-Ca-Signature-Headers")
    return _build(method, target, index, _signed_names(index, repeated))


def sign(
    method: str,
    url_or_path: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    key: str,
    secret: str | bytes,
    now: float,
    nonce: str | None = None,
) -> list[tuple[str, str]]:
    """The headers to add to a request so that it verifies: ``Content-MD5`` when there is a body
    (unless ``headers`` has it), then the ``X-Ca-*`` headers. Every header in ``headers`` is
    signed: Accept, Content-MD5, Content-Type and Date in their fixed places, the others listed in
    ``X-Ca-Signature-Headers``; send them exactly as given. Deterministic given ``now`` and
    ``nonce`` (a fresh uuid4 when None). Raises ValueError for headers the verifier would refuse
    (a name given twice, an ``X-Ca-*`` header that ``sign`` sets, a Content-MD5 not of ``body``).
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    given: dict[str, str] = {}
    for name, value in pairs:
        lower = name.lower()
        if lower in given:
            raise ValueError(f"header {name} given twice")
        if lower in _SET_BY_SIGN:
            raise ValueError(f"header {name} is set by sign()")
        given[lower] = value
    added: list[tuple[str, str]] = []
    if body:
        md5 = content_md5(body)
        if "content-md5" not in given:
            added.append(("Content-MD5", md5))
        elif given["content-md5"].strip(" \t") != md5:
            raise ValueError("the Content-MD5 given is not the body's")
    extra = {name for name in given if name.encode() not in _FIXED}
    signed = sorted(extra.union(n.decode() for n in _REQUIRED_SIGNED))
    added += [
        ("X-Ca-Key", key),
        ("X-Ca-Timestamp", str(int(now * 1000))),
        ("X-Ca-Nonce", nonce if nonce is not None else str(uuid.uuid4())),
        ("X-Ca-Signature-Headers", ",".join(signed)),
    ]
    index = {n.encode().lower(): v.encode().strip(b" \t") for n, v in [*pairs, *added]}
    sts = _build(method.encode(), _target_of(url_or_path), index, [n.encode() for n in signed])
    secret_bytes = secret.encode() if isinstance(secret, str) else secret
    added.append(("X-Ca-Signature", _signature(secret_bytes, sts).decode("ascii")))
    return added


class _NonceCache:
    """Nonces of one app, each until its expiry (ms). A heap orders expiries, so expired nonces
    go first and exactly: the set is full only when every nonce in it is still live."""

    __slots__ = ("_capacity", "_heap", "_live")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._heap: list[tuple[int, bytes]] = []
        self._live: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, nonce: bytes, expiry: int, now: int) -> str | None:
        """Remember ``nonce``; or the refusal message when it is live or the cache is full."""
        heap = self._heap
        while heap and heap[0][0] < now:
            self._live.discard(heapq.heappop(heap)[1])
        if nonce in self._live:
            return _REUSED
        if len(self._live) >= self._capacity:
            return _FULL
        self._live.add(nonce)
        heapq.heappush(heap, (expiry, nonce))
        return None


class _App:
    __slots__ = ("nonces", "secret", "verified")

    def __init__(self, verified: VerifiedApp, secret: bytes, capacity: int) -> None:
        self.verified = verified
        self.secret = secret
        self.nonces = _NonceCache(capacity)


class Verifier:
    """Verifies signed requests for the apps ``{key: (app name, secret)}``; keeps each app's
    nonces (at most ``nonce_capacity`` each) for the replay check."""

    __slots__ = ("_apps", "_window_ms")

    def __init__(
        self,
        apps: Mapping[str, tuple[str, bytes]],
        *,
        window: float = WINDOW_SECONDS,
        nonce_capacity: int = NONCE_CAPACITY,
    ) -> None:
        self._window_ms = int(window * 1000)
        self._apps = {
            key.encode(): _App(VerifiedApp(name, key), secret, nonce_capacity)
            for key, (name, secret) in apps.items()
        }

    def __repr__(self) -> str:
        nonces = sum(len(app.nonces) for app in self._apps.values())
        return f"<Verifier [{len(self._apps)} apps, {nonces} nonces]>"

    def verify(self, method: bytes, target: bytes, headers: Headers, now: float) -> VerifiedApp:
        """The app that signed this request, or raise ``SignatureError``."""
        index, repeated = _index(headers)
        key = _require(index, b"x-ca-key", "X-Ca-Key")
        signature = _require(index, b"x-ca-signature", "X-Ca-Signature")
        timestamp = _require(index, b"x-ca-timestamp", "X-Ca-Timestamp")
        nonce = _require(index, b"x-ca-nonce", "X-Ca-Nonce")
        _require(index, b"x-ca-signature-headers", "X-Ca-Signature-Headers")
        if not timestamp.isdigit() or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
            raise SignatureError(400, "invalid X-Ca-Timestamp")
        if not nonce or len(nonce) > MAX_NONCE_LENGTH:
            raise SignatureError(400, "invalid X-Ca-Nonce")
        sts = _build(method, target, index, _signed_names(index, repeated))
        app = self._apps.get(key)
        if app is None:
            raise SignatureError(401, "unknown X-Ca-Key", sts)
        if not hmac.compare_digest(_signature(app.secret, sts), signature):
            raise SignatureError(401, "signature mismatch", sts)
        now_ms, sent_ms = int(now * 1000), int(timestamp)
        if now_ms - sent_ms > self._window_ms:
            raise SignatureError(401, "timestamp expired", sts)
        if sent_ms - now_ms > self._window_ms:
            raise SignatureError(401, "timestamp too far in the future", sts)
        refusal = app.nonces.admit(nonce, sent_ms + self._window_ms, now_ms)
        if refusal is not None:
            raise SignatureError(503 if refusal is _FULL else 401, refusal, sts)
        return app.verified


def _signature(secret: bytes, sts: bytes) -> bytes:
    return base64.b64encode(hmac.digest(secret, sts, "sha256"))


def _index(headers: Headers) -> tuple[dict[bytes, bytes], set[bytes]]:
    """Headers by lower-case name, and the names seen more than once. A repeated ``X-Ca-*`` or
    fixed header is refused here; another only if it turns out to be signed."""
    index: dict[bytes, bytes] = {}
    repeated: set[bytes] = set()
    for name, value in headers:
        lower = name.lower()
        if lower in index:
            if lower.startswith(b"x-ca-") or lower in _FIXED:
                raise SignatureError(400, f"duplicate header: {lower.decode('latin-1')}")
            repeated.add(lower)
        index[lower] = value.strip(b" \t")
    return index, repeated


def _require(index: dict[bytes, bytes], name: bytes, display: str) -> bytes:
    value = index.get(name)
    if value is None:
        raise SignatureError(401, f"missing {display}")
    return value


def _signed_names(index: dict[bytes, bytes], repeated: set[bytes]) -> list[bytes]:
    names = [n.strip(b" \t").lower() for n in index[b"x-ca-signature-headers"].split(b",")]
    names = [n for n in names if n]
    unique = set(names)
    if len(unique) != len(names):
        twice = next(n for n in names if names.count(n) > 1).decode("latin-1")
        raise SignatureError(400, f"X-Ca-Signature-Headers lists {twice} twice")
    if b"x-ca-signature" in unique:
        raise SignatureError(400, "X-Ca-Signature-Headers lists x-ca-signature")
    for name in _REQUIRED_SIGNED:
        if name not in unique:
            raise SignatureError(401, f"{name.decode()} not in X-Ca-Signature-Headers")
    for name in names:
        if name not in index:
            raise SignatureError(401, f"signed header missing: {name.decode('latin-1')}")
        if name in repeated:
            raise SignatureError(400, f"duplicate header: {name.decode('latin-1')}")
    names.sort()
    return names


def _build(method: bytes, target: bytes, index: dict[bytes, bytes], names: list[bytes]) -> bytes:
    get = index.get
    parts = [method, get(b"accept", b""), get(b"content-md5", b"")]
    parts += [get(b"content-type", b""), get(b"date", b"")]
    parts += [name + b":" + index[name] for name in names]
    parts.append(_path_and_query(target))
    return b"\n".join(parts)


def _path_and_query(target: bytes) -> bytes:
    path, _, query = _origin_form(target).partition(b"?")
    if not query:
        return path
    params: list[tuple[bytes, bytes]] = []
    for param in query.split(b"&"):
        if param:
            name, _, value = param.partition(b"=")
            params.append((name, param if value else name))
    if not params:
        return path
    params.sort(key=_first)  # stable: a repeated name keeps its order
    return path + b"?" + b"&".join(param for _, param in params)


def _first(pair: tuple[bytes, bytes]) -> bytes:
    return pair[0]


def _origin_form(target: bytes) -> bytes:
    """``/path?query`` from a target in origin form or absolute form (``http://host/path``)."""
    if target[:1] == b"/":
        return target
    scheme_end = target.find(b"://")
    if scheme_end <= 0:
        return target  # "*" (OPTIONS) and the like: signed as sent
    rest = target[scheme_end + 3 :]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    rest = rest[cut:]
    return rest if rest[:1] == b"/" else b"/" + rest


def _target_of(url_or_path: str) -> bytes:
    parts = urlsplit(url_or_path)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return target.encode()
