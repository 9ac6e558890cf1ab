"""Answering a routed request from its internalized model, the fallback upstream, and shadow runs.

`serve_local` sends the query-only prompt to the local backend and answers in the OpenAI shape (JSON, or
SSE with usage), with `model` as the client asked. Any failure before the first byte reaches the client
(an error, a timeout, a full queue, an empty answer) returns None instead: the exchange is marked
`fallback`, the time given to the local model is counted as its (wasted) compute, and the caller sends
the ORIGINAL request upstream, so the client never sees the local failure.

Selective routing: when the route has a confidence threshold, the local answer (for a stream, up to
`local_confidence_stream_tokens` of it, generated before the first byte) is scored from its token
log-probabilities, and one below the threshold is `escalated`: the caller sends the original request
upstream, and the refused local answer, its confidence and its compute are logged beside the upstream's.
`compare_live` sends a share of the answers served locally upstream as well, for live calibration
(gateway/routing/live_calibration.py).

`schedule_shadow` runs the local model in the background after a shadowed request's upstream answer was
logged, then records the local answer and its agreement with the upstream one on that row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from fastapi.responses import JSONResponse, Response

from gateway.accounting.pricing import Usage
from gateway.api.errors import GatewayError
from gateway.api.exchange import Exchange, log_exchange, log_unavailable, usage_from
from gateway.api.schemas import ChatCompletionRequest
from gateway.api.streaming import DONE, RelayResponse, log_client_gone, sse
from gateway.local.backend import LocalDelta, LocalResult
from gateway.local.confidence import DEFAULT_SIGNAL, FALLING_SIGNALS, confidence
from gateway.routing.agreement import agreement
from gateway.routing.router import Decision
from gateway.routing.routes_store import Route
from gateway.routing.selective import answer_agreement, escalates
from gateway.settings import UpstreamModel
from gateway.state import Gateway
from gateway.upstream.errors import Timing

log = logging.getLogger("promptintern.gateway")


async def serve_local(
    gateway: Gateway, exchange: Exchange, decision: Decision, request: ChatCompletionRequest, body: dict
) -> Response | None:
    """The local answer, or None after marking the exchange as a fallback or an escalation (then send
    `body` upstream)."""
    assert gateway.router is not None and decision.route is not None and decision.route.gguf_path
    route, backend = decision.route, gateway.router.backend
    upstream = exchange.backend
    exchange.route, exchange.backend = "local", local_model(request.model, route.model_id)
    params = local_params(body, route)
    started = time.perf_counter()
    stops_early = route.threshold is not None and (route.signal or DEFAULT_SIGNAL) in FALLING_SIGNALS
    try:
        if request.stream or stops_early:
            stream = backend.chat_stream(route.model_id, route.gguf_path, decision.local_messages, params)
            limit = gateway.settings.local_confidence_stream_tokens if route.threshold is not None else 0
            deltas = await answer_before_first_byte(
                stream, limit if request.stream else None, route if stops_early else None
            )
            exchange.local_wait_s += time.perf_counter() - started
            finished = deltas[-1].result or (_stopped_early(deltas, route, started) if stops_early else None)
            if finished is not None and escalate(gateway, exchange, route, upstream, finished):
                await stream.aclose()
                return None
            if request.stream:
                relay = LocalStream(gateway, exchange, request, route, upstream, body)
                headers = {**exchange.headers(), "cache-control": "no-cache"}
                return RelayResponse(
                    relay.run(deltas, stream), headers, gateway.settings.stream_write_timeout_s
                )
            assert finished is not None  # without a limit the whole answer came, or it stopped early
            result = finished
        else:
            result = await backend.chat(route.model_id, route.gguf_path, decision.local_messages, params)
    except Exception as exc:  # LocalError, or anything else: the client must not see it
        wasted = time.perf_counter() - started
        exchange.route, exchange.backend = "fallback", upstream
        exchange.local_wait_s += wasted
        exchange.local_compute_s += wasted  # an upper bound: queueing included
        exchange.local_error = f"{type(exc).__name__}: {exc}"
        log.warning("request %s falls back upstream: %s", exchange.request_id, exchange.local_error)
        return None
    exchange.local_wait_s += time.perf_counter() - started
    if escalate(gateway, exchange, route, upstream, result):
        return None
    _take_result(exchange, result, route)
    compare_live(gateway, exchange, route, upstream, body)
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


# ---- selective routing: confidence, escalation, live calibration ----------------------------------------


def local_params(body: dict, route: Route) -> dict:
    """The request for the local backend: asks for token log-probabilities when the route scores answers."""
    if route.threshold is None and route.signal is None:
        return body
    return {**body, "logprobs": True}


def answer_confidence(result: LocalResult, route: Route) -> float | None:
    """The answer's confidence under the signal the route's threshold was calibrated with."""
    return confidence(result.token_logprobs, route.signal or DEFAULT_SIGNAL)


async def answer_before_first_byte(
    stream: AsyncIterator[LocalDelta], limit: int | None, stop_below: Route | None = None
) -> list[LocalDelta]:
    """The first delta; with `limit`, every delta up to the whole answer or `limit` pieces (None: the whole
    answer), so a short answer can be scored (and escalated) before the client sees a byte.

    With `stop_below`, a route whose signal can only fall: stop as soon as the answer so far is below the
    route's threshold. It would be escalated whatever came next, so the rest would be compute for nothing,
    and the upstream call starts sooner."""
    deltas = [await anext(stream)]
    logprobs = list(deltas[-1].logprobs)
    while deltas[-1].result is None and (limit is None or len(deltas) <= limit):
        if stop_below is not None and _already_below(logprobs, stop_below):
            return deltas
        deltas.append(await anext(stream))
        logprobs += deltas[-1].logprobs
    return deltas


STOPPED_BELOW_THRESHOLD = "below_threshold"  # the finish reason of an answer the router cut short


def _already_below(logprobs: list[float], route: Route) -> bool:
    """Scored tokens so far, and their confidence under the route's signal already below its threshold."""
    return bool(logprobs) and escalates(confidence(logprobs, route.signal or DEFAULT_SIGNAL), route.threshold)


