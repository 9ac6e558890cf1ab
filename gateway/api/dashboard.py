"""`GET /dashboard` (HTML) and `GET /dashboard/report.json`: the savings report, from the log, per request.

Include `router` in the app. It expects `request.app.state.settings` to be a `Settings` (the log is
`settings.db_path`); tests and embedders may override the `report_db` dependency instead. Both endpoints
take `?since=` like `promptintern report --since`. The page is self-contained: tables plus the report's
PNG chart inlined as a data: URI, no script, nothing fetched from anywhere; it reloads itself every 30 s.
Handlers are plain `def`, so FastAPI runs the SQLite reads and the chart rendering in its thread pool,
never on the event loop.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import sqlite_utils
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from gateway.accounting.report import FIGURE_DOCS, build_report, format_figure, parse_since
from gateway.log.store import open_db

REFRESH_S = 30
PAGE_FIGURES = (
    "requests",
    "routed",
    "routed_share",
    "fallbacks",
    "input_tokens_before",
    "input_tokens_after",
    "input_token_reduction_pct",
    "latency_p50_before_ms",
    "latency_p95_before_ms",
    "latency_p50_after_ms",
    "latency_p95_after_ms",
    "spend_before_uncached",
    "spend_before_cached",
    "spend_after",
    "saved_vs_uncached",
    "saved_vs_cached",
)

router = APIRouter(tags=["dashboard"])


def report_db(request: Request) -> Iterator[sqlite_utils.Database]:
    """The log database of the app's settings; one connection per request, closed afterwards."""
    db = open_db(request.app.state.settings.db_path)
    try:
        yield db
    finally:
        db.close()


def since_param(since: Annotated[str | None, Query(description="7d, 24h, 2026-11-20, ISO datetime")] = None):
    if not since:
        return None
    try:
        return parse_since(since)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


DbDep = Annotated[sqlite_utils.Database, Depends(report_db)]
SinceDep = Annotated[datetime | None, Depends(since_param)]


@router.get("/dashboard/report.json")
def report_json(request: Request, db: DbDep, since: SinceDep) -> dict[str, Any]:
    return build_report(db, since, local_cost_per_hour=request.app.state.settings.local_cost_per_hour)


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, db: DbDep, since: SinceDep) -> HTMLResponse:
    from gateway.accounting.report_chart import render_png

    report = build_report(db, since, local_cost_per_hour=request.app.state.settings.local_cost_per_hour)
    chart = base64.b64encode(render_png(report)).decode()
    return HTMLResponse(render_page(report, chart))


def render_page(report: dict[str, Any], chart_png_b64: str) -> str:
    totals = report["totals"]
    headline = (
        f"{format_figure('requests', totals['requests'])} requests, "
        f"{format_figure('routed_share', totals['routed_share'])} routed, "
        f"{format_figure('input_token_reduction_pct', totals['input_token_reduction_pct'])} "
        "fewer input tokens, "
        f"{format_figure('saved_vs_cached', totals['saved_vs_cached'])} saved vs the cached baseline"
    )
    since = report["since"] or "the first request"
    templates = [
        (_template_label(t), t, {"data-template": t["template_id"] or ""}) for t in report["by_template"]
    ]
    days = [(d["day"], d, {"data-day": d["day"]}) for d in report["by_day"]]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>PromptIntern savings</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; }}
td {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
td.label {{ text-align: left; font-family: monospace; }}
th {{ background: #f3f3f3; font-weight: 600; font-size: 12px; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head>
<body>
<h1>PromptIntern savings</h1>
<p id="headline">{html.escape(headline)}</p>
<p class="meta">Computed from the log at {html.escape(report["generated_at"])}, requests since
{html.escape(since)}. "Before" = the same traffic without routing (routed requests' full prompts upstream);
"after" = what was sent and spent.</p>
<h2>Totals</h2>
{_table("totals", [("all", totals, {"data-total": "all"})])}
<h2>Per template</h2>
{_table("by-template", templates)}
<h2>Per day</h2>
{_table("by-day", days)}
<h2>Chart</h2>
<img id="chart" alt="savings chart" src="data:image/png;base64,{chart_png_b64}">
</body></html>
"""


def _template_label(row: dict[str, Any]) -> str:
    if row["template_id"] is None:
        return "(no template)"
    return f"{row['template_id'][:12]} {row['template_name'] or ''}".strip()


def _table(table_id: str, rows: list[tuple[str, dict[str, Any], dict[str, str]]]) -> str:
    head = "".join(
        f'<th title="{html.escape(FIGURE_DOCS[f])}">{f.replace("_", " ")}</th>' for f in PAGE_FIGURES
    )
    body = []
    for label, figures, attrs in rows:
        row_attrs = "".join(f' {k}="{html.escape(v)}"' for k, v in attrs.items())
        cells = "".join(
            f'<td data-figure="{f}">{html.escape(format_figure(f, figures[f]))}</td>' for f in PAGE_FIGURES
        )
        body.append(f'<tr{row_attrs}><td class="label">{html.escape(label)}</td>{cells}</tr>')
    return f'<table id="{table_id}"><tr><th></th>{head}</tr>{"".join(body)}</table>'
