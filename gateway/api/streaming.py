"""Relaying an SSE stream from the backend to the client, logging it before it ends.

Content chunks go to the client as they arrive. The closing chunks (the one with `finish_reason`, the usage
chunk) are held back until the request's row is committed, then sent with `[DONE]`: a client that saw the
end of a stream can rely on its row being in the log. The backend is always asked for usage (so the log has
token counts); the client gets the usage chunk only if it asked for it. A llama.cpp server sends no usage in
streams: for a backend with a known GGUF the gateway counts the tokens itself, exactly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response

from gateway.api.errors import GatewayError
from gateway.api.exchange import Exchange, log_exchange, log_unavailable, usage_from
from gateway.log.row_text import ToolCallDeltas, answer_text
from gateway.state import Gateway
from gateway.upstream.client import Chunk, UpstreamError
from gateway.upstream.validate import answer_chars, check_chunk, too_large

log = logging.getLogger("promptintern.gateway")


class RelayResponse:
    """The SSE response of a relayed stream, as a plain ASGI callable: one watcher task per stream instead
    of Starlette's task group, and one timer per stream instead of a timeout and a yield per chunk.

    - The client goes away: the watcher sees `http.disconnect` and cancels the stream at once, even while
      it waits on the backend.
    - The client stops reading: a send blocked for `write_timeout_s` cancels the stream, so the backend
      stream is not held open forever.
    Either way the generator is closed right away, so the relay's cleanup (log the row, close the backend
    stream) runs now rather than whenever the garbage collector finds it.
    """

    def __init__(
        self, chunks: AsyncIterator[bytes], headers: dict[str, str], write_timeout_s: float | None
    ) -> None:
        self.chunks = chunks
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.headers.append((b"content-type", b"text/event-stream; charset=utf-8"))
        self.write_timeout_s = write_timeout_s
        self._sending_since: float | None = None  # loop time of a send not yet returned
        self._stalled = False
        self._finished = False  # past the last send: a disconnect now is the normal end
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(_disconnect(receive))
        watcher.add_done_callback(lambda w: w.cancelled() or self._finished or task.cancel())
        if self.write_timeout_s:
            self._timer = loop.call_later(self.write_timeout_s, self._check_stall, task)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
            ended = False
            async for chunk in self.chunks:
                if ended:
                    continue  # nothing follows [DONE]; a relay that yielded more would not be heard
                ended = chunk.endswith(DONE)  # sent as the response's last body: one write, not two
                self._sending_since = loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
                self._sending_since = None
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not (self._stalled or (watcher.done() and not watcher.cancelled())):
                raise  # cancelled from outside (shutdown): not ours to swallow
            task.uncancel()
            if self._stalled:
                log.warning("dropped a stream on %s: the client read nothing for %ss", scope.get("path"),
                            self.write_timeout_s)  # fmt: skip
        finally:
            self._finished = True
            watcher.cancel()
            if self._timer is not None:
                self._timer.cancel()
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _check_stall(self, task: asyncio.Task) -> None:
        """A timer per stream, re-armed for when the send in progress (if any) would be too slow."""
        assert self.write_timeout_s is not None
        if self._finished:
            return
        loop = asyncio.get_running_loop()
        since, now = self._sending_since, loop.time()
        if since is not None and now - since >= self.write_timeout_s:
            self._stalled = True
            task.cancel()
            return
        due = (since if since is not None else now) + self.write_timeout_s
        self._timer = loop.call_at(due, self._check_stall, task)


async def _disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


DONE = b"data: [DONE]\n\n"  # the end of an OpenAI stream; RelayResponse ends the response with it


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _has_usage(body: dict[str, Any]) -> bool:
    return bool(body.get("usage"))


async def stream_response(
    gateway: Gateway, exchange: Exchange, body: dict[str, Any], include_usage: bool
) -> Response:
    """Open the backend stream (errors before its first chunk become ordinary error responses)."""
    assert exchange.backend is not None
    upstream_body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    first, rest = await gateway.upstream.open_stream(exchange.backend, upstream_body, exchange.timing)
    relay = StreamRelay(gateway, exchange, include_usage)
    headers = {**exchange.headers(), "cache-control": "no-cache"}  # overhead so far; the log has the total
    return RelayResponse(relay.run(first, rest), headers, gateway.settings.stream_write_timeout_s)


class StreamRelay:
    def __init__(self, gateway: Gateway, exchange: Exchange, include_usage: bool) -> None:
        self.gateway = gateway
        self.exchange = exchange
        self.include_usage = include_usage
        self.pieces: list[str] = []
        self.tool_calls = ToolCallDeltas()
        self.closing: list[Chunk] = []
        self.envelope: dict[str, Any] = {}  # id/created/model of the stream, for a usage chunk we add
        self.logged = False  # the row has been handed to the writer
        self.size = 0  # bytes (or characters) received so far, against max_upstream_response_bytes

    async def run(self, first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
        try:
            async for out in self._relay(first, rest):
                yield out
        finally:
            if not self.logged:  # the client went away (cancellation) before the row was written
                log_client_gone(self.gateway, self.exchange, self.pieces, rest)

    async def _relay(self, first: Chunk, rest: AsyncIterator[Chunk]) -> AsyncIterator[bytes]:
        exchange = self.exchange
        error: GatewayError | None = None
        chunk: Chunk | None = first
        burst: list[bytes] = []  # chunks of one network read, sent to the client in one write
        try:
            while chunk is not None:
                out = self._take(chunk)
                if out is not None:
                    burst.append(out)
                if burst and not chunk.more:
                    yield b"".join(burst)
                    burst = []
                started = time.perf_counter()
                try:
                    chunk = await anext(rest)
                except StopAsyncIteration:
                    chunk = None
                finally:
                    exchange.timing.backend_s += time.perf_counter() - started
        except UpstreamError as exc:  # broke after it started: too late to retry or to change the status
            error = exc
            exchange.finish_reason = None  # a truncated answer did not finish, whatever litellm said
        except Exception as exc:
            assert exchange.backend is not None
            error = self.gateway.upstream.map_error(exchange.backend, exc)
        if burst:  # the stream broke inside a burst: what came before the break still goes out
            yield b"".join(burst)
        exchange.response_text = self._answer()
        if error is not None:
            self.logged = True  # log_exchange queues the row before its first suspension
            await log_exchange(self.gateway, exchange, error.status, error)
            yield sse(error.body())  # the openai client raises this as an APIError
            return
        await self._count_local_tokens()
        self.logged = True
        if not await log_exchange(self.gateway, exchange, 200):
            yield sse(log_unavailable().body())
            return
        yield b"".join([*self._closing_bytes(), DONE])  # one write: the stream's last bytes

    def _take(self, chunk: Chunk) -> bytes | None:
        """Record one chunk; return the bytes to send now (None: held back or not for the client)."""
        body = chunk.body
        dropped = check_chunk(body)  # raises UpstreamError: the relay ends with an error event
        if dropped:
            self.exchange.upstream_dropped += dropped
            chunk = Chunk(body)  # its raw bytes still carry what was dropped
        self.size += len(chunk.raw) if chunk.raw is not None else answer_chars(body)
        if self.size > self.gateway.settings.max_upstream_response_bytes:
            raise too_large(self.gateway.settings.max_upstream_response_bytes)
        if not self.envelope:
            self.envelope = {k: body.get(k) for k in ("id", "created", "model", "system_fingerprint")}
            self.exchange.completion_id = body.get("id") if isinstance(body.get("id"), str) else None
        closing = False
        for choice in body.get("choices") or ():
            if choice.get("finish_reason"):
                closing = True  # held back (any choice's): it goes out after the row is logged
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.pieces.append(content)
                self.exchange.mark_first_token()
            if delta.get("tool_calls"):
                self.tool_calls.add(delta["tool_calls"])
                self.exchange.mark_first_token()
            if choice.get("finish_reason"):
                self.exchange.finish_reason = choice["finish_reason"]
        if _has_usage(body):
            self.exchange.usage = usage_from(body["usage"])
            closing = True
        if closing:
            self.closing.append(chunk)
            return None
        return chunk.raw or sse(body)

    def _answer(self) -> str | None:
        return answer_text({"content": "".join(self.pieces), **self.tool_calls.as_message()})

    async def _count_local_tokens(self) -> None:
        """llama.cpp streams carry no usage (litellm then estimates one): count exactly with the GGUF."""
        backend = self.exchange.backend
        if backend is None or backend.gguf_path is None:
            return
        counter = self.gateway.token_counters.for_model(backend.gguf_path)
        messages = (self.exchange.body or {}).get("messages") or []
        self.exchange.usage = await asyncio.to_thread(
            counter.count, messages, self.exchange.response_text or ""
        )

    def _usage_payload(self) -> dict[str, Any] | None:
        usage = self.exchange.usage
        if usage is None:
            return None
        payload: dict[str, Any] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        if usage.cached_prompt_tokens:
            payload["prompt_tokens_details"] = {"cached_tokens": usage.cached_prompt_tokens}
        return payload

    def _closing_bytes(self) -> list[bytes]:
        """The held-back closing chunks. Usage goes out as OpenAI sends it, alone in a chunk with
        `choices: []` (litellm puts an empty choice beside it, which some clients read as a real one), and
        only to a client that asked for it."""
        out: list[bytes] = []
        usage_sent = False
        exact = self.exchange.backend is not None and self.exchange.backend.gguf_path is not None
        for chunk in self.closing:
            body = chunk.body
            if not _has_usage(body):
                out.append(chunk.raw or sse(body))
                continue
            choices = [choice for choice in body.get("choices") or () if _carries_something(choice)]
            envelope = {k: v for k, v in body.items() if k not in ("usage", "choices")}
            if choices:
                out.append(sse({**envelope, "choices": choices}))
            if self.include_usage:
                if chunk.raw is not None and not body.get("choices") and not exact:
                    out.append(chunk.raw)  # already in OpenAI's shape: the upstream's own bytes
                else:
                    usage = self._usage_payload() if exact else body["usage"]
                    out.append(sse({**envelope, "choices": [], "usage": usage}))
                usage_sent = True
        if self.include_usage and not usage_sent and self._usage_payload() is not None:
            usage_chunk = {**self.envelope, "object": "chat.completion.chunk", "choices": []}
            out.append(sse({**usage_chunk, "usage": self._usage_payload()}))
        return out


def _carries_something(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice says anything: a finish reason, or a delta with some content."""
    delta = choice.get("delta") or {}
    return bool(choice.get("finish_reason")) or any(v not in (None, "", []) for v in delta.values())


def log_client_gone(gateway: Gateway, exchange: Exchange, pieces: list[str], rest: AsyncIterator) -> None:
    """The client went away mid-stream (cancellation): log what was sent without waiting, stop the backend."""
    exchange.response_text = "".join(pieces)
    gone = GatewayError(
        499, "The client closed the connection before the stream ended.", code="client_closed"
    )
    row = exchange.row(499, gateway.ledger.columns(exchange.served(499)), gone.message, gone.code)
    gateway.writer.submit(row)
    gateway.metrics.observe(row)
    aclose = getattr(rest, "aclose", None)
    if aclose is not None:
        asyncio.ensure_future(aclose())
