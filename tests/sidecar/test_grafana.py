"""deploy/grafana/gatewatch.json charts only metrics that a real gateway and sidecar expose, and
deploy/prometheus.yml scrapes both where they listen by default."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app as gateway_app
from gateway.config import GatewayConfig
from gateway.config import load_config as load_gateway_config
from sidecar.app import create_app as sidecar_app
from sidecar.config import SidecarConfig
from sidecar.config import load_config as load_sidecar_config
from tests._models import push_linreg, push_logreg
from tests._server import run_server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\bgatewatch_[A-Za-z0-9_:]*")
SELECTOR = re.compile(r"\b(gatewatch_[A-Za-z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "untyped": ("",),
}
EVENT_ONLY = {
    "gatewatch_predict_errors_total",  # a model raising
    "gatewatch_shadow_dropped_total",  # a full shadow queue
    "gatewatch_shadow_failed_total",  # a shadow raising
    "gatewatch_model_load_failures_total",  # a version refused at load
    "gatewatch_rollout_decisions_total",  # a rollout policy acting
}
"""Series that only exist after an event this test's traffic does not cause."""
CONFIG = """
[gateway]
registry = "registry"

[log]
dir = "predlog"

[sidecar]
checkpoint_interval = 0.05

[models.churn]
primary = 1
canary = { version = 2, weight = 0.3 }
shadow = [3]
"""


def churn_row(i: int) -> dict[str, Any]:
    data = [((i * 7 + j) % 11 - 5) / 5 for j in range(20)]
    return {"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": data}]}


@dataclass
class Exposed:
    """What the two /metrics pages expose: names a PromQL query can use, and their labels."""

    names: set[str]
    sampled: set[str]
    labels: dict[str, set[str]]

    @classmethod
    def parse(cls, *pages: str) -> Exposed:
        names: set[str] = set()
        sampled: set[str] = set()
        labels: dict[str, set[str]] = {}
        for page in pages:
            for family in text_string_to_metric_families(page):
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
                for sample in family.samples:
                    sampled.add(sample.name)
                    labels.setdefault(sample.name, set()).update(sample.labels)
        return cls(names | sampled, sampled, labels)


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory, prometheus: dict[str, Any]) -> Exposed:
    """Scrape a real gateway after canary, shadow, regression and feedback traffic, then a real
    sidecar once it has read that traffic's log, at the paths prometheus.yml scrapes."""
    paths = {job["job_name"]: job["metrics_path"] for job in prometheus["scrape_configs"]}
    root = tmp_path_factory.mktemp("grafana")
    work = root / "work"
    work.mkdir()
    for seed in (0, 1, 2):
        push_logreg(root / "registry", work, seed=seed)
    push_linreg(root / "registry", work)
    (root / "gatewatch.toml").write_text(CONFIG)
    gateway_config = load_gateway_config(root / "gatewatch.toml")
    with run_server(gateway_app(gateway_config)) as url, httpx.Client(base_url=url) as client:
        ids = []
        for i in range(80):
            answer = client.post("/v2/models/churn/infer", json=churn_row(i))
            answer.raise_for_status()
            ids.append((answer.headers["x-request-id"], i % 2))
        for i in range(20):
            row = {"instances": [[i / 10, 1.0 - i / 10, 0.5]]}
            answer = client.post("/v1/models/price:predict", json=row)
            answer.raise_for_status()
            ids.append((answer.headers["x-request-id"], 3.0 + i / 10))
        assert client.post("/v2/models/churn/infer", json={"inputs": []}).status_code == 400
        labels = [{"request_id": rid, "label": label} for rid, label in ids]
        client.post("/v1/feedback", json=labels).raise_for_status()
        gateway_page = client.get(paths["gatewatch-gateway"]).text
    sidecar_config = load_sidecar_config(root / "gatewatch.toml", environ={})
    with run_server(sidecar_app(sidecar_config)) as url, httpx.Client(base_url=url) as client:
        for _ in range(3000):
            status = client.get("/status").json()
            if status["feedback"] >= len(labels) and status["records"] >= len(ids):
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"the sidecar did not read the log: {status['records']} records")
        sidecar_page = client.get(paths["gatewatch-sidecar"]).text
    return Exposed.parse(gateway_page, sidecar_page)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "grafana" / "gatewatch.json").read_text())
    return loaded


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every template variable query."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["query"]["query"]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_the_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "gatewatch" and dashboard["title"] == "gatewatch"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)) > 20
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_every_metric_in_the_panels_is_exposed(dashboard: dict[str, Any], exposed: Exposed) -> None:
    used: set[str] = set()
    for where, expr in expressions(dashboard):
        names = set(METRIC.findall(expr))
        assert names, f"{where}: {expr} uses no gatewatch metric"
        unknown = names - exposed.names
        assert not unknown, f"{where}: {sorted(unknown)} not in /metrics"
        used |= names
        for name, matchers in SELECTOR.findall(expr):
            if name in exposed.labels:
                missing = set(MATCHER.findall(matchers)) - exposed.labels[name]
                assert not missing, f"{where}: {name} has no label {sorted(missing)}"
    # Every other series shows data after ordinary traffic.
    assert used - exposed.sampled <= EVENT_ONLY, sorted(used - exposed.sampled - EVENT_ONLY)
    # And the dashboard covers both processes.
    assert any(name.startswith("gatewatch_sidecar_") for name in used)
    assert {"gatewatch_requests_total", "gatewatch_webhook_deliveries_total"} <= used


def test_prometheus_scrapes_the_gateway_and_the_sidecar(prometheus: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert set(jobs) == {"gatewatch-gateway", "gatewatch-sidecar"}
    defaults = {
        "gatewatch-gateway": GatewayConfig().listen,
        "gatewatch-sidecar": SidecarConfig().listen,
    }
    for name, job in jobs.items():
        assert job["metrics_path"] == "/metrics"
        targets = [t for group in job["static_configs"] for t in group["targets"]]
        assert targets == [defaults[name]]
