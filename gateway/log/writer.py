"""The request log's single writer: rows arriving concurrently are group-committed.

Request handlers call `await writer.write(row)`; the call returns once the row is durable, so a response is
sent only after its row is in the log, and N concurrent requests cost one commit, not N. A row is inserted
whole inside a transaction or not at all: never half-written.

Two ways to the database, one order:
- on the event loop (the usual case): the rows written during one loop iteration are committed together in
  a callback at its end, on a connection that never waits for a lock and never checkpoints (a small WAL
  commit takes ~0.2 ms). A writer thread instead costs every row a GIL hand-over per SQLite call, each up to
  a switch interval (5 ms) when the loop is busy: tens of ms at 32 concurrent streams;
- the writer thread, for everything else: rows written from other threads (`submit`), updates, large rows,
  rows the loop's commit could not land (locked database, disk full), and every row while the thread still
  holds older ones, so nothing overtakes. The thread also checkpoints the WAL the loop's commits grow.

The writer must outlive anything a request carries, because every later request waits on it:
- a row is made storable before it is queued (gateway/log/storable.py), so odd values cannot fail it;
- any exception fails the rows of that batch, never the thread; the thread is restarted if it ever ends;
- a locked database (another process writing) is retried with backoff: the rows stay queued, in order,
  while their callers stop waiting after `write`'s timeout (the client then gets a 503);
- `stop` gives up after its timeout, so shutting down never hangs on a locked database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from gateway.log.storable import storable_row, storable_value
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
    # Selective routing: the local answer's confidence.
    "local_confidence",
)
# Columns a later update may set (a shadow run's answer; the status a client got when the commit was late)
# or add to (a shadow run's compute and cost).
UPDATABLE_COLUMNS = frozenset(
    {"shadow_response", "shadow_agreement", "local_compute_s", "spend", "status", "error", "local_confidence"}
)
STORED_COLUMNS = (*GATEWAY_COLUMNS, "sanitized")
_INSERT = (
    f"INSERT INTO requests ({', '.join(f'[{c}]' for c in STORED_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in STORED_COLUMNS)})"
)
_STOP = object()
_CHECKPOINT = object()  # the loop's commits have grown the WAL: the thread checkpoints it
MAX_UPDATE_BYTES = 4 * 1024 * 1024
# Bigger rows go to the thread: copying them into the WAL would stall the loop.
LOOP_ROW_MAX_BYTES = 256 * 1024
CHECKPOINT_EVERY_ROWS = 500


class LogTimeout(TimeoutError):
    """The row was not committed in time; it stays queued and is written when the database allows."""


class _Update:
    """An UPDATE of one logged row, queued behind the row's own INSERT (the queue keeps order)."""

    def __init__(self, request_id: str, set_columns: dict[str, Any], add_columns: dict[str, float]) -> None:
        names = set(set_columns) | set(add_columns)
        if not names or not names <= UPDATABLE_COLUMNS:
            raise ValueError(f"cannot update columns {sorted(names - UPDATABLE_COLUMNS) or 'none'}")
        assignments = [f"[{name}] = ?" for name in set_columns]
        assignments += [f"[{name}] = coalesce([{name}], 0) + ?" for name in add_columns]
        self.sql = f"UPDATE requests SET {', '.join(assignments)} WHERE request_id = ?"
        self.params = [
            *(storable_value(name, value, MAX_UPDATE_BYTES)[0] for name, value in set_columns.items()),
            *(storable_value("spend", value, MAX_UPDATE_BYTES)[0] for value in add_columns.values()),
            request_id,
        ]


