"""`promptintern mine`, `promptintern templates [show ID]` and `promptintern match FILE.jsonl`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import sqlite_utils

from gateway.cli import CliError, get_settings
from gateway.log.store import open_db
from gateway.routing.routes_store import like_prefix

SLOT_MARKER = re.compile(r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}")
ROLE_HEADER = re.compile(r"^\[(system|user|assistant)\]$", re.MULTILINE)


def _open(ctx: click.Context) -> sqlite_utils.Database:
    settings = get_settings(ctx)
    settings.ensure_home()
    return open_db(settings.db_path)


# ---- mine -----------------------------------------------------------------------------------------------


@click.command("mine")
@click.option(
    "--min-support",
    default=5,
    show_default=True,
    type=click.IntRange(2),
    help="Requests a template needs before it counts as recurring.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def mine(ctx: click.Context, min_support: int, as_json: bool) -> None:
    """Find recurring prompt templates, few-shot examples and queries in the request log.

    Re-running on a grown log updates the counts and adds new templates; existing ids never change.
    """
    from internalizer.mine import MineConfig
    from internalizer.mine import mine as run_mine

    db = _open(ctx)
    try:
        progress = None if as_json else (lambda message: click.echo(f"  {message}", err=True))
        result = run_mine(db, MineConfig(min_support=min_support), progress=progress)
    finally:
        db.close()
    if as_json:
        payload = {
            "requests": result.n_requests,
            "matchable": result.n_matchable,
            "assigned": result.n_assigned,
            "new_templates": result.new_ids,
            "seconds": round(result.seconds, 3),
            "templates": [_summary(row) for row in result.templates],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    if result.n_requests == 0:
        click.echo(
            "The request log is empty: nothing to mine. Send traffic through the gateway or run `import`."
        )
        return
    if not result.templates:
        click.echo(
            f"No recurring prompt in {result.n_requests} requests: no template is shared by "
            f"{min_support} or more requests. Nothing was written."
        )
        return
    click.echo(
        f"Mined {len(result.templates)} templates ({len(result.new_ids)} new) covering {result.n_assigned} "
        f"of {result.n_requests} requests in {result.seconds:.1f} s."
    )
    _print_table(result.templates)


# ---- templates ------------------------------------------------------------------------------------------


@click.group("templates", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def templates(ctx: click.Context, as_json: bool) -> None:
    """List mined templates by estimated monthly saving; `templates show ID` for one."""
    if ctx.invoked_subcommand is not None:
        return
    db = _open(ctx)
    try:
        rows = list(db.query("select * from templates order by est_monthly_saving desc, n_requests desc"))
    finally:
        db.close()
    if as_json:
        click.echo(json.dumps([_summary(row) for row in rows], indent=2))
    elif not rows:
        click.echo("No templates yet: run `promptintern mine`.")
    else:
        _print_table(rows)


@templates.command("show")
@click.argument("template_id")
@click.option("--json", "as_json", is_flag=True, help="Print the template as JSON.")
@click.option("-n", "--requests", "n_requests", default=3, show_default=True, help="Example requests shown.")
@click.pass_context
def show(ctx: click.Context, template_id: str, as_json: bool, n_requests: int) -> None:
    """One template: its text with slots highlighted, a few of its requests, its example pool."""
    db = _open(ctx)
    try:
        row = _find_template(db, template_id)
        requests = list(
            db.query(
                "select rt.request_id, rt.query, rt.slots, r.startTime from request_templates rt "
                "left join requests r on r.request_id = rt.request_id where rt.template_id = ? "
                "order by r.startTime desc limit ?",
                [row["id"], n_requests],
            )
        )
        pool = list(
            db.query(
                "select e.hash, e.input, e.output, te.n_uses from template_examples te "
                "join examples e on e.hash = te.example_hash where te.template_id = ? "
                "order by te.n_uses desc, e.hash",
                [row["id"]],
            )
        )
    finally:
        db.close()
    if as_json:
        payload = {
            **_summary(row),
            "static_text": row["static_text"],
            "structure": json.loads(row["structure"]),
            "requests": [{**r, "slots": json.loads(r["slots"] or "{}")} for r in requests],
            "examples": pool,
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    click.echo(click.style(f"{row['id']}  {row['name']}", bold=True))
    click.echo(
        f"{row['n_requests']} requests, {row['first_seen']} .. {row['last_seen']}, "
        f"{row['mean_prompt_tokens']:.0f} prompt tokens on average "
        f"({row['prompt_token_share']:.1%} of the log), "
        f"spend ${row['spend']:.4f}, est. saving ${row['est_monthly_saving']:.2f}/month"
    )
    click.echo("\n" + _highlight(row["static_text"]) + "\n")
    if requests:
        click.echo(click.style("Requests", bold=True))
        for request in requests:
            slots = json.loads(request["slots"] or "{}")
            shown = ", ".join(f"{name}={_clip(value, 70)!r}" for name, value in slots.items())
            click.echo(f"  {request['request_id']}  {shown}")
    if pool:
        click.echo(click.style(f"Example pool ({len(pool)})", bold=True))
        for example in pool[:20]:
            click.echo(
                f"  {example['n_uses']:>5}  {_clip(example['input'], 50)!r} "
                f"-> {_clip(example['output'], 40)!r}"
            )
        if len(pool) > 20:
            click.echo(f"  ... {len(pool) - 20} more")


# ---- match ----------------------------------------------------------------------------------------------


@click.command("match")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line.")
@click.pass_context
def match(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Match the requests of FILE.jsonl (the `import` formats) against the mined templates, in order."""
    from gateway.log.importer import ImportFileError, iter_records
    from gateway.templates.matcher import Matcher

    db = _open(ctx)
    try:
        matcher = Matcher.from_db(db)
    finally:
        db.close()
    try:
        records = [record for _, record in iter_records(file)]
    except ImportFileError as exc:
        raise CliError(f"{file}: {exc}") from None
    if not len(matcher):
        click.echo("warning: no templates mined yet (run `promptintern mine`): nothing matches", err=True)
    for number, record in enumerate(records, 1):
        found = matcher.match(record.request)
        if as_json:
            payload: dict[str, Any] = {
                "template_id": found.template_id if found else None,
                "query": found.query if found else None,
                "slots": found.slots if found else {},
            }
            click.echo(json.dumps(payload, ensure_ascii=False))
        elif found:
            click.echo(f"{number}: {found.template_id}  query={_clip(found.query, 80)!r}")
        else:
            click.echo(f"{number}: no template")


