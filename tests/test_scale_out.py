"""Several machines: two gateway processes and one sidecar sharing one real redis-server, and
the deployment files (deploy/docker-compose.yml, deploy/kubernetes/) checked against the real
command line, config parser, ports and health endpoints.

Every record from both gateways reaches the sidecar once: the stream holds each answered
request exactly once, and the sidecar's count equals the number of answers.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import load_config, parse_config
from sidecar.cli import main as sidecar_main
from sidecar.config import load_config as load_sidecar_config
from sidecar.config import parse_config as parse_sidecar_config
from tests._models import push_logreg
from tests._redis import RedisServer
from tests._server import free_port, gateway_process
from tests.faults._harness import (
    ROOT,
    Load,
    failures,
    log_records,
    ok_ids,
    process_env,
    sidecar_process,
    wait_drained,
    wait_for,
)

DEPLOY = ROOT / "deploy"
PER_GATEWAY = 1000


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


def test_two_gateways_one_redis_one_sidecar_count_every_record_once(
    tmp_path: Path, redis: RedisServer
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    config_path = tmp_path / "gatewatch.toml"
    config_path.write_text(
        f"""
[gateway]
registry = "registry"

[log]
transport = "redis"
url = "{redis.url}"
dir = "spill"

[sidecar]
listen = "127.0.0.1:{free_port()}"
state_dir = "state"
checkpoint_interval = 0.2
"""
    )
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    sidecar_url = f"http://{load_sidecar_config(config_path).listen}"
    with (
        gateway_process(config_path, ports[0], env=process_env()),
        gateway_process(config_path, ports[1], env=process_env()),
        sidecar_process(config_path, sidecar_url) as sidecar,
    ):
        with contextlib.ExitStack() as stack:
            loads = [
                stack.enter_context(
                    Load(url, threads=2, limit=PER_GATEWAY // 2, prefix=f"gw{i}", seed=10 * i)
                )
                for i, url in enumerate(urls)
            ]
            answers = [a for load in loads for a in load.join()]
        for url, load in zip(urls, loads, strict=True):
            wait_drained(url, len(load.answers))
        wait_for(
            lambda: sidecar.get("/status")["records"] >= len(answers),
            f"the sidecar counting {len(answers)} records",
        )
        status = sidecar.get("/status")
        records = log_records(load_config(config_path).log)
        probes = {
            path: httpx.get(f"{url}{path}").status_code
            for url in urls
            for path in ("/v2/health/live", "/v2/health/ready")
        } | {"/healthz": httpx.get(f"{sidecar_url}/healthz").status_code}
    assert len(answers) == 2 * PER_GATEWAY and failures(answers) == []
    ids = Counter(r["id"] for r in records)
    assert set(ids) == ok_ids(answers) and set(ids.values()) == {1}, "each record once"
    assert {i.split("-")[0] for i in ids} == {"gw0", "gw1"}
    assert (status["records"], status["duplicates"]) == (2 * PER_GATEWAY, 0)
    assert set(probes.values()) == {200}, probes


# ---------------------------------------------------------------------------- deploy files


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def kubernetes() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object of deploy/kubernetes/ by (kind, name)."""
    objects = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            objects[(doc["kind"], doc.get("metadata", {}).get("name", path.stem))] = doc
    return objects


def check_toml(text: str) -> tuple[Any, Any]:
    """The gateway's and the sidecar's view of a gatewatch.toml (both must accept it)."""
    import tomllib

    data = tomllib.loads(text)
    gateway = parse_config(data, Path("/etc/gatewatch"), environ={})
    sidecar = parse_sidecar_config(data, base_dir=Path("/etc/gatewatch"), environ={})
    assert gateway.log.transport == "redis" and gateway.log == sidecar.log
    assert gateway.registry == sidecar.registry
    return gateway, sidecar


def check_gateway_args(args: list[str]) -> tuple[str, int]:
    """Parsed by the real `gatewatch` parser; answers the config path and the port."""
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve"
    host, port = parsed.listen.rsplit(":", 1)
    assert host == "0.0.0.0", "reachable from outside the container"
    return parsed.config, int(port)


