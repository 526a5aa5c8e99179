"""The admin listener's /status (JSON), /status.html and server actions (drain, enable, weight),
driven over real sockets on 127.0.0.x against a running gateway with active health checks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from lbproxy import __version__
from lbproxy.server import Runtime
from lbproxy.state import load_with_state
from lbproxy.statuspage import render_page
from tests.harness import Backend, Client, LoopThread, Seen, free_port

TOKEN = "status-token"
LB_WEB = "127.0.0.90"
LB_DB = "127.0.0.95"
Json = dict[str, Any]


def serving(name: str) -> Callable[[Seen, asyncio.StreamWriter], Any]:
    """Answers its name; `/slow` after 0.6 s; `/fail` with 503 on server c."""

    async def handle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.target == "/fail" and name == "c":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            return True
        if seen.target == "/slow":
            await asyncio.sleep(0.6)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + name.encode())
        return True

    return handle


def status_toml(
    servers: dict[str, Backend], ports: tuple[int, int, int], token: str | None, gateway: str = ""
) -> str:
    instances = "".join(
        f'[[instance]]\nid = "i-{n}"\nvpc = "vpc-s"\nip = "{b.host}"\n\n'
        for n, b in servers.items()
    )
    a, b, c, d = (f'instance = "i-{n}", port = {servers[n].port}' for n in "abcd")
    token_line = f'admin_token = "{token}"' if token else ""
    web, shop, db = ports
    return f"""
[gateway]
region = "r"
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
{token_line}
{gateway}

[[vpc]]
id = "vpc-s"
region = "r"
cidrs = ["127.0.0.0/8"]

{instances}
[[load_balancer]]
id = "lb-web"
vpc = "vpc-s"
ip = "{LB_WEB}"
[[load_balancer.listener]]
port = {web}
servers = [{{ {a} }}, {{ {b} }}, {{ {c} }}]
health_check = {{ path = "/health", interval = 0.3, timeout = 0.3, rise = 2, fall = 2 }}
[[load_balancer.listener]]
port = {shop}
servers = [{{ {d}, weight = 2 }}, {{ {c} }}]
slow_start = 30
passive = {{ max_fails = 1, fail_timeout = 60, fail_statuses = [503] }}
retry = {{ tries = 1 }}
pool = {{ max_connections = 8 }}

