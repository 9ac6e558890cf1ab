"""The lean pass-through for OpenAI-compatible upstreams: the client's body forwarded as is (only `model`
rewritten) over one pooled HTTP client, the upstream's bytes returned as they came.

The client is aiohttp's, not httpx's: against the same loopback server, one POST through a pooled
`httpx.AsyncClient` took 2.3-3.4 ms p50 on this machine and through an `aiohttp.ClientSession` 0.9-1.1 ms
(`/tmp`-style micro-benchmark, 300 sequential requests each, same process, uvloop), and this hop is most of
what the gateway adds to a request. aiohttp is already installed as a litellm dependency.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.settings import Settings, UpstreamModel
from gateway.upstream.errors import (
    Chunk,
    Reply,
    Timing,
    UpstreamError,
    error_detail,
    error_for_status,
    internal_error,
    retry_after_seconds,
    timed_out,
    unreachable,
)
from gateway.upstream.validate import bad_reply, too_large, truncated_stream


def served_model_name(model: UpstreamModel) -> str:
    """The model id an OpenAI-compatible server expects: the litellm string without its provider prefix."""
    return model.litellm_model.split("/", 1)[1] if "/" in model.litellm_model else model.litellm_model


class DirectTransport:
    def __init__(self, settings: Settings, secrets: list[str]) -> None:
        self.timeout_s = settings.upstream_timeout_s
        self.secrets = secrets
        self.max_bytes = settings.max_upstream_response_bytes
        self._session: aiohttp.ClientSession | None = None
        # A whole JSON answer must arrive within the timeout; a stream may last longer, but no gap in it may.
        self._json_timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the running event loop
            connector = aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=2**20)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _prepare(self, model: UpstreamModel, body: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        base = (model.api_base or "https://api.openai.com/v1").rstrip("/")
        headers = {"content-type": "application/json"}
        if model.api_key is not None:
            headers["authorization"] = f"Bearer {model.api_key.get_secret_value()}"
        payload = json.dumps({**body, "model": served_model_name(model)}).encode()
        return f"{base}/chat/completions", payload, headers

    async def complete(self, model: UpstreamModel, body: dict[str, Any], timing: Timing) -> Reply:
        url, payload, headers = self._prepare(model, body)
        started = time.perf_counter()
        try:
            async with self.session.post(
                url, data=payload, headers=headers, timeout=self._json_timeout
            ) as resp:
                status, content = resp.status, await self._read_capped(resp)
                if status >= 400:
                    raise self._status_error(resp, content)
        except Exception as exc:
            raise self.map_error(exc) from None
        finally:
            timing.backend_s += time.perf_counter() - started
        return Reply(_json_object(content, "a response"), content)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, refusing more than `max_bytes` (a 50 MB answer must not become a 50 MB row)."""
        if resp.content_length is not None and resp.content_length > self.max_bytes:
            raise too_large(self.max_bytes)
        parts, size = [], 0
        async for part in resp.content.iter_chunked(2**16):
            size += len(part)
            if size > self.max_bytes:
                raise too_large(self.max_bytes)
            parts.append(part)
        return b"".join(parts)

    async def stream(self, model: UpstreamModel, body: dict[str, Any]) -> AsyncIterator[Chunk]:
        url, payload, headers = self._prepare(model, body)
        try:
            async with self.session.post(
                url, data=payload, headers=headers, timeout=self._stream_timeout
            ) as resp:
                if resp.status >= 400:
                    raise self._status_error(resp, await self._read_capped(resp))
                size, finished = 0, False
                async for lines in _line_batches(resp):
                    events: list[bytes] = []
                    done = False
                    for line in lines:
                        size += len(line)
                        if size > self.max_bytes:
                            raise too_large(self.max_bytes)
                        if not line.startswith(b"data:"):
                            continue  # blank separators, comments, `event:` lines
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            break
                        events.append(data)
                    for i, data in enumerate(events):
                        parsed = _json_object(data, "a stream chunk")
                        finished = finished or _has_finish(parsed)
                        yield Chunk(parsed, b"data: " + data + b"\n\n", more=i < len(events) - 1)
                    if done:
                        return
                if not finished:  # the connection closed with neither a finish_reason nor [DONE]
                    raise truncated_stream()
        except UpstreamError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from None

    def _status_error(self, resp: aiohttp.ClientResponse, content: bytes) -> UpstreamError:
        return error_for_status(
            resp.status, error_detail(content), self.secrets, retry_after_seconds(resp.headers)
        )

    def map_error(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return timed_out(self.timeout_s)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return unreachable(self.secrets)
        if isinstance(exc, aiohttp.ClientError):
            return UpstreamError(
                502,
                f"Upstream connection broke: {type(exc).__name__}.",
                code="upstream_error",
                retryable=True,
            )
        return internal_error(exc)  # raised here, not by the upstream


async def _line_batches(resp: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The stream's complete lines, as they arrive: all those of one network read together (a burst of
    events is relayed in one write). A line longer than MAX_EVENT_BYTES is a too-large event."""
    tail = b""
    while True:
        data = await resp.content.readany()
        if not data:
            break
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        if len(tail) > MAX_EVENT_BYTES:
            raise UpstreamError(
                502, "Upstream sent a stream event larger than the gateway reads (2 MiB).",
                code="upstream_too_large", retryable=False,
            )  # fmt: skip
        if lines:
            yield [line + b"\n" for line in lines]
    if tail:
        yield [tail]


MAX_EVENT_BYTES = 2 * 2**20  # twice the session's read buffer, as aiohttp's own line reader allowed


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = _loads(data)
    except (ValueError, RecursionError):
        raise bad_reply(f"{what} that is not JSON") from None
    if not isinstance(parsed, dict):
        raise bad_reply(f"{what} that is not a JSON object")
    return parsed


def _loads(data: bytes) -> Any:
    """json.loads(data), by orjson when it can (a few microseconds less per stream chunk); what orjson
    refuses (NaN, lone surrogates, deep nesting) is read by json. One difference is kept: orjson reads an
    integer past 64 bits as a float. No field the gateway reads from a reply can hold one usefully (usage
    counts past 2**53 are dropped either way, gateway/upstream/validate.py), and the relayed bytes are the
    upstream's own."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _has_finish(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices")
    if isinstance(choices, list):
        for choice in choices:  # a loop, not any(): this runs for every chunk of every stream
            if isinstance(choice, dict) and choice.get("finish_reason"):
                return True
    return False
