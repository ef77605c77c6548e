from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from sidecar.errors import StateError
from sidecar.state import (
    STATE_FILE,
    STATE_FORMAT,
    Checkpoint,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint,
)


def test_first_start_has_no_checkpoint(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "missing") is None
    assert load_checkpoint(tmp_path) is None


def test_round_trip_and_replace(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    first = Checkpoint({"records": 1}, {"files": {"a": 10}}, {"alerts": [1, 2]})
    path = save_checkpoint(state_dir, first)
    assert path == state_dir / STATE_FILE
    assert load_checkpoint(state_dir) == first
    second = Checkpoint({"records": 2}, {"files": {"a": 20}})
    save_checkpoint(state_dir, second)
    assert load_checkpoint(state_dir) == second
    assert sorted(p.name for p in state_dir.iterdir()) == [STATE_FILE]


def test_a_crashed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    good = Checkpoint({"records": 5}, {"files": {}})
    save_checkpoint(tmp_path, good)
    # What a process killed in the middle of write_checkpoint leaves behind: a temp file.
    (tmp_path / ".state-abc123").write_bytes(encode_checkpoint(good)[:10])
    assert load_checkpoint(tmp_path) == good
    assert not (tmp_path / ".state-abc123").exists()


def test_a_failed_write_cleans_up_and_keeps_the_old_file(tmp_path: Path) -> None:
    good = Checkpoint({"records": 5}, {"files": {}})
    save_checkpoint(tmp_path, good)
    with pytest.raises(TypeError):
        write_checkpoint(tmp_path, "not bytes")  # type: ignore[arg-type]
    assert load_checkpoint(tmp_path) == good
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]


def test_unusable_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(StateError, match="corrupt state file"):
        load_checkpoint(tmp_path)
    old = {"format": STATE_FORMAT + 1, "engine": {}, "position": {}}
    (tmp_path / STATE_FILE).write_bytes(pickle.dumps(old))
    with pytest.raises(StateError, match=f"state format {STATE_FORMAT + 1}"):
        load_checkpoint(tmp_path)
