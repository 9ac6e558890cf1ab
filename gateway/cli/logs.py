"""`promptintern import FILE` and `promptintern logs`: put traffic into the request log and read it back.

`logs` follows simonw/llm's `llm logs`: the last N requests (oldest first), `-q` text search, `-m` model
filter, `--json`, `--usage` totals, and `logs path`. Search is a LIKE scan over messages and responses: an
FTS index would tax every insert on the gateway's hot path to speed up an occasional interactive query.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import sqlite_utils

from gateway.accounting.report import percentile
from gateway.cli import CliError, get_settings
from gateway.log.store import open_db
from gateway.settings import Settings, UpstreamModel

JSON_COLUMNS = ("messages", "params")


# ---- import ---------------------------------------------------------------------------------------------


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-m", "--model", "default_model", help="Model name for lines that do not say (fine-tuning format)."
)
@click.pass_context
def import_command(ctx: click.Context, file: Path, default_model: str | None) -> None:
    """Load existing traffic from a JSONL FILE into the request log.

    Each line is either {"request": ..., "response": ..., "timestamp": ...} or the OpenAI fine-tuning chat
    format {"messages": [...]} (the last assistant message is the response). Every line is checked first;
    a bad line stops the import with its line number and nothing is written. Re-importing adds nothing.
    """
    from tqdm import tqdm

    from gateway.log.importer import ImportFileError, import_file

    settings = get_settings(ctx)
    settings.ensure_home()
    spend_for = _import_pricer(settings)
    db = open_db(settings.db_path)
    try:
        with tqdm(
            total=file.stat().st_size,
            unit="B",
            unit_scale=True,
            desc="importing",
            file=sys.stderr,
            leave=False,
        ) as bar:
            result = import_file(db, file, default_model, spend_for, on_bytes=bar.update)
    except ImportFileError as exc:
        raise CliError(f"{file}: {exc}; nothing was imported") from None
    finally:
        db.close()
    if result.records == 0:
        raise CliError(f"{file} holds no records (empty file): nothing to import")
    estimated = f" (token counts estimated for {result.estimated})" if result.estimated else ""
    click.echo(
        f"Imported {result.imported} requests from {file}, skipped {result.skipped} duplicates{estimated}."
    )


def _import_pricer(settings: Settings):
    """spend(model, prompt, completion, cached) from gateway.accounting.pricing; None where no price known."""
    from gateway.accounting.pricing import Pricer, Usage

    pricer = Pricer(settings)
    configured = {model.name: model for model in settings.models}

    def spend_for(model: str | None, prompt: int, completion: int, cached: int) -> float | None:
        if not model:
            return None
        upstream = configured.get(model) or UpstreamModel(name=model, litellm_model=model)
        if not upstream.local and pricer.price_for(upstream) is None:
            return None  # unpriced: unknown, not free
        return pricer.spend(upstream, Usage(prompt, completion, cached), backend_seconds=0.0)

    return spend_for


# ---- logs -----------------------------------------------------------------------------------------------


@click.group("logs", invoke_without_command=True)
@click.option("-n", "--count", default=3, show_default=True, help="How many recent requests; 0 for all.")
@click.option(
    "-q",
    "--query",
    "queries",
    multiple=True,
    help="Text in the messages or the response, or an exact id (chatcmpl-..., req-...); repeat: AND.",
)
@click.option("-m", "--model", help="Only requests for this model (asked for or served).")
@click.option("--full", is_flag=True, help="Show every message, not only the last one.")
@click.option("-s", "--short", is_flag=True, help="One line per request.")
@click.option("--usage", is_flag=True, help="Totals instead of rows: tokens, spend, latency p50/p95.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.pass_context
def logs(
    ctx: click.Context,
    count: int,
    queries: tuple[str, ...],
    model: str | None,
    full: bool,
    short: bool,
    usage: bool,
    as_json: bool,
) -> None:
    """Show the most recent requests in the log (oldest first), or --usage totals."""
    if ctx.invoked_subcommand is not None:
        return
    if count < 0:
        raise CliError("-n must be 0 (all) or a positive number")
    settings = get_settings(ctx)
    db = _open_existing(settings.db_path)
    if db is None:
        click.echo(
            f"No request log at {settings.db_path} yet: run `promptintern serve` or `promptintern import`.",
            err=True,
        )
        if as_json:
            click.echo(json.dumps({} if usage else [], indent=2))
        return
    where, params = build_filter(queries, model)
    try:
        if usage:
            summary = usage_summary(db, where, params)
            click.echo(json.dumps(summary, indent=2) if as_json else format_usage(summary))
            return
        rows = recent_rows(db, count, where, params)
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([_decoded(row) for row in rows], indent=2, ensure_ascii=False))
    elif not rows:
        what = "matching requests" if (queries or model) else "requests"
        click.echo(f"No {what} in {settings.db_path}.", err=True)
    elif short:
        click.echo("\n".join(format_short(row) for row in rows))
    else:
        click.echo("\n\n".join(format_row(row, full) for row in rows))


@logs.command("path")
@click.pass_context
def logs_path(ctx: click.Context) -> None:
    """Print the path of the request log database."""
    click.echo(str(get_settings(ctx).db_path))


@logs.command("datasette")
@click.pass_context
def logs_datasette(ctx: click.Context) -> None:
    """Print the command that browses the log in Datasette (column descriptions, facets)."""
    import shlex
    from importlib.resources import files

    metadata = files("gateway.log").joinpath("datasette_metadata.json")
    db_path = get_settings(ctx).db_path
    click.echo(f"datasette {shlex.quote(str(db_path))} --metadata {shlex.quote(str(metadata))}")
    click.echo("# datasette is not a dependency: pipx install datasette, or uvx datasette ...", err=True)


def _open_existing(path: Path) -> sqlite_utils.Database | None:
    """The log, or None when there is none yet (reading must never create one)."""
    return open_db(path) if path.is_file() else None


def build_filter(queries: tuple[str, ...] | list[str], model: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for text in queries:
        # messages are stored as JSON, where quotes, backslashes and newlines are escaped: search that form
        in_json = json.dumps(text, ensure_ascii=False)[1:-1]
        clauses.append(
            "(messages LIKE ? ESCAPE '\\' OR response LIKE ? ESCAPE '\\'"
            " OR completion_id = ? OR request_id = ?)"
        )
        params += [_like_pattern(in_json), _like_pattern(text), text.strip(), text.strip()]
    if model:
        clauses.append("(model = ? OR model_served = ?)")
        params += [model, model]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _like_pattern(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def recent_rows(db: sqlite_utils.Database, count: int, where: str, params: list[Any]) -> list[dict[str, Any]]:
    limit = f" LIMIT {int(count)}" if count else ""
    sql = f"SELECT * FROM requests{where} ORDER BY startTime DESC, rowid DESC{limit}"
    return list(reversed(list(db.query(sql, params))))


def usage_summary(
    db: sqlite_utils.Database, where: str = "", params: list[Any] | None = None
) -> dict[str, Any]:
    """Totals over the selected requests, overall and per route."""
    params = params or []
    total = _totals(db, where, params)
    by_route = db.query(f"SELECT DISTINCT route FROM requests{where} ORDER BY route", params)
    routes = {}
    for row in list(by_route):
        route_where = (where + " AND" if where else " WHERE") + " route IS ?"
        routes[row["route"] or "unknown"] = _totals(db, route_where, [*params, row["route"]])
    return {**total, "by_route": routes}


def _totals(db: sqlite_utils.Database, where: str, params: list[Any]) -> dict[str, Any]:
    sums = next(
        db.query(
            "SELECT COUNT(*) AS requests, SUM(status >= 400) AS errors,"
            " TOTAL(prompt_tokens) AS prompt_tokens, TOTAL(completion_tokens) AS completion_tokens,"
            " TOTAL(cached_prompt_tokens) AS cached_prompt_tokens, TOTAL(spend) AS spend,"
            f" SUM(spend IS NULL) AS unpriced FROM requests{where}",
            params,
        )
    )
    latencies = [r["latency_ms"] for r in db.query(f"SELECT latency_ms FROM requests{where}", params)]
    latencies = sorted(v for v in latencies if v is not None)
    return {
        "requests": sums["requests"],
        "errors": sums["errors"] or 0,
        "prompt_tokens": int(sums["prompt_tokens"]),
        "completion_tokens": int(sums["completion_tokens"]),
        "cached_prompt_tokens": int(sums["cached_prompt_tokens"]),
        "spend": sums["spend"],
        "unpriced_requests": sums["unpriced"] or 0,
        "latency_ms_p50": percentile(latencies, 50),
        "latency_ms_p95": percentile(latencies, 95),
    }


# ---- formatting -----------------------------------------------------------------------------------------


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column in JSON_COLUMNS:
        if isinstance(out.get(column), str):
            try:
                out[column] = json.loads(out[column])
            except json.JSONDecodeError:
                pass  # keep the stored text as is
    return out


def format_row(row: dict[str, Any], full: bool) -> str:
    served = f" -> {row['model_served']}" if row.get("model_served") not in (None, row.get("model")) else ""
    cached = f" ({row['cached_prompt_tokens']} cached)" if row.get("cached_prompt_tokens") else ""
    tokens = f"{row.get('prompt_tokens')} in{cached} / {row.get('completion_tokens')} out"
    lines = [
        f"# {row.get('startTime')}  {row.get('model') or '-'}{served}  route: {row.get('route')}"
        f"  status: {row.get('status')}",
        f"id: {row['request_id']}{_completion_id(row)}  source: {row.get('source')}  tokens: {tokens}"
        f"  latency: {_ms(row.get('latency_ms'))}  spend: {_dollars(row.get('spend'))}",
    ]
    messages = _decoded(row).get("messages")
    if not isinstance(messages, list):
        messages = []
    shown = messages if full else messages[-1:]
    lines.append("\n## Messages" if full else "\n## Prompt")
    for message in shown:
        text = message.get("content") if isinstance(message, dict) else message
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False)
        lines.append(f"[{message.get('role')}] {text}" if full and isinstance(message, dict) else text)
    if not full and len(messages) > 1:
        lines.append(f"(+ {len(messages) - 1} earlier messages; --full shows them)")
    if row.get("error"):
        lines += ["\n## Error", str(row["error"])]
    lines += ["\n## Response", row.get("response") or ""]
    return "\n".join(lines)


def format_short(row: dict[str, Any]) -> str:
    messages = _decoded(row).get("messages")
    last = messages[-1].get("content") if isinstance(messages, list) and messages else ""
    prompt = " ".join(str(last).split())[:60]
    answer = " ".join((row.get("response") or "").split())[:60]
    return (
        f"{row.get('startTime')}  {row.get('model') or '-'}  {row.get('route')}  {row.get('status')}"
        f"  {row.get('prompt_tokens')}+{row.get('completion_tokens')} tok  {_ms(row.get('latency_ms'))}"
        f"  {prompt!r} -> {answer!r}"
    )


def format_usage(summary: dict[str, Any]) -> str:
    lines = [_usage_lines("all", summary)]
    if len(summary["by_route"]) > 1:
        lines += [_usage_lines(route, totals) for route, totals in summary["by_route"].items()]
    return "\n\n".join(lines)


def _usage_lines(title: str, t: dict[str, Any]) -> str:
    unpriced = f" ({t['unpriced_requests']} unpriced)" if t["unpriced_requests"] else ""
    return "\n".join(
        [
            f"[{title}]",
            f"requests           {t['requests']:,} ({t['errors']:,} errors)",
            f"prompt tokens      {t['prompt_tokens']:,} ({t['cached_prompt_tokens']:,} cached)",
            f"completion tokens  {t['completion_tokens']:,}",
            f"spend              {_dollars(t['spend'])}{unpriced}",
            f"latency p50 / p95  {_ms(t['latency_ms_p50'])} / {_ms(t['latency_ms_p95'])}",
        ]
    )


def _completion_id(row: dict[str, Any]) -> str:
    return f" ({row['completion_id']})" if row.get("completion_id") else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _dollars(value: float | None) -> str:
    return "-" if value is None else f"${value:,.6f}"
