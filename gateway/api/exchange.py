"""One request's journey through the gateway, as the log row it becomes.

An `Exchange` is created when a request arrives and collects what the log needs as the request moves along
(parse -> auth -> backend -> response); `row()` turns it into the `requests` row, with the timing figures:
latency (end to end), overhead (gateway time, backend waits excluded) and time to first token.

The `x-promptintern-overhead-ms` header is taken when the response starts, so for a JSON answer it includes
the wait for the log commit, while the row's `overhead_ms` (computed to build the row) does not; for a
stream the header covers the time up to the first chunk and the row covers the whole stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.accounting.ledger import Served, Template
from gateway.accounting.pricing import Usage
from gateway.api.errors import GatewayError
from gateway.log.row_text import content_hash, json_text
from gateway.log.writer import LogTimeout
from gateway.settings import UpstreamModel
from gateway.state import Gateway
from gateway.upstream.client import Timing

log = logging.getLogger("promptintern.gateway")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def usage_from(payload: dict[str, Any] | None) -> Usage | None:
    """Token counts from an OpenAI `usage` object (None when the backend sent none)."""
    if not isinstance(payload, dict):
        return None
    details = payload.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=int(payload.get("prompt_tokens") or 0),
        completion_tokens=int(payload.get("completion_tokens") or 0),
        cached_prompt_tokens=int(cached or 0),
    )


class Exchange:
    def __init__(self, started_perf: float) -> None:
        self.request_id = "req-" + uuid.uuid4().hex
        self.completion_id: str | None = None  # the `chatcmpl-...` id the client saw
        # Wall-clock start, back-dated to when the request reached the gateway (the middleware's clock).
        self.started_wall = time.time() - (time.perf_counter() - started_perf)
        self.started_perf = started_perf
        self.timing = Timing()
        self.api_key_id: str | None = None
        self.body: dict[str, Any] | None = None
        self.large = False  # a body past offload_parse_bytes: its row is built off the event loop
        self.model_requested: str | None = None
        self.backend: UpstreamModel | None = None
        self.route = "none"
        self.template_id: str | None = None
        self.stream = False
        self.ttft_ms: float | None = None
        self.response_text: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.upstream_dropped: list[
            str
        ] = []  # reply fields dropped as invalid (gateway/upstream/validate.py)
        # Routing (gateway/routing/router.py): time spent waiting on a local model (not gateway overhead), the
        # compute it used, why it was given up (a fallback), and the template matched (for its accounting).
        self.local_wait_s = 0.0
        self.local_compute_s = 0.0
        self.local_error: str | None = None
        self.template: Template | None = None
        # the local answer's confidence (gateway/local/confidence.py)
        self.local_confidence: float | None = None
        self.after_log: Callable[[], None] | None = None  # run once the row is committed (shadow runs)

    # ---- timing ----------------------------------------------------------------------------------------
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started_perf) * 1000

    def overhead_ms(self, elapsed_ms: float | None = None) -> float:
        """Time spent in the gateway itself so far: everything except waiting on the backend."""
        elapsed_ms = self.elapsed_ms() if elapsed_ms is None else elapsed_ms
        return max(0.0, elapsed_ms - (self.timing.backend_s + self.local_wait_s) * 1000)

    def mark_first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def headers(self) -> dict[str, str]:
        return {
            "x-promptintern-route": self.route,
            "x-promptintern-overhead-ms": f"{self.overhead_ms():.3f}",
            "x-request-id": self.request_id,
        }

    # ---- the log row -----------------------------------------------------------------------------------
    def served(self, status: int) -> Served:
        """The facts the accounting needs (gateway/accounting/ledger.py); a counterfactual only on success."""
        return Served(
            route=self.route,
            backend=self.backend,
            usage=self.usage,
            backend_s=self.timing.backend_s,
            local_compute_s=self.local_compute_s,
            answer=self.response_text,
            template=self.template if status == 200 else None,
        )

    def row(
        self, status: int, money: dict[str, Any], error: str | None = None, error_code: str | None = None
    ) -> dict:
        """The `requests` row; `money` holds the columns the ledger computed (spend, local compute,
        counterfactual)."""
        body = self.body or {}
        messages = body.get("messages")
        params = {k: v for k, v in body.items() if k not in ("messages", "model")}
        latency_ms = self.elapsed_ms()
        backend = self.backend
        usage = self.usage
        if self.local_error is not None and error is None:
            error = f"fallback: {self.local_error}"
        return {
            "request_id": self.request_id,
            "completion_id": self.completion_id,
            "startTime": _iso(self.started_wall),
            "endTime": _iso(self.started_wall + latency_ms / 1000),
            "api_key_id": self.api_key_id,
            "model": self.model_requested,
            "model_served": backend.litellm_model if backend else None,
            "api_base": _without_credentials(backend.api_base) if backend else None,
            "route": self.route,
            "messages": json_text(messages, yielding=self.large) if messages is not None else None,
            "params": json_text(params, yielding=self.large) if self.body is not None else None,
            "stream": int(self.stream),
            "response": self.response_text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "total_tokens": (usage.prompt_tokens + usage.completion_tokens) if usage else None,
            "cached_prompt_tokens": usage.cached_prompt_tokens if usage else None,
            "ttft_ms": self.ttft_ms,
            "latency_ms": latency_ms,
            "overhead_ms": self.overhead_ms(latency_ms),
            "status": status,
            "error": error,
            "error_code": error_code,  # metrics only; not a column
            "upstream_dropped": self.upstream_dropped,  # metrics only; named in `sanitized`
            "sanitized": ("upstream_dropped:" + "+".join(self.upstream_dropped))
            if self.upstream_dropped
            else None,
            "upstream_s": self.timing.backend_s,  # metrics only; not a column
            "source": "gateway",
            "content_hash": content_hash(messages, params, self.response_text, yielding=self.large)
            if self.body is not None
            else None,
            "template_id": self.template_id,
            "local_confidence": self.local_confidence,
            **money,
        }

    def minimal_row(self, status: int, error: str | None, error_code: str | None) -> dict:
        """The row when `row()` failed: what the request was and how it ended, no accounting."""
        latency_ms = self.elapsed_ms()
        return {
            "request_id": self.request_id,
            "startTime": _iso(self.started_wall),
            "endTime": _iso(self.started_wall + latency_ms / 1000),
            "api_key_id": self.api_key_id,
            "model": self.model_requested,
            "route": self.route,
            "stream": int(self.stream),
            "response": self.response_text,
            "latency_ms": latency_ms,
            "status": status,
            "error": error,
            "error_code": error_code,
            "source": "gateway",
            "template_id": self.template_id,
            "sanitized": "row:minimal",
        }


def _without_credentials(url: str | None) -> str | None:
    """An address fit for the log: no user:password@, no query string (keys sometimes travel there)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def log_unavailable() -> GatewayError:
    return GatewayError(
        503, "The request log is unavailable; the request was not recorded.", code="log_unavailable"
    )


