"""The error tree. Each error the gateway can answer with carries its HTTP status and a short,
stable reason string (used in JSON error bodies and, later, in logs and metrics labels)."""

from __future__ import annotations


class LBProxyError(Exception):
    """Base of every error lbproxy raises on purpose."""


class ConfigError(LBProxyError):
    """The configuration is invalid. Carries every problem found, not only the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigProblem:
    """One problem in a configuration file: where it is and what to do about it."""

    __slots__ = ("file", "key", "message")

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.file!r}, {self.key!r}, {self.message!r})"


class StartupError(LBProxyError):
    """lbproxy could not start (a port in use, an address that cannot be bound, ...)."""


class HTTPError(LBProxyError):
    """An error answered to the client with ``status`` and a JSON body naming ``reason``."""

    status = 500
    reason = "internal_error"
    # Why the gateway refused a request itself (metrics: lbproxy_rejected_requests_total), or
    # None for an upstream's failure, which is not a refusal.
    rejection: str | None = None
    # Extra response headers (name, value), e.g. Retry-After or X-Ca-Error-Message.
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(detail or self.reason)


class BadRequest(HTTPError):
    status = 400
    reason = "bad_request"
    rejection = "bad_request"


class NotFound(HTTPError):
    status = 404
    reason = "no_route"
    rejection = "no_route"


class MethodNotAllowed(HTTPError):
    status = 405
    reason = "method_not_allowed"
    rejection = "no_route"

    def __init__(self, allowed: tuple[str, ...], detail: str = "") -> None:
        self.allowed = allowed
        super().__init__(detail)


class Forbidden(HTTPError):
    status = 403
    reason = "forbidden"
    rejection = "acl"


class TooManyRequests(HTTPError):
    status = 429
    reason = "rate_limited"
    rejection = "throttled"

    def __init__(self, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.headers = ((b"Retry-After", b"%d" % retry_after),)


class RequestTimeout(HTTPError):
    status = 408
    reason = "request_timeout"
    rejection = "limits"


class BodyTimeout(RequestTimeout):
    """The request body stalled: no byte of it for ``client_body_timeout`` seconds."""

    reason = "body_timeout"


class PayloadTooLarge(HTTPError):
    status = 413
    reason = "body_too_large"
    rejection = "limits"


class RequestLineTooLong(HTTPError):
    """The request line is longer than ``max_request_line`` (nginx answers 414 too)."""

    status = 414
    reason = "request_line_too_long"
    rejection = "limits"


class HeadersTooLarge(HTTPError):
    status = 431
    reason = "headers_too_large"
    rejection = "limits"


class NotImplementedByGateway(HTTPError):
    status = 501
    reason = "not_implemented"
    rejection = "bad_request"


class BadGateway(HTTPError):
    status = 502
    reason = "bad_gateway"


class UpstreamNotAuthorized(BadGateway):
    reason = "upstream_not_authorized"
    rejection = "authorization_gate"


class UpstreamConnectFailed(BadGateway):
    reason = "upstream_connect_failed"

    def __init__(self, detail: str = "", errno: int | None = None) -> None:
        self.errno = errno  # why, for retries: refused and unreachable differ
        super().__init__(detail)


class UpstreamProtocolError(BadGateway):
    reason = "upstream_protocol_error"


class UpstreamClosed(BadGateway):
    reason = "upstream_closed"


class ServiceUnavailable(HTTPError):
    status = 503
    reason = "no_upstream_available"


class TooManyConnections(ServiceUnavailable):
    """A client connection past ``max_client_connections``: answered, then closed."""

    reason = "too_many_connections"
    rejection = "limits"


class ShuttingDown(ServiceUnavailable):
    reason = "shutting_down"
    rejection = "shutting_down"


class GatewayTimeout(HTTPError):
    status = 504
    reason = "upstream_timeout"
