"""The monitoring examples, judged by the real tools: ``examples/prometheus.yml`` and
``examples/prometheus-alerts.yml`` by promtool (config, rules, and the alerts unit-tested on
made-up series), every PromQL expression of the alerts and of ``examples/grafana-dashboard.json``
by a real Prometheus's parser, and every ``lbproxy_*`` metric and label they name against what a
real lbproxy serves at /metrics after some traffic."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbproxy.server import Runtime
from tests.harness import Backend, LoopThread, Seen, config_from, free_port, gateway_toml
from tests.test_metrics import http_get

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROMETHEUS_YML = EXAMPLES / "prometheus.yml"
ALERTS = EXAMPLES / "prometheus-alerts.yml"
DASHBOARD = EXAMPLES / "grafana-dashboard.json"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not on PATH (Debian's prometheus package; make test installs it)",
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not on PATH (Debian's prometheus package; make test installs it)",
)

# Grafana's variables, as a query would be sent: durations for the built-in ones, a regex that
# matches anything for the dashboard's own ($job, $instance, $api, $upstream: all used with =~).
GRAFANA_DURATIONS = {"__rate_interval": "1m", "__interval": "30s", "__range": "3h"}
BUILTIN = re.compile(r"\$\{?(__\w+)\}?")
VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$", re.DOTALL)

METRIC = re.compile(r"\blbproxy_\w+")
SELECTOR = re.compile(r"\b(lbproxy_\w+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)


# -- the dashboard's expressions -------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def _exprs(node: object, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        title = node.get("title") or node.get("name")
        here = f"{where} {title!r}" if isinstance(title, str) else where
        if isinstance(node.get("expr"), str):
            yield here, node["expr"]
        for child in node.values():
            yield from _exprs(child, here)
    elif isinstance(node, list):
        for child in node:
            yield from _exprs(child, where)


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, selector, label) of every ``label_values(selector, label)`` variable."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text.strip())
        assert match, f"variable {variable['name']}: {text!r} is not label_values(selector, label)"
        found.append((variable["name"], match[1].strip(), match[2]))
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expression) of every PromQL expression in the dashboard: panel targets,
    annotations, and the selectors of its variables' ``label_values``."""
    dashboard = load_dashboard()
    found = list(_exprs(dashboard["panels"], "panel"))
    found += _exprs(dashboard["annotations"], "annotation")
    found += [(f"variable {name}", selector) for name, selector, _ in variable_queries(dashboard)]
    return found


def concrete(expr: str) -> str:
    """The expression as Grafana would send it, variables replaced."""
    expr = BUILTIN.sub(lambda m: GRAFANA_DURATIONS[m[1]], expr)
    return VARIABLE.sub(".*", expr)


# -- the alerts, as Prometheus loaded them -----------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on loopback with no scrape target, the example alerts loaded: its
    query API parses expressions exactly as a server does, its rules API lists the alerts."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not on PATH (Debian's prometheus package)")
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    # JSON is YAML: no YAML library needed.
    config.write_text(
        json.dumps({"global": {"evaluation_interval": "1h"}, "rule_files": [str(ALERTS)]})
    )
    listen = f"127.0.0.1:{free_port()}"
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={listen}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{listen}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def api_get(url: str, path: str, **params: str) -> dict[str, Any]:
    address = f"{url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(address, timeout=10) as answer:
            document: dict[str, Any] = json.load(answer)
    except urllib.error.HTTPError as error:  # 400: the expression does not parse
        with error:
            document = json.load(error)
    return document


