"""The admin listener: the authorizations API (list, create, update, delete).

Theory of operation. The admin listener is loopback by default and speaks small JSON over
HTTP/1.1 (h11: this is not the hot path). Reads and writes need ``Authorization: Bearer
<admin_token>``; with no token configured, reads are open (the listener is loopback) and every
write is refused, so a gateway never takes changes from whoever can reach a port. A change is
the whole new list of authorizations, validated by the configuration's own ``parse_config``
(messages name ``authorization[i].key`` as for the file), saved atomically to the state file,
and only then applied (``Runtime.apply``): new requests take it, requests in flight finish on
the routes they started with. Deleting an authorization that an API uses is refused with 409
naming the APIs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11

from lbproxy.config import HostPort
from lbproxy.errors import ConfigError
from lbproxy.state import AuthorizationFields, Document, save_state, with_authorizations

if TYPE_CHECKING:
    from lbproxy.server import Runtime

log = logging.getLogger("lbproxy.admin")
_ITEM = re.compile(r"^/admin/authorizations/([^/]+)$")
_MAX_BODY = 1024 * 1024


class AdminError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"status": status, "error": error, "message": message, **extra}


class AuthorizationsAPI:
    """The authorization list and the changes to it; HTTP-free, so tests can drive it too."""

    def __init__(
        self,
        runtime: Runtime,
        document: Document,
        state_file: str | None,
        token: str | None,
    ) -> None:
        self._runtime = runtime
        self._document = document
        self._state_file = state_file
        self._token = token
        self.authorizations: list[AuthorizationFields] = [
            dict(a) for a in document.get("authorization", [])
        ]

    def replace_document(self, document: Document) -> None:
        """A reload read the files again: changes now start from them."""
        self._document = document
        self.authorizations = [dict(a) for a in document.get("authorization", [])]

    def check_token(self, header: bytes | None, write: bool) -> None:
        if self._token is None:
            if write:
                raise AdminError(
                    403,
                    "writes_disabled",
                    "no admin_token is configured, so the admin API is read-only; set "
                    "[gateway] admin_token or admin_token_env",
                )
            return
        expected = b"Bearer " + self._token.encode()
        if header is None or not hmac.compare_digest(header, expected):
            raise AdminError(401, "unauthorized", "send Authorization: Bearer <admin_token>")

    def create(self, fields: AuthorizationFields) -> AuthorizationFields:
        name = fields.get("name")
        if any(a.get("name") == name for a in self.authorizations):
            raise AdminError(409, "exists", f"authorization `{name}` exists; PUT to change it")
        self._commit([*self.authorizations, fields])
        return fields

    def update(self, name: str, fields: AuthorizationFields) -> AuthorizationFields:
        fields = {**fields, "name": fields.get("name", name)}
        if fields["name"] != name:
            raise AdminError(
                400, "name_mismatch", f"the body names `{fields['name']}`, the path `{name}`"
            )
        index = self._index(name)
        changed = list(self.authorizations)
        changed[index] = fields
        self._commit(changed)
        return fields

    def delete(self, name: str) -> None:
        index = self._index(name)
        users = [api.name for api in self._runtime.config.apis if api.backend.authorization == name]
        if users:
            raise AdminError(
                409,
                "in_use",
                f"authorization `{name}` is used by API(s) {', '.join(f'`{u}`' for u in users)}; "
                "change or remove them first",
                apis=users,
            )
        self._commit(self.authorizations[:index] + self.authorizations[index + 1 :])

    def get(self, name: str) -> AuthorizationFields:
        return self.authorizations[self._index(name)]

    def _index(self, name: str) -> int:
        for index, entry in enumerate(self.authorizations):
            if entry.get("name") == name:
                return index
        raise AdminError(404, "not_found", f"no authorization `{name}`")

    def _commit(self, authorizations: list[AuthorizationFields]) -> None:
        if self._state_file is None:
            raise AdminError(
                409,
                "no_state_file",
                "set [gateway] state_file so that runtime changes survive a restart",
            )
        try:
            config = with_authorizations(self._document, authorizations, self._runtime.config.file)
        except ConfigError as exc:
            problems = [f"{p.key}: {p.message}" for p in exc.problems]
            raise AdminError(
                400, "invalid_authorization", "; ".join(problems), problems=problems
            ) from None
        save_state(self._state_file, authorizations)
        self.authorizations = authorizations
        self._runtime.apply(config)
        log.info("authorizations changed: %d now", len(authorizations))
        if self._runtime.on_change is not None:
            self._runtime.on_change()


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str
    path: str
    query: str
    authorization: bytes | None  # the Authorization header, for ``AuthorizationsAPI.check_token``
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """A response other than JSON (metrics text, an HTML page)."""

    status: int
    body: bytes
    content_type: bytes


# A handler answers the paths it knows (a (status, JSON payload) pair or a ``Reply``) and
# returns None for the others; raising ``AdminError`` answers that error as JSON.
Handler = Callable[[AdminRequest], "tuple[int, Any] | Reply | None"]


class AdminServer:
    """The admin listener. The authorizations API is built in; other modules (metrics, status)
    add handlers with ``add``, tried in order."""

    def __init__(
        self,
        api: AuthorizationsAPI,
        address: HostPort,
        reuse_port: bool = False,
        inherit: Any = None,
    ) -> None:
        """``reuse_port``: every worker answers the admin address. ``inherit``: the listening
        socket of the admin listener this one replaces (a reload), shared rather than bound."""
        self.api = api
        self._address = address
        self._reuse_port = reuse_port
        self._inherit = inherit
        self._server: asyncio.Server | None = None
        self.address: HostPort | None = None
        self._handlers: list[Handler] = []

    def add(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        if self._inherit is not None:
            sock = socket.socket(fileno=os.dup(self._inherit.fileno()))
            self._server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(
                self._serve, *self._address, reuse_address=True, reuse_port=self._reuse_port
            )
        bound = self._server.sockets[0].getsockname()
        self.address = (bound[0], bound[1])
        log.info("admin API on %s:%d", *self.address)

    def listening(self) -> Any:
        """The listening socket (asyncio's view of it), or None before ``start``."""
        return self._server.sockets[0] if self._server is not None else None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request, body = await _read_request(conn, reader)
                if request is None:
                    return
                answer = self._handle(request, body)
                await _respond(conn, writer, answer, head=request.method == b"HEAD")
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    def _handle(self, request: h11.Request, body: bytes) -> tuple[int, Any] | Reply:
        path, _, query = request.target.decode("latin-1").partition("?")
        header = next((v for k, v in request.headers if k == b"authorization"), None)
        admin_request = AdminRequest(request.method.decode(), path, query, header, body)
        try:
            for handler in self._handlers:
                answer = handler(admin_request)
                if answer is not None:
                    return answer
            return self._route(admin_request.method, path, header, body)
        except AdminError as exc:
            return exc.status, exc.body
        except ConfigError as exc:  # the state file cannot be read back: say which and why
            problems = "; ".join(str(p) for p in exc.problems)
            return _server_error(f"{problems}; the change was not saved")
        except OSError as exc:
            return _server_error(f"cannot save the state file: {exc}; the change was not saved")

    def _route(self, method: str, path: str, header: bytes | None, body: bytes) -> tuple[int, Any]:
        api = self.api
        item = _ITEM.match(path)
        if path == "/admin/authorizations":
            if method == "GET":
                api.check_token(header, write=False)
                return 200, {"authorizations": api.authorizations}
            if method == "POST":
                api.check_token(header, write=True)
                return 201, api.create(_json_object(body))
            raise AdminError(405, "method_not_allowed", "use GET or POST")
        if item is not None:
            name = item.group(1)
            if method == "GET":
                api.check_token(header, write=False)
                return 200, api.get(name)
            if method == "PUT":
                api.check_token(header, write=True)
                return 200, api.update(name, _json_object(body))
            if method == "DELETE":
                api.check_token(header, write=True)
                api.delete(name)
                return 200, {"deleted": name}
            raise AdminError(405, "method_not_allowed", "use GET, PUT or DELETE")
        raise AdminError(404, "not_found", f"no admin resource {path}")


def _server_error(message: str) -> tuple[int, Any]:
    log.error("admin API: %s", message)
    error = AdminError(500, "state_file", message)
    return error.status, error.body


def _json_object(body: bytes) -> AuthorizationFields:
    try:
        value = json.loads(body or b"null")
    except ValueError as exc:
        raise AdminError(400, "bad_json", f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AdminError(400, "bad_json", "the body must be a JSON object of authorization fields")
    return value


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise h11.RemoteProtocolError("admin request body too large")
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:
            return None, b""


async def _respond(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    answer: tuple[int, Any] | Reply,
    head: bool = False,
) -> None:
    """Send ``answer``; to a HEAD, its headers only (Content-Length as for a GET)."""
    if isinstance(answer, Reply):
        status, data, content_type = answer.status, answer.body, answer.content_type
    else:
        status, data = answer[0], json.dumps(answer[1]).encode() + b"\n"
        content_type = b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(data))]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    if not head:
        writer.write(conn.send(h11.Data(data=data)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