[[load_balancer]]
id = "lb-db"
vpc = "vpc-s"
ip = "{LB_DB}"
internal = false
[[load_balancer.listener]]
port = {db}
scheduler = "least_conn"
servers = [{{ {d} }}, {{ {a}, backup = true }}, {{ {c}, weight = 0 }}]
health_check = {{ type = "tcp", interval = 0.3, timeout = 0.3 }}
"""


def wait_for(predicate: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@dataclass
class Rig:
    lt: LoopThread
    runtime: Runtime
    servers: dict[str, Backend]
    ports: tuple[int, int, int]

    @property
    def web(self) -> str:
        return f"lb-web:{self.ports[0]}"

    @property
    def shop(self) -> str:
        return f"lb-web:{self.ports[1]}"

    def call(
        self, method: str, path: str, body: bytes = b"", token: str | None = TOKEN
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.runtime.admin is not None and self.runtime.admin.address is not None
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        with socket.create_connection(self.runtime.admin.address, timeout=10) as sock:
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = [line.split(": ", 1) for line in lines[1:]]
        headers = {name.lower(): value for name, value in fields}
        return int(lines[0][9:12]), headers, payload

    def act(
        self, method: str, path: str, body: object = None, token: str | None = TOKEN
    ) -> tuple[int, Json]:
        data = b"" if body is None else json.dumps(body).encode()
        status, headers, payload = self.call(method, path, data, token)
        assert headers["content-type"] == "application/json"
        return status, json.loads(payload)

    def status(self) -> Json:
        status, headers, payload = self.call("GET", "/status", token=None)
        assert (status, headers["content-type"]) == (200, "application/json")
        document: Json = json.loads(payload)
        return document

    def listener(self, name: str) -> Json:
        for lb in self.status()["load_balancers"]:
            for listener in lb["listeners"]:
                if listener["name"] == name:
                    return dict(listener)
        raise AssertionError(f"no listener {name}")

    def server(self, listener: str, name: str) -> Json:
        return dict(next(s for s in self.listener(listener)["servers"] if s["name"] == name))

    def page(self) -> str:
        status, headers, payload = self.call("GET", "/status.html", token=None)
        assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
        return payload.decode()

    def name(self, server: str) -> str:
        return f"i-{server}:{self.servers[server].port}"

    def requests(self, count: int, port_index: int = 0, path: str = "/x") -> Counter[str]:
        """Send ``count`` requests to an lb-web listener on one connection: who answered."""
        client = Client(socket.create_connection((LB_WEB, self.ports[port_index]), timeout=10))
        answers: Counter[str] = Counter()
        for _ in range(count):
            client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response, body = client.response()
            answers[
                body.decode() if response.status_code == 200 else str(response.status_code)
            ] += 1
        client.close()
        return answers

    def checked(self, count: int) -> bool:
        """Every actively checked server has at least ``count`` check results."""
        listeners = [lst for lb in self.status()["load_balancers"] for lst in lb["listeners"]]
        return all(
            len(s["checks"]) >= count
            for lst in listeners
            if lst["health_check"] is not None
            for s in lst["servers"]
        )


Start = Callable[..., Rig]


def start_rig(lt: LoopThread, directory: Path, token: str | None, gateway: str = "") -> Rig:
    """Four backends a..d on 127.0.0.91..94 and a gateway over them (the admin token ``token``,
    more ``gateway`` keys), returned once every checked server was checked twice."""
    servers = {
        n: Backend(n, handler=serving(n), host=f"127.0.0.{91 + i}") for i, n in enumerate("abcd")
    }
    for backend in servers.values():
        lt.run(backend.start())
    ports = (free_port(LB_WEB), free_port(LB_WEB), free_port(LB_DB))
    path = directory / "gateway.toml"
    path.write_text(status_toml(servers, ports, token, gateway))
    config, document = load_with_state(str(path))
    rig = Rig(lt, Runtime(config, document), servers, ports)
    try:
        lt.run(rig.runtime.start())
        assert wait_for(lambda: rig.checked(2))
    except BaseException:
        stop_rig(rig)
        raise
    return rig


def stop_rig(rig: Rig) -> None:
    rig.lt.run(rig.runtime.stop(timeout=2.0))
    for backend in rig.servers.values():
        rig.lt.run(backend.stop())


@pytest.fixture
def start(lt: LoopThread, tmp_path: Path) -> Iterator[Start]:
    """A factory of rigs (``start_rig``), stopped at teardown."""
    made: list[Rig] = []

    def run(token: str | None = TOKEN, gateway: str = "") -> Rig:
        made.append(start_rig(lt, tmp_path, token, gateway))
        return made[-1]

    yield run
    for rig in made:
        stop_rig(rig)


@pytest.fixture
def rig(start: Start) -> Rig:
    return start()


@pytest.fixture(scope="module")
def unchanged(lt: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One rig for the tests of refused requests, which each check that nothing changed."""
    shared = start_rig(lt, tmp_path_factory.mktemp("status"), TOKEN)
    yield shared
    stop_rig(shared)


def normalised(document: Json) -> Json:
    """The document with its times and check lists replaced by what tests can know."""
    times = {"at", "time", "uptime", "started_at", "until", "ejected_until"}

    def walk(value: Any, key: str = "") -> Any:
        if key in times and value is not None:
            return "T"
        if key == "checks":
            return sorted({(c["ok"], c["reason"]) for c in value})
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    result: Json = walk(document)
    return result


