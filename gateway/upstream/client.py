"""Calling a backend: litellm (any provider) or the lean direct pass-through (gateway/upstream/direct.py).

Both transports take the client's request dict and give back OpenAI-shaped dicts, and both turn every
failure into an `UpstreamError` with the status the client should see (scrubbed of secrets): an upstream 4xx
keeps its status, an exception raised on this side (in the gateway or inside litellm) is a 500, never blamed
on the upstream. `Upstream` picks the transport per model (`UpstreamModel.transport`), adapts the body to
the backend (`max_completion_tokens` for servers that only read `max_tokens`), and adds the retry policy:
exponential backoff with jitter on connection errors, 5xx and 429 only (a 429's Retry-After honoured up to
`retry_after_max_s`), never on a 4xx, never after a stream has started. Time spent waiting on the backend is
added to a `Timing`, so the gateway can report its own overhead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx
import openai
import pydantic

from gateway.accounting.pricing import import_litellm
from gateway.settings import Settings, UpstreamModel
from gateway.upstream.direct import DirectTransport
from gateway.upstream.errors import (
    Chunk,
    Reply,
    Timing,
    UpstreamDetail,
    UpstreamError,
    error_detail,
    error_detail_of,
    error_for_status,
    internal_error,
    retry_after_seconds,
    timed_out,
    unreachable,
)
from gateway.upstream.validate import bad_reply, truncated_stream

log = logging.getLogger("promptintern.gateway")

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
        # litellm's MCP handler (for `type: mcp` tools) imports its optional `mcp` package whenever tools are
        # present, and would call MCP servers a client names: the gateway forwards tools, never runs them.
        return {
            **kwargs,
            "timeout": self.timeout_s,
            "num_retries": 0,
            "max_retries": 0,
            "_skip_mcp_handler": True,
        }

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
        """What went wrong, judged from the exceptions litellm wrapped (its own wrappers say 500 or
        "connection error" for anything, an ImportError included)."""
        if isinstance(exc, UpstreamError):
            return exc
        chain = _chain(exc)
        timeouts = self.litellm.Timeout | openai.APITimeoutError | httpx.TimeoutException
        if any(isinstance(e, timeouts) for e in chain):
            return timed_out(self.timeout_s)
        evidence = [e for e in chain if not type(e).__module__.startswith("litellm")]
        for e in evidence:  # the provider answered with an HTTP error
            if isinstance(e, openai.APIStatusError):
                return self._status_error(e.status_code, e.response)
            if isinstance(e, httpx.HTTPStatusError):
                return self._status_error(e.response.status_code, e.response)
        broken = openai.APIConnectionError | httpx.TransportError | aiohttp.ClientError | ConnectionError
        if any(isinstance(e, broken) for e in evidence):
            return unreachable(self.secrets)
        for e in evidence:  # a 200 the provider sent that is not a completion: the upstream's fault, a 502
            if isinstance(e, pydantic.ValidationError) or "Invalid response object" in str(e):
                return bad_reply("a reply that is not a valid completion")
            # An `error` object inside a 200 (JSON or a stream event): litellm raises it as a bare Exception
            # with the provider's message, or the openai SDK as an APIError.
            if isinstance(e, openai.APIError) or (
                type(e) is Exception and isinstance(exc, self.litellm.APIError)
            ):
                detail = error_detail_of(getattr(e, "message", None) or str(e))
                return UpstreamError(502, f"Upstream answered with an error: {detail}", code="upstream_error",
                                     retryable=False)  # fmt: skip
        status = getattr(exc, "status_code", None)
        if not evidence and isinstance(status, int) and 400 <= status < 500:
            # litellm refused the request itself (a parameter this provider lacks): the client's to fix
            return error_for_status(status, UpstreamDetail(_litellm_detail(exc)), self.secrets)
        log.error("litellm call failed on this side: %s", " <- ".join(type(e).__name__ for e in chain))
        return internal_error(evidence[-1] if evidence else exc)

    def _status_error(self, status: int, response: httpx.Response | None) -> UpstreamError:
        try:
            detail = error_detail(response.content) if response is not None else UpstreamDetail("")
        except httpx.ResponseNotRead:
            detail = UpstreamDetail("")
        headers = response.headers if response is not None else None
        return error_for_status(status, detail, self.secrets, retry_after_seconds(headers))


class Upstream:
    """Both transports and the retry policy."""

    def __init__(self, settings: Settings, secrets: list[str]) -> None:
        self.retries = max(0, settings.upstream_retries)
        self.backoff_s = settings.retry_backoff_s
        self.retry_after_max_s = settings.retry_after_max_s
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
                delay = self.retry_delay(exc, attempt)
                if delay is None:
                    raise
            attempt += 1
            timing.backend_s += delay
            await asyncio.sleep(delay)

    def retry_delay(self, error: UpstreamError, attempt: int) -> float | None:
        """Seconds to wait before retrying after `error` on attempt `attempt` (0-based); None: do not retry.

        Exponential backoff with "equal jitter" (a random half of it), so clients that failed together do
        not all come back at the same instant; at least the upstream's Retry-After, and no retry at all when
        that is longer than `retry_after_max_s` (the client gets the 429 with the Retry-After instead).
        """
        if not error.retryable or attempt >= self.retries:
            return None
        backoff = self.backoff_s * 2**attempt
        delay = backoff / 2 + random.uniform(0, backoff / 2)
        if error.retry_after_s is not None:
            if error.retry_after_s > self.retry_after_max_s:
                return None
            delay = max(delay, error.retry_after_s)
        return delay

    async def complete(self, model: UpstreamModel, body: dict[str, Any], timing: Timing) -> Reply:
        transport, body = self.transport(model), for_backend(model, body)
        return await self._with_retries(lambda: transport.complete(model, body, timing), timing)

    async def open_stream(
        self, model: UpstreamModel, body: dict[str, Any], timing: Timing
    ) -> tuple[Chunk, AsyncIterator[Chunk]]:
        """The first chunk and the rest of the stream. Retries happen only before the first chunk arrives."""
        transport, body = self.transport(model), for_backend(model, body)

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


def for_backend(model: UpstreamModel, body: dict[str, Any]) -> dict[str, Any]:
    """The client's body as this backend understands it: `max_completion_tokens` sent as `max_tokens` to
    servers that only read the older name (a llama.cpp server answers 550 tokens to a limit of 5 otherwise).
    litellm translates `max_tokens` to each provider's own field, so the rename is safe through it too."""
    if "max_completion_tokens" not in body or "max_tokens" in body or not _reads_max_tokens(model):
        return body
    renamed = {key: value for key, value in body.items() if key != "max_completion_tokens"}
    return {**renamed, "max_tokens": body["max_completion_tokens"]}


def _reads_max_tokens(model: UpstreamModel) -> bool:
    if model.max_tokens_field != "auto":
        return model.max_tokens_field == "max_tokens"
    if model.local:
        return True
    if not model.api_base:
        return False  # the provider's own API, reached through litellm, which knows its field
    host = urlsplit(model.api_base).hostname or ""
    return not (host == "openai.com" or host.endswith((".openai.com", ".azure.com")))


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


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from (or while handling), outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain
