"""Webhook targets: how one event becomes one HTTP request, and what the answer means.

Four kinds, one `[[webhooks]]` table each:

- ``generic``: the event JSON, signed by the Standard Webhooks scheme (``webhook-id``,
  ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``).
- ``github``: a ``repository_dispatch`` (``POST {api}/repos/{owner}/{repo}/dispatches``).
- ``gitlab``: a pipeline trigger (``POST {api}/projects/{id}/trigger/pipeline``, form fields).
- ``azure_devops``: a pipeline run (``POST {base}/{org}/{project}/_apis/pipelines/{id}/runs``).

Secrets and tokens are read from the environment variables the config names, never from the
file. They live in `Secret` objects whose repr is a mask, the requests built here hide their
headers and body in repr, and `redact` scrubs them from anything a server sends back, so a
token never reaches a log line, /status, /webhooks or an error string.

No I/O here apart from reading the environment at parse time: `sidecar.delivery` sends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import quote, urlencode, urlsplit

import orjson

from gateway import __version__
from sidecar.errors import ConfigError

__all__ = [
    "RETRAIN_EVENTS",
    "TEST_EVENT",
    "AzureDevOpsTarget",
    "GenericTarget",
    "GitHubTarget",
    "GitLabTarget",
    "Outcome",
    "OutgoingRequest",
    "Secret",
    "WebhookTarget",
    "ci_variables",
    "classify",
    "event_fields",
    "parse_webhooks",
    "redact",
    "summarize",
    "template_parameters",
]

Kind = Literal["generic", "github", "gitlab", "azure_devops"]
KINDS: tuple[str, ...] = get_args(Kind)

USER_AGENT = f"gatewatch/{__version__}"
TEST_EVENT = "gatewatch.test"
DEFAULT_GITHUB_API = "https://api.github.com"
DEFAULT_GITLAB_API = "https://gitlab.com/api/v4"
DEFAULT_AZURE_BASE = "https://dev.azure.com"
GITHUB_API_VERSION = "2022-11-28"
AZURE_API_VERSION = "7.1"
# GitHub's documented limits for repository_dispatch.
GITHUB_MAX_EVENT_TYPE = 100
GITHUB_MAX_PAYLOAD_KEYS = 10
GITHUB_MAX_PAYLOAD_BYTES = 64 * 1024
# A summary of the figures that fits a CI variable or template parameter.
SUMMARY_MAX_CHARS = 2000
AZURE_SCOPE_HINT = (
    'the token lacks the "Build (read and execute)" scope (vso.build_execute) '
    "or access to this pipeline"
)
# Standard Webhooks: symmetric secrets are 24 to 64 random bytes.
_SECRET_MIN_BYTES, _SECRET_MAX_BYTES = 24, 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SNIPPET = 300


class Secret:
    """A token read from the environment; prints as a mask so it cannot leak by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._value.encode()).digest())

    def __reduce__(self) -> Any:
        # Targets are rebuilt from the config and environment, never unpickled with a secret.
        raise TypeError("a Secret is not picklable")


