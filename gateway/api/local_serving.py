"""Answering a routed request from its internalized model, the fallback upstream, and shadow runs.

`serve_local` sends the query-only prompt to the local backend and answers in the OpenAI shape (JSON, or
SSE with usage), with `model` as the client asked. Any failure before the first byte reaches the client
(an error, a timeout, a full queue, an empty answer) returns None instead: the exchange is marked
`fallback`, the time given to the local model is counted as its (wasted) compute, and the caller sends
the ORIGINAL request upstream, so the client never sees the local failure.

`schedule_shadow` runs the local model in the background after a shadowed request's upstream answer was
logged, then records the local answer and its agreement with the upstream one on that row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response

from gateway.accounting.pricing import Usage
from gateway.api.errors import GatewayError
from gateway.api.exchange import Exchange, log_exchange, log_unavailable
from gateway.api.schemas import ChatCompletionRequest
from gateway.api.streaming import ClosingStreamingResponse, log_client_gone, sse
from gateway.local.backend import LocalDelta, LocalResult
from gateway.routing.agreement import agreement
from gateway.routing.router import Decision
from gateway.settings import UpstreamModel
from gateway.state import Gateway

log = logging.getLogger("promptintern.gateway")


async def serve_local(
    gateway: Gateway, exchange: Exchange, decision: Decision, request: ChatCompletionRequest, body: dict
) -> Response | None:
    """The local answer, or None after marking the exchange as a fallback (then send `body` upstream)."""
    assert gateway.router is not None and decision.route is not None and decision.route.gguf_path
    route, backend = decision.route, gateway.router.backend
    upstream = exchange.backend
    exchange.route, exchange.backend = "local", local_model(request.model, route.model_id)
    started = time.perf_counter()
    try:
        if request.stream:
            stream = backend.chat_stream(route.model_id, route.gguf_path, decision.local_messages, body)
            first = await anext(aiter(stream))
            exchange.local_wait_s += time.perf_counter() - started
            relay = LocalStream(gateway, exchange, request)
            headers = {**exchange.headers(), "cache-control": "no-cache"}
            return ClosingStreamingResponse(
                relay.run(first, stream), media_type="text/event-stream", headers=headers
            )
        result = await backend.chat(route.model_id, route.gguf_path, decision.local_messages, body)
    except Exception as exc:  # LocalError, or anything else: the client must not see it
        wasted = time.perf_counter() - started
        exchange.route, exchange.backend = "fallback", upstream
        exchange.local_wait_s += wasted
        exchange.local_compute_s += wasted  # an upper bound: queueing included
        exchange.local_error = f"{type(exc).__name__}: {exc}"
        log.warning("request %s falls back upstream: %s", exchange.request_id, exchange.local_error)
        return None
    exchange.local_wait_s += time.perf_counter() - started
    _take_result(exchange, result)
    if not await log_exchange(gateway, exchange, 200):
        return log_unavailable().response(headers=exchange.headers())
    payload = {
        **_envelope(exchange, request, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage_payload(exchange.usage),
    }
    return JSONResponse(payload, headers=exchange.headers())


def local_model(client_model: str, model_id: str) -> UpstreamModel:
    """The local model as the log's backend (`model_served` local/<id>); `model` stays the client's."""
    return UpstreamModel(name=client_model, litellm_model=f"local/{model_id}", local=True)


class LocalStream:
    """SSE in OpenAI's chunk format from local deltas; the row is committed before the last chunk."""

    def __init__(self, gateway: Gateway, exchange: Exchange, request: ChatCompletionRequest) -> None:
        self.gateway, self.exchange, self.request = gateway, exchange, request
        self.pieces: list[str] = []
        self.logged = False

    async def run(self, first: LocalDelta, stream: AsyncIterator[LocalDelta]) -> AsyncIterator[bytes]:
        try:
            async for out in self._relay(first, stream):
                yield out
        finally:
            if not self.logged:  # the client went away mid-stream
                log_client_gone(self.gateway, self.exchange, self.pieces, stream)

    async def _relay(self, first: LocalDelta, stream: AsyncIterator[LocalDelta]) -> AsyncIterator[bytes]:
        exchange, delta = self.exchange, first
        yield self._chunk({"role": "assistant", "content": ""})
        try:
            while delta.result is None:
                if delta.text:
                    self.pieces.append(delta.text)
                    exchange.mark_first_token()
                    yield self._chunk({"content": delta.text})
                started = time.perf_counter()
                try:
                    delta = await anext(stream)
                finally:
                    exchange.local_wait_s += time.perf_counter() - started
        except Exception as exc:  # after output began: too late to fall back
            exchange.response_text = "".join(self.pieces)
            error = GatewayError(502, f"The local model failed mid-stream: {exc}", code="local_error")
            self.logged = True
            await log_exchange(self.gateway, exchange, error.status, error)
            yield sse(error.body())
            return
        _take_result(exchange, delta.result)
        self.logged = True
        if not await log_exchange(self.gateway, exchange, 200):
            yield sse(log_unavailable().body())
            return
        yield self._chunk({}, finish_reason=delta.result.finish_reason)
        if self.request.include_usage:
            usage = {**_envelope(exchange, self.request, "chat.completion.chunk"), "choices": []}
            yield sse({**usage, "usage": _usage_payload(exchange.usage)})
        yield b"data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse({**_envelope(self.exchange, self.request, "chat.completion.chunk"), "choices": [choice]})


def _take_result(exchange: Exchange, result: LocalResult) -> None:
    exchange.completion_id = completion_id(exchange)
    exchange.response_text = result.text
    exchange.finish_reason = result.finish_reason
    exchange.usage = Usage(result.prompt_tokens, result.completion_tokens)
    exchange.local_compute_s = result.compute_s


def completion_id(exchange: Exchange) -> str:
    return "chatcmpl-" + exchange.request_id.removeprefix("req-")


def _envelope(exchange: Exchange, request: ChatCompletionRequest, kind: str) -> dict[str, Any]:
    return {
        "id": completion_id(exchange),
        "object": kind,
        "created": int(exchange.started_wall),
        "model": request.model,
    }


def _usage_payload(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


# ---- shadow runs ---------------------------------------------------------------------------------------


def schedule_shadow(gateway: Gateway, exchange: Exchange, decision: Decision, body: dict) -> None:
    """After the upstream answer is logged, run the local model on the same request in the background."""
    router = gateway.router
    assert router is not None
    exchange.route = "shadow"
    exchange.after_log = lambda: router.spawn(_shadow_run(gateway, exchange, decision, body))


async def _shadow_run(gateway: Gateway, exchange: Exchange, decision: Decision, body: dict) -> None:
    assert gateway.router is not None and decision.route is not None and decision.route.gguf_path
    route = decision.route
    try:
        result = await gateway.router.backend.chat(
            route.model_id, route.gguf_path, decision.local_messages, {**body, "stream": False}
        )
    except Exception as exc:
        log.warning("shadow run of %s failed: %s", exchange.request_id, exc)
        return
    update = gateway.writer.submit_update(
        exchange.request_id,
        {"shadow_response": result.text, "shadow_agreement": agreement(exchange.response_text, result.text)},
        gateway.ledger.shadow_charges(result.compute_s),
    )
    try:
        await asyncio.wrap_future(update)
    except Exception as exc:
        log.error("shadow answer of %s not logged: %s", exchange.request_id, exc)
