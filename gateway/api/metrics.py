"""Prometheus metrics for one app: its own registry, so two apps in one process never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets (seconds) from sub-millisecond gateway overhead to minute-long generations.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


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
        self.latency = Histogram(
            "promptintern_request_latency_seconds",
            "End-to-end request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "promptintern_overhead_seconds",
            "Time spent in the gateway itself, backend excluded",
            ["route"],
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "promptintern_time_to_first_token_seconds",
            "Time to the first streamed token",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "promptintern_tokens", "Tokens by route and kind", ["route", "kind"], registry=self.registry
        )
        self.spend = Counter(
            "promptintern_spend_dollars", "Spend by route", ["route"], registry=self.registry
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

    def observe(self, row: dict) -> None:
        """Record one finished request from its log row."""
        route, status = row["route"] or "none", str(row["status"])
        # Only served models become labels: client-chosen names (404s) would grow the series without bound.
        model = (row["model"] or "") if row.get("model_served") else "-"
        self.requests.labels(route, model, status).inc()
        if row["status"] >= 400:
            self.errors.labels(route, model, status, row.get("error_code") or "").inc()
        if row.get("latency_ms") is not None:
            self.latency.labels(route).observe(row["latency_ms"] / 1000)
        if row.get("overhead_ms") is not None:
            self.overhead.labels(route).observe(row["overhead_ms"] / 1000)
        if row.get("ttft_ms") is not None:
            self.ttft.labels(route).observe(row["ttft_ms"] / 1000)
        for kind in ("prompt", "completion", "cached_prompt"):
            value = row.get(f"{kind}_tokens")
            if value:
                self.tokens.labels(route, kind).inc(value)
        if row.get("spend"):
            self.spend.labels(route).inc(row["spend"])
        for field in row.get("upstream_dropped") or ():
            self.dropped.labels(field).inc()
        if row.get("template_id"):  # templates are mined from the log: a bounded set of labels
            self.routed.labels(route, row["template_id"]).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