class LogWriter:
    def __init__(
        self,
        db_path: Path,
        batch_max: int = 256,
        *,
        busy_timeout_ms: int = 2000,
        max_field_bytes: int = 4 * 1024 * 1024,
        max_pending: int = 100_000,
        secrets: list[str] | None = None,
    ) -> None:
        self.db_path = db_path
        self.batch_max = max(1, batch_max)
        self.busy_timeout_ms = busy_timeout_ms
        self.max_field_bytes = max_field_bytes
        self.max_pending = max_pending  # rows held for a locked database before the oldest are given up
        self.secrets = [s for s in (secrets or []) if s and len(s) >= 4]
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop_deadline = float("inf")
        self.batches = 0  # commits so far (a test and the benchmark read it to see grouping)
        self.rows = 0
        self.restarts = 0
        self.pending = 0  # rows waiting for a database that refused them (locked), retried in order
        self.pending_since: float | None = None
        self.last_error: str | None = None
        self.last_commit_at: float | None = None
        self.loop_commits = 0  # batches committed on the event loop
        self.checkpoints = 0
        self._thread_busy = False  # the thread holds rows it has not settled yet
        self._loop_batch: list[tuple[tuple, _LoopFuture]] = []
        self._loop_conn: sqlite3.Connection | None = None
        self._rows_since_checkpoint = 0

    def start(self) -> None:
        """Open the database (migrating it) in this thread, raising if that fails; then start the writer."""
        open_db(self.db_path).conn.close()
        self._ensure_running()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Commit whatever is queued, then end the thread; give up after `timeout_s` (a locked database)."""
        self._stopping = True
        self._stop_deadline = time.monotonic() + timeout_s
        self._hand_to_thread(self._take_loop_batch())
        if self._loop_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._loop_conn.close()
            self._loop_conn = None
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout=timeout_s + 1)
            if thread.is_alive():
                log.error("request log writer did not finish in %.0f s; %d rows unwritten", timeout_s,
                          self.pending + self._queue.qsize())  # fmt: skip

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ensure_running(self) -> None:
        """The supervisor: (re)start the thread if it is not running (it never should end on its own)."""
        if self.alive or self._stopping:
            return
        with self._lock:
            if self.alive:
                return
            if self._thread is not None:
                self.restarts += 1
                log.error("request log writer thread had stopped (%s); restarting it", self.last_error)
            self._thread = threading.Thread(target=self._run, name="promptintern-log-writer", daemon=True)
            self._thread.start()

    def submit(self, row: dict[str, Any]) -> Future[None]:
        """Queue a row; the returned future resolves once it is committed (or fails with the DB error)."""
        future: Future[None] = Future()
        self._enqueue(row, future)
        return future

    def _enqueue(self, row: dict[str, Any], future: Future[None] | _LoopFuture) -> None:
        values = self._storable(row, future)
        if values is not None:
            self._hand_to_thread([(values, future)])

    def _storable(self, row: dict[str, Any], future: Future[None] | _LoopFuture) -> tuple | None:
        try:
            stored = storable_row(row, GATEWAY_COLUMNS, self.max_field_bytes, self.secrets)
        except Exception as exc:  # storable_row copes with any value; this is a last resort
            future.set_exception(exc)
            return None
        return tuple(stored[column] for column in STORED_COLUMNS)

    def submit_update(
        self, request_id: str, set_columns: dict[str, Any], add_columns: dict[str, float] | None = None
    ) -> Future[None]:
        """Queue an update of an already submitted row (set some columns, add to others)."""
        future: Future[None] = Future()
        self._queue.put((_Update(request_id, set_columns, add_columns or {}), future))
        self._ensure_running()
        return future

    async def write(self, row: dict[str, Any], timeout_s: float | None = None) -> None:
        """Queue a row and wait until it is committed; LogTimeout after `timeout_s` (the row stays queued).

        The writer thread settles an asyncio future directly: one event-loop hop from the commit to the
        waiting request, where wrap_future + shield + wait_for took four (about 20 ms under load).
        """
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        future = _LoopFuture(loop, committed)
        values = self._storable(row, future)
        if values is not None and self._loop_may_commit(values):
            if not self._loop_batch:
                loop.call_soon(self._commit_loop_batch)  # after everything else ready in this iteration
            self._loop_batch.append((values, future))
        elif values is not None:
            self._hand_to_thread([(values, future)])
        try:
            async with asyncio.timeout(timeout_s):
                await committed  # on timeout it is cancelled; the row stays queued and lands later
        except TimeoutError:
            raise LogTimeout(f"request log commit took over {timeout_s:g} s") from None

    # ---- commits on the event loop ----------------------------------------------------------------------
    def _loop_may_commit(self, values: tuple) -> bool:
        """Whether this row may be committed on the loop: nothing older is still with the thread, and it is
        small."""
        if self._stopping or self._thread_busy or self.pending or not self._queue.empty():
            return False
        size = sum(len(v) for v in values if isinstance(v, str | bytes))
        return size <= LOOP_ROW_MAX_BYTES

    def _commit_loop_batch(self) -> None:
        batch = self._take_loop_batch()
        if not batch:
            return
        if self._thread_busy or self.pending or not self._queue.empty():
            self._hand_to_thread(batch)  # the thread took rows meanwhile (an update, a locked database)
            return
        try:
            if self._loop_conn is None:
                self._loop_conn = self._open_loop_connection()
            self._commit(self._loop_conn, batch)
        except Exception as exc:  # locked, disk full, a bug: the thread retries them with its backoff
            log.warning("request log: %d rows handed to the writer thread (%s)", len(batch), exc)
            self._hand_to_thread(batch)
            return
        self.loop_commits += 1
        self._rows_since_checkpoint += len(batch)
        if self._rows_since_checkpoint >= CHECKPOINT_EVERY_ROWS:
            self._rows_since_checkpoint = 0
            self._queue.put(_CHECKPOINT)
            self._ensure_running()

    def _open_loop_connection(self) -> sqlite3.Connection:
        conn = open_db(self.db_path, busy_timeout_ms=0).conn  # never wait on the loop: hand over instead
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the thread checkpoints (a checkpoint takes ~10 ms)
        return conn

    def _take_loop_batch(self) -> list[tuple[tuple, _LoopFuture]]:
        batch, self._loop_batch = self._loop_batch, []
        return batch

    def _hand_to_thread(self, batch: list) -> None:
        for item in batch:
            self._queue.put(item)
        if batch:
            self._ensure_running()

    def health(self, probe_timeout_s: float = 0.25, commit_timeout_s: float = 10.0) -> dict[str, Any]:
        """The writer's and the database's state; `writable` False when rows cannot be committed now."""
        self._ensure_running()
        database = "ok"
        try:  # can the write lock be taken right now? (another process may hold it)
            conn = sqlite3.connect(self.db_path, timeout=probe_timeout_s, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            database = f"error: {exc}"
        stuck_s = time.monotonic() - self.pending_since if self.pending_since is not None else 0.0
        writable = self.alive and database == "ok" and stuck_s < commit_timeout_s
        return {
            "writable": writable,
            "writer_alive": self.alive,
            "writer_restarts": self.restarts,
            "database": database,
            "queued": self._queue.qsize(),
            "pending_retry": self.pending,
            "last_error": self.last_error,
            "rows": self.rows,
        }

    # ---- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[tuple[Any, Future[None]]] = []  # refused by a locked database: retried first
        conn: sqlite3.Connection | None = None
        backoff = 0.05
        batch: list[tuple[Any, Future[None]]] = []
        stopping = False  # the stop marker was read: everything queued before it is in hand
        try:
            while not (stopping and (not pending or time.monotonic() > self._stop_deadline)):
                batch = []
                try:
                    batch, stop_seen, checkpoint = self._next_batch(pending, backoff)
                    stopping |= stop_seen
                    if batch or checkpoint:
                        if conn is None:
                            conn = open_db(self.db_path, self.busy_timeout_ms).conn
                    if batch:
                        pending = self._commit_or_keep(conn, batch)
                        backoff = min(backoff * 2, 1.0) if pending else 0.05
                    if checkpoint and conn is not None:
                        self._checkpoint(conn)
                    self._note_pending(pending)
                    self._thread_busy = bool(pending)
                except Exception as exc:  # a bug or an odd failure: these rows learn it, the thread goes on
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("request log writer: %s", self.last_error)
                    for _, future in batch:
                        _resolve(future, exc)
                    pending = []
                    self._note_pending(pending)
                    self._thread_busy = False
                    if conn is not None:
                        conn.close()
                        conn = None
        except BaseException as exc:  # the thread itself is ending: the supervisor starts a new one
            self.last_error = f"{type(exc).__name__}: {exc}"
            for _, future in batch:
                _resolve(future, exc)
            raise
        finally:
            self._thread_busy = False
            for _, future in pending:  # given up at stop: their callers have long stopped waiting
                _resolve(future, RuntimeError("the request log writer stopped before this row was written"))
            if conn is not None:
                conn.close()

    def _next_batch(self, pending: list, backoff: float) -> tuple[list, bool, bool]:
        """Rows to commit now: the pending ones (after a backoff) plus whatever is queued; whether the stop
        marker was read; whether a checkpoint is due."""
        batch = list(pending)
        stop_seen = checkpoint = False
        try:
            item = self._queue.get(timeout=backoff) if pending else self._queue.get()
            while True:
                if item is _STOP:
                    stop_seen = True
                elif item is _CHECKPOINT:
                    checkpoint = True
                else:
                    self._thread_busy = True  # from here on the loop must not overtake what the thread holds
                    batch.append(item)
                if len(batch) >= self.batch_max + len(pending):
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return batch, stop_seen, checkpoint

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL back into the database without waiting for anyone (the loop keeps committing)."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.checkpoints += 1
        except sqlite3.Error as exc:
            log.warning("request log checkpoint failed: %s", exc)

    def _note_pending(self, pending: list) -> None:
        if pending and self.pending_since is None:
            self.pending_since = time.monotonic()
        elif not pending:
            self.pending_since = None
        if len(pending) > self.max_pending:  # a database locked for good: do not hold rows forever
            dropped, pending[:] = pending[: -self.max_pending], pending[-self.max_pending :]
            log.error("request log: %d rows given up (database refused them for too long)", len(dropped))
            for _, future in dropped:
                _resolve(future, sqlite3.OperationalError(self.last_error or "database locked"))
        self.pending = len(pending)

    def _commit_or_keep(self, conn: sqlite3.Connection, batch: list) -> list:
        """Commit the batch; return the items to retry (the database was locked), failing only bad rows."""
        try:
            self._commit(conn, batch)
            return []
        except sqlite3.OperationalError as exc:  # locked/busy, disk full, read-only...: keep them, in order
            self.last_error = f"OperationalError: {exc}"
            log.warning("request log commit failed (%s); %d rows kept for retry", exc, len(batch))
            return batch
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            for _, future in batch:
                _resolve(future, exc)
            return []

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[tuple | _Update, Future[None]]]) -> None:
        inserts = [values for values, _ in batch if not isinstance(values, _Update)]
        updates = [values for values, _ in batch if isinstance(values, _Update)]
        try:
            with conn:  # one transaction for the whole batch; an update always follows its row's insert
                conn.executemany(_INSERT, inserts)
                for update in updates:
                    conn.execute(update.sql, update.params)
        except sqlite3.OperationalError:
            raise  # the database, not a row: keep the batch
        except Exception:
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
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:
                    log.error("request log insert failed: %s", exc)
                    _resolve(future, exc)
            self._committed()
            return
        self.rows += len(inserts)
        self._committed()
        for _, future in batch:
            _resolve(future, None)

    def _committed(self) -> None:
        self.batches += 1
        self.last_commit_at = time.monotonic()
        self.last_error = None


class _LoopFuture:
    """An asyncio future as the writer thread sees it: settled through the loop's thread-safe queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        self.loop = loop
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, result: None) -> None:
        self._settle(None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(error)

    def _settle(self, error: BaseException | None) -> None:
        def settle() -> None:
            if self.future.done():  # the request stopped waiting (timeout, cancelled)
                return
            if error is None:
                self.future.set_result(None)
            else:
                self.future.set_exception(error)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting
            pass


def _resolve(future: Future[None] | _LoopFuture, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
