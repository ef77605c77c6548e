from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sidecar.cli import main
from tests._server import free_port, wait_http


def test_an_invalid_config_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gatewatch.toml"
    path.write_text("[monitors.drift]\nwindow = -1\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "monitors.drift.window: must be a positive integer" in err


def test_python_m_sidecar_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "gatewatch.toml"
    path.write_text(f'[sidecar]\nlisten = "127.0.0.1:{port}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(path), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60.0, proc=proc)
        status = httpx.get(f"http://127.0.0.1:{port}/status").json()
        assert (status["records"], status["models"]) == (0, {})
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert f"gatewatch sidecar: dashboard at http://127.0.0.1:{port}/" in out.decode()