def server_entry(
    rig: Rig, name: str, *, weight: int = 1, checks: str | None, **changes: Any
) -> Json:
    backend = rig.servers[name]
    entry = {
        "name": rig.name(name),
        "address": f"{backend.host}:{backend.port}",
        "weight": {"configured": weight, "current": weight},
        "backup": False,
        "drained": False,
        "available": True,
        "phase": "up",
        "why": None,
        "checks": [] if checks is None else [(True, checks)],
        "slow_start": {"share": 100, "until": None},
        "ejected_until": None,
        "in_flight": 0,
        "pool": {"active": 0, "idle": 0, "opening": 0, "waiting": 0, "max_connections": None},
    }
    entry.update(changes)
    return entry


# --- GET /status -----------------------------------------------------------------------------


def test_status_shows_every_load_balancer_listener_and_server(rig: Rig) -> None:
    before = time.time()
    assert rig.requests(3) == {"a": 1, "b": 1, "c": 1}
    document = rig.status()
    web, shop, db = rig.ports
    idle = {"active": 0, "idle": 1, "opening": 0, "waiting": 0, "max_connections": None}
    limited = {"active": 0, "idle": 0, "opening": 0, "waiting": 0, "max_connections": 8}
    http_check = {"type": "http", "path": "/health", "interval": 0.3, "timeout": 0.3}
    assert normalised(document) == {
        "gateway": {
            "version": __version__,
            "pid": os.getpid(),
            "workers": 1,
            "started_at": "T",
            "uptime": "T",
            "time": "T",
        },
        "load_balancers": [
            {
                "id": "lb-web",
                "vpc": "vpc-s",
                "ip": LB_WEB,
                "internal": True,
                "listeners": [
                    {
                        "name": rig.web,
                        "port": web,
                        "address": f"{LB_WEB}:{web}",
                        "scheduler": "wrr",
                        "slow_start": 0.0,
                        "health_check": {**http_check, "rise": 2, "fall": 2},
                        "availability": "primary",
                        "servers": [
                            server_entry(rig, n, checks="status 200", pool=idle) for n in "abc"
                        ],
                    },
                    {
                        "name": rig.shop,
                        "port": shop,
                        "address": f"{LB_WEB}:{shop}",
                        "scheduler": "wrr",
                        "slow_start": 30.0,
                        "health_check": None,
                        "availability": "primary",
                        "servers": [
                            server_entry(rig, "d", weight=2, checks=None, pool=limited),
                            # A pool per server: c's is the one lb-web:{web} made, unlimited.
                            server_entry(rig, "c", checks=None, pool=idle),
                        ],
                    },
                ],
            },
            {
                "id": "lb-db",
                "vpc": "vpc-s",
                "ip": LB_DB,
                "internal": False,
                "listeners": [
                    {
                        "name": f"lb-db:{db}",
                        "port": db,
                        "address": f"{LB_DB}:{db}",
                        "scheduler": "least_conn",
                        "slow_start": 0.0,
                        "health_check": {
                            "type": "tcp",
                            "path": None,
                            "interval": 0.3,
                            "timeout": 0.3,
                            "rise": 2,
                            "fall": 3,
                        },
                        "availability": "primary",
                        "servers": [
                            server_entry(rig, "d", checks="connected"),
                            server_entry(rig, "a", checks="connected", backup=True, pool=idle),
                            server_entry(
                                rig,
                                "c",
                                weight=0,
                                checks="connected",
                                drained=True,
                                available=False,
                                pool=idle,
                            ),
                        ],
                    }
                ],
            },
        ],
    }
    gateway = document["gateway"]
    after = time.time()
    assert gateway["started_at"] <= before <= gateway["time"] <= after
    assert gateway["uptime"] == pytest.approx(gateway["time"] - gateway["started_at"], abs=0.01)
    checks = document["load_balancers"][0]["listeners"][0]["servers"][0]["checks"]
    stamps = [c["at"] for c in checks]
    assert 2 <= len(checks) <= 5 and stamps == sorted(stamps)
    assert gateway["started_at"] <= stamps[0] and stamps[-1] <= gateway["time"]


