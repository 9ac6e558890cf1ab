"""The savings report: per template and per day, what the log says routing saved.

Computed from the `requests` table at call time (the CLI, the dashboard and the JSON endpoint all call
`build_report`). A request's template is `requests.template_id` (set by the router) or, for traffic logged
before its template was mined, `request_templates.template_id` (set by mining).

"After" is what was actually sent and spent (`prompt_tokens`; `spend` = upstream dollars plus local
compute dollars). "Before" is what the same traffic would have cost without routing, so a saving comes
only from what the router changed:
- a request served locally (route local): the counterfactual columns, i.e. its full prompt upstream,
  uncached (`counterfactual_spend`) or with its static prefix cached (`counterfactual_cached_spend`);
- a request that went upstream after (fallback, escalated) or beside (shadow) a local run: its upstream
  bill, i.e. `spend` minus the local compute (`local_compute_s` x local_cost_per_hour), so the wasted
  local compute counts against the saving (an escalation costs its local answer plus the upstream price);
- a request served locally and also answered upstream for live calibration: its `spend` holds both.
- any other request: its own figures (before = after, both baselines).

JSON shape (`REPORT_SCHEMA`), the one definition the CLI's --json, /dashboard/report.json and the
dashboard page share:

    {"schema": "promptintern.report/1", "generated_at": ISO-8601, "since": ISO-8601 | null,
     "totals": FIGURES,
     "by_template": [{"template_id": str | null, "template_name": str | null, **FIGURES}, ...],
     "by_day": [{"day": "YYYY-MM-DD", **FIGURES}, ...],
     "by_template_day": [{"template_id": ..., "template_name": ..., "day": ..., **FIGURES}, ...],
     "templates": [{"template_id", "template_name", "status", "model_id", "gate_metric", "gate_score",
                    "shadow_agreement", "shadow_samples", "canary_percent", "command", "command_does",
                    **FIGURES}, ...],
     "next_step": {"title", "text", "command"} | null,
     "calibration": [CALIBRATION, ...]}

CALIBRATION (one per route, selective routing): {"template_id", "template_name", "model_id", "mode",
"threshold" (applied now; null = every answer served), "note" (why live calibration last changed the
route), "live_agreement", "live_compared" (comparisons since the route last changed), and the model's
stored calibration (internalizer/calibrate.py) under "model": {"signal", "metric", "target", "n",
"threshold", "coverage", "agreement", "lower_bound", "overall_agreement", "curve": [{"threshold",
"n_routed", "coverage", "agreement", "lower_bound"}, ...]} or null for an uncalibrated model}.

FIGURES are the keys of `FIGURE_DOCS` below (null where a figure has no data, e.g. no routed request yet).
by_template is sorted by uncached baseline spend (largest first), days ascending; template_id null
groups the requests that belong to no template. Days are UTC dates of startTime. `templates` has one card
per known template (gateway/accounting/template_cards.py: status, model, gate score, shadow agreement);
`next_step` says what to run when nothing is served locally yet.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlite_utils

from gateway.accounting.template_cards import next_step, template_cards

REPORT_SCHEMA = "promptintern.report/1"

FIGURE_DOCS: dict[str, str] = {
    "requests": "requests logged",
    "routed": "requests served by a local model (route local)",
    "routed_share": "routed / requests (0..1)",
    "fallbacks": "requests tried locally, then sent upstream (route fallback)",
    "escalated": "requests answered locally below the confidence threshold, then sent upstream",
    "coverage": "routed / (routed + escalated + fallbacks): share of local attempts served locally",
    "live_compared": "routed requests also answered upstream and compared (live calibration)",
    "live_agreement": "mean agreement of those with the upstream answer",
    "shadowed": "requests served upstream and also run locally for comparison (route shadow)",
    "errors": "requests answered with an HTTP error status",
    "served": "requests answered without an error (the set the latency figures are computed over)",
    "served_locally": "requests a local model answered without an error",
    "local_share": "served_locally / served (0..1)",
    "input_tokens_before": "prompt tokens the full prompts would have sent upstream",
    "input_tokens_after": "prompt tokens actually sent (query-only prompts for routed requests)",
    "input_token_reduction_pct": "100 x (before - after) / before",
    "latency_p50_before_ms": "median latency of requests served upstream with the full prompt",
    "latency_p95_before_ms": "95th percentile latency of requests served upstream with the full prompt",
    "latency_p50_after_ms": "median latency of requests the router sent local (fallbacks included)",
    "latency_p95_after_ms": "95th percentile latency of requests the router sent local (fallbacks included)",
    "spend_before_uncached": "dollars without routing; routed requests' full prompts priced without caching",
    "spend_before_cached": "dollars without routing; routed requests' static prefixes read from the cache",
    "spend_after": "dollars actually spent (upstream bills plus local compute)",
    "saved_vs_uncached": "spend_before_uncached - spend_after",
    "saved_vs_cached": "spend_before_cached - spend_after (the honest saving)",
}
FIGURES = tuple(FIGURE_DOCS)

UPSTREAM_ROUTES = ("upstream", "shadow")  # served upstream with the full prompt
LOCAL_ROUTES = ("local", "fallback", "escalated")  # the router sent them local

# Requests with their template and UTC day; sums per (template, day) are done by SQLite, and only the
# latencies, which percentiles need one by one, come back row by row.
_REQUESTS = """
select coalesce(r.template_id, rt.template_id) as template_id, substr(r.startTime, 1, 10) as day,
  r.route, r.status, r.prompt_tokens, r.latency_ms, r.spend, r.local_compute_s,
  r.counterfactual_prompt_tokens, r.counterfactual_spend, r.counterfactual_cached_spend,
  r.shadow_agreement
