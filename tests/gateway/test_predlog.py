"""The prediction log's record format, config, file writer and file reader."""

from __future__ import annotations

import asyncio
import errno
import io
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.predlog import (
    FileSink,
    LogConfig,
    LogConfigError,
    PredictionLog,
    decode,
    encode,
    open_reader,
    stats,
    tail,
)

WAIT_LIMIT = 30.0


def prediction(i: int, writer: str = "w", **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"{writer}-{i}",
        "ts": 1_764_300_000.0 + i,
        "model": "churn",
        "version": 3,
        "role": "primary",
        "inputs": [[0.5, float(i)]],
        "outputs": [[0.25, 0.75]],
        "prediction": [1],
        "latency_ms": 1.5,
        "status": 200,
    }
    record.update(extra)
    return record


def read_all(reader: Any, max_records: int = 10_000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(100_000):
        got = reader.read(max_records)
        if not got:
            return out
        out.extend(got)
    raise AssertionError("reader never ran dry")


def disk_lines(directory: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(directory.glob("predlog-*.jsonl")):
        lines.extend(path.read_bytes().splitlines())
    return lines


async def wait_idle(log: PredictionLog) -> None:
    """Wait (bounded) until everything submitted so far went through the transport."""
    deadline = time.monotonic() + WAIT_LIMIT
    while log.queued and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert log.queued == 0


def write_log(config: LogConfig, records: list[dict[str, Any]], writer: str) -> PredictionLog:
    async def main() -> PredictionLog:
        log = PredictionLog(config, writer)
        await log.start()
        for record in records:
            assert log.submit(record)
        await log.close()
        return log

    return asyncio.run(main())


# --- format and config ---------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    record = prediction(7)
    record["inputs"] = np.arange(6, dtype=np.float64).reshape(2, 3)
    record["outputs"] = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)[:, ::-1]
    record["prediction"] = np.array([1, 0])
    record["latency_ms"] = np.float32(2.5)
    line = encode(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = decode(line)
    assert back["inputs"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert np.allclose(back["outputs"], [[0.9, 0.1], [0.2, 0.8]])
    assert back["prediction"] == [1, 0] and back["latency_ms"] == 2.5
    assert back["id"] == "w-7" and "kind" not in back

    feedback = {"kind": "feedback", "id": "w-7", "ts": 1.5, "label": ["yes", "no"]}
    assert decode(encode(feedback)) == feedback


@pytest.mark.parametrize("line", [b"[1, 2]\n", b"{not json\n", b'"text"'])
def test_decode_rejects_what_is_not_a_record(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode(line)


def test_from_table_builds_the_config() -> None:
    assert LogConfig.from_table({}) == LogConfig()
    config = LogConfig.from_table(
        {"transport": "redis", "fsync_interval": 2, "sample": 1, "retention_seconds": 60}
    )
    assert config.transport == "redis" and config.fsync_interval == 2.0
    assert isinstance(config.sample, float) and config.retention_seconds == 60.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param({"sample": 2}, "log.sample: must be between 0 and 1, got 2", id="sample"),
        pytest.param({"smaple": 0.5}, "log.smaple: unknown key", id="unknown"),
        pytest.param({"transport": "kafka"}, "log.transport: must be one of", id="transport"),
        pytest.param({"queue_size": 0}, "log.queue_size: must be a positive", id="queue-zero"),
        pytest.param({"batch_size": True}, "log.batch_size: must be a positive", id="bool"),
        pytest.param({"maxlen": "1000"}, "log.maxlen: must be a positive", id="str-int"),
        pytest.param({"fsync": "sometimes"}, "log.fsync: must be one of", id="fsync"),
        pytest.param({"fsync_interval": -1}, "log.fsync_interval: must be a positive", id="neg"),
        pytest.param({"retention_bytes": 1.5}, "log.retention_bytes: must be a positive", id="rb"),
        pytest.param({"retention_seconds": 0}, "log.retention_seconds: must be a pos", id="rs"),
        pytest.param({"url": "http://x"}, "log.url: must start with redis://", id="url"),
        pytest.param({"dir": ""}, "log.dir: must be a non-empty string", id="dir"),
        pytest.param({"inputs": "some"}, "log.inputs: must be one of", id="inputs"),
    ],
)
def test_from_table_names_the_bad_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(LogConfigError) as info:
        LogConfig.from_table(table)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)
    assert info.value.key == message.split(":")[0]


# --- writer --------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["interval", "always", "never"])
def test_written_records_read_back_in_order(tmp_path: Path, fsync: str) -> None:
    config = LogConfig(dir=str(tmp_path), fsync=fsync, batch_size=64)  # type: ignore[arg-type]
    records = [prediction(i) for i in range(1_000)]
    records.append({"kind": "feedback", "id": "w-3", "ts": 2.0, "label": 1})
    log = write_log(config, records, "solo")
    assert (log.written, log.dropped, log.write_errors, log.queued) == (1_001, 0, 0, 0)
    reader = open_reader(config)
    assert read_all(reader, 300) == [decode(encode(r)) for r in records]
    assert reader.corrupt == 0


def test_sampling_and_inputs_policy(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), sample=0.25, inputs="none")
    records = [prediction(i, role=role) for i in range(1_000) for role in ("primary", "shadow")]
    feedback = [{"kind": "feedback", "id": f"w-{i}", "ts": 1.0, "label": 0} for i in range(50)]
    log = write_log(config, records + feedback, "sampler")
    got = read_all(open_reader(config))
    kept = [r for r in got if "kind" not in r]
    assert log.written == len(got) and log.dropped == 0
    assert log.sampled_out + len(kept) == 2_000
    assert 0 < len(kept) < 2_000
    assert [r for r in got if r.get("kind") == "feedback"] == feedback
    assert all("inputs" not in r for r in kept)
    # A request's primary and shadow records are kept or skipped together.
    assert [r["role"] for r in kept] == ["primary", "shadow"] * (len(kept) // 2)
    assert [r["id"] for r in kept[::2]] == [r["id"] for r in kept[1::2]]
    assert "inputs" in records[0], "the caller's record is not modified"


class GatedSink(FileSink):
    """A real file sink whose writes wait until the test opens the gate: a stalled disk."""

    def __init__(self, config: LogConfig, name: str) -> None:
        super().__init__(config, name)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.closed = threading.Event()

    def write(self, lines: list[bytes]) -> None:
        self.entered.set()
        if not self.gate.wait(WAIT_LIMIT):
            raise AssertionError("gate never opened")
        super().write(lines)

    def close(self) -> None:
        super().close()
        self.closed.set()


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), queue_size=10, batch_size=4)
    sink = GatedSink(config, "slow")

    async def main() -> tuple[PredictionLog, list[bool]]:
        log = PredictionLog(config, "slow", sink=sink)
        await log.start()
        results = [log.submit(prediction(i)) for i in range(4)]
        # Let the drain take the first batch into the stalled sink.
        for _ in range(1_000):
            if sink.entered.is_set():
                break
            await asyncio.sleep(0.005)
        assert sink.entered.is_set()
        # The disk is stuck: every submit must still return at once, without awaiting.
        results += [log.submit(prediction(i)) for i in range(4, 5_000)]
        assert log.queued == 14
        sink.gate.set()
        await log.close()
        return log, results

    log, results = asyncio.run(main())
    on_disk = disk_lines(tmp_path)
    assert results.count(True) == 14 and log.dropped == 5_000 - 14
    assert log.written == len(on_disk) == 14
    assert log.dropped == 5_000 - len(on_disk)
    assert [decode(line)["id"] for line in on_disk] == [f"w-{i}" for i in range(14)]


