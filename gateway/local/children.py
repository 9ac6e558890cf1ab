"""Serving internalized models out of process (the default): one supervised llama.cpp server per model.

A GGUF that crashes llama.cpp (a bad file, an unsupported tensor type, a bug) kills the process that
loaded it. In-process (`local_backend: llama_cpp`, gateway/local/pool.py) that process is the gateway; here
it is a child, llama-cpp-python's server (through gateway/upstream/llama_server.py) serving one model under
its model id on a loopback port, and the gateway talks to it with `RemoteLocalBackend`
(gateway/local/remote.py) like to any OpenAI-compatible server. One child per model rather than one
multi-model server: llama-cpp-python's `--config_file` server keeps one model loaded at a time and reloads
on every switch.

- `prepare` starts the model's child and returns once it answers (LocalError if it cannot start: the
  router keeps the template upstream); a file that failed fails fast until it changes.
- At most `local_max_loaded` children run; the least recently used idle one is stopped for a new one.
- A supervisor restarts a child that dies, with backoff (1 s, 2 s, 4 s... up to a minute); until it answers
  again its requests raise LocalError, so the router sends them upstream (a fallback).
- Children die with the gateway (PR_SET_PDEATHSIG) and are stopped by `close`.

Stream usage: llama.cpp's server sends none in streams, so the counts come from the GGUF's own tokenizer
(gateway/local/tokens.py, vocab only), which is loaded only for a model whose child started: a file that
crashes llama.cpp never gets that far.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from gateway.local.backend import LocalDelta, LocalError, LocalResult, Message
from gateway.local.remote import RemoteLocalBackend
from gateway.local.tokens import TokenCounters
from gateway.settings import Settings
from gateway.upstream.embedded import _die_with_parent, free_port

log = logging.getLogger("promptintern.local")

PREPARE_GRACE_S = 30.0  # a prepared model is not stopped for another before it had this long to serve
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0  # a child up this long has its crash count forgotten


@dataclasses.dataclass(eq=False)
class _Child:
    model_id: str
    gguf_path: str
    process: subprocess.Popen | None = None
    client: RemoteLocalBackend | None = None
    ready: bool = False
    failures: int = 0  # crashes in a row
    restart_at: float = 0.0
    started_at: float = 0.0
    last_used: float = 0.0
    protected_until: float = 0.0
    retiring: bool = False
    starting: asyncio.Task | None = None

    def in_flight(self) -> int:
        return self.client._in_flight[self.model_id] if self.client is not None else 0

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None


class LlamaServerPool:
    def __init__(
        self,
        *,
        max_loaded: int = 2,
        queue_size: int = 8,
        timeout_s: float = 30.0,
        n_ctx: int = 2048,
        n_threads: int = 2,
        start_timeout_s: float = 60.0,
        log_path: Path | None = None,
    ) -> None:
        self.max_loaded, self.queue_size, self.timeout_s = max(1, max_loaded), queue_size, timeout_s
        self.n_ctx, self.n_threads, self.start_timeout_s = n_ctx, n_threads, start_timeout_s
        self.log_path = log_path
        self._children: dict[str, _Child] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # (id, path) -> (file mtime, error)
        self._supervisor: asyncio.Task | None = None
        self._log_file: IO[bytes] | None = None
        self._tokens = TokenCounters()
        self.counters: dict[str, int] = {"starts": 0, "crashes": 0, "stops": 0, "not_ready": 0}

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaServerPool:
        return cls(
            max_loaded=settings.local_max_loaded,
            queue_size=settings.local_queue_size,
            timeout_s=settings.local_timeout_s,
            n_ctx=settings.local_n_ctx,
            n_threads=settings.local_threads,
            start_timeout_s=settings.local_start_timeout_s,
            log_path=settings.home / "local-llama.log",
        )

    # ---- the LocalBackend interface -------------------------------------------------------------------
    async def prepare(self, model_id: str, gguf_path: str) -> None:
        gguf_path = str(gguf_path)
        self._ensure_supervisor()
        child = self._children.get(model_id)
        if child is not None and child.gguf_path != gguf_path:
            await self._stop(self._children.pop(model_id))
            child = None
        if child is None:
            self._check_not_failed(model_id, gguf_path)
            child = self._children[model_id] = _Child(model_id, gguf_path)
        if not child.ready:
            try:
                await self._start(child)
            except LocalError as exc:
                self._children.pop(model_id, None)
                self._remember_failure(model_id, gguf_path, str(exc))
                raise
        child.protected_until = time.monotonic() + PREPARE_GRACE_S
        child.retiring = False
        await self._trim(keep=model_id)

    async def chat(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> LocalResult:
        child = self._ready(model_id, str(gguf_path))
        assert child.client is not None
        return await child.client.chat(model_id, gguf_path, messages, params)

    async def chat_stream(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> AsyncIterator[LocalDelta]:
        child = self._ready(model_id, str(gguf_path))
        assert child.client is not None
        async for delta in child.client.chat_stream(model_id, gguf_path, messages, params):
            if delta.result is not None:  # exact counts: the server sends no usage in streams
                counter = self._tokens.for_model(Path(gguf_path))
                usage = await asyncio.to_thread(counter.count, list(messages), delta.result.text)
                delta = LocalDelta(
                    delta.text,
                    dataclasses.replace(
                        delta.result,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                    ),
                )
            yield delta

    async def release(self, model_id: str) -> None:
        """Stop the model's child once its in-flight requests are done (it is no longer routed to)."""
        child = self._children.get(model_id)
        if child is not None:
            child.retiring = True
            await self._trim()

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for child in list(self._children.values()):
            await self._stop(child)
        self._children.clear()
        if self._log_file is not None:
            self._log_file.close()

    def stats(self) -> dict[str, Any]:
        return {
            "children": {
                c.model_id: {
                    "pid": c.process.pid if c.process else None,
                    "ready": c.ready,
                    "crashes_in_a_row": c.failures,
                    "in_flight": c.in_flight(),
                }
                for c in self._children.values()
            },
            **self.counters,
        }

    def pid(self, model_id: str) -> int | None:
        child = self._children.get(model_id)
        return child.process.pid if child is not None and child.process is not None else None

    # ---- children -------------------------------------------------------------------------------------
    def _ready(self, model_id: str, gguf_path: str) -> _Child:
        """The model's running child, or LocalError now (the request goes upstream meanwhile)."""
        child = self._children.get(model_id)
        if child is None or child.gguf_path != gguf_path:
            self.counters["not_ready"] += 1
            raise LocalError(f"local model {model_id} has no server running")
        if not child.ready or child.exited():
            self.counters["not_ready"] += 1
            raise LocalError(f"local model {model_id}'s server is restarting")
        child.last_used = time.monotonic()
        return child

    def _command(self, child: _Child, port: int) -> list[str]:
        return [
            sys.executable, "-m", "gateway.upstream.llama_server",  # llama_cpp.server, invalid requests 400
            "--model", child.gguf_path,
            "--model_alias", child.model_id,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
        ]  # fmt: skip

    async def _start(self, child: _Child) -> None:
        """Start the child and wait until it answers; LocalError if it dies or stays silent."""
        if child.starting is not None and not child.starting.done():
            await asyncio.shield(child.starting)
            if not child.ready:
                raise LocalError(f"local model {child.model_id}: its server did not start")
            return
        child.starting = asyncio.ensure_future(self._launch(child))
        await asyncio.shield(child.starting)

    async def _launch(self, child: _Child) -> None:
        try:  # fail fast, without a process, on what is not a GGUF
            with open(child.gguf_path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            message = f"local model {child.model_id}: cannot read {child.gguf_path}: {exc.strerror}"
            raise LocalError(message) from None
        if magic != b"GGUF":
            raise LocalError(f"local model {child.model_id}: {child.gguf_path} is not a GGUF file")
        await self._kill(child)
        port = free_port()
        if self._log_file is None and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in close())
        child.process = subprocess.Popen(
            self._command(child, port),
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.counters["starts"] += 1
        api_base = f"http://127.0.0.1:{port}/v1"
        if not await self._wait_answering(child, api_base):
            code = child.process.poll()
            await self._kill(child)
            how = f"exited with code {code}" if code is not None else "did not answer"
            raise LocalError(
                f"local model {child.model_id}: its llama.cpp server {how} within "
                f"{self.start_timeout_s:g}s (see {self.log_path})"
            )
        old = child.client
        child.client = RemoteLocalBackend(api_base, queue_size=self.queue_size, timeout_s=self.timeout_s)
        if old is not None:
            await old.close()
        child.ready, child.started_at = True, time.monotonic()
        child.last_used = child.started_at
        log.info("local model %s served by pid %s at %s", child.model_id, child.process.pid, api_base)

    async def _wait_answering(self, child: _Child, api_base: str) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if child.exited():
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{api_base}/models")).status_code == 200:
                        return True
                await asyncio.sleep(0.1)
        return False

    async def _stop(self, child: _Child) -> None:
        child.ready = False
        if child.starting is not None and not child.starting.done():
            child.starting.cancel()
            with contextlib.suppress(BaseException):
                await child.starting
        await self._kill(child)
        if child.client is not None:
            await child.client.close()
            child.client = None
        self.counters["stops"] += 1

    async def _kill(self, child: _Child) -> None:
        process, child.process = child.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        for _ in range(30):  # 3 s, without blocking the event loop
            if process.poll() is not None:
                return
            await asyncio.sleep(0.1)
        process.kill()
        await asyncio.to_thread(process.wait)

    async def _trim(self, keep: str | None = None) -> None:
        """Stop retiring idle children, then least recently used idle ones past `max_loaded`."""
        now = time.monotonic()
        for child in [c for c in self._children.values() if c.retiring and c.in_flight() == 0]:
            self._children.pop(child.model_id)
            await self._stop(child)
        for child in sorted(self._children.values(), key=lambda c: c.last_used):
            if len(self._children) <= self.max_loaded:
                return
            starting = child.starting is not None and not child.starting.done()
            idle = child.in_flight() == 0 and not starting and child.protected_until <= now
            if child.model_id != keep and idle:
                self._children.pop(child.model_id)
                await self._stop(child)

    # ---- supervision ----------------------------------------------------------------------------------
    def _ensure_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Restart children that died, with backoff; forget old crashes; stop retired ones when idle."""
        while True:
            await asyncio.sleep(0.5)
            try:
                await self._check_children()
            except Exception as exc:  # supervision must go on
                log.error("local model supervisor: %s: %s", type(exc).__name__, exc)

    async def _check_children(self) -> None:
        now = time.monotonic()
        for child in list(self._children.values()):
            starting = child.starting is not None and not child.starting.done()
            if starting:
                continue
            if child.ready and child.exited():
                code = child.process.returncode if child.process else None
                child.ready = False
                child.failures += 1
                child.restart_at = now + min(MAX_BACKOFF_S, 2.0 ** (child.failures - 1))
                self.counters["crashes"] += 1
                log.error("local model %s: its server died (code %s); restarting in %.0f s; requests go "
                          "upstream meanwhile", child.model_id, code, child.restart_at - now)  # fmt: skip
            elif child.ready and child.failures and now - child.started_at > STABLE_AFTER_S:
                child.failures = 0
            if not child.ready and now >= child.restart_at:
                child.starting = asyncio.ensure_future(self._launch(child))
                child.starting.add_done_callback(lambda task, c=child: self._after_restart(task, c))
        await self._trim()

    def _after_restart(self, task: asyncio.Task, child: _Child) -> None:
        if task.cancelled() or task.exception() is None:
            return
        child.failures += 1
        child.restart_at = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** (child.failures - 1))
        log.error("local model %s: restart failed: %s", child.model_id, task.exception())

    def _check_not_failed(self, model_id: str, gguf_path: str) -> None:
        failed = self._failed.get((model_id, gguf_path))
        if failed is not None and failed[0] == _mtime(gguf_path):
            raise LocalError(failed[1])

    def _remember_failure(self, model_id: str, gguf_path: str, message: str) -> None:
        self._failed[(model_id, gguf_path)] = (_mtime(gguf_path), message)


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return -1.0