from requests r left join request_templates rt on rt.request_id = r.request_id
where r.startTime >= :since
"""
# Local compute that a fallback, escalated or shadow request spent on the local model: without routing it
# would not have been spent. (Plain upstream rows keep their whole bill: on the embedded default that bill
# is itself local compute, which routing did not add.)
_WASTED = (
    "case when q.route in ('fallback', 'escalated', 'shadow') "
    "then coalesce(q.local_compute_s, 0) * :rate / 3600 else 0 end"
)
_SUMS = f"""
with q as ({_REQUESTS})
select q.template_id, q.day, (select name from templates t where t.id = q.template_id),
  count(*), sum(q.route = 'local'), sum(q.route = 'fallback'), sum(q.route = 'shadow'), sum(q.status >= 400),
  sum(case when q.route = 'local' then coalesce(q.counterfactual_prompt_tokens, q.prompt_tokens, 0)
           else coalesce(q.prompt_tokens, 0) end),
  sum(coalesce(q.prompt_tokens, 0)),
  sum(case when q.route = 'local' then coalesce(q.counterfactual_spend, q.spend, 0)
           else coalesce(q.spend, 0) - {_WASTED} end),
  sum(case when q.route = 'local' then coalesce(q.counterfactual_cached_spend, q.spend, 0)
           else coalesce(q.spend, 0) - {_WASTED} end),
  sum(coalesce(q.spend, 0)),
  sum(q.status is null or q.status < 400), sum(q.route = 'local' and (q.status is null or q.status < 400)),
  sum(q.route = 'escalated'),
  sum(q.route = 'local' and q.shadow_agreement is not null),
  sum(case when q.route = 'local' then coalesce(q.shadow_agreement, 0) else 0 end)
from q
group by q.template_id, q.day
"""
_LATENCIES = f"""
with q as ({_REQUESTS})
select template_id, day, route in ('local', 'fallback', 'escalated'), latency_ms from q
where latency_ms is not null and (status is null or status < 400)
  and route in ('upstream', 'shadow', 'local', 'fallback', 'escalated')