def test_close_timeout_counts_what_was_not_written(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), batch_size=10)
    sink = GatedSink(config, "stuck")

    async def main() -> PredictionLog:
        log = PredictionLog(config, "stuck", sink=sink)
        await log.start()
        for i in range(25):
            log.submit(prediction(i))
        await log.close(timeout=0.05)
        return log

    log = asyncio.run(main())
    assert (log.written, log.dropped, log.queued) == (0, 25, 0)
    assert not log.submit(prediction(99)) and log.dropped == 26
    asyncio.run(log.close())  # closing again is harmless
    sink.gate.set()
    assert sink.closed.wait(WAIT_LIMIT)


def test_submit_from_a_worker_thread_wakes_the_writer(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), fsync="never")

    async def main() -> PredictionLog:
        log = PredictionLog(config, "threads")
        await log.start()
        for i in range(3):
            assert await asyncio.to_thread(log.submit, prediction(i))
            await wait_idle(log)
        await log.close()
        return log

    assert asyncio.run(main()).written == 3
    assert len(disk_lines(tmp_path)) == 3


class FlakyDiskSink(FileSink):
    """Fails every third batch with ENOSPC, as a full disk would."""

    def __init__(self, config: LogConfig, name: str) -> None:
        super().__init__(config, name)
        self.calls = 0

    def write(self, lines: list[bytes]) -> None:
        self.calls += 1
        if self.calls % 3 == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(lines)


