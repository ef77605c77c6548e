"""The prediction log's disk fills up under load: the gateway keeps serving and counts the loss.

The log folder is a small tmpfs mounted by the test (CI runs as root; where mounting is not
permitted the test skips, and fails under GATEWATCH_REQUIRE_ALL=1). Once the disk is full every
batch the writer cannot store whole is cut off the segment and counted as dropped, so at rest
``gatewatch_predlog_dropped_total`` plus the records written equals the requests answered, and
the segment holds exactly the written records, without a torn line.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import load_config
from gateway.predlog import FileReader
from tests._models import push_logreg
from tests._server import free_port, gateway_process
from tests.faults._harness import Load, failures, metric, process_env, require, wait_drained

SIZE = "256k"
REQUESTS = 1500


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    require(mount is not None and umount is not None, "mount and umount are not installed")
    assert mount is not None and umount is not None
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(result.returncode == 0, f"mounting a tmpfs is not permitted: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([umount, str(path)], check=True, capture_output=True)


@pytest.mark.slow
def test_full_disk_drops_and_counts_and_never_fails_a_prediction(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    config_path = tmp_path / "gatewatch.toml"
    config_path.write_text('[gateway]\nregistry = "registry"\n\n[log]\ndir = "predlog"\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        tmpfs(tmp_path / "predlog", SIZE),
        gateway_process(config_path, port, env=process_env()),
    ):
        with Load(url, threads=4, limit=REQUESTS // 4) as load:
            answers = load.join()
        counters = wait_drained(url, REQUESTS)
        ready = httpx.get(f"{url}/v2/health/ready")
        text = httpx.get(f"{url}/metrics").text
        reader = FileReader(load_config(config_path).log)
        on_disk = reader.read(REQUESTS)
    assert len(answers) == REQUESTS and failures(answers) == [], "every prediction answered"
    assert ready.status_code == 200
    dropped = metric(text, "gatewatch_predlog_dropped_total")
    written = counters["written"]
    print(f"disk full: {written:.0f} records written, {dropped:.0f} dropped and counted")
    assert written > 0 and dropped > 0, "the disk filled up during the run"
    assert dropped + written == REQUESTS
    assert counters["write_errors"] > 0
    assert len(on_disk) == written and reader.corrupt == 0, "whole batches or nothing"
