"""The dashboard against a real sidecar fed with a seeded log, in Debian's headless Chromium.

The log is the sidecar scenario (churn: primary v1, canary v2, shadow v3, two drifting features
and labels; price: a regressor; ghost: no manifest) stretched over ~30 minutes of record time
so the charts have many points. The browser may only reach the sidecar: every other request
is blocked and recorded, and the tests assert there was none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount
from starlette.routing import Route as HTTPRoute
from starlette.staticfiles import StaticFiles

from gateway.predlog import encode
from gateway.registry import read_manifest
from sidecar.app import create_app
from sidecar.config import SidecarConfig, load_config
from sidecar.dashboard import STATIC_DIR, dashboard_routes, model_page, overview_page
from sidecar.engine import Engine
from sidecar.history import DEFAULT_LIVE_ROWS, HISTORY_KEY, History
from tests._server import run_server
from tests._system import require_binary
from tests.sidecar._scenario import DRIFTING, scenario, write_registry

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
STRETCH = 60.0
"""The scenario's 0.01 s between requests becomes 0.6 s: 3000 requests span 30 minutes."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHARTS = ["requests", "latency", "accuracy", "drift", "shadow", "canary", "histogram"]
CONFIG = """
[gateway]
registry = "registry"

[log]
dir = "predlog"

[sidecar]
checkpoint_interval = 0.05
batch = 200

[models.churn]
primary = 1
canary = { version = 2, weight = 0.15 }
shadow = [3]
"""
DECIMALS = {"fraction": 3, "score": 3, "ms": 2, "seconds": 1}


def approx(value: float) -> Any:
    """The series carry 4 decimals."""
    return pytest.approx(value, abs=5e-5)


@dataclass
class Seeded:
    config: SidecarConfig
    records: list[dict[str, Any]]
    history: History
    """Built as the consumer builds it: one ``update`` per batch of ``config.batch`` records."""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    root = tmp_path_factory.mktemp("dashboard")
    write_registry(root / "registry")
    records, _ = scenario(3000, seed=5, drift_at=0.3)
    t0 = records[0]["ts"]
    for record in records:
        record["ts"] = round(t0 + (record["ts"] - t0) * STRETCH, 6)
    (root / "predlog").mkdir()
    (root / "predlog" / "predlog-w1-000001.jsonl").write_bytes(b"".join(map(encode, records)))
    (root / "gatewatch.toml").write_text(CONFIG)
    config = load_config(root / "gatewatch.toml", environ={})
    engine, history = Engine(config), History()
    for start in range(0, len(records), config.batch):
        batch = records[start : start + config.batch]
        engine.process(batch)
        history.update(batch, engine.status, config.path)
    return Seeded(config, records, history)


def _adopt(history: History) -> HTTPRoute:
    """Gives the sidecar the fixture's History, unless its consumer already keeps its own."""

    async def adopt(request: Request) -> Response:
        kept = request.state.sidecar.extra.setdefault(HISTORY_KEY, history)
        return JSONResponse({"fixture": kept is history})

    return HTTPRoute("/_test/adopt-history", adopt, methods=["POST"])


def wait_consumed(client: httpx.Client, count: int) -> None:
    """Until the consumer has read every line of the log and /status counts its records."""
    for _ in range(3000):
        if client.get("/healthz").json()["consumed"] >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"the sidecar did not read the {count} records")


@contextlib.contextmanager
def seeded_sidecar(config: SidecarConfig, count: int, *routes: HTTPRoute) -> Iterator[str]:
    app = create_app(config, extra_routes=[*dashboard_routes(), *routes])
    with run_server(app) as url, httpx.Client(base_url=url) as client:
        wait_consumed(client, count)
        if routes:
            client.post("/_test/adopt-history").raise_for_status()
        yield url