def test_disk_errors_drop_the_batch_and_keep_going(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), batch_size=8)

    async def main() -> PredictionLog:
        log = PredictionLog(config, "flaky", sink=FlakyDiskSink(config, "flaky"))
        await log.start()
        for i in range(200):
            log.submit(prediction(i))
            if i % 8 == 7:
                await wait_idle(log)
        log.submit({"id": "bad", "payload": object()})
        await log.close()
        return log

    log = asyncio.run(main())
    on_disk = disk_lines(tmp_path)
    # Batches 3, 6, ... 24 of 25 failed (8 x 8 records), plus the unencodable record.
    assert (log.write_errors, log.dropped) == (9, 65)
    assert log.written == len(on_disk) and log.written + log.dropped == 201
    assert all(decode(line)["id"] != "bad" for line in on_disk)


def test_submit_never_raises(tmp_path: Path) -> None:
    log = PredictionLog(LogConfig(dir=str(tmp_path)), "x")
    assert log.submit(None) is False  # type: ignore[arg-type]
    assert log.dropped == 1
    asyncio.run(log.close())


def test_an_unusable_folder_fails_at_start_not_on_the_request_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    async def main() -> PredictionLog:
        log = PredictionLog(LogConfig(dir=str(blocker / "predlog")), "x")
        with pytest.raises(OSError):
            await log.start()
        assert log.submit(prediction(0))
        await log.close()
        return log

    log = asyncio.run(main())
    assert (log.written, log.dropped) == (0, 1)


def test_writer_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writer_name"):
        PredictionLog(LogConfig(dir=str(tmp_path)), "../escape")


# --- segments, rotation, retention -----------------------------------------------------------


def test_reader_follows_rotation_and_the_segment_being_written(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), segment_bytes=4_096, batch_size=16)
    reader = open_reader(config)
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        log = PredictionLog(config, "rot")
        await log.start()
        for step in range(20):
            for i in range(step * 50, step * 50 + 50):
                log.submit(prediction(i))
            await wait_idle(log)
            seen.extend(read_all(reader, 37))
            assert len(seen) == (step + 1) * 50
        await log.close()

    asyncio.run(main())
    assert [r["id"] for r in seen] == [f"w-{i}" for i in range(1_000)]
    segments = sorted(tmp_path.glob("predlog-rot-*.jsonl"))
    assert len(segments) > 10
    assert all(path.stat().st_size <= 4_096 for path in segments)
    assert reader.corrupt == 0


def test_partial_lines_wait_and_torn_tails_are_skipped(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path))
    first = tmp_path / "predlog-host-1-000001.jsonl"
    line = encode(prediction(1))
    first.write_bytes(encode(prediction(0)) + line[:20])
    reader = open_reader(config)
    assert [r["id"] for r in reader.read()] == ["w-0"]
    assert reader.read() == [] and reader.corrupt == 0
    with first.open("ab") as handle:
        handle.write(line[20:] + b"not json\n" + b"[1]\n" + line[:10])
    assert [r["id"] for r in reader.read()] == ["w-1"]
    assert reader.corrupt == 2
    # A later segment proves the writer will never finish that line: skip it, move on.
    (tmp_path / "predlog-host-1-000002.jsonl").write_bytes(encode(prediction(2)))
    assert [r["id"] for r in reader.read()] == ["w-2"]
    assert reader.corrupt == 3
    assert reader.position() == {"files": {"predlog-host-1-000002.jsonl": len(line)}}


def test_restarted_writer_starts_a_new_segment(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path))
    write_log(config, [prediction(i) for i in range(3)], "same")
    write_log(config, [prediction(i) for i in range(3, 6)], "same")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["predlog-same-000001.jsonl", "predlog-same-000002.jsonl"]
    assert [r["id"] for r in read_all(open_reader(config))] == [f"w-{i}" for i in range(6)]


def test_retention_by_size_keeps_the_newest_closed_segments(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), segment_bytes=2_048, retention_bytes=6_000, batch_size=8)
    reader = open_reader(config)
    early: list[dict[str, Any]] = []

    async def main() -> None:
        log = PredictionLog(config, "keep")
        await log.start()
        for i in range(20):
            log.submit(prediction(i))
        await wait_idle(log)
        early.extend(reader.read(5))
        for i in range(20, 600):
            log.submit(prediction(i))
        await log.close()

    asyncio.run(main())
    segments = sorted(tmp_path.glob("predlog-keep-*.jsonl"))
    assert sum(p.stat().st_size for p in segments) <= 6_000
    assert segments[0].name != "predlog-keep-000001.jsonl"
    # The reader was inside a deleted segment: it goes on with the oldest one still there.
    rest = read_all(reader)
    first_kept = decode(segments[0].read_bytes().splitlines()[0])
    assert [r["id"] for r in early] == [f"w-{i}" for i in range(5)]
    assert rest[0] == first_kept and rest[-1]["id"] == "w-599"
    ids = [int(r["id"][2:]) for r in rest]
    assert ids == sorted(ids) and reader.corrupt == 0


def test_retention_by_age_deletes_old_closed_segments(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), segment_bytes=1_024, retention_seconds=3_600)
    sink = FileSink(config, "aged")
    sink.open()
    for i in range(30):
        sink.write([encode(prediction(i))])
    sink.roll()
    closed = sorted(tmp_path.glob("predlog-aged-*.jsonl"))
    assert len(closed) > 4
    old = time.time() - 7_200
    for path in closed[:3]:
        os.utime(path, (old, old))
    sink.write([encode(prediction(30))])
    sink.roll()
    sink.close()
    left = sorted(tmp_path.glob("predlog-aged-*.jsonl"))
    assert left == closed[3:] + [left[-1]] and len(left) == len(closed) - 2


# --- concurrency and checkpoints ---------------------------------------------------------------


def _child_writer(directory: str, writer: str, count: int) -> None:
    config = LogConfig(dir=directory, segment_bytes=64 * 1024, batch_size=50)
    records = [prediction(i, writer) for i in range(count)]
    log = write_log(config, records, writer)
    if log.written != count:
        raise SystemExit(f"{writer} wrote {log.written} of {count}")


def test_two_processes_write_the_same_folder(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path))
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_child_writer, args=(str(tmp_path), name, 5_000))
        for name in ("proc-a", "proc-b")
    ]
    for child in children:
        child.start()
    reader = open_reader(config)
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(got) < 10_000 and time.monotonic() < deadline:
        got.extend(reader.read(1_000, timeout=0.2))
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
        child.close()
    got.extend(read_all(reader))
    assert len(got) == 10_000 and reader.corrupt == 0
    for writer in ("proc-a", "proc-b"):
        ids = [r["id"] for r in got if r["id"].startswith(writer)]
        assert ids == [f"{writer}-{i}" for i in range(5_000)]
    assert len(list(tmp_path.glob("predlog-proc-a-*.jsonl"))) > 1