def test_status_is_read_without_the_token_and_only_with_get_or_head(rig: Rig) -> None:
    for path in ("/status", "/status.html"):
        status, headers, body = rig.call("GET", path, token="wrong")
        assert status == 200 and int(headers["content-length"]) == len(body) > 0
        status, headers, body = rig.call("HEAD", path, token=None)
        assert (status, body) == (200, b"") and int(headers["content-length"]) > 0
        for method in ("POST", "PUT", "DELETE"):
            status, headers, body = rig.call(method, path, token=None)
            assert (status, headers["content-type"]) == (405, "application/json"), method
            assert json.loads(body) == {
                "status": 405,
                "error": "method_not_allowed",
                "message": "use GET",
            }


def test_in_flight_requests_and_busy_connections_show(rig: Rig) -> None:
    client = Client(socket.create_connection((LB_WEB, rig.ports[0]), timeout=10))
    client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        assert wait_for(lambda: rig.server(rig.web, rig.name("a"))["in_flight"] == 1)
        entry = rig.server(rig.web, rig.name("a"))
        assert entry["pool"] == {
            "active": 1,
            "idle": 0,
            "opening": 0,
            "waiting": 0,
            "max_connections": None,
        }
        response, body = client.response()
        assert (response.status_code, body) == (200, b"a")
        assert wait_for(lambda: rig.server(rig.web, rig.name("a"))["in_flight"] == 0)
    finally:
        client.close()


# --- a server that goes down ------------------------------------------------------------------


def test_a_killed_server_shows_down_with_its_reason(rig: Rig) -> None:
    name = rig.name("b")
    rig.lt.run(rig.servers["b"].stop())
    assert wait_for(lambda: rig.server(rig.web, name)["phase"] == "down")
    entry = rig.server(rig.web, name)
    reason = "2 check(s) failed in a row; last: connection refused"
    assert entry["why"] == {"event": "down", "reason": reason, "at": entry["why"]["at"]}
    assert entry["available"] is False and entry["drained"] is False
    assert entry["checks"][-2:] == [
        {"at": c["at"], "ok": False, "reason": "connection refused"} for c in entry["checks"][-2:]
    ]
    assert entry["checks"][-1]["at"] >= entry["why"]["at"] >= entry["checks"][-2]["at"]
    others = [rig.server(rig.web, rig.name(n)) for n in "ac"]
    assert [(s["phase"], s["available"]) for s in others] == [("up", True), ("up", True)]
    assert rig.listener(rig.web)["availability"] == "primary"
    assert rig.requests(10) == {"a": 5, "c": 5}

    rows = page_rows(rig.page())
    assert rows[name]["class"] == "out" and rows[name]["data-phase"] == "down"
    assert rows[name]["phase"] == "down" and rows[name]["why"].startswith(reason + " (")
    assert [rows[rig.name(n)]["class"] for n in "ac"] == ["", ""]
    assert page_summary(rig.page()) == [
        "1 of 8 servers out",
        f"{name} on {rig.web}: down, {reason}",
        f"Drained: {rig.name('c')} on lb-db:{rig.ports[2]}",
    ]


def test_an_ejected_server_shows_why_and_until_when(rig: Rig) -> None:
    before = time.time()
    answers = rig.requests(3, port_index=1, path="/fail")
    assert answers == {"d": 2, "503": 1}  # d c d; tries = 1, so c's 503 reaches the client
    entry = rig.server(rig.shop, rig.name("c"))
    reason = "1 failure(s) in a row; last: status 503; out for 60 s"
    assert (entry["phase"], entry["available"], entry["why"]["event"]) == (
        "ejected",
        False,
        "ejected",
    )
    assert entry["why"]["reason"] == reason
    # Times are rounded to the millisecond.
    assert before + 60 - 0.01 <= entry["ejected_until"] <= time.time() + 60 + 0.01
    # The slow start that follows the ejection is shown too: from 10% once it ends.
    ramp = entry["slow_start"]
    assert ramp["share"] == 10
    assert ramp["until"] == pytest.approx(entry["ejected_until"] + 30, abs=0.002)
    assert rig.server(rig.web, rig.name("c"))["phase"] == "up"  # another listener's view
    assert page_rows(rig.page(), listener=rig.web)[rig.name("c")]["class"] == ""
    shop_rows = page_rows(rig.page(), listener=rig.shop)
    assert shop_rows[rig.name("c")]["class"] == "out"
    assert shop_rows[rig.name("c")]["why"].startswith(reason + " (")


