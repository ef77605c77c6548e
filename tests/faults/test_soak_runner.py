"""The soak runner works: a 15-second run with drift and canary changes ends with record counts
that add up and no error. Fifteen seconds do not fill the sidecar's bounded memories, so the
runner does not judge memory: that is for the real run (python -m loadtests.soak, 10 minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults._harness import ROOT, process_env


@pytest.mark.slow
def test_short_soak_counts_add_up(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = ["--duration", "15", "--rate", "150", "--drift-every", "8", "--canary-every", "4"]
    args += ["--sample-every", "1", "--dir", str(tmp_path / "soak"), "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.soak", *args],
        cwd=ROOT,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert done.returncode == (1 if False in checks.values() else 0)
    assert checks["memory flat"] is None, "too short to fill the sidecar's de-dup window"
    assert checks["records add up"], report["counts"]
    assert checks["no errors"], report["errors"]
    counts = report["counts"]
    assert counts["answered"] > 500 and counts["feedback accepted"] > 0
    assert report["canary changes"] >= 3 and report["reloads"] >= 3
    assert report["alerts"]["fired"] >= 1
    assert len(report["samples"]["gateway"]) >= 10
    assert done.stdout.startswith("## Soak\n") and "| gateway |" in done.stdout