def _stopped_early(deltas: list[LocalDelta], route: Route, started: float) -> LocalResult | None:
    """The part of an answer generated before it fell below the route's threshold (None: it did not)."""
    logprobs = [value for delta in deltas for value in delta.logprobs]
    if not _already_below(logprobs, route):  # no threshold never escalates
        return None
    return LocalResult(
        model_id=route.model_id,
        text="".join(delta.text for delta in deltas),
        finish_reason=STOPPED_BELOW_THRESHOLD,
        prompt_tokens=0,
        completion_tokens=len(logprobs),
        compute_s=time.perf_counter() - started,  # an upper bound: queueing included
        token_logprobs=tuple(logprobs),
    )


def escalate(
    gateway: Gateway, exchange: Exchange, route: Route, upstream: UpstreamModel | None, result: LocalResult
) -> bool:
    """Below the route's threshold: mark the exchange `escalated` (the original request goes upstream) and
    keep the local answer, its confidence and its compute for the log. False: serve the answer."""
    exchange.local_confidence = answer_confidence(result, route)
    if not escalates(exchange.local_confidence, route.threshold):
        return False
    exchange.route, exchange.backend = "escalated", upstream
    exchange.local_compute_s += result.compute_s  # spent, and paid for, before the upstream call
    local_answer, metric = result.text, route.metric or "exact"
    complete = result.finish_reason != STOPPED_BELOW_THRESHOLD

    def record_local_answer() -> None:  # the local answer beside the upstream's: calibration data
        # An answer cut where it fell below the threshold is kept, but not scored: it is only a beginning.
        score = answer_agreement(metric, exchange.response_text, local_answer) if complete else None
        update = gateway.writer.submit_update(
            exchange.request_id, {"shadow_response": local_answer, "shadow_agreement": score}
        )
        update.add_done_callback(lambda done: _report_failure(done, exchange.request_id))

    exchange.after_log = record_local_answer
    return True


def _report_failure(done: Future, request_id: str) -> None:
    if done.exception() is not None:
        log.error("the local answer of %s was not logged: %s", request_id, done.exception())


def compare_live(
    gateway: Gateway, exchange: Exchange, route: Route, upstream: UpstreamModel | None, body: dict
) -> None:
    """For a share of the answers served locally, also ask upstream once the row is logged, and compare."""
    router = gateway.router
    if router is None or router.live is None or upstream is None or not router.live.wants_comparison(route):
        return
    exchange.after_log = lambda: router.spawn(_live_comparison(gateway, exchange, route, upstream, body))