# --- the server actions ------------------------------------------------------------------------


def test_drain_then_enable(rig: Rig) -> None:
    name = rig.name("b")
    status, answer = rig.act("POST", f"/admin/servers/{rig.web}/{name}/drain")
    assert status == 200
    assert (answer["listener"], answer["availability"]) == (rig.web, "primary")
    assert answer["server"]["weight"] == {"configured": 1, "current": 0}
    assert (answer["server"]["drained"], answer["server"]["available"]) == (True, False)
    assert answer["server"]["phase"] == "up"  # drained, not down: checks go on
    seen = len(rig.servers["b"].seen)
    assert rig.requests(30) == {"a": 15, "c": 15}
    assert [s.target for s in rig.servers["b"].seen[seen:]] == ["/health"] * (
        len(rig.servers["b"].seen) - seen
    )
    rows = page_rows(rig.page())
    assert (rows[name]["class"], rows[name]["data-drained"]) == ("drained", "true")
    assert rows[name]["phase"] == "up, drained" and rows[name]["weight"] == "0 (configured 1)"
    drained = f"Drained: {name} on {rig.web}, {rig.name('c')} on lb-db:{rig.ports[2]}"
    assert page_summary(rig.page()) == ["All 8 servers up.", drained]

    # Percent-encoded names are decoded, as a client quoting the colons sends them.
    quoted = f"{rig.web}/{name}".replace(":", "%3A")
    status, answer = rig.act("POST", f"/admin/servers/{quoted}/enable")
    assert status == 200 and answer["server"]["weight"] == {"configured": 1, "current": 1}
    assert rig.requests(30) == {"a": 10, "b": 10, "c": 10}
    assert page_rows(rig.page())[name]["class"] == ""


def test_a_drained_server_finishes_its_request_in_flight(rig: Rig) -> None:
    client = Client(socket.create_connection((LB_WEB, rig.ports[0]), timeout=10))
    try:
        client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # to a, the first in turn
        assert wait_for(lambda: rig.server(rig.web, rig.name("a"))["in_flight"] == 1)
        status, answer = rig.act("POST", f"/admin/servers/{rig.web}/{rig.name('a')}/drain")
        assert status == 200 and answer["server"]["in_flight"] == 1
        response, body = client.response()
        assert (response.status_code, body) == (200, b"a")
    finally:
        client.close()
    assert rig.requests(4) == {"b": 2, "c": 2}


def test_a_weight_change_changes_the_shares(rig: Rig) -> None:
    status, answer = rig.act(
        "PUT", f"/admin/servers/{rig.web}/{rig.name('a')}/weight", {"weight": 3}
    )
    assert status == 200 and answer["server"]["weight"] == {"configured": 1, "current": 3}
    assert rig.requests(50) == {"a": 30, "b": 10, "c": 10}
    assert page_rows(rig.page())[rig.name("a")]["weight"] == "3 (configured 1)"
    rig.act("PUT", f"/admin/servers/{rig.web}/{rig.name('a')}/weight", {"weight": 1})
    assert rig.requests(30) == {"a": 10, "b": 10, "c": 10}


def test_an_enabled_server_ramps_up_under_slow_start(rig: Rig) -> None:
    name = rig.name("d")
    assert rig.act("POST", f"/admin/servers/{rig.shop}/{name}/drain")[0] == 200
    assert rig.requests(4, port_index=1) == {"c": 4}
    enabled = time.time()
    status, answer = rig.act("POST", f"/admin/servers/{rig.shop}/{name}/enable")
    assert status == 200 and answer["server"]["weight"] == {"configured": 2, "current": 2}
    ramp = answer["server"]["slow_start"]
    assert ramp["share"] == 10
    assert enabled + 30 - 0.01 <= ramp["until"] <= time.time() + 30 + 0.01
    rows = page_rows(rig.page(), listener=rig.shop)
    assert rows[name]["share"].startswith("10% until ")