async def log_exchange(
    gateway: Gateway, exchange: Exchange, status: int, error: GatewayError | None = None
) -> bool:
    """Commit the request's row (awaiting the group commit); False if the database refused it."""
    message, code = (error.message, error.code) if error else (None, None)
    try:
        money = await gateway.ledger.columns_async(exchange.served(status))
        if exchange.large:
            row = await asyncio.to_thread(exchange.row, status, money, message, code)
        else:
            row = exchange.row(status, money, message, code)
    except Exception as exc:  # a bug in building the row must not lose it: keep what surely works
        log.error("request %s: log row degraded: %s", exchange.request_id, type(exc).__name__)
        row = exchange.minimal_row(status, message, code)
    try:
        await gateway.writer.write(row, gateway.settings.log_commit_timeout_s)
    except LogTimeout:
        # The row stays queued and lands when the database allows, with the status the client got.
        late = log_unavailable()
        gateway.writer.submit_update(exchange.request_id, {"status": late.status, "error": late.message})
        log.error("request %s: log commit timed out; answered 503", exchange.request_id)
        row = {**row, "status": late.status, "error_code": late.code}
        return False
    except Exception as exc:
        log.error("request %s not logged: %s", exchange.request_id, type(exc).__name__)
        return False
    finally:
        gateway.metrics.observe(row)
    if exchange.after_log is not None and status == 200:
        exchange.after_log()
    return True
