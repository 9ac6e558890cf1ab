"""Prometheus metrics for one app: its own registry, so two apps in one process never share counters.

Every request series is labelled by route (upstream, local, fallback, shadow, none) and model (the name the
client asked for, once a backend served it: client-chosen names that failed would grow the series without
bound). `InFlight` counts the chat requests being answered right now, streams until their last byte.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets (seconds) from sub-millisecond gateway overhead to minute-long generations.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_UPSTREAM_ROUTES = ("upstream", "fallback", "shadow")  # routes that waited on an upstream


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["route", "model", "status"]
        self.requests = Counter(
            "promptintern_requests", "Chat completion requests", labels, registry=self.registry
        )
        self.errors = Counter(
            "promptintern_errors",
            "Chat completion requests that failed",
            [*labels, "code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "promptintern_requests_in_flight",
            "Chat completion requests being answered now (a stream until its last chunk)",
            registry=self.registry,
        )
        self.latency = self._histogram(
            "promptintern_request_latency_seconds", "End-to-end request latency", _LATENCY_BUCKETS
        )
        self.upstream_latency = self._histogram(
            "promptintern_upstream_latency_seconds",
            "Time spent waiting on the upstream alone (its retries and their backoff included)",
            _LATENCY_BUCKETS,
        )
        self.overhead = self._histogram(
            "promptintern_overhead_seconds",
            "Time spent in the gateway itself, backend excluded",
            _OVERHEAD_BUCKETS,
        )
        self.ttft = self._histogram(
            "promptintern_time_to_first_token_seconds", "Time to the first streamed token", _LATENCY_BUCKETS
        )
        self.tokens = Counter(
            "promptintern_tokens",
            "Tokens by route, model and kind",
            ["route", "model", "kind"],
            registry=self.registry,
        )
        self.spend = Counter(
            "promptintern_spend_dollars",
            "Spend by route and model",
            ["route", "model"],
            registry=self.registry,
        )
        self.routed = Counter(
            "promptintern_routed_requests",
            "Requests of a mined template, by route (local, fallback, shadow, upstream) and template",
            ["route", "template"],
            registry=self.registry,
        )
        self.dropped = Counter(
            "promptintern_upstream_fields_dropped",
            "Upstream reply fields dropped as invalid (usage counts that are not sane integers)",
            ["field"],
            registry=self.registry,
        )

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, ["route", "model"], buckets=buckets, registry=self.registry)

    def observe(self, row: dict) -> None:
        """Record one finished request from its log row."""
        route, status = row["route"] or "none", str(row["status"])
        model = (row["model"] or "") if row.get("model_served") else "-"
        self.requests.labels(route, model, status).inc()
        if row["status"] >= 400:
            self.errors.labels(route, model, status, row.get("error_code") or "").inc()
        for histogram, key in (
            (self.latency, "latency_ms"),
            (self.overhead, "overhead_ms"),
            (self.ttft, "ttft_ms"),
        ):
            if row.get(key) is not None:
                histogram.labels(route, model).observe(row[key] / 1000)
        if route in _UPSTREAM_ROUTES and row.get("upstream_s"):
            self.upstream_latency.labels(route, model).observe(row["upstream_s"])
        for kind in ("prompt", "completion", "cached_prompt"):
            value = row.get(f"{kind}_tokens")
            if value:
                self.tokens.labels(route, model, kind).inc(value)
        if row.get("spend"):
            self.spend.labels(route, model).inc(row["spend"])
        for field in row.get("upstream_dropped") or ():
            self.dropped.labels(field).inc()
        if row.get("template_id"):  # templates are mined from the log: a bounded set of labels
            self.routed.labels(route, row["template_id"]).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class InFlight:
    """Pure ASGI middleware: the in-flight gauge around each chat request, however it ends."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        gateway = getattr(getattr(scope.get("app"), "state", None), "gateway", None)
        if scope["type"] != "http" or gateway is None or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        gauge = gateway.metrics.in_flight
        gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            gauge.dec()