def test_draining_every_server_is_allowed_and_answers_503(rig: Rig) -> None:
    answers = [rig.act("POST", f"/admin/servers/{rig.web}/{rig.name(n)}/drain") for n in "abc"]
    assert [(s, a["availability"]) for s, a in answers] == [
        (200, "primary"),
        (200, "primary"),
        (200, "drained"),
    ]
    assert rig.requests(2) == {"503": 2}
    page = rig.page()
    assert f'data-listener="{rig.web}" data-availability="drained"' in page
    assert "Every server is drained: new requests get 503 until one is enabled." in page
    assert rig.act("POST", f"/admin/servers/{rig.web}/{rig.name('c')}/enable")[0] == 200
    assert rig.requests(2) == {"c": 2}


WEIGHT_PATH = "/admin/servers/{web}/{a}/weight"
BAD_WEIGHT = 'send {"weight": N} with N an integer from 0 to 1000'


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"", "bad_weight", BAD_WEIGHT),
        (
            b"{",
            "bad_json",
            "the body is not JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (b"[3]", "bad_weight", BAD_WEIGHT),
        (b"{}", "bad_weight", BAD_WEIGHT),
        (b'{"weight": -1}', "bad_weight", BAD_WEIGHT),
        (b'{"weight": 1001}', "bad_weight", BAD_WEIGHT),
        (b'{"weight": "3"}', "bad_weight", BAD_WEIGHT),
        (b'{"weight": true}', "bad_weight", BAD_WEIGHT),
        (b'{"weight": 2.0}', "bad_weight", BAD_WEIGHT),
    ],
)
def test_a_bad_weight_is_refused(unchanged: Rig, body: bytes, error: str, message: str) -> None:
    path = WEIGHT_PATH.format(web=unchanged.web, a=unchanged.name("a"))
    status, _, payload = unchanged.call("PUT", path, body)
    assert (status, json.loads(payload)) == (
        400,
        {"status": 400, "error": error, "message": message},
    )
    assert unchanged.server(unchanged.web, unchanged.name("a"))["weight"] == {
        "configured": 1,
        "current": 1,
    }


def test_unknown_listeners_and_servers_are_404(unchanged: Rig) -> None:
    rig = unchanged
    web, shop, db = rig.ports
    listeners = f"`lb-web:{web}`, `lb-web:{shop}`, `lb-db:{db}`"
    status, answer = rig.act("POST", f"/admin/servers/lb-web:1/{rig.name('a')}/drain")
    assert (status, answer["message"]) == (
        404,
        f"no load balancer listener `lb-web:1`; listeners: {listeners}",
    )
    status, answer = rig.act("POST", f"/admin/servers/{rig.web}/{rig.name('d')}/drain")
    servers = ", ".join(f"`{rig.name(n)}`" for n in "abc")
    assert (status, answer) == (
        404,
        {
            "status": 404,
            "error": "not_found",
            "message": f"no server `{rig.name('d')}` in {rig.web}; servers: {servers}",
        },
    )
    status, answer = rig.act("POST", f"/admin/servers/{rig.web}/{rig.name('a')}/reboot")
    assert (status, answer["message"]) == (
        404,
        f"no admin resource /admin/servers/{rig.web}/{rig.name('a')}/reboot",
    )
    assert [s["weight"]["current"] for s in rig.listener(rig.web)["servers"]] == [1, 1, 1]


