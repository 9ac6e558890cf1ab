"""Serving internalized models with llama.cpp in this process: a pool of loaded GGUF models.

`LlamaPool` loads a model's GGUF on first use, keeps at most `local_max_loaded` models (and
`local_max_loaded_bytes` of GGUF files) and evicts the least recently used idle one. One worker thread per
model runs inference (a llama.cpp instance is not thread-safe), so the event loop never blocks. Each model
takes one request at a time plus `local_queue_size` waiting; one more is refused with `LocalOverloaded`.
A request not done `local_timeout_s` after it arrived raises `LocalTimeout`, and its generation stops at
the next token. The interface and its errors are in gateway/local/backend.py (re-exported here),
`make_local_backend` in gateway/local/factory.py; `RemoteLocalBackend` (gateway/local/remote.py) serves
the same over HTTP.

Atomic swap: `prepare(model_id, path)` returns once the model is fully loaded; concurrent requests for a
model being loaded wait for that one load, so none sees a half-loaded model. Route to the new model only
after `prepare` returned, then `release` the old one: it is unloaded once its in-flight requests finish.
Sampling params a local model cannot honour are listed by `unsupported_params`; the router sends such
requests upstream rather than calling here.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.local.backend import (
    LocalDelta,
    LocalError,
    LocalOverloaded,
    LocalResult,
    LocalTimeout,
    Message,
)
from gateway.local.confidence import LogprobRecorder
from gateway.settings import Settings

PREPARE_GRACE_S = 30.0  # a prepared model is not evicted before it had this long to take traffic


def sampling_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI sampling fields as llama.cpp arguments, with OpenAI's defaults (temperature 1, no top-k,
    no min-p, no repeat penalty): temperature 0 is greedy decoding."""
    kwargs: dict[str, Any] = {
        "temperature": float(params.get("temperature") if params.get("temperature") is not None else 1.0),
        "top_p": float(params.get("top_p") if params.get("top_p") is not None else 1.0),
        "top_k": 0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "presence_penalty": float(params.get("presence_penalty") or 0.0),
        "frequency_penalty": float(params.get("frequency_penalty") or 0.0),
        "max_tokens": params.get("max_completion_tokens") or params.get("max_tokens"),
    }
    if params.get("stop"):
        kwargs["stop"] = params["stop"]
    if params.get("seed") is not None:
        kwargs["seed"] = int(params["seed"])
    return kwargs


# ---- llama.cpp in this process -------------------------------------------------------------------------


@dataclass(eq=False)
class _Loaded:
    """One loaded model and the single thread allowed to touch it."""

    model_id: str
    gguf_path: str
    llama: Any
    size_bytes: int
    executor: ThreadPoolExecutor
    pending: int = 0  # running + waiting requests
    protected_until: float = 0.0
    retiring: bool = False
    closed: bool = field(default=False)