# ---- helpers --------------------------------------------------------------------------------------------


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "name",
        "n_requests",
        "first_seen",
        "last_seen",
        "mean_prompt_tokens",
        "prompt_token_share",
        "spend",
        "est_monthly_saving",
    )
    out = {key: row.get(key) for key in keys}
    out["slots"] = json.loads(row.get("slots") or "[]")
    return out


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'id':<17} {'requests':>8} {'tokens':>7} {'share':>6} {'spend $':>9} {'saving $/mo':>11}  name"
    click.echo(header)
    for row in rows:
        click.echo(
            f"{row['id']:<17} {row['n_requests']:>8} {row['mean_prompt_tokens']:>7.0f} "
            f"{row['prompt_token_share']:>6.1%} {row['spend']:>9.4f} {row['est_monthly_saving']:>11.2f}  "
            f"{_clip(row['name'] or '', 40)}"
        )


def _find_template(db: sqlite_utils.Database, template_id: str) -> dict[str, Any]:
    rows = list(
        db.query(
            "select * from templates where id like ? escape '\\' order by id", [like_prefix(template_id)]
        )
    )
    exact = [row for row in rows if row["id"] == template_id]
    if exact:
        return exact[0]
    if len(rows) == 1:
        return rows[0]
    if rows:
        raise CliError(f"{template_id!r} is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
    raise CliError(f"no template {template_id!r}: see `promptintern templates`")


def _highlight(text: str) -> str:
    text = SLOT_MARKER.sub(lambda m: click.style(m.group(0), fg="yellow", bold=True), text)
    return ROLE_HEADER.sub(lambda m: click.style(m.group(0), fg="cyan"), text)


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