def alerts_from_text() -> dict[str, str]:
    """Alert name -> expression, read from the file's text (``expr:`` on one line or as a
    block scalar); the parse test checks this finds what Prometheus loads."""
    found: dict[str, str] = {}
    lines = ALERTS.read_text().splitlines()
    name = ""
    i = 0
    while i < len(lines):
        if alert := re.match(r"\s*- alert: (\w+)$", lines[i]):
            name = alert[1]
        elif expr := re.match(r"(\s*)expr: (.*)$", lines[i]):
            indent, text = len(expr[1]), expr[2]
            if text in ("|", "|-", ">", ">-"):
                block = []
                while i + 1 < len(lines) and (
                    not lines[i + 1].strip()
                    or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                ):
                    i += 1
                    block.append(lines[i].strip())
                text = "\n".join(block)
            assert name and name not in found, f"expr without its own alert: {text!r}"
            found[name] = text.strip()
        i += 1
    return found


def alert_expressions(url: str) -> dict[str, str]:
    """Alert name -> expression, as the real Prometheus loaded them from the example file."""
    document = api_get(url, "/api/v1/rules")
    assert document["status"] == "success", document
    rules = [rule for group in document["data"]["groups"] for rule in group["rules"]]
    assert all(rule["type"] == "alerting" for rule in rules)
    return {rule["name"]: rule["query"] for rule in rules}


# -- the examples themselves -------------------------------------------------------------------


def test_the_scrape_config_targets_the_admin_listener_of_the_examples() -> None:
    text = PROMETHEUS_YML.read_text()
    assert re.search(r"^\s+- job_name: lbproxy$", text, re.MULTILINE)
    assert re.search(r"^\s+scrape_interval: 15s$", text, re.MULTILINE)
    assert re.search(r"^rule_files:\n\s+- prometheus-alerts\.yml$", text, re.MULTILINE)
    admin = tomllib.loads((EXAMPLES / "access.toml").read_text())["gateway"]["admin_listen"]
    assert f'- targets: ["{admin}"]' in text


def test_the_dashboard_is_importable_with_unique_panel_ids_and_a_query_in_every_panel() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["id"] is None  # importable into any Grafana
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance", "api", "upstream"} <= set(variables)
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    shown = [panel for panel in panels if panel["type"] != "row"]
    assert len(shown) >= 20
    for panel in shown:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        targets = panel.get("targets", [])
        assert targets, f"panel {title!r} has no target"
        for target in targets:
            assert target["expr"].strip(), title
            assert target["datasource"] == panel["datasource"], title
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), title
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, title
    # Multi-value variables expand to regexes: only =~ can take them.
    for where, expr in dashboard_expressions():
        for label, op, value in MATCHER.findall(BUILTIN.sub("", expr)):
            if "$" in value:
                assert op == "=~", f"{where}: {label}{op}{value!r} needs =~ for a variable"


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_the_rules() -> None:
    config = run_tool("promtool", "check", "config", str(PROMETHEUS_YML))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout, config.stdout
    rules = run_tool("promtool", "check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": "lbproxy", "instance": "gw-1:9901", **labels}
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _alert(**labels: str) -> dict[str, dict[str, str]]:
    return {"exp_labels": {"job": "lbproxy", "instance": "gw-1:9901", **labels}}