class LlamaPool:
    def __init__(
        self,
        *,
        max_loaded: int = 2,
        max_loaded_bytes: int | None = None,
        queue_size: int = 8,
        timeout_s: float = 30.0,
        n_ctx: int = 2048,
        n_threads: int = 2,
    ) -> None:
        self.max_loaded, self.max_loaded_bytes = max(1, max_loaded), max_loaded_bytes
        self.queue_size, self.timeout_s = queue_size, timeout_s
        self.n_ctx, self.n_threads = n_ctx, n_threads
        self._loaded: collections.OrderedDict[str, _Loaded] = collections.OrderedDict()  # LRU first
        self._loading: dict[str, asyncio.Future[_Loaded]] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # (id, path) -> (file mtime, error)
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="llama-load")
        self.counters = collections.Counter[str]()

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaPool:
        return cls(
            max_loaded=settings.local_max_loaded,
            max_loaded_bytes=settings.local_max_loaded_bytes,
            queue_size=settings.local_queue_size,
            timeout_s=settings.local_timeout_s,
            n_ctx=settings.local_n_ctx,
            n_threads=settings.local_threads,
        )

    # ---- public API -------------------------------------------------------------------------------------
    async def chat(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> LocalResult:
        result: LocalResult | None = None
        async for delta in self.chat_stream(model_id, gguf_path, messages, params):
            result = delta.result or result
        assert result is not None
        return result

    async def chat_stream(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> AsyncIterator[LocalDelta]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            model = await asyncio.wait_for(self._acquire(model_id, str(gguf_path)), self.timeout_s)
        except TimeoutError:
            self.counters["timeouts"] += 1
            raise LocalTimeout(f"local model {model_id} did not load within {self.timeout_s:g}s") from None
        items: asyncio.Queue[LocalDelta | BaseException] = asyncio.Queue()
        cancel = threading.Event()
        try:
            work = model.executor.submit(
                self._generate, model, list(messages), sampling_kwargs(params), cancel, loop, items
            )
        except RuntimeError:  # its file was replaced and it is shutting down between our turn and now
            model.pending -= 1
            raise LocalError(f"local model {model_id} was unloaded; try again") from None
        work.add_done_callback(lambda _: _call_soon(loop, self._finished, model))
        try:
            while True:
                remaining = deadline - loop.time()
                try:
                    item = await asyncio.wait_for(items.get(), max(remaining, 0.0))
                except TimeoutError:
                    self.counters["timeouts"] += 1
                    raise LocalTimeout(
                        f"local model {model_id} did not answer within {self.timeout_s:g}s"
                    ) from None
                if isinstance(item, BaseException):
                    self.counters["errors"] += 1
                    raise item
                yield item
                if item.result is not None:
                    self.counters["requests"] += 1
                    return
        finally:
            cancel.set()  # stops the generation at its next token if the caller left early
            work.cancel()  # and drops it if it never started

    async def prepare(self, model_id: str, gguf_path: str) -> None:
        """Load the model now (if needed) so the first request it takes finds it ready."""
        model = await self._acquire(model_id, str(gguf_path), reserve=False)
        model.protected_until = time.monotonic() + PREPARE_GRACE_S

    async def release(self, model_id: str) -> None:
        """Unload the model as soon as its in-flight requests are done (it is no longer routed to)."""
        model = self._loaded.get(model_id)
        if model is not None:
            model.retiring = True
            self._trim()

    async def close(self) -> None:
        for model in list(self._loaded.values()):
            self._unload(model)
        self._loader.shutdown(wait=False)

    def loaded(self) -> list[str]:
        """Loaded model ids, least recently used first."""
        return list(self._loaded)

    def stats(self) -> dict[str, Any]:
        return {
            "loaded": {
                m.model_id: {"pending": m.pending, "size_bytes": m.size_bytes} for m in self._loaded.values()
            },
            **self.counters,
        }

    # ---- loading and eviction (event-loop thread only) -----------------------------------------------
    async def _acquire(self, model_id: str, gguf_path: str, reserve: bool = True) -> _Loaded:
        for _ in range(3):  # a model evicted between its load and our turn is loaded again
            model = self._loaded.get(model_id)
            if model is not None and model.gguf_path == gguf_path and not model.retiring:
                if reserve:
                    if model.pending > self.queue_size:
                        self.counters["overloaded"] += 1
                        raise LocalOverloaded(f"local model {model_id} has {model.pending} requests queued")
                    model.pending += 1
                self._loaded.move_to_end(model_id)
                return model
            if model is not None:  # same id, another file or retiring: a fresh instance replaces it
                model.retiring = True
                self._loaded.pop(model_id)
                self._unload(model)  # closed on its thread after the requests already queued there
            loading = self._loading.get(model_id)
            if loading is None:
                loading = asyncio.ensure_future(self._load(model_id, gguf_path))
                self._loading[model_id] = loading
                loading.add_done_callback(lambda _: self._loading.pop(model_id, None))
            await asyncio.shield(loading)  # a caller giving up does not cancel the load others wait on
        raise LocalOverloaded(f"local model {model_id} keeps being evicted: too many models for the budget")

    async def _load(self, model_id: str, gguf_path: str) -> _Loaded:
        path = Path(gguf_path)
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            raise LocalError(f"local model {model_id}: cannot read {path}: {exc.strerror}") from None
        failed = self._failed.get((model_id, gguf_path))
        if failed and failed[0] == mtime:  # a broken file fails fast until it changes
            raise LocalError(failed[1])
        loop = asyncio.get_running_loop()
        try:
            llama = await loop.run_in_executor(self._loader, self._open, path)
        except Exception as exc:
            message = f"local model {model_id}: cannot load {path}: {exc}"
            self._failed[(model_id, gguf_path)] = (mtime, message)
            self.counters["load_errors"] += 1
            raise LocalError(message) from None
        model = _Loaded(
            model_id=model_id,
            gguf_path=gguf_path,
            llama=llama,
            size_bytes=path.stat().st_size,
            executor=ThreadPoolExecutor(1, thread_name_prefix=f"llama-{model_id}"),
        )
        self._loaded[model_id] = model
        self.counters["loads"] += 1
        self._trim(keep=model_id)
        return model

    def _open(self, path: Path) -> Any:
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError("not a GGUF file")
        from llama_cpp import Llama  # imported on first use: the gateway starts without it

        return Llama(model_path=str(path), n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False)

    def _finished(self, model: _Loaded) -> None:
        model.pending -= 1
        self._trim()

    def _trim(self, keep: str | None = None) -> None:
        """Unload idle models, least recently used first, until the pool is within its budget.

        Busy models are never unloaded: the pool may be over budget until they are idle.
        """
        now = time.monotonic()
        for model in [m for m in self._loaded.values() if m.retiring and m.pending == 0]:
            self._loaded.pop(model.model_id)
            self._unload(model)
        for model in list(self._loaded.values()):
            if not self._over_budget():
                return
            if model.model_id != keep and model.pending == 0 and model.protected_until <= now:
                self._loaded.pop(model.model_id)
                self._unload(model)

    def _over_budget(self) -> bool:
        total = sum(m.size_bytes for m in self._loaded.values())
        return len(self._loaded) > self.max_loaded or (
            self.max_loaded_bytes is not None and total > self.max_loaded_bytes and len(self._loaded) > 1
        )

    def _unload(self, model: _Loaded) -> None:
        self.counters["evictions"] += 1
        model.executor.submit(self._close_llama, model)  # on its own thread: never under a running request
        model.executor.shutdown(wait=False)

    @staticmethod
    def _close_llama(model: _Loaded) -> None:
        if not model.closed:
            model.closed = True
            model.llama.close()

    # ---- inference (the model's worker thread) -----------------------------------------------------------
    @staticmethod
    def _generate(
        model: _Loaded,
        messages: list[Message],
        kwargs: dict[str, Any],
        cancel: threading.Event,
        loop: asyncio.AbstractEventLoop,
        items: asyncio.Queue,
    ) -> None:
        def emit(item: LocalDelta | BaseException) -> None:
            _call_soon(loop, items.put_nowait, item)

        if cancel.is_set():
            return
        if model.closed:
            emit(LocalError(f"local model {model.model_id} was unloaded"))
            return
        # Prompt length, generated-token count and each token's log-probability, from llama.cpp's logits
        # hook; cheap enough to record on every request.
        recorder = LogprobRecorder()

        started = time.perf_counter()
        text, held, finish_reason, reported = [], "", "stop", 0
        try:
            from llama_cpp import LogitsProcessorList

            stream = model.llama.create_chat_completion(
                messages=messages, stream=True, logits_processor=LogitsProcessorList([recorder]), **kwargs
            )
            for chunk in stream:
                if cancel.is_set():
                    stream.close()
                    return
                choice = chunk["choices"][0]
                piece = choice["delta"].get("content") or ""
                finish_reason = choice.get("finish_reason") or finish_reason
                text.append(piece)
                held += piece  # leading whitespace is held back: an all-blank answer is an error, not output
                if held.strip():
                    emit(LocalDelta(held, logprobs=tuple(recorder.logprobs[reported:])))
                    held, reported = "", len(recorder.logprobs)
        except Exception as exc:
            emit(LocalError(f"local model {model.model_id} failed: {exc}"))
            return
        answer = "".join(text)
        if not answer.strip():
            emit(LocalError(f"local model {model.model_id} returned no text"))
            return
        if held:
            emit(LocalDelta(held))
        # One sampling step per generated token, plus the step that sampled end-of-text.
        completion_tokens = max(0, recorder.steps - (1 if finish_reason == "stop" else 0))
        emit(
            LocalDelta(
                "",
                LocalResult(
                    model_id=model.model_id,
                    text=answer,
                    finish_reason=finish_reason,
                    prompt_tokens=recorder.prompt_tokens,
                    completion_tokens=completion_tokens,
                    compute_s=time.perf_counter() - started,
                    token_logprobs=tuple(recorder.logprobs),
                ),
            )
        )


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    """Hand `callback` to the event loop from a worker thread; a loop already closed has no one to tell."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass
