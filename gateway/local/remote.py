"""The local-backend interface over HTTP: a llama.cpp server, vLLM or any OpenAI-compatible server.

Selected by settings (`local_backend: remote`, `local_api_base`, `local_api_key`): the same router code
then scales past one machine. The server must serve each internalized model under its model id
(llama.cpp server `--model_alias`, vLLM `--served-model-name` or a LoRA module name); the GGUF path is
the server's business and is ignored here. Per model at most `local_queue_size + 1` requests are in
flight from this gateway; 429 and 503 answers count as overload, like a full queue in `LlamaPool`.
With `params["logprobs"]` the server is asked for the chosen tokens' log-probabilities (`logprobs: true,
top_logprobs: 0`; llama-cpp-python's server computes them with its default `logits_all`).
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from gateway.local.backend import (
    SUPPORTED_PARAMS,
    LocalDelta,
    LocalError,
    LocalOverloaded,
    LocalResult,
    LocalTimeout,
    Message,
)
from gateway.local.confidence import logprobs_from_openai
from gateway.settings import Settings


class RemoteLocalBackend:
    def __init__(
        self, api_base: str, api_key: str | None = None, *, queue_size: int = 8, timeout_s: float = 30.0
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.queue_size, self.timeout_s = queue_size, timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.api_base, headers=headers, timeout=timeout_s)
        self._in_flight: collections.Counter[str] = collections.Counter()
        self.counters = collections.Counter[str]()

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteLocalBackend:
        if not settings.local_api_base:
            raise ValueError("local_backend is 'remote' but local_api_base is not set")
        key = settings.local_api_key.get_secret_value() if settings.local_api_key else None
        return cls(
            settings.local_api_base,
            key,
            queue_size=settings.local_queue_size,
            timeout_s=settings.local_timeout_s,
        )

    async def chat(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> LocalResult:
        started = time.perf_counter()
        with self._slot(model_id):
            response = await self._post(model_id, messages, params, stream=False)
            try:
                body = response.json()
                choice = body["choices"][0]
                text = choice["message"].get("content") or ""
                usage = body.get("usage") or {}
                logprobs = logprobs_from_openai(choice.get("logprobs"))
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise LocalError(f"remote model {model_id} sent an unreadable answer: {exc}") from None
        if not text.strip():
            raise LocalError(f"remote model {model_id} returned no text")
        self.counters["requests"] += 1
        return LocalResult(
            model_id=model_id,
            text=text,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            compute_s=time.perf_counter() - started,
            token_logprobs=tuple(logprobs) if params.get("logprobs") else None,
        )

    async def chat_stream(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> AsyncIterator[LocalDelta]:
        started = time.perf_counter()
        text: list[str] = []
        logprobs: list[float] = []
        held, finish_reason, usage, pieces, reported = "", "stop", {}, 0, 0
        with self._slot(model_id):
            response = await self._post(model_id, messages, params, stream=True)
            try:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        finish_reason = choice.get("finish_reason") or finish_reason
                        logprobs += logprobs_from_openai(choice.get("logprobs"))
                        pieces += bool(piece)
                        text.append(piece)
                        held += piece  # as LlamaPool: nothing is emitted before some visible text
                        if held.strip():
                            yield LocalDelta(held, logprobs=tuple(logprobs[reported:]))
                            held, reported = "", len(logprobs)
            except httpx.TimeoutException:
                raise LocalTimeout(f"remote model {model_id} stalled for {self.timeout_s:g}s") from None
            except (httpx.HTTPError, ValueError) as exc:
                raise LocalError(f"remote model {model_id} stream failed: {exc}") from None
            finally:
                await response.aclose()
        answer = "".join(text)
        if not answer.strip():
            raise LocalError(f"remote model {model_id} returned no text")
        if held:
            yield LocalDelta(held)
        self.counters["requests"] += 1
        yield LocalDelta(
            "",
            LocalResult(
                model_id=model_id,
                text=answer,
                finish_reason=finish_reason,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                # Servers that do not send usage in a stream: one delta is about one token.
                completion_tokens=int(usage.get("completion_tokens") or pieces),
                compute_s=time.perf_counter() - started,
                token_logprobs=tuple(logprobs) if params.get("logprobs") else None,
            ),
        )

    async def prepare(self, model_id: str, gguf_path: str) -> None:
        """Check the server serves `model_id` (it loads models itself)."""
        try:
            response = await self._client.get("/models")
            response.raise_for_status()
            served = {model.get("id") for model in response.json().get("data", [])}
        except (httpx.HTTPError, ValueError) as exc:
            raise LocalError(f"remote backend {self.api_base} unavailable: {exc}") from None
        if model_id not in served:
            raise LocalError(f"remote backend {self.api_base} does not serve {model_id}")

    async def release(self, model_id: str) -> None:
        return None  # the server manages its own memory

    async def close(self) -> None:
        await self._client.aclose()

    def stats(self) -> dict[str, Any]:
        return {"in_flight": dict(self._in_flight), **self.counters}

    # ---- helpers --------------------------------------------------------------------------------------
    def _slot(self, model_id: str) -> _InFlight:
        if self._in_flight[model_id] > self.queue_size:
            self.counters["overloaded"] += 1
            raise LocalOverloaded(
                f"remote model {model_id} has {self._in_flight[model_id]} requests in flight"
            )
        return _InFlight(self._in_flight, model_id)

    async def _post(
        self, model_id: str, messages: Sequence[Message], params: Mapping, stream: bool
    ) -> httpx.Response:
        body = {
            name: value for name, value in params.items() if name in SUPPORTED_PARAMS and value is not None
        }
        if "max_completion_tokens" in body:  # llama.cpp servers read only the older name
            body.setdefault("max_tokens", body.pop("max_completion_tokens"))
        body |= {"model": model_id, "messages": list(messages), "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if body.get("logprobs"):  # the chosen tokens' log-probabilities only: no alternatives to rank
            body["top_logprobs"] = 0
        try:
            request = self._client.build_request("POST", "/chat/completions", json=body)
            response = await self._client.send(request, stream=stream)
        except httpx.TimeoutException:
            self.counters["timeouts"] += 1
            raise LocalTimeout(f"remote model {model_id} did not answer within {self.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise LocalError(f"remote backend {self.api_base} unreachable: {exc}") from None
        if response.status_code in (429, 503):
            await response.aclose()
            self.counters["overloaded"] += 1
            raise LocalOverloaded(f"remote model {model_id} is overloaded ({response.status_code})")
        if response.status_code >= 400:
            detail = (await response.aread()).decode(errors="replace")[:200]
            await response.aclose()
            raise LocalError(f"remote model {model_id} answered {response.status_code}: {detail}")
        return response


class _InFlight:
    """Counts one request in flight for a model while the `with` block runs."""

    def __init__(self, counter: collections.Counter[str], model_id: str) -> None:
        self.counter, self.model_id = counter, model_id

    def __enter__(self) -> None:
        self.counter[self.model_id] += 1

    def __exit__(self, *exc: object) -> None:
        self.counter[self.model_id] -= 1