@dataclass(frozen=True)
class OutgoingRequest:
    """One request to send. Its repr shows where it goes, never its headers or body."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class Outcome:
    """What an answer means for the delivery: done, try again later, or give up now."""

    state: Literal["delivered", "retry", "dead"]
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def redact(text: str, secrets: tuple[Secret, ...]) -> str:
    """Replace every secret (and the forms it is sent in) with a mask."""
    for secret in secrets:
        value = secret.reveal()
        if not value:
            continue
        forms = {
            value,
            value.removeprefix("whsec_"),
            quote(value, safe=""),
            base64.b64encode(f":{value}".encode()).decode(),
        }
        for form in forms:
            text = text.replace(form, "***")
    return text


def classify(status: int) -> Literal["delivered", "retry", "dead"]:
    """The delivery rule shared by every kind.

    2xx is success. 408, 409, 429 and 5xx are worth another try, and so is 3xx (a redirect is
    not followed: the URL needs fixing in the config, which a reload picks up). Any other 4xx
    means the request itself is refused: retrying will not change the answer.
    """
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 409, 429) or status >= 500 or 300 <= status < 400:
        return "retry"
    return "dead"


def _failure(status: int, body: bytes, secrets: tuple[Secret, ...]) -> str:
    """ "HTTP 4xx: <start of the answer>", masked before it is cut so no secret is half-shown."""
    text = " ".join(redact(body.decode("utf-8", errors="replace"), secrets).split())
    return f"HTTP {status}" + (f": {text[:_SNIPPET]}" if text else "")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def summarize(figures: Mapping[str, Any], limit: int = SUMMARY_MAX_CHARS) -> str:
    """Compact JSON of an event's figures, cut down to fit `limit` characters."""
    text = _dumps(dict(figures)).decode()
    if len(text) <= limit:
        return text
    short = {k: v for k, v in figures.items() if not isinstance(v, dict | list)}
    drifting = figures.get("drifting")
    if isinstance(drifting, list):
        short["drifting"] = drifting[:10]
    short["truncated"] = True
    text = _dumps(short).decode()
    if len(text) <= limit:
        return text
    return _dumps({"condition": figures.get("condition"), "truncated": True}).decode()


@dataclass(frozen=True)
class _Target:
    """Fields and behaviour every kind shares. `events` = the event types this target takes."""

    name: str
    events: frozenset[str] | None

    kind: str = field(init=False, default="")

    def accepts(self, event_type: str) -> bool:
        if event_type == TEST_EVENT:
            return True
        return self.events is None or event_type in self.events

    def secrets(self) -> tuple[Secret, ...]:
        return tuple(v for v in vars(self).values() if isinstance(v, Secret))

    def outcome(self, status: int, body: bytes) -> Outcome:
        state = classify(status)
        if state == "delivered":
            return Outcome("delivered")
        return Outcome(state, _failure(status, body, self.secrets()))

    def describe(self) -> dict[str, Any]:
        """A description safe to show in /webhooks: env var names, never their values."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        for key, value in vars(self).items():
            if key in out or isinstance(value, Secret):
                continue
            out[key] = sorted(value) if isinstance(value, frozenset) else value
        return out


@dataclass(frozen=True)
class GenericTarget(_Target):
    """POST the event JSON to `url`, signed with the Standard Webhooks scheme."""

    url: str
    secret_env: str
    secret: Secret = field(repr=False)
    kind: str = field(init=False, default="generic")

    def build(self, event: Mapping[str, Any], *, now: float) -> OutgoingRequest:
        body = _dumps(dict(event))
        msg_id, timestamp = str(event["id"]), str(int(now))
        key = base64.b64decode(_secret_body(self.secret.reveal()))
        mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }
        return OutgoingRequest("POST", self.url, headers, body)


@dataclass(frozen=True)
class GitHubTarget(_Target):
    """A repository_dispatch event; the workflow reads `github.event.client_payload`."""

    owner: str
    repo: str
    token_env: str
    token: Secret = field(repr=False)
    api: str = DEFAULT_GITHUB_API
    event_type: str | None = None
    kind: str = field(init=False, default="github")

    def build(self, event: Mapping[str, Any], *, now: float) -> OutgoingRequest:
        event_type = self.event_type or str(event["type"])
        if not 1 <= len(event_type) <= GITHUB_MAX_EVENT_TYPE:
            raise ValueError(f"event_type must be 1 to {GITHUB_MAX_EVENT_TYPE} characters")
        body = _dumps({"event_type": event_type, "client_payload": _client_payload(event)})
        url = f"{self.api}/repos/{quote(self.owner, safe='')}/{quote(self.repo, safe='')}"
        headers = {
            "accept": "application/vnd.github+json",
            "authorization": f"Bearer {self.token.reveal()}",
            "x-github-api-version": GITHUB_API_VERSION,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        return OutgoingRequest("POST", f"{url}/dispatches", headers, body)


def event_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event flattened into the fields every CI kind passes to its job.

    ``figures`` keeps what was measured with the condition folded in, so a job needs no more.
    """
    data = event.get("data") or {}
    return {
        "event": event.get("type"),
        "event_id": event.get("id"),
        "timestamp": event.get("timestamp"),
        "model": data.get("model"),
        "version": data.get("version"),
        "rule": data.get("rule"),
        "severity": data.get("severity"),
        "condition": data.get("condition"),
        "registry_path": data.get("registry_path"),
        "sidecar_url": data.get("sidecar_url"),
        "figures": {"condition": data.get("condition"), **(data.get("figures") or {})},
    }


# GitHub allows 10 top-level keys; "condition" is inside "figures" already.
_GITHUB_KEYS = (
    "event",
    "event_id",
    "timestamp",
    "model",
    "version",
    "rule",
    "severity",
    "registry_path",
    "sidecar_url",
    "figures",
)
_AZURE_KEYS = ("event", "event_id", "model", "version", "rule", "severity", "registry_path")


def _client_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """At most 10 top-level keys and well under 64 KB, as GitHub requires."""
    fields = event_fields(event)
    payload = {key: fields[key] for key in _GITHUB_KEYS[:GITHUB_MAX_PAYLOAD_KEYS]}
    # Room for the envelope ({"event_type": ..., "client_payload": ...}) under the limit.
    budget = GITHUB_MAX_PAYLOAD_BYTES - 1024
    if len(_dumps(payload)) > budget:
        payload["figures"] = orjson.loads(summarize(fields["figures"]))
    return payload


@dataclass(frozen=True)
class GitLabTarget(_Target):
    """A pipeline trigger; the job reads the GATEWATCH_* CI variables."""

    project: str
    token_env: str
    token: Secret = field(repr=False)
    ref: str = "main"
    api: str = DEFAULT_GITLAB_API
    kind: str = field(init=False, default="gitlab")

    def build(self, event: Mapping[str, Any], *, now: float) -> OutgoingRequest:
        fields = {"token": self.token.reveal(), "ref": self.ref}
        for key, value in ci_variables(event).items():
            fields[f"variables[{key}]"] = value
        url = f"{self.api}/projects/{quote(self.project, safe='')}/trigger/pipeline"
        headers = {"content-type": "application/x-www-form-urlencoded", "user-agent": USER_AGENT}
        return OutgoingRequest("POST", url, headers, urlencode(fields).encode())

    def outcome(self, status: int, body: bytes) -> Outcome:
        outcome = super().outcome(status, body)
        if outcome.state == "delivered":
            pipeline = _json_object(body)
            info = {"run_id": pipeline.get("id"), "run_url": pipeline.get("web_url")}
            return Outcome("delivered", info={k: v for k, v in info.items() if v is not None})
        return outcome


def ci_variables(event: Mapping[str, Any]) -> dict[str, str]:
    """The event as GATEWATCH_* string variables, the form a GitLab job reads."""
    fields = event_fields(event)
    fields["figures"] = summarize(fields["figures"])
    return {f"GATEWATCH_{k.upper()}": "" if v is None else str(v) for k, v in fields.items()}


@dataclass(frozen=True)
class AzureDevOpsTarget(_Target):
    """A pipeline run with the event in `templateParameters` (each a string)."""

    organization: str
    project: str
    pipeline_id: int
    token_env: str
    token: Secret = field(repr=False)
    branch: str = "refs/heads/main"
    api: str = DEFAULT_AZURE_BASE
    kind: str = field(init=False, default="azure_devops")

    def build(self, event: Mapping[str, Any], *, now: float) -> OutgoingRequest:
        url = (
            f"{self.api}/{quote(self.organization, safe='')}/{quote(self.project, safe='')}"
            f"/_apis/pipelines/{self.pipeline_id}/runs?api-version={AZURE_API_VERSION}"
        )
        body = {
            "resources": {"repositories": {"self": {"refName": self.branch}}},
            "templateParameters": template_parameters(event),
        }
        basic = base64.b64encode(f":{self.token.reveal()}".encode()).decode()
        headers = {
            "accept": "application/json",
            "authorization": f"Basic {basic}",
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            # Answer 401 instead of a 203 sign-in page when the token is refused.
            "x-tfs-fedauthredirect": "Suppress",
        }
        return OutgoingRequest("POST", url, headers, _dumps(body))

    def outcome(self, status: int, body: bytes) -> Outcome:
        # 203 is Azure DevOps' sign-in page: the token was not accepted.
        if status in (401, 403, 203):
            return Outcome("dead", f"HTTP {status}: {AZURE_SCOPE_HINT}")
        if classify(status) == "delivered":
            run = _json_object(body)
            links = run.get("_links")
            web = links.get("web") if isinstance(links, dict) else None
            href = web.get("href") if isinstance(web, dict) else None
            info = {"run_id": run.get("id"), "run_url": href or run.get("url")}
            return Outcome("delivered", info={k: v for k, v in info.items() if v is not None})
        return super().outcome(status, body)