@pytest.fixture(scope="module")
def sidecar(seeded: Seeded) -> Iterator[str]:
    with seeded_sidecar(seeded.config, len(seeded.records), _adopt(seeded.history)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_binary("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watch:
    """What a page tried that it should not have: requests elsewhere, errors in the page."""

    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)
    """Paths that answered 404 (the browser also logs each as a console error)."""

    def clean(self, optional: set[str] = frozenset({"/alerts", "/webhooks", "/rollouts"})) -> bool:
        """Nothing blocked, no script error, no 404 but for the optional endpoints."""
        resources = all("status of 404" in message for message in self.console)
        return not self.blocked and not self.errors and resources and self.missing <= optional


@contextlib.contextmanager
def open_page(browser: Browser, origin: str) -> Iterator[tuple[Page, Watch]]:
    """A page whose every request to anywhere but ``origin`` is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    watch = Watch()

    def only_the_sidecar(route: Route) -> None:
        if route.request.url.startswith(f"{origin}/"):
            route.continue_()
        else:
            watch.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_sidecar)
    page = context.new_page()
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    page.on("console", lambda m: watch.console.append(m.text) if m.type == "error" else None)
    page.on(
        "response",
        lambda r: watch.missing.add(urlsplit(r.url).path) if r.status == 404 else None,
    )
    try:
        yield page, watch
    finally:
        context.close()


def load(page: Page, url: str, renders: int = 1) -> None:
    page.goto(url)
    page.wait_for_selector(f'body[data-renders="{renders}"]', state="attached")
    assert page.get_attribute("body", "data-error") is None


def dig(status: Any, path: list[str]) -> Any:
    for key in path:
        status = status[key]
    return status


def check_numbers(page: Page, status: dict[str, Any]) -> int:
    """Every number the page took from /status shows the value /status has; returns how many."""
    shown = page.eval_on_selector_all(
        "[data-path]", "els => els.map(e => [e.dataset.path, e.dataset.format, e.textContent])"
    )
    for path, form, text in shown:
        value = dig(status, json.loads(path))
        where = f"{path} shown as {text!r}, /status has {value!r}"
        if value is None:
            assert text == "—", where
        elif form == "count":
            assert int(text) == len(value), where
        elif form == "int":
            assert int(text) == value, where
        else:
            assert abs(float(text) - value) <= 0.5 * 10 ** -DECIMALS[form] + 1e-9, where
    shares = page.eval_on_selector_all(
        "[data-share]",
        "els => els.map(e => [e.closest('[data-model]').dataset.model, e.dataset.share,"
        " e.textContent])",
    )
    for model, version, text in shares:
        versions = status["models"][model]["versions"]
        served = {
            k: sum(v["roles"][r] for r in ("primary", "canary", "pinned"))
            for k, v in versions.items()
        }
        expected = 100 * served[version] / sum(served.values())
        assert abs(float(text.rstrip("%")) - expected) <= 0.05 + 1e-9, (model, version, text)
    return len(shown) + len(shares)


def coloured_pixels(page: Page) -> dict[str, int]:
    """Per chart, the canvas pixels drawn in a colour (series), not the grey of axes and grid."""
    counts: dict[str, int] = page.eval_on_selector_all(
        ".plot canvas",
        """canvases => Object.fromEntries(canvases.map(canvas => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
                if (a > 100 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
            }
            return [canvas.closest(".plot").id.replace("chart-", ""), n];
        }))""",
    )
    return counts


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# ------------------------------------------------------------------------------ endpoints


def test_history_and_histogram_endpoints(sidecar: str, seeded: Seeded) -> None:
    with httpx.Client(base_url=sidecar) as client:
        status = client.get("/status").json()
        series = client.get("/history/churn").json()
        last = client.get("/history/churn", params={"minutes": 10}).json()
        bad_window = client.get("/history/churn", params={"minutes": "0"}).status_code
        f3 = client.get("/histogram/churn/1/f3").json()
        f0 = client.get("/histogram/churn/1/f0").json()
        missing = {
            path: client.get(path).status_code
            for path in (
                "/history/nope",
                "/histogram/churn/1/nope",
                "/histogram/churn/9/f3",
                "/histogram/ghost/1/f0",
            )
        }
    churn = status["models"]["churn"]
    assert series["versions"] == [1, 2, 3]
    t = series["t"]
    assert t == sorted(set(t)) and len(t) >= 30 and all(ts % 60 == 0 for ts in t)
    for version, entry in churn["versions"].items():
        counted = {role: sum(values) for role, values in series["requests"][version].items()}
        assert counted == {role: n for role, n in entry["roles"].items() if n}
        assert sum(series["errors"][version]) == entry["errors"]
        for name, values in series["feature_drift"][version].items():
            assert len(values) == len(t)
            # The newest point is the live status.
            assert values[-1] == approx(entry["feature_drift"]["features"][name]["score"])
    v1 = churn["versions"]["1"]
    assert series["accuracy"]["1"]["metric"] == "rolling_accuracy"
    assert series["accuracy"]["1"]["values"][-1] == approx(v1["accuracy"]["rolling_accuracy"])
    assert list(series["shadow_agreement"]) == ["3"]
    agreement = churn["versions"]["3"]["shadow"]["agreement"]
    assert series["shadow_agreement"]["3"][-1] == approx(agreement)
    assert series["canary_weight"][-1] == 0.15  # from [models.churn] canary.weight
    window = [i for i, ts in enumerate(t) if ts > t[-1] - 600]  # the last 10 minutes
    assert last["t"] == [t[i] for i in window]
    assert last["canary_weight"] == [series["canary_weight"][i] for i in window]
    assert bad_window == 400
    p50 = [p for p in series["latency_ms"]["1"]["p50"] if p is not None]
    assert len(p50) >= 25 and all(1.0 <= p <= 6.0 for p in p50)  # the scenario's 1-6 ms

    manifest = read_manifest(seeded.config.registry, "churn", 1)
    reference = manifest["reference"]["features"]["f3"]
    assert f3["edges"] == reference["edges"]
    assert f3["reference"]["counts"] == reference["counts"]
    assert f3["live"]["rows"] == DEFAULT_LIVE_ROWS == sum(f3["live"]["counts"])
    assert f3["drift"]["state"] == "drifting" and f0["drift"]["state"] == "ok"
    # f3 moved up by half a standard deviation: most live rows are above the reference median.
    assert sum(f3["live"]["share"][5:]) > 0.6
    assert 0.4 < sum(f0["live"]["share"][5:]) < 0.6
    assert set(missing.values()) == {404}


def test_pages_and_static_files(sidecar: str) -> None:
    with httpx.Client(base_url=sidecar) as client:
        overview = client.get("/")
        page = client.get("/ui/models/churn")
        bad = client.get("/ui/models/Not..A..Model!")
        library = client.get("/static/vendor/uPlot.iife.min.js")
        licence = client.get("/static/vendor/uPlot.LICENSE")
    for response in (overview, page):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert bad.status_code == 404
    assert library.status_code == 200 and "uPlot" in library.text[:200]
    assert "MIT License" in licence.text


# ------------------------------------------------------------------------------ browser


def test_overview_and_model_page_show_the_status(sidecar: str, browser: Browser) -> None:
    status = httpx.get(f"{sidecar}/status").json()
    with open_page(browser, sidecar) as (page, watch):
        load(page, f"{sidecar}/?refresh=0")
        cards = page.eval_on_selector_all(
            "article[data-model]", "els => els.map(e => e.dataset.model)"
        )
        assert cards == sorted(status["models"]) == ["churn", "ghost", "price"]
        assert check_numbers(page, status) > 30
        screenshot(page, "dashboard-overview.png")

        page.click('article[data-model="churn"] h2 a')
        page.wait_for_url(f"{sidecar}/ui/models/churn?refresh=0")
        page.wait_for_selector('body[data-renders="1"]', state="attached")
        assert page.get_attribute("body", "data-error") is None
        assert page.text_content("#model-name") == "churn"
        assert check_numbers(page, status) > 60

        drawn = coloured_pixels(page)
        assert sorted(drawn) == sorted(CHARTS)
        assert all(n > 0 for n in drawn.values()), drawn

        drifting = status["models"]["churn"]["versions"]["1"]["feature_drift"]["drifting"]
        assert sorted(drifting) == sorted(DRIFTING)
        assert page.input_value("#drift-version") == "1"
        rows = page.eval_on_selector_all(
            "#drift-table tbody tr",
            "els => els.map(e => [e.dataset.feature, e.classList.contains('drifting'),"
            " e.querySelector('.badge').textContent])",
        )
        assert len(rows) == 20
        for feature, marked, label in rows:
            assert marked == (feature in drifting) and label == ("drifting" if marked else "ok")
        # The most drifting feature is picked first; another one is a click away.
        assert page.text_content("#drift-table tr.selected td") in drifting
        page.click('#drift-table tr[data-feature="f0"]')
        page.wait_for_selector('#drift-table tr.selected[data-feature="f0"]')
        # The histogram is fetched after the click: wait for it rather than race it.
        page.wait_for_selector("#histogram-title:has-text('f0, v1')")
        screenshot(page, "dashboard-model.png")

        page.select_option("#drift-version", "3")
        page.wait_for_selector("#drift-title:has-text('v3')")
        assert coloured_pixels(page)["drift"] > 0
        with page.expect_request(lambda r: r.url.endswith("/history/churn?minutes=60")):
            page.select_option("#window", "60")
        page.wait_for_selector("body:not([data-busy])", state="attached")
        assert all(n > 0 for n in coloured_pixels(page).values())
    assert watch.clean(), watch


ALERTS = {
    "active": [
        {
            "rule": "churn-drift <b>bold</b>",
            "model": "churn",
            "version": 1,
            "condition": "feature_drift",
            "severity": "warning",
            "type": "model.drift_detected",
            "since": 1770000100.0,
            "notified": True,
            "event_id": "evt_1",
            "figures": {"drifting": ["f3", "f11"]},
        },
        {
            "rule": "price-mae",
            "model": "price",
            "version": 1,
            "condition": "accuracy_below",
            "severity": "critical",
            "type": "model.accuracy_degraded",
            "since": 1770000200.0,
            "notified": True,
            "event_id": "evt_2",
            "figures": {},
        },
    ],
    "recent": [
        {
            "id": "evt_2",
            "type": "model.accuracy_degraded",
            "timestamp": "2026-02-02T02:43:20.000Z",
            "data": {"rule": "price-mae", "model": "price", "version": 1, "figures": {}},
        },
        {
            "id": "evt_1",
            "type": "model.drift_detected",
            "timestamp": "2026-02-02T02:41:40.000Z",
            "data": {
                "rule": "churn-drift",
                "model": "churn",
                "version": 1,
                "figures": {"drifting": ["f3", "f11"], "note": '<img src="http://example.com/x">'},
            },
        },
    ],
    "counters": {"fired": 2, "resolved": 0},
}
WEBHOOKS = {
    "targets": [{"name": "ci"}],
    "deliveries": [
        {
            "event_id": "evt_1",
            "type": "model.drift_detected",
            "target": "ci",
            "state": "sent",
            "attempts": 2,
            "last_status": 204,
            "last_error": None,
            "response": {"status": 204},
            "updated": 1770000105.0,
        },
        {
            "event_id": "evt_2",
            "type": "model.accuracy_degraded",
            "target": "ci",
            "state": "pending",
            "attempts": 1,
            "last_status": 503,
            "last_error": "HTTP 503",
            "response": {},
            "updated": 1770000205.0,
        },
    ],
    "counters": {"sent": 1, "failed": 1, "pending": 1},
}
ROLLOUTS = {  # as sidecar.rollouts.RolloutController.view: decisions newest first
    "models": {
        "churn": {
            "state": "canary",
            "primary": 1,
            "canary": 2,
            "weight": 0.25,
            "step": 2,
            "steps": [0.1, 0.25, 0.5, 1.0],
            "decisions": [
                {
                    "ts": 1770000300.0,
                    "model": "churn",
                    "decision": "promote",
                    "version": 2,
                    "from_weight": 0.1,
                    "to_weight": 0.25,
                    "reason": "step passed: agreement 0.97",
                    "evidence": {"agreement": 0.97, "labels": 400},
                },
                {
                    "ts": 1770000000.0,
                    "model": "churn",
                    "decision": "canary",
                    "version": 2,
                    "from_weight": 0.0,
                    "to_weight": 0.1,
                    "reason": "shadow passed",
                    "evidence": {"pairs": 500},
                },
            ],
        }
    }
}


def test_alerts_webhooks_and_rollouts_are_listed(sidecar: str, browser: Browser) -> None:
    """The lists on the model page, from /alerts, /webhooks and /rollouts of the shapes the
    sidecar serves (canned here, next to the real /status and /history of the seeded sidecar)."""
    with httpx.Client(base_url=sidecar) as client:
        canned = {
            "/status": client.get("/status").json(),
            "/history/churn": client.get("/history/churn").json(),
            **{
                f"/histogram/churn/1/{name}": client.get(f"/histogram/churn/1/{name}").json()
                for name in DRIFTING
            },
            "/alerts": ALERTS,
            "/webhooks": WEBHOOKS,
            "/rollouts": ROLLOUTS,
        }

    def serve(body: Any) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return JSONResponse(body)

        return endpoint

    app = Starlette(
        routes=[
            HTTPRoute("/", overview_page),
            HTTPRoute("/ui/models/{model}", model_page),
            Mount("/static", StaticFiles(directory=STATIC_DIR)),
            *(HTTPRoute(path, serve(body)) for path, body in canned.items()),
        ]
    )
    with run_server(app) as url, open_page(browser, url) as (page, watch):
        load(page, f"{url}/?refresh=0")
        assert page.get_attribute('[data-model="churn"] [data-alerts]', "data-alerts") == "1"
        assert page.get_attribute('[data-model="churn"] [data-rollout]', "data-rollout") == "canary"
        assert page.text_content('[data-model="ghost"] .facts').count("none") >= 1

        load(page, f"{url}/ui/models/churn?refresh=0")
        alerts = page.inner_text("#alerts")
        assert "churn-drift <b>bold</b>" in alerts and "price-mae" not in alerts
        assert page.query_selector("#alerts b") is None  # text, never markup
        assert page.eval_on_selector_all("#alerts tr[data-event]", "els => els.length") == 1
        deliveries = page.eval_on_selector_all(
            "#webhooks tr[data-delivery]", "els => els.map(e => e.dataset.delivery)"
        )
        assert deliveries == ["evt_1"]
        decisions = page.eval_on_selector_all(
            "#rollouts tbody tr", "els => els.map(e => e.cells[1].textContent)"
        )
        assert decisions == ["promote", "canary"]  # newest first
        page.click("#rollouts tbody tr:first-child summary")
        assert '"agreement": 0.97' in page.inner_text("#rollouts tbody tr:first-child pre")
        screenshot(page, "dashboard-model-lists.png")
    assert watch.clean(set()), watch


def test_pages_tolerate_a_sidecar_without_history_or_lists(
    seeded: Seeded, browser: Browser
) -> None:
    """Before /alerts, /webhooks, /rollouts (and the consumer's History) are wired in, the
    pages still load; once they are, the same pages show them."""
    config = dataclasses.replace(seeded.config, state_dir=seeded.config.state_dir.parent / "bare")
    with (
        seeded_sidecar(config, len(seeded.records)) as url,
        open_page(browser, url) as (page, watch),
    ):
        present = {
            path: httpx.get(f"{url}/{path}").status_code == 200
            for path in ("alerts", "history/churn")
        }
        load(page, f"{url}/?refresh=0")
        load(page, f"{url}/ui/models/price?refresh=0")
        alerts = page.inner_text("#alerts")
        assert ("not available" in alerts) != present["alerts"]
        load(page, f"{url}/ui/models/churn?refresh=0")
        if present["history/churn"]:
            assert all(n > 0 for n in coloured_pixels(page).values())
        else:
            assert page.inner_text("#chart-requests") == "This sidecar keeps no history."
            assert coloured_pixels(page).keys() == {"histogram"}
    assert watch.clean({"/alerts", "/webhooks", "/rollouts", "/history/churn", "/history/price"})