@pytest.mark.parametrize(
    ("method", "verb", "message"),
    [
        ("GET", "drain", "use POST for drain"),
        ("PUT", "drain", "use POST for drain"),
        ("GET", "enable", "use POST for enable"),
        ("POST", "weight", "use PUT for weight"),
        ("DELETE", "weight", "use PUT for weight"),
    ],
)
def test_a_wrong_method_is_405(unchanged: Rig, method: str, verb: str, message: str) -> None:
    status, answer = unchanged.act(
        method, f"/admin/servers/{unchanged.web}/{unchanged.name('a')}/{verb}", token=None
    )
    assert (status, answer) == (
        405,
        {"status": 405, "error": "method_not_allowed", "message": message},
    )


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"])
@pytest.mark.parametrize(
    ("method", "verb", "body"),
    [("POST", "drain", None), ("POST", "enable", None), ("PUT", "weight", {"weight": 5})],
)
def test_actions_need_the_token(
    unchanged: Rig, token: str | None, method: str, verb: str, body: object
) -> None:
    path = f"/admin/servers/{unchanged.web}/{unchanged.name('a')}/{verb}"
    data = b"" if body is None else json.dumps(body).encode()
    status, headers, payload = unchanged.call(method, path, data, token)
    assert (status, headers["www-authenticate"], json.loads(payload)) == (
        401,
        "Bearer",
        {
            "status": 401,
            "error": "unauthorized",
            "message": "send Authorization: Bearer <admin_token>",
        },
    )
    # Unauthenticated callers learn nothing, not even which listeners exist.
    assert unchanged.act(method, f"/admin/servers/lb-x:1/y/{verb}", body, token)[0] == 401
    assert unchanged.server(unchanged.web, unchanged.name("a"))["weight"] == {
        "configured": 1,
        "current": 1,
    }


def test_without_a_configured_token_actions_are_refused_and_status_is_open(start: Start) -> None:
    rig = start(token=None)
    status, answer = rig.act("POST", f"/admin/servers/{rig.web}/{rig.name('a')}/drain", token=None)
    assert (status, answer["error"]) == (403, "writes_disabled")
    assert rig.server(rig.web, rig.name("a"))["drained"] is False


def test_several_workers_without_a_state_file_refuse_actions_rather_than_half_do_them(
    start: Start,
) -> None:
    rig = start(gateway="workers = 2")
    for method, verb, body in [("POST", "drain", None), ("PUT", "weight", {"weight": 2})]:
        status, answer = rig.act(method, f"/admin/servers/{rig.web}/{rig.name('a')}/{verb}", body)
        assert (status, answer["error"], answer["message"]) == (
            409,
            "workers",
            f"this gateway runs 2 workers, each balancing on its own, and this request reached "
            f"one (pid {os.getpid()}); set [gateway] state_file, through which every worker "
            f"takes the change, or run with workers = 1",
        )
    assert rig.server(rig.web, rig.name("a"))["weight"] == {"configured": 1, "current": 1}
    assert rig.status()["gateway"]["workers"] == 2
    assert f"pid {os.getpid()} (one of 2 workers: this is its view)" in rig.page()


def test_enable_of_a_server_the_configuration_drains_is_409(rig: Rig) -> None:
    db, name = f"lb-db:{rig.ports[2]}", rig.name("c")
    status, answer = rig.act("POST", f"/admin/servers/{db}/{name}/enable")
    assert (status, answer["error"], answer["message"]) == (
        409,
        "configured_drained",
        f"the configuration gives {name} weight 0; PUT a weight to send it requests",
    )
    status, answer = rig.act("PUT", f"/admin/servers/{db}/{name}/weight", {"weight": 4})
    assert status == 200 and answer["server"]["weight"] == {"configured": 0, "current": 4}


# --- the page ---------------------------------------------------------------------------------


def test_the_page_refreshes_itself_and_needs_nothing_from_elsewhere(rig: Rig) -> None:
    page = rig.page()
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page
    assert 'fetch("/status.html", {cache: "no-store"})' in page
    assert "setInterval(refresh, 2000);" in page
    assert page.count("<script") == 1 and page.count("<style>") == 1
    for external in ("src=", "href=", "url(", "@import", "//"):
        assert external not in page.replace('"use strict"', ""), external


