"""The admin API: authorizations listed, created, updated and deleted at runtime, validated like
the file, persisted atomically, applied to new requests; token required for writes."""

from __future__ import annotations

import json
import socket
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lbproxy.admin import AdminServer, AuthorizationsAPI
from lbproxy.configload import parse_config
from lbproxy.server import Runtime
from lbproxy.state import load_with_state, read_state, with_authorizations
from tests.harness import Backend, Client, LoopThread, gateway_toml

TOKEN = "s3cret-token"


@dataclass
class Admin:
    runtime: Runtime
    server: AdminServer
    state_file: Path
    document: dict[str, object]

    def call(
        self, method: str, path: str, body: object = None, token: str | None = TOKEN
    ) -> tuple[int, dict[str, object]]:
        data = b"" if body is None else json.dumps(body).encode()
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        assert self.server.address is not None
        with socket.create_connection(self.server.address, timeout=10) as sock:
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        return int(head[9:12]), json.loads(payload)

    def get(self, path: str = "/api/x") -> bytes:
        host, port = self.runtime.addresses[0]
        client = Client(socket.create_connection((host, port), timeout=10))
        client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response, body = client.response()
        client.close()
        assert response.status_code == 200, body
        return body


@pytest.fixture
def admin(lt: LoopThread, backends: list[Backend], tmp_path: Path) -> Iterator[Admin]:
    text = gateway_toml(backends[:2], 18651)
    document = tomllib.loads(text)
    config_file = str(tmp_path / "gateway.toml")
    runtime = Runtime(parse_config(document, config_file))
    lt.run(runtime.start())
    state_file = tmp_path / "state.json"
    api = AuthorizationsAPI(runtime, document, str(state_file), TOKEN)
    server = AdminServer(api, ("127.0.0.1", 0))
    lt.run(server.start())
    yield Admin(runtime, server, state_file, document)
    lt.run(server.stop())
    lt.run(runtime.stop(timeout=2.0))


def test_list_then_update_serves_the_next_request_and_is_saved(
    admin: Admin, backends: list[Backend]
) -> None:
    status, listed = admin.call("GET", "/admin/authorizations")
    assert status == 200
    assert [a["name"] for a in listed["authorizations"]] == ["to-lb", "to-first"]  # type: ignore[union-attr]
    admin.get("/direct/x")
    assert len(backends[0].seen) == 1
    # Point `to-first` at the second backend's instance: the next request goes there.
    second = backends[1]
    changed = {"vpc": "vpc-t", "target": "i-b", "port": second.port}
    status, body = admin.call("PUT", "/admin/authorizations/to-first", changed)
    assert status == 200, body
    admin.get("/direct/x")
    assert len(second.seen) == 1 and len(backends[0].seen) == 1
    saved = read_state(str(admin.state_file))
    assert saved is not None and {"name": "to-first", **changed} in saved
    # A restart takes the saved list: the same configuration file plus the state file.
    config = with_authorizations(admin.document, saved, admin.runtime.config.file)
    reach = Runtime(config).routes.reachability.by_authorization["to-first"]
    assert [e.port for e in reach.endpoints] == [second.port]


def test_create_is_validated_like_the_file(admin: Admin) -> None:
    bad = {"name": "new", "vpc": "vpc-t", "target": "i-a", "port": 70000}
    status, body = admin.call("POST", "/admin/authorizations", bad)
    assert status == 400 and body["error"] == "invalid_authorization"
    assert any(p.startswith("authorization[2].port:") for p in body["problems"])  # type: ignore[union-attr]
    assert not admin.state_file.exists()  # nothing saved, nothing applied
    good = {"name": "new", "vpc": "vpc-t", "target": "i-a", "port": 9}
    assert admin.call("POST", "/admin/authorizations", good)[0] == 201
    assert admin.call("POST", "/admin/authorizations", good)[0] == 409  # exists
    assert admin.call("GET", "/admin/authorizations/new")[1] == good


def test_deleting_an_authorization_in_use_is_refused_with_the_api_names(admin: Admin) -> None:
    status, body = admin.call("DELETE", "/admin/authorizations/to-first")
    assert status == 409 and body["apis"] == ["direct"]
    assert "used by API(s) `direct`" in str(body["message"])
    admin.call(
        "POST",
        "/admin/authorizations",
        {"name": "spare", "vpc": "vpc-t", "target": "i-a", "port": 9},
    )
    assert admin.call("DELETE", "/admin/authorizations/spare") == (200, {"deleted": "spare"})
    assert admin.call("GET", "/admin/authorizations/spare")[0] == 404


def test_writes_need_the_token(admin: Admin) -> None:
    entry = {"name": "x", "vpc": "vpc-t", "target": "i-a", "port": 9}
    assert admin.call("POST", "/admin/authorizations", entry, token=None)[0] == 401
    assert admin.call("POST", "/admin/authorizations", entry, token="wrong")[0] == 401
    assert admin.call("GET", "/admin/authorizations", token=None)[0] == 401
    assert not admin.state_file.exists()


def test_after_a_restart_changes_start_from_the_saved_list(tmp_path: Path) -> None:
    text = gateway_toml([Backend("a", port=9001), Backend("b", port=9002)], 18652).replace(
        "[gateway]\n", '[gateway]\nstate_file = "state.json"\n', 1
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    saved = [{"name": "to-lb", "vpc": "vpc-t", "target": "lb-t", "port": 18652}]
    saved.append({"name": "to-first", "vpc": "vpc-t", "target": "i-a", "port": 7})
    saved.append({"name": "extra", "vpc": "vpc-t", "target": "i-b", "port": 8})
    (tmp_path / "state.json").write_text(json.dumps({"authorizations": saved}))
    config, document = load_with_state(str(path))
    assert [a.name for a in config.authorizations] == ["to-lb", "to-first", "extra"]
    api = AuthorizationsAPI(Runtime(config), document, str(tmp_path / "state.json"), TOKEN)
    assert [a["name"] for a in api.authorizations] == ["to-lb", "to-first", "extra"]
