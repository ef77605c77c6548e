"""Traffic management on a real server: canary split, sticky keys, shadows, hot reload, admin."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import audit
from gateway.app import create_app
from gateway.cli import main as gatewatch
from gateway.config import load_config
from gateway.predlog import decode
from gateway.registry import read_manifest, version_dir
from tests import _blockers
from tests._models import push_gated, push_logreg
from tests._server import run_server

TOKEN = "s3cret-admin-token"
ROW = {"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0.2] * 20}]}
AUTH = {"authorization": f"Bearer {TOKEN}"}


def records(logdir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(logdir.glob("predlog-*.jsonl")):
        out += [decode(line) for line in path.read_bytes().splitlines() if line]
    return out


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWATCH_ADMIN_TOKEN", TOKEN)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A folder with churn v1 and v2 in ./registry; gatewatch.toml goes beside it."""
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work, seed=0)
    push_logreg(tmp_path / "registry", work, seed=1, C=0.1)
    return tmp_path


def write(base: Path, models: str) -> Path:
    path = base / "gatewatch.toml"
    path.write_text(
        f'[gateway]\nregistry = "registry"\nallow_pickle = true\n\n[log]\ndir = "predlog"\n\n{models}\n'
    )
    return path


async def send(
    url: str, n: int, headers_for: Any = None, concurrency: int = 16
) -> list[httpx.Response]:
    results: list[httpx.Response] = []
    todo = list(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            i = todo.pop()
            headers = headers_for(i) if headers_for else None
            r = await client.post("/v2/models/churn/infer", json=ROW, headers=headers)
            results.append(r)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def test_canary_share_without_sticky_key(base: Path) -> None:
    config = write(base, "[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 0.2 }\n")
    with run_server(create_app(load_config(config), seed=7)) as url:
        answers = asyncio.run(send(url, 5000))
    assert all(r.status_code == 200 for r in answers)
    canary = [r for r in answers if r.headers["x-route"] == "canary"]
    assert all(r.headers["x-model-version"] == "2" for r in canary)
    assert all(
        r.headers["x-model-version"] == "1" for r in answers if r.headers["x-route"] == "primary"
    )
    share = len(canary) / 5000
    assert abs(share - 0.2) <= 4 * math.sqrt(0.2 * 0.8 / 5000), share


def test_sticky_keys_keep_their_version_and_only_move_to_canary(base: Path) -> None:
    config = write(
        base,
        '[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 0.2 }\nsticky_header = "x-user-id"\n',
    )

    def by_key(answers: list[httpx.Response]) -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for r in answers:
            seen.setdefault(r.request.headers["x-user-id"], set()).add(r.headers["x-model-version"])
        return seen

    with run_server(create_app(load_config(config))) as url:
        first = by_key(asyncio.run(send(url, 5000, lambda i: {"x-user-id": f"user-{i % 1000}"})))
        assert len(first) == 1000 and all(len(v) == 1 for v in first.values())
        on_canary = {k for k, v in first.items() if v == {"2"}}
        assert 100 < len(on_canary) < 300
        assert gatewatch(["rollout", "churn", "--config", str(config), "--weight", "0.5"]) == 0
        assert httpx.post(f"{url}/admin/reload", headers=AUTH).status_code == 200
        second = by_key(asyncio.run(send(url, 5000, lambda i: {"x-user-id": f"user-{i % 1000}"})))
    assert all(len(v) == 1 for v in second.values())
    assert all(second[k] == {"2"} for k in on_canary), "a canary key moved back to primary"
    assert sum(v == {"2"} for v in second.values()) > len(on_canary)


def test_client_answer_does_not_wait_for_a_blocked_shadow(base: Path) -> None:
    shadow = push_gated(base / "registry", base / "work", "block")
    config = write(base, f"[models.churn]\nprimary = 1\nshadow = [{shadow}]\n")
    _blockers.reset()
    try:
        with run_server(create_app(load_config(config))) as url:
            _blockers.ARMED.set()
            r = httpx.post(
                f"{url}/v2/models/churn/infer", json={**ROW, "id": "mirrored-1"}, timeout=10
            )
            assert r.status_code == 200 and r.headers["x-model-version"] == "1"
            assert _blockers.ENTERED.wait(10), "the shadow never started"
            assert not _blockers.RELEASE.is_set(), (
                "the answer came while the shadow was still blocked"
            )
            _blockers.RELEASE.set()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                shadows = [x for x in records(base / "predlog") if x["role"] == "shadow"]
                if shadows:
                    break
                time.sleep(0.05)
    finally:
        _blockers.reset()
    assert [(x["id"], x["version"], x["status"]) for x in shadows] == [("mirrored-1", shadow, 200)]


def test_failing_shadow_never_reaches_the_client(base: Path) -> None:
    shadow = push_gated(base / "registry", base / "work", "raise")
    config = write(base, f"[models.churn]\nprimary = 1\nshadow = [{shadow}]\n")
    _blockers.reset()
    try:
        with run_server(create_app(load_config(config))) as url:
            _blockers.ARMED.set()
            r = httpx.post(f"{url}/v2/models/churn/infer", json={**ROW, "id": "mirrored-2"})
            assert r.status_code == 200
            deadline = time.monotonic() + 10
            metric = f'gatewatch_shadow_failed_total{{model="churn",version="{shadow}"}} 1.0'
            while metric not in httpx.get(f"{url}/metrics").text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert metric in httpx.get(f"{url}/metrics").text
    finally:
        _blockers.reset()
    failed = [x for x in records(base / "predlog") if x["role"] == "shadow"]
    assert len(failed) == 1 and failed[0]["status"] == 500 and "exploded" in failed[0]["error"]
    assert failed[0]["id"] == "mirrored-2"


def test_hot_reload_under_load(base: Path) -> None:
    """2,000 requests while the canary goes on and off 10 times and a version is pushed."""
    config = write(base, "[models.churn]\nprimary = 1\n")
    allowed = {False: {"1"}, True: {"1", "2"}}
    # (time the file was written, time its reload returned, canary on?)
    history: list[tuple[float, float, bool]] = [(0.0, 0.0, False)]
    answers: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    with run_server(create_app(load_config(config))) as url:

        def load() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set() and len(answers) < 2000:
                    start = time.monotonic()
                    r = client.post("/v2/models/churn/infer", json=ROW)
                    answers.append(
                        (
                            start,
                            time.monotonic(),
                            r.status_code,
                            r.headers.get("x-model-version", ""),
                        )
                    )

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(10):
            on = i % 2 == 0
            written = time.monotonic()
            args = ["--canary", "2", "--weight", "0.5"] if on else ["--rollback"]
            assert gatewatch(["rollout", "churn", "--config", str(config), *args]) == 0
            assert httpx.post(f"{url}/admin/reload", headers=AUTH).status_code == 200
            history.append((written, time.monotonic(), on))
            if i == 4:
                push_logreg(base / "registry", base / "work", seed=9)
            time.sleep(0.15)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        status = httpx.get(f"{url}/admin/status", headers=AUTH).json()
    assert len(answers) >= 200
    assert [a for a in answers if a[2] != 200] == []
    for start, end, _, version in answers:
        live = set()
        for i, (written, _, on) in enumerate(history):
            next_reloaded = history[i + 1][1] if i + 1 < len(history) else math.inf
            if written <= end and next_reloaded >= start:
                live |= allowed[on]
        assert version in live, (start, end, version)
    assert 3 in status["models"]["churn"]["loaded"], "the pushed version is loaded for pinning"
    entries = [e for e in audit.read(base / "audit.jsonl") if e["action"] == "reload"]
    assert all(e["before"] is not None and e["after"] is not None for e in entries)
    switches = [e for e in entries if e["before"]["canary"] != e["after"]["canary"]]
    assert [e["after"]["canary"] is not None for e in switches] == [True, False] * 5
    pushed = [e for e in entries if 3 in e["after"]["loaded"] and 3 not in e["before"]["loaded"]]
    # The push shows up in its own entry, or in a switch's entry when one reload saw both.
    assert len(pushed) == 1
    assert len(entries) == 10 + (pushed[0] not in switches), "one entry per change, no more"
    assert any(
        e["action"] == "version_loaded" and e["after"] == 3
        for e in audit.read(base / "audit.jsonl")
    )
    edits = [e for e in audit.read(base / "audit.jsonl") if e["action"] == "edit"]
    assert len(edits) == 10 and all(e["who"].startswith("cli:") for e in edits)
    assert [e["after"]["canary"] is not None for e in edits] == [True, False] * 5


def _corrupt_v2(base: Path) -> str:
    manifest = read_manifest(base / "registry", "churn", 2)
    path = version_dir(base / "registry", "churn", 2) / manifest["artifact"]
    path.write_bytes(path.read_bytes()[:-10])
    return "[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 0.1 }\n"


INVALID = [
    (
        "unknown-key",
        lambda b: "[models.churn]\nprimary = 1\ncolour = 2\n",
        "models.churn.colour: unknown key",
    ),
    (
        "weight-above-1",
        lambda b: "[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 1.5 }\n",
        "models.churn.canary.weight: must be between 0 and 1",
    ),
    (
        "version-not-in-registry",
        lambda b: "[models.churn]\nprimary = 7\n",
        "models.churn.primary: version 7 is not in the registry",
    ),
    ("artifact-fails-hash", _corrupt_v2, "does not match the manifest"),
    ("not-toml", lambda b: "[models.churn\nprimary = ", "not valid TOML"),
]


@pytest.mark.parametrize(("make", "message"), [pytest.param(m, t, id=i) for i, m, t in INVALID])
def test_invalid_config_is_refused_and_last_good_serves(
    base: Path, make: Any, message: str
) -> None:
    config = write(base, "[models.churn]\nprimary = 1\n")
    with run_server(create_app(load_config(config))) as url:
        text = make(base)
        if text.startswith("[models"):
            config = write(base, text)
        else:
            config.write_text(text)
        r = httpx.post(f"{url}/admin/reload", headers=AUTH)
        assert r.status_code == 422
        assert r.json()["error"].startswith("reload refused, the last good config keeps serving")
        assert message in r.json()["error"] and message in r.json()["last_reload"]["error"]
        status = httpx.get(f"{url}/admin/status", headers=AUTH).json()
        assert status["last_reload"]["ok"] is False and message in status["last_reload"]["error"]
        answer = httpx.post(f"{url}/v2/models/churn/infer", json=ROW)
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
    assert any(
        e["action"] == "reload_refused" and message in e["why"]
        for e in audit.read(base / "audit.jsonl")
    )


def test_rollout_cli_keeps_comments_and_gateway_follows(base: Path) -> None:
    config = base / "gatewatch.toml"
    config.write_text(
        '# gatewatch for the churn service\n[gateway]\nregistry = "registry"  # beside this file\n\n'
        '[log]\ndir = "predlog"\n\n[models.churn]\n# the version we trust\nprimary = 1\n'
    )
    with run_server(create_app(load_config(config))) as url:
        steps = [
            (
                ["--canary", "2", "--weight", "0.25"],
                lambda s: s["canary"] == {"version": 2, "weight": 0.25},
            ),
            (["--weight", "0.75"], lambda s: s["canary"] == {"version": 2, "weight": 0.75}),
            (["--shadow", "1"], lambda s: s["shadow"] == [1]),
            (["--promote"], lambda s: s["primary"] == 2 and s["canary"] is None),
            (
                ["--primary", "1", "--no-shadow", "1"],
                lambda s: s["primary"] == 1 and s["shadow"] == [],
            ),
        ]
        for args, done in steps:
            assert gatewatch(["rollout", "churn", "--config", str(config), *args]) == 0
            deadline = time.monotonic() + 2.0
            while True:
                state = httpx.get(f"{url}/admin/status", headers=AUTH).json()["models"]["churn"]
                if done(state):
                    break
                assert time.monotonic() < deadline, (
                    f"gateway did not follow {args} within 2 s: {state}"
                )
                time.sleep(0.05)
    text = config.read_text()
    assert "# gatewatch for the churn service" in text
    assert "# beside this file" in text and "# the version we trust" in text


def test_rollout_cli_refusals(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(base, "[models.churn]\nprimary = 1\n")
    before = config.read_text()
    for args, message in [
        (["--canary", "9", "--weight", "0.1"], "version 9 is not in the registry"),
        (["--canary", "2", "--weight", "3"], "must be between 0 and 1"),
        (["--promote"], "no canary to promote"),
        (["--canary", "2"], "needs --weight"),
    ]:
        assert gatewatch(["rollout", "churn", "--config", str(config), *args]) == 2
        assert message in capsys.readouterr().err
    assert config.read_text() == before


def test_admin_auth_and_routing_api(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(base, "[models.churn]\nprimary = 1\n")
    with run_server(create_app(load_config(config))) as url:
        assert httpx.get(f"{url}/admin/status").status_code == 401
        assert (
            httpx.get(f"{url}/admin/status", headers={"authorization": "Bearer wrong"}).status_code
            == 403
        )
        assert httpx.get(f"{url}/admin/status", headers=AUTH).status_code == 200
        r = httpx.put(
            f"{url}/admin/models/churn/routing",
            headers=AUTH,
            json={"canary": {"version": 2, "weight": 1.0}, "reason": "try v2"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["models"]["churn"]["canary"] == {"version": 2, "weight": 1.0}
        assert httpx.post(f"{url}/v2/models/churn/infer", json=ROW).headers["x-route"] == "canary"
        r = httpx.put(
            f"{url}/admin/models/churn/routing",
            headers=AUTH,
            json={"canary": {"version": 2, "weight": 9}},
        )
        assert r.status_code == 422 and "weight" in r.json()["error"]
        monkeypatch.delenv("GATEWATCH_ADMIN_TOKEN")
        r = httpx.get(f"{url}/admin/status", headers=AUTH)
        assert r.status_code == 403 and "disabled" in r.json()["error"]
    assert "canary = {version = 2, weight = 1.0}" in config.read_text().replace(" = ", " = ")
    edit = [e for e in audit.read(base / "audit.jsonl") if e["action"] == "edit"]
    assert edit[0]["who"] == "admin:admin" and edit[0]["why"] == "try v2"


def test_audit_cli(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(base, "[models.churn]\nprimary = 1\n")
    assert (
        gatewatch(["rollout", "churn", "--config", str(config), "--canary", "2", "--weight", "0.1"])
        == 0
    )
    capsys.readouterr()
    assert gatewatch(["audit", "--config", str(config), "--model", "churn"]) == 0
    out = capsys.readouterr().out
    assert "edit" in out and '"weight": 0.1' in out