HOSTILE = '<script>alert("x")</script>&\''


def hostile_document() -> Json:
    """A snapshot whose every string is markup, as a hostile name or reason would be."""
    server = {
        "name": HOSTILE,
        "address": HOSTILE,
        "weight": {"configured": 1, "current": 0},
        "backup": True,
        "drained": True,
        "available": False,
        "phase": "down",
        "why": {"event": "down", "reason": HOSTILE, "at": 0.0},
        "checks": [{"at": 0.0, "ok": False, "reason": HOSTILE}],
        "slow_start": {"share": 100, "until": None},
        "ejected_until": None,
        "in_flight": 0,
        "pool": {"active": 0, "idle": 0, "opening": 0, "waiting": 0, "max_connections": None},
    }
    listener = {
        "name": HOSTILE,
        "port": 1,
        "address": HOSTILE,
        "scheduler": HOSTILE,
        "slow_start": 0.0,
        "health_check": {
            "type": "http",
            "path": HOSTILE,
            "interval": 1.0,
            "timeout": 1.0,
            "rise": 1,
            "fall": 1,
        },
        "availability": HOSTILE,
        "servers": [server],
    }
    lb = {"id": HOSTILE, "vpc": HOSTILE, "ip": HOSTILE, "internal": True, "listeners": [listener]}
    gateway = {
        "version": HOSTILE,
        "pid": 1,
        "workers": 1,
        "started_at": 0.0,
        "uptime": 3725.0,
        "time": 0.0,
    }
    return {"gateway": gateway, "load_balancers": [lb]}


def test_the_page_escapes_every_value() -> None:
    page = render_page(hostile_document())
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;"
    assert page.count("<script") == 1  # the page's own
    assert "alert(" not in page.replace(escaped, "")
    # The version; the section's title (listener, address, scheduler, check path) and its two
    # data attributes; the summary's item (server, listener, reason) and drained line (server,
    # listener); the row's data-server, name, address, why and check title.
    assert page.count(escaped) == 1 + 4 + 2 + 3 + 2 + 5
    assert f'data-server="{escaped}" data-phase="down" data-drained="true"' in page
    assert f'title="00:00:00: {escaped}"' in page
    assert "up 1h 02m 05s" in page
    rows = page_rows(page)
    assert rows[HOSTILE]["why"] == HOSTILE + " (00:00:00)"
    assert rows[HOSTILE]["phase"] == "down, drained, backup"


class _Rows(HTMLParser):
    """Each ``tr[data-server]`` of one section (or all): its attributes and its cells' text."""

    def __init__(self, listener: str | None) -> None:
        super().__init__()
        self.listener = listener
        self.inside = listener is None
        self.rows: dict[str, dict[str, str]] = {}
        self.row: dict[str, str] | None = None
        self.cell: str | None = None
        self.summary: list[str] = []
        self.texts: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section" and self.listener is not None:
            self.inside = values.get("data-listener") == self.listener
        if tag == "tr" and "data-server" in values and self.inside:
            self.row = dict(values)
            self.rows.setdefault(values["data-server"], self.row)
        elif tag == "td" and self.row is not None:
            self.cell = values["class"]
            self.row[self.cell] = ""
        elif (tag == "p" and "summary" in values.get("class", "")) or tag == "li":
            self.texts = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self.row = None
        elif tag == "td":
            self.cell = None
        elif tag in ("p", "li") and self.texts is not None:
            self.summary.append("".join(self.texts))
            self.texts = None

    def handle_data(self, data: str) -> None:
        if self.row is not None and self.cell is not None:
            self.row[self.cell] += data
        if self.texts is not None:
            self.texts.append(data)


def page_rows(page: str, listener: str | None = None) -> dict[str, dict[str, str]]:
    parser = _Rows(listener)
    parser.feed(page)
    return parser.rows


def page_summary(page: str) -> list[str]:
    parser = _Rows(None)
    parser.feed(page)
    return parser.summary