async def _live_comparison(
    gateway: Gateway, exchange: Exchange, route: Route, upstream: UpstreamModel, body: dict
) -> None:
    assert gateway.router is not None and gateway.router.live is not None
    request = {k: v for k, v in body.items() if k != "stream_options"} | {"stream": False}
    timing = Timing()
    try:
        reply = await gateway.upstream.complete(upstream, request, timing)
        choices = reply.body.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content")
        dollars = gateway.ledger.pricer.spend(
            upstream, usage_from(reply.body.get("usage")) or Usage(), timing.backend_s
        )
        score = answer_agreement(route.metric or "exact", text, exchange.response_text)
        update = gateway.writer.submit_update(
            exchange.request_id,
            {"shadow_response": text, "shadow_agreement": score},
            {"spend": dollars or 0.0},
        )
        await asyncio.wrap_future(update)
        await asyncio.to_thread(gateway.router.live.check, route)
    except Exception as exc:  # a comparison is best effort: the client has its answer already
        log.warning("live comparison of %s failed: %s", exchange.request_id, exc)


def local_model(client_model: str, model_id: str) -> UpstreamModel:
    """The local model as the log's backend (`model_served` local/<id>); `model` stays the client's."""
    return UpstreamModel(name=client_model, litellm_model=f"local/{model_id}", local=True)


class LocalStream:
    """SSE in OpenAI's chunk format from local deltas; the row is committed before the last chunk."""

    def __init__(
        self,
        gateway: Gateway,
        exchange: Exchange,
        request: ChatCompletionRequest,
        route: Route,
        upstream: UpstreamModel | None,
        body: dict,
    ) -> None:
        self.gateway, self.exchange, self.request = gateway, exchange, request
        self.route, self.upstream, self.body = route, upstream, body
        self.pieces: list[str] = []
        self.logged = False

    async def run(
        self, buffered: list[LocalDelta], stream: AsyncIterator[LocalDelta]
    ) -> AsyncIterator[bytes]:
        try:
            async for out in self._relay(buffered, stream):
                yield out
        finally:
            if not self.logged:  # the client went away mid-stream
                log_client_gone(self.gateway, self.exchange, self.pieces, stream)

    async def _relay(
        self, buffered: list[LocalDelta], stream: AsyncIterator[LocalDelta]
    ) -> AsyncIterator[bytes]:
        exchange, pending = self.exchange, list(buffered)
        delta = pending.pop(0)
        yield self._chunk({"role": "assistant", "content": ""})
        try:
            while delta.result is None:
                if delta.text:
                    self.pieces.append(delta.text)
                    exchange.mark_first_token()
                    yield self._chunk({"content": delta.text})
                if pending:  # generated before the first byte (scored answers)
                    delta = pending.pop(0)
                    continue
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
        _take_result(exchange, delta.result, self.route)
        compare_live(self.gateway, exchange, self.route, self.upstream, self.body)
        self.logged = True
        if not await log_exchange(self.gateway, exchange, 200):
            yield sse(log_unavailable().body())
            return
        last = [self._chunk({}, finish_reason=delta.result.finish_reason)]
        if self.request.include_usage:
            usage = {**_envelope(exchange, self.request, "chat.completion.chunk"), "choices": []}
            last.append(sse({**usage, "usage": _usage_payload(exchange.usage)}))
        yield b"".join([*last, DONE])  # one write: the stream's last bytes

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse({**_envelope(self.exchange, self.request, "chat.completion.chunk"), "choices": [choice]})


def _take_result(exchange: Exchange, result: LocalResult, route: Route) -> None:
    exchange.completion_id = completion_id(exchange)
    exchange.response_text = result.text
    exchange.finish_reason = result.finish_reason
    exchange.usage = Usage(result.prompt_tokens, result.completion_tokens)
    exchange.local_compute_s = result.compute_s
    exchange.local_confidence = answer_confidence(result, route)


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
            route.model_id,
            route.gguf_path,
            decision.local_messages,
            {**local_params(body, route), "stream": False},
        )
    except Exception as exc:
        log.warning("shadow run of %s failed: %s", exchange.request_id, exc)
        return
    update = gateway.writer.submit_update(
        exchange.request_id,
        {
            "shadow_response": result.text,
            "shadow_agreement": agreement(exchange.response_text, result.text),
            "local_confidence": answer_confidence(result, route),
        },
        gateway.ledger.shadow_charges(result.compute_s),
    )
    try:
        await asyncio.wrap_future(update)
    except Exception as exc:
        log.error("shadow answer of %s not logged: %s", exchange.request_id, exc)
