"""The request log's single writer: one thread that group-commits rows arriving concurrently.

Request handlers call `await writer.write(row)`; the row is queued, the thread takes everything waiting (up to
`batch_max` rows) and inserts it in ONE transaction, then resolves each caller's future. So a response is
sent only after its row is durable, and N concurrent requests cost one commit, not N. A row is inserted whole
inside a transaction or not at all: never half-written.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from gateway.log.store import open_db

log = logging.getLogger("promptintern.gateway")

# The `requests` columns the gateway fills (see gateway/log/store.py); other keys in a row dict are ignored.
GATEWAY_COLUMNS = (
    "request_id",
    "startTime",
    "endTime",
    "api_key_id",
    "model",
    "model_served",
    "api_base",
    "route",
    "messages",
    "params",
    "stream",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_prompt_tokens",
    "ttft_ms",
    "latency_ms",
    "overhead_ms",
    "spend",
    "status",
    "error",
    "source",
    "content_hash",
    "template_id",
    "local_compute_s",
    # The counterfactual accounting of a templated request (gateway/accounting/ledger.py).
    "counterfactual_prompt_tokens",
    "counterfactual_completion_tokens",
    "counterfactual_spend",
    "counterfactual_cached_spend",
    "completion_id",
)
# Columns a later update may set (a shadow run's answer) or add to (its compute and cost).
UPDATABLE_COLUMNS = frozenset({"shadow_response", "shadow_agreement", "local_compute_s", "spend"})
_INSERT = (
    f"INSERT INTO requests ({', '.join(f'[{c}]' for c in GATEWAY_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in GATEWAY_COLUMNS)})"
)
_STOP = object()


class _Update:
    """An UPDATE of one logged row, queued behind the row's own INSERT (the queue keeps order)."""

    def __init__(self, request_id: str, set_columns: dict[str, Any], add_columns: dict[str, float]) -> None:
        names = set(set_columns) | set(add_columns)
        if not names or not names <= UPDATABLE_COLUMNS:
            raise ValueError(f"cannot update columns {sorted(names - UPDATABLE_COLUMNS) or 'none'}")
        assignments = [f"[{name}] = ?" for name in set_columns]
        assignments += [f"[{name}] = coalesce([{name}], 0) + ?" for name in add_columns]
        self.sql = f"UPDATE requests SET {', '.join(assignments)} WHERE request_id = ?"
        self.params = [*set_columns.values(), *add_columns.values(), request_id]


def content_hash(messages: Any, params: dict[str, Any], response_text: str | None) -> str:
    """sha256 of the request (messages + params) and the response text, in a canonical JSON form."""
    canonical = json.dumps(
        {"messages": messages, "params": params, "response": response_text or ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class LogWriter:
    def __init__(self, db_path: Path, batch_max: int = 256) -> None:
        self.db_path = db_path
        self.batch_max = max(1, batch_max)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="promptintern-log-writer", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.batches = 0  # commits so far (a test and the benchmark read it to see grouping)
        self.rows = 0

    def start(self) -> None:
        """Open the database (migrating it) in the writer thread; raise here if that fails."""
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self) -> None:
        """Commit whatever is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    def submit(self, row: dict[str, Any]) -> Future[None]:
        """Queue a row; the returned future resolves once it is committed (or fails with the DB error)."""
        future: Future[None] = Future()
        self._queue.put((tuple(row.get(column) for column in GATEWAY_COLUMNS), future))
        return future

    def submit_update(
        self, request_id: str, set_columns: dict[str, Any], add_columns: dict[str, float] | None = None
    ) -> Future[None]:
        """Queue an update of an already submitted row (set some columns, add to others)."""
        future: Future[None] = Future()
        self._queue.put((_Update(request_id, set_columns, add_columns or {}), future))
        return future

    async def write(self, row: dict[str, Any]) -> None:
        """Queue a row and wait until it is committed."""
        await asyncio.wrap_future(self.submit(row))

    # ---- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            db = open_db(self.db_path)
            conn = db.conn
        except BaseException as exc:  # reported to start()'s caller
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self.batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in batch):
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._commit(conn, batch)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[tuple | _Update, Future[None]]]) -> None:
        inserts = [values for values, _ in batch if not isinstance(values, _Update)]
        updates = [values for values, _ in batch if isinstance(values, _Update)]
        try:
            with conn:  # one transaction for the whole batch; an update always follows its row's insert
                conn.executemany(_INSERT, inserts)
                for update in updates:
                    conn.execute(update.sql, update.params)
        except sqlite3.Error:
            # One bad row must not sink its neighbours: retry row by row, failing only the bad ones.
            for values, future in sorted(batch, key=lambda item: isinstance(item[0], _Update)):
                try:
                    with conn:
                        if isinstance(values, _Update):
                            conn.execute(values.sql, values.params)
                        else:
                            conn.execute(_INSERT, values)
                            self.rows += 1
                    _resolve(future, None)
                except sqlite3.Error as exc:
                    log.error("request log insert failed: %s", exc)
                    _resolve(future, exc)
            self.batches += 1
            return
        self.batches += 1
        self.rows += len(inserts)
        for _, future in batch:
            _resolve(future, None)


def _resolve(future: Future[None], error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