def test_restarts_from_checkpoints_yield_every_record_exactly_once(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path), segment_bytes=256 * 1024, batch_size=1_000)
    writers = {"alpha": 50_000, "beta": 30_000, "gamma": 20_000}

    async def main() -> None:
        logs = [PredictionLog(config, name) for name in writers]
        for log in logs:
            await log.start()
        for i in range(max(writers.values())):
            for log, (name, count) in zip(logs, writers.items(), strict=True):
                if i < count:
                    log.submit(prediction(i, name, role="shadow" if i % 7 == 0 else "primary"))
            if i % 500 == 0:
                await asyncio.sleep(0)
        for log in logs:
            await log.close()
            assert log.written == writers[log.writer_name]

    asyncio.run(main())
    everything = {
        (f"{name}-{i}", "shadow" if i % 7 == 0 else "primary", 3)
        for name, count in writers.items()
        for i in range(count)
    }
    rng = random.Random(20261128)
    crash_points = sorted(rng.sample(range(1_000, 99_000), 5))
    yielded: list[tuple[str, str, int]] = []
    saved: dict[str, Any] | None = None
    saved_keys: frozenset[tuple[str, str, int]] = frozenset()
    start_keys = saved_keys  # what the current reader's starting checkpoint covers
    mark = 0  # where the current reader's replay would start after a crash
    replayed = 0
    started = 0
    reader = open_reader(config)
    for _ in range(10_000):
        batch = reader.read(rng.randint(1, 3_000))
        if not batch:
            break
        yielded.extend(key(r) for r in batch)
        if rng.random() < 0.3:
            saved, mark = reader.position(), len(yielded)
            saved_keys = start_keys | set(yielded[started:])
        if crash_points and len(yielded) >= crash_points[0]:
            crash_points.pop(0)
            replayed += len(yielded) - mark
            # Two readers resumed at the same checkpoint see the same records in the same order,
            # none of them covered by the checkpoint.
            first, second = open_reader(config, saved), open_reader(config, saved)
            head = [key(r) for _ in range(3) for r in first.read(1_000)]
            assert head == [key(r) for _ in range(3) for r in second.read(1_000)]
            assert head and not saved_keys.intersection(head)
            reader.close()
            reader = open_reader(config, saved)
            start_keys, mark, started = saved_keys, len(yielded), len(yielded)
    assert not crash_points
    assert set(yielded) == everything
    assert len(yielded) == 100_000 + replayed
    assert reader.corrupt == 0 and reader.read() == []


def key(record: dict[str, Any]) -> tuple[str, str, int]:
    return record["id"], record["role"], record["version"]


# --- CLI helpers -----------------------------------------------------------------------------


def test_stats_and_tail(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path))
    records = [prediction(i) for i in range(6)]
    records += [prediction(i, model="fraud", version=1, role="canary") for i in range(6, 9)]
    records.append(prediction(9, status=422, error="bad input"))
    records.append({"kind": "feedback", "id": "w-1", "ts": 1.0, "label": 1})
    write_log(config, records, "cli")
    summary = stats(config)
    assert summary == {
        "records": 11,
        "feedback": 1,
        "first_ts": 1.0,
        "last_ts": 1_764_300_009.0,
        "predictions": [
            {"model": "churn", "version": 3, "role": "primary", "count": 7, "errors": 1},
            {"model": "fraud", "version": 1, "role": "canary", "count": 3, "errors": 0},
        ],
    }
    out = io.StringIO()
    tail(config, follow=False, model="fraud", out=out)
    assert [decode(line.encode())["id"] for line in out.getvalue().splitlines()] == [
        "w-6",
        "w-7",
        "w-8",
    ]


class _Enough(Exception):
    pass


class StopAfter(io.StringIO):
    """An output that ends a following tail after a number of lines."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.lines = lines

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().count("\n") >= self.lines:
            raise _Enough
        return written


def test_tail_follow_prints_new_records(tmp_path: Path) -> None:
    config = LogConfig(dir=str(tmp_path))
    write_log(config, [prediction(0), prediction(1)], "old")
    sink = FileSink(config, "late")
    sink.open()

    def later() -> None:
        time.sleep(0.3)
        sink.write([encode(prediction(2))])
        sink.close()

    thread = threading.Thread(target=later)
    thread.start()
    out = StopAfter(3)
    with pytest.raises(_Enough):
        tail(config, follow=True, model=None, out=out)
    thread.join()
    assert [decode(x.encode())["id"] for x in out.getvalue().splitlines()] == ["w-0", "w-1", "w-2"]
