"""The single log writer: group commit, durability on return, isolation of a bad row, flush on stop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time

import pytest

from gateway.log.row_text import content_hash
from gateway.log.store import open_db
from gateway.log.writer import GATEWAY_COLUMNS, LogTimeout, LogWriter


def make_row(i: int, **extra) -> dict:
    return {
        "request_id": f"req-{i}",
        "startTime": f"2026-01-01T00:00:{i % 60:02d}",
        "status": 200,
        "model": "m",
        "messages": '[{"role": "user", "content": "x"}]',
        "source": "gateway",
        **extra,
    }


@pytest.fixture
def writer(tmp_path):
    log_writer = LogWriter(tmp_path / "logs.db", batch_max=256)
    log_writer.start()
    yield log_writer
    log_writer.stop()


def count(db_path) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT count(*) FROM requests").fetchone()[0]


def test_a_written_row_is_committed_when_write_returns(writer):
    async def write_one() -> None:
        await writer.write(make_row(1, response="hi", prompt_tokens=3))

    asyncio.run(write_one())
    with sqlite3.connect(writer.db_path) as conn:  # another connection sees it: it is committed
        row = conn.execute("SELECT request_id, response, prompt_tokens FROM requests").fetchone()
    assert row == ("req-1", "hi", 3)


def test_concurrent_rows_are_grouped_into_few_transactions(writer):
    # Hold the database's write lock so rows pile up in the queue, as under concurrent traffic.
    blocker = sqlite3.connect(writer.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    futures = []

    def submit(start: int) -> None:
        futures.extend(writer.submit(make_row(i)) for i in range(start, start + 50))

    threads = [threading.Thread(target=submit, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    blocker.execute("COMMIT")
    blocker.close()
    for future in futures:
        future.result(timeout=30)
    assert count(writer.db_path) == 200
    assert writer.batches <= 3, f"200 queued rows took {writer.batches} commits"


def test_a_bad_row_fails_alone(writer):
    writer.submit(make_row(7)).result(timeout=30)
    blocker = sqlite3.connect(writer.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # make the next three land in one batch
    good_a, duplicate, good_b = (writer.submit(make_row(i)) for i in (8, 7, 9))
    blocker.execute("COMMIT")
    blocker.close()
    good_a.result(timeout=30)
    good_b.result(timeout=30)
    with pytest.raises(sqlite3.IntegrityError):
        duplicate.result(timeout=30)
    assert count(writer.db_path) == 3


def test_stop_flushes_queued_rows(tmp_path):
    log_writer = LogWriter(tmp_path / "logs.db")
    log_writer.start()
    futures = [log_writer.submit(make_row(i)) for i in range(100)]
    log_writer.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    assert count(tmp_path / "logs.db") == 100


def test_every_gateway_column_exists_in_the_schema(tmp_path):
    db = open_db(tmp_path / "logs.db")
    assert set(GATEWAY_COLUMNS) <= set(db["requests"].columns_dict)


def test_content_hash_is_canonical():
    a = content_hash([{"role": "user", "content": "x"}], {"temperature": 0, "max_tokens": 5}, "y")
    b = content_hash([{"content": "x", "role": "user"}], {"max_tokens": 5, "temperature": 0}, "y")
    assert a == b and len(a) == 64
    assert a != content_hash([{"role": "user", "content": "x"}], {"temperature": 0, "max_tokens": 5}, "z")


def test_content_hash_of_a_long_request_is_the_sha256_of_its_canonical_json():
    # Hashed in pieces (hashlib keeps the GIL under 2 KiB): the digest must be the whole text's.
    messages = [{"role": "system", "content": "é" * 5000}, {"role": "user", "content": "x" * 3001}]
    canonical = json.dumps(
        {"messages": messages, "params": {}, "response": "y"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert content_hash(messages, {}, "y") == hashlib.sha256(canonical.encode()).hexdigest()


def test_rows_no_database_would_take_are_stored_with_a_note(writer):
    row = make_row(
        20,
        model="\ud800",  # a lone surrogate: not UTF-8
        prompt_tokens=2**64,  # past SQLite's integers
        completion_tokens=-5,
        latency_ms=float("nan"),
        response="x" * 5000,
    )
    small = LogWriter(writer.db_path, max_field_bytes=1000)
    small.start()
    try:
        small.submit(row).result(timeout=30)
    finally:
        small.stop()
    with sqlite3.connect(writer.db_path) as conn:
        conn.row_factory = sqlite3.Row
        stored = dict(conn.execute("SELECT * FROM requests WHERE request_id = 'req-20'").fetchone())
    assert stored["model"] == "\ufffd" and stored["prompt_tokens"] is None
    assert stored["completion_tokens"] is None
    assert stored["latency_ms"] is None and len(stored["response"].encode()) <= 1000
    assert "truncated by the gateway" in stored["response"]
    notes = stored["sanitized"].split(",")
    assert {"model:invalid_unicode", "prompt_tokens:out_of_range", "response:truncated"} <= set(notes)


def test_known_secrets_never_reach_a_row(tmp_path):
    log_writer = LogWriter(tmp_path / "logs.db", secrets=["sk-live-secret-123456"])
    log_writer.start()
    log_writer.submit(make_row(1, response="the key is sk-live-secret-123456")).result(timeout=30)
    log_writer.stop()
    with sqlite3.connect(tmp_path / "logs.db") as conn:
        assert conn.execute("SELECT response FROM requests").fetchone()[0] == "the key is ***"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_thread_that_dies_is_restarted_and_only_its_batch_fails(writer, monkeypatch):
    original = writer._commit_or_keep
    calls = []

    def die_once(conn, batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise SystemExit("simulated death of the thread")
        return original(conn, batch)

    monkeypatch.setattr(writer, "_commit_or_keep", die_once)
    doomed = writer.submit(make_row(30))
    with pytest.raises(SystemExit):
        doomed.result(timeout=30)
    writer._thread.join(timeout=10)
    assert not writer.alive
    writer.submit(make_row(31)).result(timeout=30)  # the supervisor started a new thread
    assert writer.alive and writer.restarts == 1 and count(writer.db_path) == 1


def test_a_locked_database_times_out_the_wait_and_the_row_lands_later(tmp_path):
    log_writer = LogWriter(tmp_path / "logs.db", busy_timeout_ms=100)
    log_writer.start()
    blocker = sqlite3.connect(tmp_path / "logs.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    async def write_one() -> None:
        await log_writer.write(make_row(40), timeout_s=0.5)

    try:
        with pytest.raises(LogTimeout):
            asyncio.run(write_one())
        health = log_writer.health(probe_timeout_s=0.05, commit_timeout_s=0.2)
        assert health["writable"] is False and "locked" in health["database"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    for _ in range(100):
        if count(tmp_path / "logs.db") == 1:
            break
        threading.Event().wait(0.05)
    assert count(tmp_path / "logs.db") == 1
    assert log_writer.health()["writable"] is True
    log_writer.stop()


def test_stop_gives_up_on_a_database_locked_for_good(tmp_path):
    log_writer = LogWriter(tmp_path / "logs.db", busy_timeout_ms=100)
    log_writer.start()
    blocker = sqlite3.connect(tmp_path / "logs.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    future = log_writer.submit(make_row(50))
    started = time.monotonic()
    log_writer.stop(timeout_s=1.0)
    assert time.monotonic() - started < 5
    assert future.done() and future.exception() is not None
    blocker.execute("ROLLBACK")
    blocker.close()


def test_rows_written_in_one_loop_iteration_commit_together_on_the_loop(writer):
    async def write_many() -> None:
        await asyncio.gather(*(writer.write(make_row(i)) for i in range(20)))

    asyncio.run(write_many())
    assert count(writer.db_path) == 20
    assert writer.loop_commits == 1 and writer.batches == 1


def test_a_locked_database_never_blocks_the_loop_and_its_rows_land_after(writer):
    blocker = sqlite3.connect(writer.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process writing
    gaps: list[float] = []

    async def scenario() -> None:
        async def ticker() -> None:
            last = time.perf_counter()
            for _ in range(40):
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        async def release_later() -> None:
            await asyncio.sleep(0.3)
            blocker.execute("COMMIT")

        await asyncio.gather(
            ticker(), release_later(), *(writer.write(make_row(i), timeout_s=20) for i in range(5))
        )

    asyncio.run(scenario())
    blocker.close()
    assert count(writer.db_path) == 5
    # The loop's commit fails at once (no busy wait) and the thread retries: the loop keeps ticking.
    assert max(gaps) < 0.2, f"the event loop stalled {max(gaps):.3f} s"
    assert writer.loop_commits == 0


def test_an_update_queued_after_a_loop_commit_applies(writer):
    async def write_then_update() -> None:
        await writer.write(make_row(1, status=200))
        await asyncio.wrap_future(writer.submit_update("req-1", {"status": 503, "error": "late"}))

    asyncio.run(write_then_update())
    with sqlite3.connect(writer.db_path) as conn:
        assert conn.execute("SELECT status, error FROM requests").fetchone() == (503, "late")


def test_the_thread_checkpoints_the_wal_the_loop_commits_grow(writer, monkeypatch):
    monkeypatch.setattr("gateway.log.writer.CHECKPOINT_EVERY_ROWS", 10)

    async def write_batches() -> None:
        for start in range(0, 40, 5):
            await asyncio.gather(
                *(writer.write(make_row(i, response="r" * 4000)) for i in range(start, start + 5))
            )

    asyncio.run(write_batches())
    deadline = time.monotonic() + 10
    while writer.checkpoints < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # A batch written while a checkpoint request is still queued goes through the thread: most do not.
    assert writer.loop_commits >= 4 and writer.checkpoints >= 2
    assert count(writer.db_path) == 40