def check_sidecar_args(args: list[str]) -> str:
    """`gatewatch sidecar ...` accepts the flags: it gets as far as reading the config file
    (absent here), which it names; an unknown flag would exit from the parser instead."""
    assert args[0] == "sidecar"
    missing = Path(tempfile.gettempdir()) / "no-such-gatewatch-dir" / "gatewatch.toml"
    rest = [str(missing) if a.endswith("gatewatch.toml") else a for a in args[1:]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert sidecar_main(rest) == 2
    assert "cannot read the config file" in err.getvalue() and str(missing) in err.getvalue()
    return next(a for a in args if a.endswith("gatewatch.toml"))


def test_compose_file_matches_the_real_cli_config_and_ports() -> None:
    data = compose()
    services = data["services"]
    assert set(services) >= {"redis", "gateway", "lb", "sidecar"}
    gateway, sidecar = services["gateway"], services["sidecar"]
    assert gateway["deploy"]["replicas"] == 2
    config_path, port = check_gateway_args(gateway["command"])
    assert config_path == check_sidecar_args(sidecar["command"])
    assert sidecar["environment"]["GATEWATCH_SIDECAR_LISTEN"] == "0.0.0.0:8001"
    assert "8001:8001" in sidecar["ports"]
    gateway_config, _ = check_toml(data["configs"]["gatewatch-toml"]["content"])
    assert gateway_config.log.url == "redis://redis:6379/0", "the redis service, default port"
    nginx = data["configs"]["nginx-conf"]["content"]
    assert f"http://gateway:{port}" in nginx and "listen 8000;" in nginx
    text = (DEPLOY / "docker-compose.yml").read_text()
    code = [line for line in text.splitlines() if not line.strip().startswith("#")]
    lone = [line for line in code if re.search(r"(?<!\$)\$(?![${])", line)]
    assert lone == [], "compose would interpolate these: write $$ for a literal $"
    assert "8000:8000" in services["lb"]["ports"]
    for service in (gateway, sidecar):
        mounts = {m.removesuffix(":ro").rsplit(":", 1)[1]: m for m in service["volumes"]}
        assert mounts[str(gateway_config.registry)].endswith(":ro"), "registry read-only"
        assert str(Path(config_path).parent) in mounts, "config in the shared volume"
    seeded = services["config"]["configs"][0]["target"]
    assert seeded.endswith("gatewatch.toml") and seeded in " ".join(services["config"]["command"])
    assert "/v2/health/ready" not in str(sidecar["healthcheck"])
    assert "8001/healthz" in str(sidecar["healthcheck"])


def container(objects: dict[tuple[str, str], Any], name: str) -> dict[str, Any]:
    spec = objects[("Deployment", name)]["spec"]["template"]["spec"]
    [one] = spec["containers"]
    result: dict[str, Any] = {**one, "volumes": {v["name"]: v for v in spec["volumes"]}}
    return result


def mounted_at(c: dict[str, Any], path: str) -> dict[str, Any]:
    [mount] = [m for m in c["volumeMounts"] if path == m["mountPath"]]
    return {**mount, "volume": c["volumes"][mount["name"]]}


def test_kubernetes_manifests_match_the_real_cli_config_ports_and_probes() -> None:
    objects = kubernetes()
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    gateway_config, sidecar_config = check_toml(
        objects[("ConfigMap", "gatewatch")]["data"]["gatewatch.toml"]
    )
    redis_service = objects[("Service", "gatewatch-redis")]
    assert gateway_config.log.url == (
        f"redis://gatewatch-redis:{redis_service['spec']['ports'][0]['port']}/0"
    )

    gateway = container(objects, "gatewatch-gateway")
    config_path, port = check_gateway_args(gateway["args"])
    assert gateway["ports"] == [{"name": "http", "containerPort": port}]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert objects[("Deployment", "gatewatch-gateway")]["spec"]["replicas"] >= 2
    assert gateway_config.audit_log is not None, "the ConfigMap's folder is read-only"
    audit_folder = mounted_at(gateway, str(Path(gateway_config.audit_log).parent))
    assert not audit_folder.get("readOnly") and "emptyDir" in audit_folder["volume"]

    sidecar = container(objects, "gatewatch-sidecar")
    assert check_sidecar_args(sidecar["args"]) == config_path
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    sidecar_port = int(env["GATEWATCH_SIDECAR_LISTEN"].rsplit(":", 1)[1])
    assert sidecar["ports"] == [{"name": "http", "containerPort": sidecar_port}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    deployment = objects[("Deployment", "gatewatch-sidecar")]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    state = mounted_at(sidecar, env["GATEWATCH_SIDECAR_STATE_DIR"])
    assert state["volume"]["persistentVolumeClaim"]["claimName"] in {
        name for kind, name in objects if kind == "PersistentVolumeClaim"
    }
    assert str(sidecar_config.state_dir) == env["GATEWATCH_SIDECAR_STATE_DIR"]

    for c in (gateway, sidecar):
        config = mounted_at(c, str(Path(config_path).parent))
        assert config["volume"]["configMap"]["name"] == "gatewatch"
        registry = mounted_at(c, str(gateway_config.registry))
        assert registry["readOnly"] and registry["volume"]["persistentVolumeClaim"]["readOnly"]
        assert registry["volume"]["persistentVolumeClaim"]["claimName"] == "gatewatch-registry"
    for name, target in (("gatewatch-gateway", port), ("gatewatch-sidecar", sidecar_port)):
        service = objects[("Service", name)]["spec"]
        assert service["ports"][0]["targetPort"] == "http"
        assert (
            service["selector"] == objects[("Deployment", name)]["spec"]["selector"]["matchLabels"]
        )
        assert service["ports"][0]["port"] == target
