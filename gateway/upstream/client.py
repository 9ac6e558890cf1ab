"""Calling a backend: litellm (any provider) or the lean direct pass-through (gateway/upstream/direct.py).

Both transports take the client's request dict and give back OpenAI-shaped dicts, and both turn every
failure into an `UpstreamError` with the status the client should see (scrubbed of secrets). `Upstream`
picks the transport per model (`UpstreamModel.transport`) and adds the retry policy: exponential backoff on
connection errors, 5xx and 429 only, never after a stream has started. Time spent waiting on the backend is
added to a `Timing`, so the gateway can report its own overhead.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx

from gateway.accounting.pricing import import_litellm
from gateway.settings import Settings, UpstreamModel
from gateway.upstream.direct import DirectTransport
from gateway.upstream.errors import (
    Chunk,
    Reply,
    Timing,
    UpstreamError,
    error_for_status,
    timed_out,
    unreachable,
)
from gateway.upstream.validate import truncated_stream

__all__ = ["Chunk", "Reply", "Timing", "Upstream", "UpstreamError"]

T = TypeVar("T")

# OpenAI generation parameters litellm understands (and translates for other providers). Every other client
# field goes to the provider in `extra_body`, so a client can never set litellm's own arguments
# (api_base, api_key, ...) and redirect the provider key somewhere else.
LITELLM_PARAMS = frozenset(
    "frequency_penalty logit_bias logprobs top_logprobs max_tokens max_completion_tokens n presence_penalty "
    "response_format seed stop stream stream_options temperature top_p tools tool_choice parallel_tool_calls "
    "user functions function_call modalities audio prediction reasoning_effort service_tier store "
    "web_search_options verbosity prompt_cache_key safety_identifier".split()
)


class LiteLLMTransport:
    """litellm.acompletion with the model's api_base/api_key; litellm's own retries are off (ours apply)."""

    def __init__(self, settings: Settings, secrets: list[str]) -> None:
        self.timeout_s = settings.upstream_timeout_s
        self.secrets = secrets
        self.litellm = import_litellm()

    def _kwargs(self, model: UpstreamModel, body: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": model.litellm_model, "messages": body["messages"]}
        extra = {}
        for key, value in body.items():
            if key in LITELLM_PARAMS:
                kwargs[key] = value
            elif key not in ("model", "messages"):
                extra[key] = value
        if extra:
            kwargs["extra_body"] = extra
        if model.api_base:
            kwargs["api_base"] = model.api_base
        if model.api_key is not None:
            kwargs["api_key"] = model.api_key.get_secret_value()
        elif (
            model.api_base
            and model.litellm_model.startswith("openai/")
            and not os.environ.get("OPENAI_API_KEY")
        ):
            kwargs["api_key"] = "no-key"  # a keyless OpenAI-compatible server; litellm insists on some key
        return {**kwargs, "timeout": self.timeout_s, "num_retries": 0, "max_retries": 0}

    async def complete(self, model: UpstreamModel, body: dict[str, Any], timing: Timing) -> Reply:
        started = time.perf_counter()
        try:
            response = await self.litellm.acompletion(**self._kwargs(model, body))
        except Exception as exc:
            raise self.map_error(exc) from None
        finally:
            timing.backend_s += time.perf_counter() - started
        return Reply(_clean(response.model_dump()))

    async def stream(self, model: UpstreamModel, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        try:
            response = await self.litellm.acompletion(**self._kwargs(model, body))
            async for chunk in response:
                yield Chunk(_clean(chunk.model_dump(exclude_none=True)))
            # litellm closes a stream the upstream cut short with a finish_reason of its own making.
            if getattr(response, "received_finish_reason", "") is None and not getattr(
                response, "intermittent_finish_reason", None
            ):
                raise truncated_stream()
        except Exception as exc:
            raise self.map_error(exc) from None

    def map_error(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, self.litellm.Timeout) or _caused_by(exc, httpx.TimeoutException):
            return timed_out(self.timeout_s)
        if _caused_by(exc, httpx.ConnectError) or "Connection error" in str(exc):
            return unreachable(self.secrets)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return error_for_status(status, _litellm_detail(exc), self.secrets)
        return UpstreamError(
            502, f"Upstream call failed: {type(exc).__name__}.", code="upstream_error", retryable=False
        )


class Upstream:
    """Both transports and the retry policy."""

    def __init__(self, settings: Settings, secrets: list[str]) -> None:
        self.retries = max(0, settings.upstream_retries)
        self.backoff_s = settings.retry_backoff_s
        self.direct = DirectTransport(settings, secrets)
        needs_litellm = not settings.models or any(m.transport == "litellm" for m in settings.models)
        self._litellm = LiteLLMTransport(settings, secrets) if needs_litellm else None
        self._settings, self._secrets = settings, secrets

    def transport(self, model: UpstreamModel) -> DirectTransport | LiteLLMTransport:
        if model.transport == "direct":
            return self.direct
        if self._litellm is None:
            self._litellm = LiteLLMTransport(self._settings, self._secrets)
        return self._litellm

    async def aclose(self) -> None:
        await self.direct.aclose()

    async def _with_retries(self, attempt_once: Callable[[], Awaitable[T]], timing: Timing) -> T:
        attempt = 0
        while True:
            try:
                return await attempt_once()
            except UpstreamError as exc:
                if not exc.retryable or attempt >= self.retries:
                    raise
            delay = self.backoff_s * (2**attempt)
            attempt += 1
            timing.backend_s += delay
            await asyncio.sleep(delay)

    async def complete(self, model: UpstreamModel, body: dict[str, Any], timing: Timing) -> Reply:
        transport = self.transport(model)
        return await self._with_retries(lambda: transport.complete(model, body, timing), timing)

    async def open_stream(
        self, model: UpstreamModel, body: dict[str, Any], timing: Timing
    ) -> tuple[Chunk, AsyncIterator[Chunk]]:
        """The first chunk and the rest of the stream. Retries happen only before the first chunk arrives."""
        transport = self.transport(model)

        async def attempt_once() -> tuple[Chunk, AsyncIterator[Chunk]]:
            chunks = transport.stream(model, body)
            started = time.perf_counter()
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamError(
                    502,
                    "Upstream closed the stream without sending anything.",
                    code="upstream_error",
                    retryable=True,
                ) from None
            except BaseException:
                await chunks.aclose()
                raise
            finally:
                timing.backend_s += time.perf_counter() - started
            return first, chunks

        return await self._with_retries(attempt_once, timing)

    def map_error(self, model: UpstreamModel, exc: BaseException) -> UpstreamError:
        return self.transport(model).map_error(exc)


def _clean(payload: dict[str, Any]) -> dict[str, Any]:
    """litellm's dumps carry its own bookkeeping fields; clients get the OpenAI shape."""
    payload.pop("provider_specific_fields", None)
    for choice in payload.get("choices") or []:
        choice.pop("provider_specific_fields", None)
        for key in ("message", "delta"):
            if isinstance(choice.get(key), dict):
                choice[key].pop("provider_specific_fields", None)
    return payload


def _litellm_detail(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    # litellm prefixes messages with its own class names; keep the provider's words.
    return str(text).split(" - ", 1)[-1]


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