@needs_promtool
def test_the_alerts_fire_when_they_should_and_not_before(tmp_path: Path) -> None:
    """promtool's rule unit tests, on series a scrape every 15 s would give. Annotations are
    compared too: their templates render."""
    lb = {"upstream": "lb-1:80"}
    server_down = {**lb, "server": "i-1:8080"}
    tests: dict[str, Any] = {
        "interval": "15s",
        "input_series": [
            _series("up", "1 1 1 1 0x30"),  # unreachable from 1m
            _series("lbproxy_server_up", "1 1 1 1 0x30", **server_down),  # down from 1m
            _series("lbproxy_server_up", "1x34", **lb, server="i-2:8080"),
            # The first refused reload at 2m (the series appears with it), a second at 5m.
            _series("lbproxy_config_reloads_total", "_x8 1x11 2x70", result="failure"),
            _series("lbproxy_config_reloads_total", "1x90", result="success"),
            _series("lbproxy_access_log_dropped_total", "0x7 5x30"),  # 5 dropped at 2m
            # 100 requests per 15 s to "items", 10 of them 502: a 10% 5xx ratio.
            _series("lbproxy_requests_total", "0+90x60", api="items", method="GET", code="200"),
            _series("lbproxy_requests_total", "0+10x60", api="items", method="GET", code="502"),
            _series("lbproxy_requests_total", "0+100x60", api="ok", method="GET", code="200"),
        ],
        "alert_rule_test": [],
    }

    def expect(at: str, name: str, *alerts: dict[str, dict[str, str]]) -> None:
        tests["alert_rule_test"].append(
            {"eval_time": at, "alertname": name, "exp_alerts": list(alerts)}
        )

    down = _alert(severity="critical")
    down["exp_annotations"] = {
        "summary": "lbproxy gw-1:9901 cannot be scraped",
        "description": "Prometheus has not reached /metrics on gw-1:9901 (the admin listener) "
        "for a minute: lbproxy is down, or its admin listener is unreachable.",
    }
    expect("1m30s", "LbproxyDown")  # pending: down for 30 s only
    expect("2m30s", "LbproxyDown", down)

    server = _alert(severity="warning", **server_down)
    server["exp_annotations"] = {
        "summary": "i-1:8080 behind lb-1:80 takes no requests",
        "description": "lbproxy gw-1:9901 has had server i-1:8080 of lb-1:80 down (failed "
        "active checks) or ejected (passive failures) for 2 minutes.",
    }
    expect("2m30s", "LbproxyServerDown")
    expect("3m30s", "LbproxyServerDown", server)
    expect("3m30s", "LbproxyUpstreamAllServersDown")  # i-2 still takes requests

    reload = _alert(severity="warning", result="failure")
    reload["exp_annotations"] = {
        "summary": "lbproxy gw-1:9901 refused a configuration reload",
        "description": "A reload failed in the last 15 minutes; the previous configuration "
        "keeps serving. Run `lbproxy check -c <config>` and see lbproxy's log.",
    }
    expect("1m45s", "LbproxyConfigReloadFailing")
    expect("2m", "LbproxyConfigReloadFailing", reload)  # the very first failure
    expect("5m30s", "LbproxyConfigReloadFailing", reload)  # both parts true: one alert
    expect("19m", "LbproxyConfigReloadFailing", reload)
    expect("21m", "LbproxyConfigReloadFailing")  # 16 minutes without a failure

    dropped = _alert(severity="warning")
    dropped["exp_annotations"] = {
        "summary": "lbproxy gw-1:9901 drops access log records",
        "description": "The access log writer fell behind and 5 records were dropped in "
        "10 minutes: the log's disk or pipe is too slow.",
    }
    expect("1m45s", "LbproxyAccessLogDropping")
    expect("3m", "LbproxyAccessLogDropping", dropped)

    ratio = {"exp_labels": {"job": "lbproxy", "api": "items", "severity": "warning"}}
    ratio["exp_annotations"] = {
        "summary": "API items: 10% of answers are 5xx",
        "description": 'More than 5% of the requests to API "items" were answered with a 5xx '
        "status over the last 10 minutes (an empty API name: requests no API matched).",
    }
    expect("5m", "LbproxyHighErrorRatio")  # pending
    expect("12m", "LbproxyHighErrorRatio", ratio)  # "ok" has no 5xx at all
    expect("12m", "LbproxyHighLatency")

    unit = tmp_path / "alerts-test.yml"
    unit.write_text(
        json.dumps({"rule_files": [str(ALERTS)], "evaluation_interval": "15s", "tests": [tests]})
    )
    result = run_tool("promtool", "test", "rules", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_prometheus
def test_prometheus_parses_every_expression_of_the_dashboard_and_the_alerts(
    prometheus: str,
) -> None:
    alerts = alert_expressions(prometheus)
    assert {
        "LbproxyDown",
        "LbproxyServerDown",
        "LbproxyHighErrorRatio",
        "LbproxyConfigReloadFailing",
        "LbproxyAccessLogDropping",
    } <= set(alerts)
    assert set(alerts) == set(alerts_from_text())  # what the other tests read is all there is
    expressions = dashboard_expressions() + [(f"alert {n}", e) for n, e in alerts.items()]
    assert len(expressions) >= 40
    failures = []
    for where, expr in expressions:
        query = concrete(expr)
        assert "$" not in query, f"{where}: a variable left in {query!r}"
        answer = api_get(prometheus, "/api/v1/query", query=query)
        if answer["status"] != "success":
            failures.append(f"{where}: {query}\n  {answer.get('error')}")
    assert not failures, "\n".join(failures)


# -- what a real lbproxy serves ----------------------------------------------------------------


async def garbage(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    """Not HTTP: every try on this server fails (a protocol error), though it accepts."""
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    return False


@pytest.fixture
def scraped(lt: LoopThread, backends: list[Backend]) -> Iterator[dict[str, set[str]]]:
    """Sample name -> label names, from /metrics of a real runtime after traffic that makes
    every series the examples use: answers and a 404, a server failing every try (errors,
    retries, ejection), active health checks, and a refused reload."""
    backends[2].handler = garbage
    text = gateway_toml(backends, free_port(), gateway_extra='admin_listen = "127.0.0.1:0"')
    checks = 'health_check = { type = "tcp", interval = 0.2, rise = 1, fall = 1 }\n'
    text = text.replace("servers = [", checks + "servers = [", 1)
    runtime = Runtime(config_from(text), tomllib.loads(text))
    lt.run(runtime.start())
    try:
        assert runtime.admin is not None and runtime.admin.address is not None
        for _ in range(9):
            assert http_get(runtime.addresses[0], "/api/x")[0] == 200
        assert http_get(runtime.addresses[0], "/nowhere")[0] == 404
        # What the daemon records when a SIGHUP finds a bad file (the runtime itself is not
        # reloaded: no daemon here).
        lt.call(lambda: runtime.exporter.stats.reload(False))
        wanted = referenced_metrics()
        deadline = time.monotonic() + 15
        while True:
            status, body = http_get(runtime.admin.address, "/metrics")
            assert status == 200
            labels: dict[str, set[str]] = {}
            for family in text_string_to_metric_families(body.decode()):
                for sample in family.samples:
                    labels.setdefault(sample.name, set()).update(sample.labels)
            if wanted <= set(labels) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield labels
    finally:
        lt.run(runtime.stop(timeout=2.0))


def referenced_metrics() -> set[str]:
    names = {name for _, expr in dashboard_expressions() for name in METRIC.findall(expr)}
    names |= {name for expr in alerts_from_text().values() for name in METRIC.findall(expr)}
    return names


def test_every_metric_and_label_the_examples_use_is_served(scraped: dict[str, set[str]]) -> None:
    names = referenced_metrics()
    assert len(names) >= 20, names
    missing = sorted(names - set(scraped))
    assert not missing, f"not served by lbproxy: {missing}"

    expressions = dashboard_expressions()
    expressions += [(f"alert {name}", expr) for name, expr in alerts_from_text().items()]
    problems = []
    for where, expr in expressions:
        for name, matchers in SELECTOR.findall(expr):
            for label, _, _ in MATCHER.findall(matchers):
                if label not in scraped.get(name, set()) | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label!r}")
        known = set(TARGET_LABELS)
        for name in METRIC.findall(expr):
            known |= scraped.get(name, set())
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                if label not in known:
                    problems.append(
                        f"{where}: grouping by {label!r}, a label of none of its metrics"
                    )
    for variable, selector, label in variable_queries(load_dashboard()):
        (name,) = METRIC.findall(selector)
        if label not in scraped[name] | TARGET_LABELS:
            problems.append(f"variable {variable}: {name} has no label {label!r}")
    assert not problems, "\n".join(problems)
