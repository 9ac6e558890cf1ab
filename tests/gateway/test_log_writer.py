"""The single log writer: group commit, durability on return, isolation of a bad row, flush on stop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from gateway.log.store import open_db
from gateway.log.writer import GATEWAY_COLUMNS, LogWriter, content_hash


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
