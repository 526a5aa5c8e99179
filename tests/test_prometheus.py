"""A real Prometheus (Debian's ``prometheus``) scrapes lbproxy's /metrics on loopback; its HTTP
API then answers ``up`` and the request counter as an operator's dashboard would ask them."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbproxy.server import Runtime
from tests.harness import Backend, LoopThread, config_from, free_port, gateway_toml
from tests.test_metrics import http_get

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (make test installs Debian's package)",
)

SCRAPE_CONFIG = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: lbproxy
    static_configs:
      - targets: ["{target}"]
"""


@pytest.fixture
def gateway(lt: LoopThread, backends: list[Backend]) -> Iterator[Runtime]:
    text = gateway_toml(backends, free_port(), gateway_extra='admin_listen = "127.0.0.1:0"')
    runtime = Runtime(config_from(text), tomllib.loads(text))
    lt.run(runtime.start())
    yield runtime
    lt.run(runtime.stop(timeout=2.0))


@pytest.fixture
def prometheus(gateway: Runtime, tmp_path: Path) -> Iterator[str]:
    assert gateway.admin is not None and gateway.admin.address is not None
    host, port = gateway.admin.address
    config = tmp_path / "prometheus.yml"
    config.write_text(SCRAPE_CONFIG.format(target=f"{host}:{port}"))
    listen = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={listen}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{listen}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def query(url: str, promql: str) -> list[dict[str, object]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(address, timeout=5) as answer:
        document = json.load(answer)
    assert document["status"] == "success", document
    result: list[dict[str, object]] = document["data"]["result"]
    return result


def scalar(url: str, promql: str) -> float | None:
    result = query(url, promql)
    if not result:
        return None
    sample = result[0]["value"]
    assert isinstance(sample, list)
    return float(sample[1])


def wait_for(url: str, promql: str, expected: float, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while (got := scalar(url, promql)) != expected:
        assert time.monotonic() < deadline, f"{promql} = {got}, not {expected}"
        time.sleep(0.5)


def test_prometheus_scrapes_lbproxy(gateway: Runtime, prometheus: str) -> None:
    wait_for(prometheus, 'up{job="lbproxy"}', 1.0)
    for _ in range(25):
        assert http_get(gateway.addresses[0], "/api/x")[0] == 200
    wait_for(prometheus, 'sum(lbproxy_requests_total{job="lbproxy",api="api",code="200"})', 25.0)
    wait_for(prometheus, 'count(lbproxy_server_up{upstream=~"lb-t:.*"} == 1)', 3.0)
    # The histogram is usable as dashboards use it.
    p99 = scalar(
        prometheus,
        "histogram_quantile(0.99, sum by (le) (lbproxy_request_duration_seconds_bucket))",
    )
    assert p99 is not None and 0 < p99 <= 60
