"""Calling a backend: litellm (any provider) or a lean direct pass-through (OpenAI-compatible servers).

Both transports take the client's request dict and give back OpenAI-shaped dicts, and both turn every failure
into an `UpstreamError` with the status the client should see (scrubbed of secrets). `Upstream` adds the retry
policy: exponential backoff on connection errors, 5xx and 429 only, never after a stream has started.
Time spent waiting on the backend is added to a `Timing`, so the gateway can report its own overhead.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from gateway.errors import GatewayError, scrub
from gateway.pricing import import_litellm
from gateway.settings import Settings, UpstreamModel

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


@dataclass
class Timing:
    """Seconds spent waiting on the backend (calls, retries and their backoff), for the overhead figure."""

    backend_s: float = 0.0


class UpstreamError(GatewayError):
    def __init__(self, status: int, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(status, message, code=code)
        self.retryable = retryable


@dataclass
class Reply:
    """A non-streamed completion: the dict, plus the exact bytes to return when the transport has them."""

    body: dict[str, Any]
    raw: bytes | None = None


@dataclass
class Chunk:
    """One streamed chunk: the dict, plus its exact `data: ...` SSE bytes when the transport has them."""

    body: dict[str, Any]
    raw: bytes | None = None


def error_for_status(status: int, detail: str, secrets: list[str]) -> UpstreamError:
    """The client-facing error for an upstream HTTP failure."""
    detail = scrub(detail, secrets)[:500]
    if status == 429:
        return UpstreamError(
            429, f"Upstream rate limit: {detail}", code="upstream_rate_limited", retryable=True
        )
    if status >= 500:
        return UpstreamError(
            502, f"Upstream error (HTTP {status}): {detail}", code="upstream_error", retryable=True
        )
    if status in (401, 403):
        # The client's gateway key was fine; the gateway's provider credentials were not.
        message = f"The upstream rejected the gateway's provider credentials (HTTP {status})."
        return UpstreamError(502, message, code="upstream_auth_failed", retryable=False)
    if status in (400, 413, 422):  # the request itself is wrong (context too long, bad parameter...)
        return UpstreamError(
            status, f"Upstream rejected the request: {detail}", code="upstream_bad_request", retryable=False
        )
    return UpstreamError(
        502, f"Upstream error (HTTP {status}): {detail}", code="upstream_error", retryable=False
    )


def unreachable(secrets: list[str], detail: str = "") -> UpstreamError:
    message = "Upstream unreachable (connection failed)" + (
        f": {scrub(detail, secrets)[:200]}" if detail else "."
    )
    return UpstreamError(502, message, code="upstream_unreachable", retryable=True)


def timed_out(timeout_s: float) -> UpstreamError:
    return UpstreamError(
        504, f"Upstream timed out after {timeout_s:g} s.", code="upstream_timeout", retryable=False
    )


def served_model_name(model: UpstreamModel) -> str:
    """The model id an OpenAI-compatible server expects: the litellm string without its provider prefix."""
    return model.litellm_model.split("/", 1)[1] if "/" in model.litellm_model else model.litellm_model


class DirectTransport:
    """One pooled httpx client; the request dict is forwarded as is, with only `model` rewritten."""

    def __init__(self, settings: Settings, secrets: list[str]) -> None:
        self.timeout_s = settings.upstream_timeout_s
        self.secrets = secrets
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), limits=limits)

    async def aclose(self) -> None:
        await self.client.aclose()

    def _request(self, model: UpstreamModel, body: dict[str, Any]) -> httpx.Request:
        base = (model.api_base or "https://api.openai.com/v1").rstrip("/")
        headers = {"content-type": "application/json"}
        if model.api_key is not None:
            headers["authorization"] = f"Bearer {model.api_key.get_secret_value()}"
        payload = {**body, "model": served_model_name(model)}
        return self.client.build_request(
            "POST", f"{base}/chat/completions", content=json.dumps(payload), headers=headers
        )

    async def complete(self, model: UpstreamModel, body: dict[str, Any], timing: Timing) -> Reply:
        started = time.perf_counter()
        try:
            response = await self.client.send(self._request(model, body))
        except Exception as exc:
            raise self.map_error(exc) from None
        finally:
            timing.backend_s += time.perf_counter() - started
        if response.status_code >= 400:
            raise error_for_status(response.status_code, _error_detail(response.content), self.secrets)
        try:
            return Reply(json.loads(response.content), response.content)
        except ValueError:
            raise UpstreamError(
                502,
                "Upstream sent a response that is not JSON.",
                code="upstream_bad_response",
                retryable=False,
            ) from None

    async def stream(self, model: UpstreamModel, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        try:
            response = await self.client.send(self._request(model, body), stream=True)
        except Exception as exc:
            raise self.map_error(exc) from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise error_for_status(response.status_code, _error_detail(response.content), self.secrets)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:` lines
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    payload = json.loads(data)
                except ValueError:
                    raise UpstreamError(
                        502,
                        "Upstream sent a stream chunk that is not JSON.",
                        code="upstream_bad_response",
                        retryable=False,
                    ) from None
                yield Chunk(payload, f"data: {data}\n\n".encode())
        except UpstreamError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from None
        finally:
            await response.aclose()

    def map_error(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, httpx.TimeoutException):
            return timed_out(self.timeout_s)
        if isinstance(exc, httpx.ConnectError):
            return unreachable(self.secrets)
        if isinstance(exc, httpx.TransportError):
            return UpstreamError(
                502,
                f"Upstream connection broke: {type(exc).__name__}.",
                code="upstream_error",
                retryable=True,
            )
        return UpstreamError(
            502, f"Upstream call failed: {type(exc).__name__}.", code="upstream_error", retryable=False
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


def _error_detail(content: bytes) -> str:
    try:
        error = json.loads(content).get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    except Exception:
        return content[:300].decode(errors="replace")


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
