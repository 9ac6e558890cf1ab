"""`promptintern routes` (list and change routes, the kill switch) and `promptintern report` (savings)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from gateway.accounting.report import build_report, format_figure, parse_since
from gateway.cli import CliError, get_settings
from gateway.log.store import open_db
from gateway.routing.routes_store import (
    MODES,
    RouteError,
    load_routes,
    resolve_template_id,
    route_off,
    set_route,
)


def _db(ctx: click.Context):
    settings = get_settings(ctx)
    settings.ensure_home()
    return open_db(settings.db_path)


# ---- routes ------------------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the routes as JSON.")
@click.pass_context
def routes(ctx: click.Context, as_json: bool) -> None:
    """List routes (template -> local model, mode, canary %); `set` and `off` change them.

    A route's mode is the operator's decision: a model that passes the gate in `nightly` (or
    `internalize`) becomes its template's active model, but the route keeps the mode set here (off stays
    off, shadow stays shadow). Only `routes set` / `routes off` or `models activate` by a person change it.
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = [route.as_dict() for route in load_routes(_db(ctx)).routes.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No routes yet: `promptintern internalize` activates one per template.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("template", no_wrap=True)
    table.add_column("name")
    table.add_column("model", no_wrap=True)
    for header in ("mode", "canary %", "serving"):
        table.add_column(header, no_wrap=True)
    for row in rows:
        table.add_row(
            row["template_id"],
            row["template_name"] or "",
            row["model_id"],
            row["mode"],
            f"{row['canary_percent']:g}",
            "yes" if row["serves"] else _why_not_serving(row),
        )
    Console().print(table)
    for row in rows:  # selective routing: the confidence threshold applied, and why it last changed
        if row["threshold"] is not None:
            click.echo(
                f"{row['template_id']}: answers below {row['signal']} token log-probability "
                f"{row['threshold']:.4g} go upstream (target {row['metric']} agreement {row['target']})"
            )
        if row["note"]:
            click.echo(f"{row['template_id']}: {row['note']}")


def _why_not_serving(row: dict[str, Any]) -> str:
    if row["mode"] == "off":
        return "no (off)"
    return f"no (model {row['model_status'] or 'deleted'})"


@routes.command("set")
@click.argument("template_id")
@click.option(
    "--mode", type=click.Choice(MODES), help="active: serve locally; shadow: compare only; off: upstream."
)
@click.option(
    "--canary", "canary", type=float, help="Percent of matched requests the mode applies to (0-100)."
)
@click.option(
    "--model", "model_id", help="Model to route to (default: the route's, or the newest active one)."
)
@click.pass_context
def set_command(
    ctx: click.Context, template_id: str, mode: str | None, canary: float | None, model_id: str | None
) -> None:
    """Create or change the route of TEMPLATE_ID (an id or a unique prefix)."""
    if mode is None and canary is None and model_id is None:
        raise CliError("nothing to change: pass --mode, --canary or --model")
    db = _db(ctx)
    try:
        route = set_route(
            db, resolve_template_id(db, template_id), mode=mode, canary_percent=canary, model_id=model_id
        )
    except RouteError as exc:
        raise CliError(str(exc)) from exc
    click.echo(f"{route.template_id}: {route.mode}, canary {route.canary_percent:g}%, model {route.model_id}")


@routes.command("off")
@click.argument("template_id")
@click.pass_context
def off_command(ctx: click.Context, template_id: str) -> None:
    """Kill switch: send TEMPLATE_ID's traffic upstream (the gateway picks it up at its next reload)."""
    db = _db(ctx)
    try:
        route = route_off(db, resolve_template_id(db, template_id))
    except RouteError as exc:
        raise CliError(str(exc)) from exc
    click.echo(f"{route.template_id}: off (all traffic upstream)")


# ---- report ------------------------------------------------------------------------------------------

# (column header, figure) of the three tables each section prints: traffic, latency, dollars.
TRAFFIC_COLUMNS = (
    ("requests", "requests"),
    ("routed", "routed_share"),
    ("fallbacks", "fallbacks"),
    ("escalated", "escalated"),
    ("tokens before", "input_tokens_before"),
    ("tokens after", "input_tokens_after"),
    ("token cut", "input_token_reduction_pct"),
)
LATENCY_COLUMNS = (
    ("p50 ms before", "latency_p50_before_ms"),
    ("p50 ms after", "latency_p50_after_ms"),
    ("p95 ms before", "latency_p95_before_ms"),
    ("p95 ms after", "latency_p95_after_ms"),
)
DOLLAR_COLUMNS = (
    ("$ before uncached", "spend_before_uncached"),
    ("$ before cached", "spend_before_cached"),
    ("$ after", "spend_after"),
    ("$ saved vs uncached", "saved_vs_uncached"),
    ("$ saved vs cached", "saved_vs_cached"),
)


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON (shape: gateway/accounting/report.py)."
)
@click.option("--since", help="Only requests since: 7d, 24h, 30m, 2026-11-20 or an ISO datetime.")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False, path_type=Path), help="PNG path.")
@click.option("--no-chart", is_flag=True, help="Do not write the PNG chart.")
@click.pass_context
def report(
    ctx: click.Context, as_json: bool, since: str | None, chart_path: Path | None, no_chart: bool
) -> None:
    """Tokens, latency and dollars saved, per template and per day, against uncached and cached baselines."""
    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    settings = get_settings(ctx)
    data = build_report(_db(ctx), since_at, local_cost_per_hour=settings.local_cost_per_hour)
    if not no_chart:
        from gateway.accounting.report_chart import write_png  # matplotlib only when a chart is wanted

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        chart_path = write_png(data, chart_path or settings.home / "reports" / f"report-{stamp}.png")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        if not no_chart:
            click.echo(f"chart: {chart_path}", err=True)  # stdout stays pure JSON
        return
    console = Console()
    sections = [
        ("Totals", [("all", data["totals"])]),
        ("Per template", [(_template_label(t), t) for t in data["by_template"]]),
        ("Per day", [(d["day"], d) for d in data["by_day"]]),
    ]
    for title, rows in sections:
        console.print(_table(f"{title}: traffic", TRAFFIC_COLUMNS, rows))
        console.print(_table(f"{title}: latency", LATENCY_COLUMNS, rows))
        console.print(_table(f"{title}: dollars", DOLLAR_COLUMNS, rows))
    if data["calibration"]:
        console.print(_selective_table(data))
        for route in data["calibration"]:
            if route["note"]:
                click.echo(f"{route['template_id'][:12]}: {route['note']}")
    if not no_chart:
        click.echo(f"chart: {chart_path}")


