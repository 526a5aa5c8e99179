"""Who may call: the source-IP lists, app signatures and grants, and rate limits of a listener
and of each API, checked once per request before anything is sent upstream.

Theory of operation. The relay asks ``admit_listener`` before routing (a denied source learns
nothing, not even whether a path exists) and ``Guard.admit`` once the API is known. The address
judged is the peer's, or, when the peer is one of ``trusted_proxies``, the right-most untrusted
address of its X-Forwarded-For (``acl.client_address``): a forged header from anyone else is
never believed. Rate limits are per process (each worker keeps its own buckets).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from lbproxy.acl import AccessList, IPNetwork, client_address
from lbproxy.config import Api, App, Config, RateLimit
from lbproxy.errors import Forbidden, TooManyRequests
from lbproxy.framing import RequestHead
from lbproxy.signing import SignatureError, Verifier, is_debug_requested, not_granted
from lbproxy.throttle import RateLimiter, retry_after


class ListenerGuard:
    """The gateway-wide source lists and whose X-Forwarded-For is believed."""

    __slots__ = ("acl", "trusted")

    def __init__(self, acl: AccessList | None, trusted: Sequence[IPNetwork]) -> None:
        self.acl = acl
        self.trusted = tuple(trusted)

    def client(self, peer: str, head: RequestHead) -> str:
        if not self.trusted:
            return peer
        return client_address(peer, head.forwarded_for, self.trusted)

    def admit(self, peer: str, head: RequestHead) -> str:
        """The client's address, once the listener's lists let it in (else ``Forbidden``)."""
        client = self.client(peer, head)
        if self.acl is not None:
            reason = self.acl.check_text(client)
            if reason is not None:
                raise Forbidden(reason)
        return client


class Guard:
    """One API's rules; built only for APIs that have any."""

    __slots__ = ("_acl", "_app_limits", "_granted", "_limiter", "_name", "_verifier")

    def __init__(
        self,
        api: Api,
        verifier: Verifier | None,
        app_limits: dict[str, RateLimiter],
    ) -> None:
        self._name = api.name
        self._acl = (
            AccessList(api.allow, api.deny, f"api `{api.name}`") if api.allow or api.deny else None
        )
        self._verifier = verifier if api.auth == "app" else None
        self._granted = frozenset(api.apps)
        self._limiter = _limiter(api.rate_limit)
        self._app_limits = app_limits

    def admit(self, client: str, head: RequestHead, now: float) -> None:
        """Raise the answer (403, 401, 429, ...) when the request may not go on."""
        if self._acl is not None:
            reason = self._acl.check_text(client)
            if reason is not None:
                raise Forbidden(reason)
        if self._verifier is not None:
            self._check_signature(self._verifier, head, now)
        if self._limiter is not None:
            wait = self._limiter.take(now)
            if wait is not None:
                limit = self._limiter.describe()
                raise TooManyRequests(retry_after(wait), f"api `{self._name}` allows {limit}")

    def _check_signature(self, verifier: Verifier, head: RequestHead, now: float) -> None:
        try:
            # X-Ca-Timestamp is wall-clock time; ``now`` (the loop's clock) is for the limits.
            app = verifier.verify(head.method, head.target, head.headers, time.time())
            if app.name not in self._granted:
                raise not_granted()
        except SignatureError as exc:
            exc.headers = tuple(exc.response_headers(is_debug_requested(head.headers)))
            raise
        limiter = self._app_limits.get(app.name)
        if limiter is not None:
            wait = limiter.take(now)
            if wait is not None:
                raise TooManyRequests(
                    retry_after(wait), f"app `{app.name}` allows {limiter.describe()}"
                )


def _limiter(limit: RateLimit | None) -> RateLimiter | None:
    return None if limit is None else RateLimiter(limit.per_second, limit.per_minute)


def build_guards(config: Config) -> tuple[ListenerGuard | None, dict[str, Guard]]:
    """The listener's guard (None when it has no rules) and a guard per API that has rules."""
    gw = config.gateway
    acl = AccessList(gw.allow, gw.deny, "the gateway") if gw.allow or gw.deny else None
    listener = ListenerGuard(acl, gw.trusted_proxies) if acl or gw.trusted_proxies else None
    verifier = _verifier(config.apps) if config.apps else None
    app_limits = {
        app.name: limiter
        for app in config.apps
        if (limiter := _limiter(app.rate_limit)) is not None
    }
    guards = {
        api.name: Guard(api, verifier, app_limits)
        for api in config.apis
        if api.allow or api.deny or api.auth == "app" or api.rate_limit is not None
    }
    return listener, guards


def _verifier(apps: Sequence[App]) -> Verifier:
    return Verifier({app.key: (app.name, app.secret.encode()) for app in apps})
