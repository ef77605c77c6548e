"""Bad registry content and bad config files reach a gateway serving under load.

Each is refused with a message that says what is wrong, and the last good state keeps
answering every request: a new version with a corrupt artifact or a truncated manifest (a copy
that went wrong), the served version deleted from the registry, the config file overwritten
with garbage. The gateway finds each change by itself (it polls the config and the registry),
without a reload call; tests/gateway/test_traffic.py refuses invalid configs through
POST /admin/reload.

Two ways Kubernetes presents a ConfigMap are checked too: the file is a symlink into a
timestamped folder that the kubelet swaps atomically, and the folder is read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import audit
from gateway.registry import read_manifest, version_dir
from tests._models import push_logreg
from tests._server import free_port, gateway_process
from tests.faults._harness import ADMIN, Load, failures, metric, process_env, require, wait_for

LOG = '[log]\ndir = "{base}/predlog"\nfsync = "never"\n'


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """churn v1 and v2 in ./registry."""
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work, seed=0)
    push_logreg(tmp_path / "registry", work, seed=1, C=0.1)
    return tmp_path


def config_text(base: Path, models: str) -> str:
    return f'[gateway]\nregistry = "{base}/registry"\n\n{LOG.format(base=base)}\n{models}\n'


def copy_version(base: Path, spoil: Callable[[Path, dict[str, Any]], None]) -> None:
    """Put churn v3 in place at once (a rename), as a copy of v2 that ``spoil`` damaged."""
    staging = base / "staging"
    shutil.copytree(version_dir(base / "registry", "churn", 2), staging)
    manifest = read_manifest(base / "registry", "churn", 2)
    manifest["version"] = 3
    (staging / "manifest.json").write_text(json.dumps(manifest))
    spoil(staging, manifest)
    os.rename(staging, base / "registry" / "churn" / "3")


def corrupt_artifact(base: Path) -> None:
    def spoil(folder: Path, manifest: dict[str, Any]) -> None:
        artifact = folder / manifest["artifact"]
        artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])

    copy_version(base, spoil)


def truncated_manifest(base: Path) -> None:
    def spoil(folder: Path, manifest: dict[str, Any]) -> None:
        text = (folder / "manifest.json").read_text()
        (folder / "manifest.json").write_text(text[: len(text) // 2])

    copy_version(base, spoil)


def delete_served_version(base: Path) -> None:
    shutil.rmtree(version_dir(base / "registry", "churn", 2))


def garbage_config(base: Path) -> None:
    (base / "gatewatch.toml").write_bytes(bytes(range(256)) * 4)


@dataclass(frozen=True)
class Fault:
    models: str
    apply: Callable[[Path], None]
    message: str
    refused_version: bool
    """True: the version is skipped and the reload succeeds; False: the whole reload is."""


FAULTS = [
    pytest.param(Fault("", corrupt_artifact, "does not match the manifest", True), id="artifact"),
    pytest.param(Fault("", truncated_manifest, "unreadable manifest", True), id="manifest"),
    pytest.param(
        Fault(
            "[models.churn]\nprimary = 2\n",
            delete_served_version,
            "models.churn.primary: version 2 is not in the registry",
            False,
        ),
        id="version-deleted",
    ),
    pytest.param(
        Fault("[models.churn]\nprimary = 2\n", garbage_config, "gatewatch.toml: unreadable", False),
        id="config-garbage",
    ),
]


def admin_status(url: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{url}/admin/status", headers=ADMIN, timeout=10).json()
    return status


def refused_reload(url: str) -> dict[str, Any]:
    """The last reload when it was refused, else an empty dict."""
    last: dict[str, Any] = admin_status(url)["last_reload"]
    return last if last.get("ok") is False else {}


@pytest.mark.parametrize("fault", FAULTS)
def test_refused_with_a_message_and_the_last_good_state_serves(base: Path, fault: Fault) -> None:
    config = base / "gatewatch.toml"
    config.write_text(config_text(base, fault.models))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with gateway_process(config, port, env=process_env()), Load(url, threads=2) as load:
        load.wait_ok(100)
        fault.apply(base)
        if fault.refused_version:
            entries = wait_for(
                lambda: [
                    e
                    for e in audit.read(base / "audit.jsonl", "churn")
                    if e["action"] == "version_refused"
                ],
                "the version refused",
            )
            assert [(e["after"], fault.message in e["why"]) for e in entries] == [(3, True)]
        else:
            last = wait_for(lambda: refused_reload(url), "the reload refused")
            assert fault.message in last["error"], last["error"]
        load.wait_ok(300)
        answers = load.stop()
        status = admin_status(url)
        text = httpx.get(f"{url}/metrics").text
    assert len(answers) >= 400 and failures(answers) == []
    assert {a.version for a in answers} == {"2"}, "the last good state answered every request"
    assert status["models"]["churn"]["primary"] == 2
    if fault.refused_version:
        assert status["last_reload"]["ok"] is True
        assert 3 not in status["models"]["churn"]["loaded"]
        assert metric(text, "gatewatch_model_load_failures_total", model="churn") == 1
    else:
        assert metric(text, "gatewatch_reloads_total", result="refused") >= 1


@contextmanager
def gateway_with_load(config: Path) -> Iterator[tuple[str, Load]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with gateway_process(config, port, env=process_env()), Load(url, threads=2) as load:
        load.wait_ok(100)
        yield url, load


def serves(url: str, version: str) -> bool:
    row = {"inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0] * 20}]}
    answer = httpx.post(f"{url}/v2/models/churn/infer", json=row, timeout=10)
    return answer.status_code == 200 and answer.headers["x-model-version"] == version


class ConfigMapFolder:
    """A folder laid out as the kubelet lays out a mounted ConfigMap: ``gatewatch.toml`` is a
    symlink to ``..data/gatewatch.toml``, ``..data`` a symlink to a timestamped folder; an
    update writes a new timestamped folder, swaps ``..data`` with a rename and deletes the old
    folder."""

    def __init__(self, folder: Path, text: str) -> None:
        self.folder = folder
        self.generation = 0
        folder.mkdir()
        self.update(text)
        os.symlink("..data/gatewatch.toml", folder / "gatewatch.toml")

    @property
    def path(self) -> Path:
        return self.folder / "gatewatch.toml"

    def update(self, text: str) -> None:
        old = self.folder / f"..2026_01_01_00_00_0{self.generation}"
        self.generation += 1
        new = self.folder / f"..2026_01_01_00_00_0{self.generation}"
        new.mkdir()
        (new / "gatewatch.toml").write_text(text)
        os.symlink(new.name, self.folder / "..data_tmp")
        os.rename(self.folder / "..data_tmp", self.folder / "..data")
        if old.exists():
            shutil.rmtree(old)


def test_configmap_update_is_followed(base: Path) -> None:
    text = config_text(base, "[models.churn]\nprimary = 2\n")
    configmap = ConfigMapFolder(base / "configmap", text)
    with gateway_with_load(configmap.path) as (url, load):
        started = admin_status(url)["last_reload"]["at"]
        configmap.update(text.replace("primary = 2", "primary = 1"))
        last = wait_for(
            lambda: (r := admin_status(url)["last_reload"])["at"] != started and r, "a reload"
        )
        assert last["ok"], last
        wait_for(lambda: serves(url, "1"), "v1 serving after the update")
        answers = load.stop()
    assert failures(answers) == []


@contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """``view`` shows ``source`` read-only (a bind mount), as a ConfigMap volume is."""
    view.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True)
    require(done.returncode == 0, f"bind mounts are not permitted: {done.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_read_only_config_folder_follows_every_change(base: Path) -> None:
    writable = base / "config"
    writable.mkdir()
    text = config_text(base, "[models.churn]\nprimary = 2\n")
    (writable / "gatewatch.toml").write_text(text)
    with (
        read_only_view(writable, base / "mounted") as mounted,
        gateway_with_load(mounted / "gatewatch.toml") as (url, load),
    ):
        (writable / "gatewatch.toml").write_text(text.replace("primary = 2", "primary = 1"))
        wait_for(lambda: serves(url, "1"), "v1 serving after the first change")
        (writable / "gatewatch.toml").write_text(text)
        wait_for(lambda: serves(url, "2"), "v2 serving after the second change", timeout=10)
        answers = load.stop()
        reload = httpx.post(f"{url}/admin/reload", headers=ADMIN)
    assert failures(answers) == []
    assert reload.status_code == 200, reload.text
