"""Load shedding, API keys and CORS: limits the gateway applies before any model runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.config import load_config
from tests import _blockers
from tests._models import push_gated, push_logreg
from tests._server import run_server

ROW = {"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0.1] * 20}]}


def config(tmp_path: Path, extra: str = "", models: str = "") -> Path:
    path = tmp_path / "gatewatch.toml"
    path.write_text(
        f'[gateway]\nregistry = "registry"\nallow_pickle = true\n{extra}\n[log]\ndir = "predlog"\n{models}\n'
    )
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def test_beyond_max_in_flight_answers_503_at_once(tmp_path: Path, work: Path) -> None:
    """Two requests hold the only two slots (their model blocks); the third is shed."""
    push_logreg(tmp_path / "registry", work)
    push_gated(tmp_path / "registry", work, "block")
    path = config(
        tmp_path, "max_in_flight = 2\npredict_timeout = 30", "[models.churn]\nprimary = 2\n"
    )
    _blockers.reset()

    async def scenario(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            _blockers.ARMED.set()
            held = [
                asyncio.create_task(client.post("/v2/models/churn/infer", json=ROW))
                for _ in range(2)
            ]
            while not _blockers.ENTERED.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            shed = await client.post("/v2/models/churn/infer", json=ROW)
            health = await client.get("/v2/health/ready")
            _blockers.RELEASE.set()
            return [shed, health, *await asyncio.gather(*held)]

    try:
        with run_server(create_app(load_config(path))) as url:
            shed, health, *held = asyncio.run(scenario(url))
            metrics = httpx.get(f"{url}/metrics").text
    finally:
        _blockers.reset()
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
    assert "max_in_flight" in shed.json()["error"]
    assert health.status_code == 200, "probes are never shed"
    assert "gatewatch_shed_total 1.0" in metrics


def test_api_keys_guard_predictions_not_probes(
    tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_logreg(tmp_path / "registry", work)
    monkeypatch.setenv("GATEWATCH_API_KEYS", "team-a=key-aaaa,team-b=key-bbbb")
    with run_server(create_app(load_config(config(tmp_path)))) as url:
        assert httpx.post(f"{url}/v2/models/churn/infer", json=ROW).status_code == 401
        bad = httpx.post(
            f"{url}/v2/models/churn/infer", json=ROW, headers={"authorization": "Bearer nope"}
        )
        assert bad.status_code == 403 and "not valid" in bad.json()["error"]
        for key in ("key-aaaa", "key-bbbb"):
            ok = httpx.post(
                f"{url}/v2/models/churn/infer", json=ROW, headers={"authorization": f"Bearer {key}"}
            )
            assert ok.status_code == 200
        assert (
            httpx.post(f"{url}/v1/feedback", json={"request_id": "x", "label": 1}).status_code
            == 401
        )
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200


def test_cors_is_off_unless_configured(tmp_path: Path, work: Path) -> None:
    push_logreg(tmp_path / "registry", work)
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    with run_server(create_app(load_config(config(tmp_path)))) as url:
        r = httpx.options(f"{url}/v2/models/churn/infer", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    with run_server(
        create_app(load_config(config(tmp_path, 'cors_origins = ["https://app.example"]')))
    ) as url:
        r = httpx.options(f"{url}/v2/models/churn/infer", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
