"""Webhook targets against real local receivers that check each service's documented request."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sidecar.alerts import AlertPolicy, parse_alerts
from sidecar.delivery import Deliverer
from sidecar.errors import ConfigError
from sidecar.outbox import Outbox
from sidecar.webhooks import (
    GITHUB_MAX_PAYLOAD_BYTES,
    RETRAIN_EVENTS,
    GenericTarget,
    GitHubTarget,
    Secret,
    ci_variables,
    parse_webhooks,
)
from tests._receiver import Received, Receiver, Reply

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
TOKEN = "ghp_Sup3rS3cretT0kenValue0123456789"
ENV = {"GW_SECRET": SECRET, "GW_TOKEN": TOKEN}


def drift_event(n_features: int = 2, name_len: int = 4) -> dict[str, Any]:
    """A real drift event, produced by the alert policy from a synthetic status."""
    names = [f"f{i:0{name_len}d}" for i in range(n_features)]
    features = {n: {"state": "drifting", "score": 0.5, "psi": 0.3, "ks": 0.2} for n in names}
    vs = {"version": 3, "feature_drift": {"drifting": names, "features": features}}
    status = {"models": {"churn": {"versions": {"3": vs}}}}
    rules = parse_alerts([{"name": "drift", "condition": "feature_drift"}], set())
    policy = AlertPolicy(rules, registry="registry", sidecar_url="http://127.0.0.1:8001")
    [event] = policy.evaluate(status, time.time())
    return event.to_dict()


def deliver_once(outbox_dir: Path, targets: dict[str, Any], event: dict[str, Any]) -> Outbox:
    """Enqueue `event` for every target and run one delivery round; returns the open outbox."""
    outbox = Outbox(outbox_dir)

    async def go() -> None:
        async with Deliverer(outbox, targets, base_delay=0.0, max_delay=0.0) as deliverer:
            deliverer.enqueue(event, list(targets))
            await deliverer.deliver_due()

    asyncio.run(go())
    return outbox


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param({"name": "x", "kind": "slack"}, "webhooks[0].kind: must be one of", id="kind"),
        pytest.param({"kind": "generic"}, "webhooks[0].name: required", id="name"),
        pytest.param(
            {"name": "x", "kind": "generic", "secret_env": "GW_SECRET"},
            "webhooks[0].url: required for kind 'generic'",
            id="missing-url",
        ),
        pytest.param(
            {
                "name": "x",
                "kind": "generic",
                "url": "http://h/",
                "secret_env": "GW_SECRET",
                "secret": "s",
            },
            "webhooks[0].secret: unknown key for kind 'generic'",
            id="inline-secret-refused",
        ),
        pytest.param(
            {"name": "x", "kind": "generic", "url": "ftp://h/", "secret_env": "GW_SECRET"},
            "webhooks[0].url: must be an http(s) URL",
            id="url-scheme",
        ),
        pytest.param(
            {"name": "x", "kind": "generic", "url": "https://u:p@h/", "secret_env": "GW_SECRET"},
            "webhooks[0].url: put credentials in an env var",
            id="url-credentials",
        ),
        pytest.param(
            {"name": "x", "kind": "generic", "url": "http://h/", "secret_env": "GW_MISSING"},
            "webhooks[0].secret_env: environment variable $GW_MISSING is not set",
            id="env-unset",
        ),
        pytest.param(
            {"name": "x", "kind": "generic", "url": "http://h/", "secret_env": "GW_TOKEN"},
            "webhooks[0].secret_env: $GW_TOKEN must hold a Standard Webhooks secret",
            id="not-a-whsec",
        ),
        pytest.param(
            {"name": "x", "kind": "github", "repository": "acme", "token_env": "GW_TOKEN"},
            "webhooks[0].repository: must be 'owner/repo'",
            id="github-repository",
        ),
        pytest.param(
            {"name": "x", "kind": "github", "token_env": "GW_TOKEN", "owner": "acme"},
            "webhooks[0].repo: required",
            id="github-repo",
        ),
        pytest.param(
            {
                "name": "x",
                "kind": "github",
                "repository": "a/b",
                "token_env": "GW_TOKEN",
                "event_type": "e" * 101,
            },
            "webhooks[0].event_type: must be a string of 1 to 100 characters",
            id="github-event-type",
        ),
        pytest.param(
            {"name": "x", "kind": "gitlab", "project": "", "token_env": "GW_TOKEN"},
            "webhooks[0].project: must be a numeric id",
            id="gitlab-project",
        ),
        pytest.param(
            {
                "name": "x",
                "kind": "azure_devops",
                "organization": "o",
                "project": "p",
                "pipeline_id": "7",
                "token_env": "GW_TOKEN",
            },
            "webhooks[0].pipeline_id: must be a positive integer",
            id="azure-pipeline-id",
        ),
        pytest.param(
            {"name": "x", "kind": "gitlab", "project": 1, "token_env": "GW_TOKEN", "events": "all"},
            "webhooks[0].events: must be a list of event types",
            id="events",
        ),
    ],
)
def test_parse_errors_name_the_key_and_never_a_secret(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_webhooks([table], ENV)
    assert str(info.value).startswith(message)
    assert TOKEN not in str(info.value) and SECRET not in str(info.value)


def test_parse_defaults() -> None:
    targets = parse_webhooks(
        [
            {
                "name": "sig",
                "kind": "generic",
                "url": "https://example.org/hook/",
                "secret_env": "GW_SECRET",
            },
            {"name": "gh", "kind": "github", "repository": "acme/models", "token_env": "GW_TOKEN"},
            {"name": "gl", "kind": "gitlab", "project": 1234, "token_env": "GW_TOKEN"},
            {
                "name": "az",
                "kind": "azure_devops",
                "organization": "acme",
                "project": "ML",
                "pipeline_id": 12,
                "token_env": "GW_TOKEN",
                "branch": "release",
                "events": ["model.drift_detected"],
            },
        ],
        ENV,
    )
    sig, gh, gl, az = targets.values()
    assert isinstance(sig, GenericTarget) and sig.url == "https://example.org/hook"
    assert isinstance(gh, GitHubTarget) and (gh.owner, gh.repo) == ("acme", "models")
    assert gh.api == "https://api.github.com" and gh.event_type is None
    assert gl.api == "https://gitlab.com/api/v4" and gl.project == "1234" and gl.ref == "main"
    assert az.api == "https://dev.azure.com" and az.branch == "refs/heads/release"
    # CI targets start pipelines: by default an "alert.resolved" does not start one.
    assert sig.accepts("alert.resolved") and not gh.accepts("alert.resolved")
    assert gh.accepts("model.accuracy_degraded") and gh.accepts("gatewatch.test")
    assert not gl.accepts("log.lag_high") and not gl.accepts("model.error_rate_high")
    assert az.accepts("model.drift_detected") and not az.accepts("model.concept_drift")
    assert parse_webhooks([], ENV) == {}


def test_secrets_stay_out_of_repr_describe_and_pickle() -> None:
    targets = parse_webhooks(
        [
            {
                "name": "sig",
                "kind": "generic",
                "url": "https://example.org/h",
                "secret_env": "GW_SECRET",
            },
            {"name": "gh", "kind": "github", "repository": "acme/models", "token_env": "GW_TOKEN"},
        ],
        ENV,
    )
    event = drift_event()
    for target in targets.values():
        request = target.build(event, now=time.time())
        shown = " ".join([repr(target), str(target), repr(request), str(target.describe())])
        assert SECRET not in shown and TOKEN not in shown
        assert "GW_" in str(target.describe())  # the variable's name is fine to show
    assert repr(Secret(TOKEN)) == "Secret('***')"
    with pytest.raises(TypeError):
        orjson.dumps(Secret(TOKEN))
    with pytest.raises(TypeError):
        pickle.dumps(targets["gh"])


# ---------------------------------------------------------------------------------- generic


def test_generic_delivery_verifies_with_standardwebhooks(tmp_path: Path) -> None:
    verifier = Webhook(SECRET)
    verified: list[dict[str, Any]] = []

    def check(request: Received) -> Reply:
        try:
            verified.append(verifier.verify(request.body, request.headers))
        except WebhookVerificationError:
            return Reply(401, b"bad signature")
        return Reply(204)

    with Receiver(handler=check) as rx:
        table = {
            "name": "sig",
            "kind": "generic",
            "url": rx.url("/hooks/gatewatch"),
            "secret_env": "GW_SECRET",
        }
        targets = parse_webhooks([table], ENV)
        event = drift_event()
        with deliver_once(tmp_path, targets, event) as outbox:
            [row] = outbox.deliveries()
        [request] = rx.requests

        # A tampered body fails verification, on the receiver and with the library alike.
        tampered = request.body.replace(b'"churn"', b'"fraud"')
        assert tampered != request.body
        with pytest.raises(WebhookVerificationError):
            verifier.verify(tampered, request.headers)
        with httpx.Client() as client:
            answer = client.post(
                rx.url("/hooks/gatewatch"), content=tampered, headers=request.headers
            )
        assert answer.status_code == 401

    assert row["state"] == "delivered" and row["last_status"] == 204
    assert verified == [event]
    assert request.path == "/hooks/gatewatch"
    assert request.headers["webhook-id"] == event["id"]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-signature"].startswith("v1,")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 300
    assert orjson.loads(request.body)["data"]["registry_path"] == "registry/churn/3"


def test_generic_wrong_secret_is_rejected() -> None:
    other = Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode())
    [target] = parse_webhooks(
        [{"name": "s", "kind": "generic", "url": "http://127.0.0.1:9/", "secret_env": "GW_SECRET"}],
        ENV,
    ).values()
    request = target.build(drift_event(), now=time.time())
    with pytest.raises(WebhookVerificationError):
        other.verify(request.content, request.headers)


# ---------------------------------------------------------------------------------- GitHub


def github_api(request: Received) -> Reply:
    """What api.github.com documents for POST /repos/{owner}/{repo}/dispatches."""
    problems = []
    if request.method != "POST" or request.path != "/repos/acme/models/dispatches":
        problems.append(f"route {request.method} {request.path}")
    expected = {
        "accept": "application/vnd.github+json",
        "authorization": f"Bearer {TOKEN}",
        "x-github-api-version": "2022-11-28",
        "content-type": "application/json",
    }
    problems += [f"header {k}" for k, v in expected.items() if request.headers.get(k) != v]
    if not request.headers.get("user-agent"):
        problems.append("user-agent")  # GitHub refuses requests without one
    if len(request.body) >= GITHUB_MAX_PAYLOAD_BYTES:
        problems.append("body too large")
    body = orjson.loads(request.body)
    if set(body) != {"event_type", "client_payload"}:
        problems.append(f"keys {sorted(body)}")
    if not 1 <= len(body.get("event_type", "")) <= 100:
        problems.append("event_type length")
    if not isinstance(body.get("client_payload"), dict) or len(body["client_payload"]) > 10:
        problems.append("client_payload keys")
    if problems:
        return Reply(422, orjson.dumps({"message": "Invalid request", "problems": problems}))
    return Reply(204)


@pytest.mark.parametrize(
    ("n_features", "name_len"), [pytest.param(3, 4, id="small"), pytest.param(4000, 40, id="huge")]
)
def test_github_dispatch_matches_the_documented_request(
    tmp_path: Path, n_features: int, name_len: int
) -> None:
    with Receiver(handler=github_api) as rx:
        table = {
            "name": "gh",
            "kind": "github",
            "repository": "acme/models",
            "token_env": "GW_TOKEN",
            "api": rx.url(""),
        }
        targets = parse_webhooks([table], ENV)
        event = drift_event(n_features, name_len)
        with deliver_once(tmp_path, targets, event) as outbox:
            [row] = outbox.deliveries()
    [request] = rx.requests
    assert (request.status, row["state"], row["last_status"]) == (204, "delivered", 204)
    body = orjson.loads(request.body)
    assert body["event_type"] == "model.drift_detected"
    payload = body["client_payload"]
    assert payload["event_id"] == event["id"]
    assert (payload["model"], payload["version"]) == ("churn", 3)
    assert payload["registry_path"] == "registry/churn/3"
    assert payload["figures"]["condition"] == "feature_drift"
    if n_features > 100:
        assert payload["figures"].get("truncated") is True


def test_github_refusal_is_final_and_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(request: Received) -> Reply:  # a hostile or buggy server echoing our credentials
        return Reply(
            401,
            b'{"message": "Bad credentials", "got": "'
            + request.headers["authorization"].encode()
            + b'"}',
        )

    with Receiver(handler=echo) as rx:
        table = {
            "name": "gh",
            "kind": "github",
            "repository": "acme/models",
            "token_env": "GW_TOKEN",
            "api": rx.url(""),
        }
        with deliver_once(tmp_path, parse_webhooks([table], ENV), drift_event()) as outbox:
            [row] = outbox.deliveries()
            counters = outbox.counters()
    assert row["state"] == "dead" and row["attempts"] == 1
    assert "Bad credentials" in row["last_error"] and "***" in row["last_error"]
    assert counters["dead_lettered"] == 1 and counters["sent"] == 0
    assert TOKEN not in orjson.dumps(row).decode()
    assert TOKEN not in caplog.text


# ---------------------------------------------------------------------------------- GitLab


def gitlab_api(request: Received) -> Reply:
    """What GitLab documents for POST /projects/:id/trigger/pipeline (form fields)."""
    form = {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
    ok = (
        request.method == "POST"
        and request.path == "/api/v4/projects/ml%2Fchurn-model/trigger/pipeline"
        and request.headers.get("content-type") == "application/x-www-form-urlencoded"
        and form.get("token") == TOKEN
        and form.get("ref") == "retrain"
        and all(
            form.get(f"variables[{name}]")
            for name in (
                "GATEWATCH_MODEL",
                "GATEWATCH_VERSION",
                "GATEWATCH_EVENT",
                "GATEWATCH_RULE",
            )
        )
    )
    if not ok:
        return Reply(400, b'{"message": "bad request"}')
    pipeline = {
        "id": 4242,
        "status": "created",
        "web_url": "https://gitlab.example/ml/churn-model/-/pipelines/4242",
    }
    return Reply(201, orjson.dumps(pipeline), {"content-type": "application/json"})


def test_gitlab_trigger_matches_the_documented_request(tmp_path: Path) -> None:
    with Receiver(handler=gitlab_api) as rx:
        table = {
            "name": "gl",
            "kind": "gitlab",
            "project": "ml/churn-model",
            "ref": "retrain",
            "token_env": "GW_TOKEN",
            "api": rx.url("/api/v4"),
        }
        event = drift_event()
        with deliver_once(tmp_path, parse_webhooks([table], ENV), event) as outbox:
            [row] = outbox.deliveries()
    [request] = rx.requests
    assert request.status == 201 and row["state"] == "delivered" and row["last_status"] == 201
    assert row["response"] == {
        "run_id": 4242,
        "run_url": "https://gitlab.example/ml/churn-model/-/pipelines/4242",
    }
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form["variables[GATEWATCH_MODEL]"] == "churn"
    assert form["variables[GATEWATCH_VERSION]"] == "3"
    assert form["variables[GATEWATCH_EVENT]"] == "model.drift_detected"
    assert form["variables[GATEWATCH_RULE]"] == "drift"
    assert form["variables[GATEWATCH_EVENT_ID]"] == event["id"]
    assert orjson.loads(form["variables[GATEWATCH_FIGURES]"])["condition"] == "feature_drift"
    assert TOKEN not in repr(row)


def test_error_snippet_never_shows_part_of_a_token(tmp_path: Path) -> None:
    # The token straddles the point where the error snippet is cut.
    reply = Reply(400, b"x" * 290 + b" " + TOKEN.encode() + b" trailing")
    with Receiver([reply]) as rx:
        table = {
            "name": "gl",
            "kind": "gitlab",
            "project": 5,
            "token_env": "GW_TOKEN",
            "api": rx.url(""),
        }
        with deliver_once(tmp_path, parse_webhooks([table], ENV), drift_event()) as outbox:
            [row] = outbox.deliveries()
    assert row["state"] == "dead"
    assert TOKEN[:8] not in row["last_error"] and "***" in row["last_error"]


def test_example_workflows_listen_for_the_events_ci_targets_get() -> None:
    root = Path(__file__).parents[2] / "examples/ci"
    github = (root / "github-retrain.yml").read_text()
    [types] = re.findall(r"^    types: \[(.*)\]$", github, flags=re.MULTILINE)
    assert RETRAIN_EVENTS <= {t.strip() for t in types.split(",")}
    gitlab = (root / "gitlab-ci.yml").read_text()
    variables = set(re.findall(r"\$\{?(GATEWATCH_[A-Z_]+)", gitlab))
    sent = set(ci_variables(drift_event()))
    assert {"GATEWATCH_MODEL", "GATEWATCH_VERSION", "GATEWATCH_EVENT"} <= variables
    assert variables - {"GATEWATCH_REGISTRY"} <= sent