def template_parameters(event: Mapping[str, Any]) -> dict[str, str]:
    """The event as Azure Pipelines parameters; examples/ci/azure-pipelines.yml declares them.

    Azure takes an empty string for a missing parameter and refuses the run, so an absent
    value is sent as "none".
    """
    fields = event_fields(event)
    params = {_camel(key): fields[key] for key in _AZURE_KEYS}
    params["figures"] = summarize(fields["figures"])
    return {key: "none" if value in (None, "") else str(value) for key, value in params.items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


WebhookTarget = GenericTarget | GitHubTarget | GitLabTarget | AzureDevOpsTarget

# ---------------------------------------------------------------------------------- parsing

_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys) besides name, kind and events
    "generic": ({"url", "secret_env"}, set()),
    "github": ({"token_env"}, {"owner", "repo", "repository", "api", "event_type"}),
    "gitlab": ({"project", "token_env"}, {"ref", "api"}),
    "azure_devops": ({"organization", "project", "pipeline_id", "token_env"}, {"branch", "api"}),
}
# A CI target starts a pipeline, so by default it takes only the events a retraining can answer
# (not "alert.resolved", nor a log lag or a burst of 5xx, which new weights would not fix).
RETRAIN_EVENTS = frozenset(
    {"model.drift_detected", "model.accuracy_degraded", "model.concept_drift"}
)


def parse_webhooks(
    tables: list[dict[str, Any]], environ: Mapping[str, str] | None = None
) -> dict[str, WebhookTarget]:
    """Validate the `[[webhooks]]` tables and read their secrets from the environment.

    A missing environment variable is a config error too (the message names the variable,
    never a value), so a sidecar refuses the config up front rather than failing each delivery.
    """
    env = os.environ if environ is None else environ
    if not isinstance(tables, list):
        raise ConfigError("webhooks: must be an array of tables ([[webhooks]])")
    targets: dict[str, WebhookTarget] = {}
    for index, table in enumerate(tables):
        where = f"webhooks[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        target = _parse_target(table, where, env)
        if target.name in targets:
            raise ConfigError(f"{where}.name: duplicate webhook name {target.name!r}")
        targets[target.name] = target
    return targets