def _selective_table(data: dict[str, Any]) -> Table:
    """Per route: the threshold applied, what the held-out set promised, what traffic showed."""
    table = Table(
        title="Selective routing (held-out: calibration at the gate; live: this traffic)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for header in ("", "mode", "threshold", "target", "held-out cov/agr", "coverage", "escalated"):
        table.add_column(header, justify="left" if not header else "right")
    table.add_column("live agr (n)", justify="right")
    table.add_column("$ saved vs cached", justify="right")
    traffic = {t["template_id"]: t for t in data["by_template"]}
    for route in data["calibration"]:
        model = route["model"] or {}
        figures = traffic.get(route["template_id"], {})
        held_out = (
            f"{100 * model['coverage']:.0f}% / {model['agreement']:.2f}"
            if model.get("agreement") is not None
            else "n/a"
        )
        live = route["live_agreement"]
        table.add_row(
            (route["template_name"] or route["template_id"])[:24],
            route["mode"],
            "none" if route["threshold"] is None else f"{route['threshold']:.4g}",
            f"{model['target']:.2f} {model['metric']}" if model else "n/a",
            held_out,
            format_figure("coverage", figures.get("coverage")),
            str(figures.get("escalated", 0)),
            "n/a" if live is None else f"{live:.2f} ({route['live_compared']})",
            format_figure("saved_vs_cached", figures.get("saved_vs_cached")),
        )
    return table


def _template_label(row: dict[str, Any]) -> str:
    if row["template_id"] is None:
        return "(no template)"
    return (row["template_name"] or row["template_id"])[:24]


def _table(title: str, columns: tuple[tuple[str, str], ...], rows: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("")
    for header, _ in columns:
        table.add_column(header, justify="right")
    for label, figures in rows:
        table.add_row(label, *(_compact(name, figures[name]) for _, name in columns))
    return table


def _compact(name: str, value: Any) -> str:
    """format_figure without units (the header has them), so each table fits 80 columns."""
    if value is not None and name.endswith("_ms"):
        return f"{value:,.0f}"
    return format_figure(name, value)