"""


@dataclass
class _Bucket:
    """Sums and latency samples for one group of requests; groups merge by adding."""

    requests: int = 0
    routed: int = 0
    fallbacks: int = 0
    shadowed: int = 0
    errors: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    spend_before_uncached: float = 0.0
    spend_before_cached: float = 0.0
    spend_after: float = 0.0
    served: int = 0
    served_locally: int = 0
    escalated: int = 0
    live_compared: int = 0
    live_agreement_sum: float = 0.0
    latency_before: list[float] = field(default_factory=list)
    latency_after: list[float] = field(default_factory=list)

    def merge(self, other: _Bucket) -> None:
        for name in SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency_before += other.latency_before
        self.latency_after += other.latency_after

    def figures(self) -> dict[str, Any]:
        before, after = self.tokens_before, self.tokens_after
        tried = self.routed + self.escalated + self.fallbacks
        return {
            "requests": self.requests,
            "routed": self.routed,
            "routed_share": self.routed / self.requests if self.requests else None,
            "fallbacks": self.fallbacks,
            "escalated": self.escalated,
            "coverage": self.routed / tried if tried else None,
            "live_compared": self.live_compared,
            "live_agreement": self.live_agreement_sum / self.live_compared if self.live_compared else None,
            "shadowed": self.shadowed,
            "errors": self.errors,
            "served": self.served,
            "served_locally": self.served_locally,
            "local_share": self.served_locally / self.served if self.served else None,
            "input_tokens_before": before,
            "input_tokens_after": after,
            "input_token_reduction_pct": 100.0 * (before - after) / before if before else None,
            "latency_p50_before_ms": percentile(self.latency_before, 50),
            "latency_p95_before_ms": percentile(self.latency_before, 95),
            "latency_p50_after_ms": percentile(self.latency_after, 50),
            "latency_p95_after_ms": percentile(self.latency_after, 95),
            "spend_before_uncached": self.spend_before_uncached,
            "spend_before_cached": self.spend_before_cached,
            "spend_after": self.spend_after,
            "saved_vs_uncached": self.spend_before_uncached - self.spend_after,
            "saved_vs_cached": self.spend_before_cached - self.spend_after,
        }


SUMMED = (
    "requests", "routed", "fallbacks", "shadowed", "errors", "tokens_before", "tokens_after",
    "spend_before_uncached", "spend_before_cached", "spend_after", "served", "served_locally",
    "escalated", "live_compared", "live_agreement_sum",
)  # fmt: skip


def build_report(
    db: sqlite_utils.Database, since: datetime | None = None, *, local_cost_per_hour: float
) -> dict[str, Any]:
    """The report over every request logged at or after `since` (all of them when None).

    `local_cost_per_hour` (settings.local_cost_per_hour) splits a fallback's or shadow's spend into its
    upstream bill and its local compute.
    """
    params = {"since": since.isoformat() if since else "", "rate": local_cost_per_hour}
    cells: dict[tuple[str | None, str], _Bucket] = {}
    names: dict[str | None, str | None] = {}
    for template_id, day, name, *sums in db.execute(_SUMS, params):
        names[template_id] = name
        cells[(template_id, day or "")] = _Bucket(*(value or 0 for value in sums))
    for template_id, day, routed, latency in db.execute(_LATENCIES, params):
        cell = cells[(template_id, day or "")]
        (cell.latency_after if routed else cell.latency_before).append(latency)

    totals = _Bucket()
    by_template: dict[str | None, _Bucket] = defaultdict(_Bucket)
    by_day: dict[str, _Bucket] = defaultdict(_Bucket)
    for (template_id, day), cell in cells.items():
        for group in (totals, by_template[template_id], by_day[day]):
            group.merge(cell)
    templates = [
        {"template_id": tid, "template_name": names.get(tid), **bucket.figures()}
        for tid, bucket in by_template.items()
    ]
    templates.sort(key=lambda t: (-t["spend_before_uncached"], -t["requests"], t["template_id"] or ""))
    report = {
        "schema": REPORT_SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(),
        "since": params["since"] or None,
        "totals": totals.figures(),
        "by_template": templates,
        "by_day": [{"day": day, **by_day[day].figures()} for day in sorted(by_day)],
        "by_template_day": [
            {"template_id": tid, "template_name": names.get(tid), "day": day, **cell.figures()}
            for (tid, day), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0] or ""))
        ],
        "calibration": calibrations(db),
    }
    report["templates"] = template_cards(db, templates, params["since"], _Bucket().figures())
    report["next_step"] = next_step(db, report)
    return report


_ROUTES = """
select r.template_id, t.name, r.model_id, r.mode, r.threshold, r.note, r.updated_at, m.calibration,
  (select count(*) from requests q where q.template_id = r.template_id and q.route = 'local'
     and q.model_served = 'local/' || r.model_id and q.startTime >= r.updated_at
     and q.shadow_agreement is not null),
  (select avg(q.shadow_agreement) from requests q where q.template_id = r.template_id and q.route = 'local'
     and q.model_served = 'local/' || r.model_id and q.startTime >= r.updated_at
     and q.shadow_agreement is not null)
from routes r left join templates t on t.id = r.template_id left join models m on m.id = r.model_id
order by r.template_id
"""


def calibrations(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Selective routing per route: the threshold applied now, live agreement, the stored calibration."""
    if "routes" not in db.table_names():
        return []
    out = []
    for tid, name, model_id, mode, threshold, note, _, calibration, compared, live in db.execute(_ROUTES):
        try:
            stored = json.loads(calibration) if calibration else None
        except ValueError:
            stored = None
        out.append(
            {
                "template_id": tid,
                "template_name": name,
                "model_id": model_id,
                "mode": mode,
                "threshold": threshold,
                "note": note,
                "live_compared": compared,
                "live_agreement": live,
                "model": stored,
            }
        )
    return out


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`7d`, `24h`, `30m` (that long ago), a date `2026-11-20` (midnight UTC) or an ISO datetime."""
    now = now or datetime.now(UTC)
    relative = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhm])\s*", text)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2)
        return now - timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: amount})
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since must be like 7d, 24h, 30m, 2026-11-20 or an ISO datetime, not {text!r}"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def format_figure(name: str, value: Any) -> str:
    """How a figure is shown to people (CLI tables, dashboard); JSON keeps the raw numbers."""
    if value is None:
        return "n/a"
    if name == "live_agreement":
        return f"{value:.3f}"
    if name in ("routed_share", "coverage"):
        return f"{100 * value:.1f}%"
    if name.endswith("_pct"):
        return f"{value:.1f}%"
    if name.startswith(("spend_", "saved_")):
        return f"${value:,.6f}"
    if name.endswith("_ms"):
        return f"{value:,.1f} ms"
    return f"{value:,}"