def _parse_target(table: dict[str, Any], where: str, env: Mapping[str, str]) -> WebhookTarget:
    name = table.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}.name: required, letters, digits, '.', '_' or '-'")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    required, optional = _KEYS[kind]
    for key in table:
        if key not in required | optional | {"name", "kind", "events"}:
            raise ConfigError(f"{where}.{key}: unknown key for kind {kind!r}")
    for key in sorted(required):
        if key not in table:
            raise ConfigError(f"{where}.{key}: required for kind {kind!r}")
    events = _events(table, where, kind)

    def text(key: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}.{key}: must be a non-empty string")
        return value.strip()

    def url(key: str, default: str) -> str:
        value = text(key, default).rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}.{key}: must be an http(s) URL")
        if parts.username or parts.password:
            raise ConfigError(f"{where}.{key}: put credentials in an env var, not the URL")
        return value

    if kind == "generic":
        secret = _secret(table, "secret_env", where, env)
        if _decoded_secret_length(secret) is None:
            raise ConfigError(
                f"{where}.secret_env: ${table['secret_env']} must hold a Standard Webhooks "
                f"secret, 'whsec_' + base64 of {_SECRET_MIN_BYTES} to {_SECRET_MAX_BYTES} bytes"
            )
        return GenericTarget(
            name, events, url=url("url", ""), secret_env=table["secret_env"], secret=secret
        )
    token = _secret(table, "token_env", where, env)
    if kind == "github":
        owner, repo = _github_repository(table, where)
        event_type = table.get("event_type")
        if event_type is not None and (
            not isinstance(event_type, str) or not 1 <= len(event_type) <= GITHUB_MAX_EVENT_TYPE
        ):
            raise ConfigError(
                f"{where}.event_type: must be a string of 1 to {GITHUB_MAX_EVENT_TYPE} characters"
            )
        return GitHubTarget(
            name,
            events,
            owner=owner,
            repo=repo,
            token_env=table["token_env"],
            token=token,
            api=url("api", DEFAULT_GITHUB_API),
            event_type=event_type,
        )
    if kind == "gitlab":
        project = table["project"]
        if isinstance(project, int) and not isinstance(project, bool) and project > 0:
            project = str(project)
        elif not isinstance(project, str) or not project.strip():
            raise ConfigError(f"{where}.project: must be a numeric id or 'group/project'")
        return GitLabTarget(
            name,
            events,
            project=project.strip(),
            token_env=table["token_env"],
            token=token,
            ref=text("ref", "main"),
            api=url("api", DEFAULT_GITLAB_API),
        )
    pipeline_id = table["pipeline_id"]
    if not isinstance(pipeline_id, int) or isinstance(pipeline_id, bool) or pipeline_id < 1:
        raise ConfigError(f"{where}.pipeline_id: must be a positive integer")
    branch = text("branch", "refs/heads/main")
    if not branch.startswith("refs/"):
        branch = f"refs/heads/{branch}"
    return AzureDevOpsTarget(
        name,
        events,
        organization=text("organization"),
        project=text("project"),
        pipeline_id=pipeline_id,
        token_env=table["token_env"],
        token=token,
        branch=branch,
        api=url("api", DEFAULT_AZURE_BASE),
    )


def _events(table: dict[str, Any], where: str, kind: str) -> frozenset[str] | None:
    value = table.get("events")
    if value is None:
        if kind == "generic":
            return None
        return RETRAIN_EVENTS
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.events: must be a list of event types")
    return frozenset(value)


def _secret(table: dict[str, Any], key: str, where: str, env: Mapping[str, str]) -> Secret:
    var = table[key]
    if not isinstance(var, str) or not _ENV_RE.match(var):
        raise ConfigError(f"{where}.{key}: must be the name of an environment variable")
    value = env.get(var, "")
    if not value.strip():
        raise ConfigError(f"{where}.{key}: environment variable ${var} is not set")
    return Secret(value.strip())


def _secret_body(value: str) -> str:
    body = value.removeprefix("whsec_")
    return body + "=" * (-len(body) % 4)


def _decoded_secret_length(secret: Secret) -> int | None:
    try:
        key = base64.b64decode(_secret_body(secret.reveal()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return len(key) if _SECRET_MIN_BYTES <= len(key) <= _SECRET_MAX_BYTES else None


def _github_repository(table: dict[str, Any], where: str) -> tuple[str, str]:
    if "repository" in table:
        value = table["repository"]
        if "owner" in table or "repo" in table:
            raise ConfigError(f"{where}.repository: give repository or owner + repo")
        if not isinstance(value, str) or value.count("/") != 1 or "" in value.split("/"):
            raise ConfigError(f"{where}.repository: must be 'owner/repo'")
        owner, repo = value.split("/")
        return owner, repo
    for key in ("owner", "repo"):
        value = table.get(key)
        if not isinstance(value, str) or not value or "/" in value:
            raise ConfigError(f"{where}.{key}: required for kind 'github' (or repository)")
    return table["owner"], table["repo"]
