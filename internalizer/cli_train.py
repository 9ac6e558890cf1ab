"""`promptintern compress`, `internalize`, `models [activate|retire ID]` and `nightly`."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import sqlite_utils

from gateway.cli import CliError, get_settings
from gateway.log.store import open_db
from gateway.routing.routes_store import like_prefix
from gateway.settings import Settings

# Failures a user can act on; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    "ConfigError",
    "DatasetError",
    "BaseModelError",
    "TrainingError",
    "ExportError",
    "RegistryError",
    "GGUFWriteError",
    "PlanError",
)
# With a night's budget, a template is not started with less than this left (loading and planning alone
# take about a minute on 2 cores).
MIN_JOB_MIN = 2.0


def _open(settings: Settings) -> sqlite_utils.Database:
    settings.ensure_home()
    return open_db(settings.db_path)


def _config(
    settings: Settings, config_file: str | None, overrides: tuple[str, ...], budget_min: float | None = None
) -> Any:
    from internalizer.config import ConfigError, load_config, parse_overrides

    try:
        values = parse_overrides(overrides)
        if budget_min is not None:
            values["budget_min"] = budget_min
        return load_config(config_file or settings.internalize_config, values)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _resolve_template(db: sqlite_utils.Database, prefix: str) -> str:
    sql = "select id from templates where id like ? escape '\\'"
    rows = [r["id"] for r in db.query(sql, [like_prefix(prefix)])]
    if prefix in rows:
        return prefix
    if len(rows) == 1:
        return rows[0]
    raise CliError(
        f"no template {prefix!r}" if not rows else f"{prefix!r} is ambiguous: {len(rows)} templates"
    )


_config_options = [
    click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), help="Internalization config YAML."
    ),
    click.option(
        "--budget-min",
        type=click.FloatRange(min=0.0, min_open=True),
        default=None,
        help="Minutes the job may take (nightly: all templates together). Same as -o budget_min=N.",
    ),
    click.option(
        "-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key."
    ),
]


def _with_config_options(fn: Any) -> Any:
    for option in reversed(_config_options):
        fn = option(fn)
    return fn


@click.command("compress")
@click.argument("template_id")
@click.option(
    "--rate", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0), help="Share of tokens kept."
)
@click.option("--base-model", default=None, help="GGUF file or HF dir (default: the settings' base model).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def compress(
    ctx: click.Context, template_id: str, rate: float, base_model: str | None, as_json: bool
) -> None:
    """Print a template compressed to RATE of its tokens by the base model's surprisal."""
    settings = get_settings(ctx)
    db = _open(settings)
    template_id = _resolve_template(db, template_id)
    static_text = db["templates"].get(template_id)["static_text"] or ""
    from internalizer.base import BaseModelError, load_base, resolve_base_path
    from internalizer.compress import compress_text

    try:
        base = load_base(resolve_base_path(settings, base_model))
    except BaseModelError as exc:
        raise CliError(str(exc)) from exc
    result = compress_text(base.model, base.tokenizer, static_text, rate)
    if as_json:
        payload = {"template_id": template_id, "rate": rate, "kept_ratio": round(result.kept_ratio, 4)}
        click.echo(
            json.dumps(
                payload | {"tokens": result.total_tokens, "kept": result.kept_tokens, "text": result.text}
            )
        )
        return
    click.echo(result.text)
    click.echo(
        f"\n-- kept {result.kept_tokens} of {result.total_tokens} tokens "
        f"({result.kept_ratio:.0%}, asked {rate:.0%})",
        err=True,
    )


def _run_one(
    settings: Settings,
    template_id: str,
    cfg: Any,
    labels: Path | None,
    as_json: bool,
    queries: Path | None = None,
) -> dict[str, Any]:
    from internalizer.job import internalize as run_job

    say = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
    try:
        result = run_job(
            settings,
            template_id,
            cfg,
            labels_path=labels,
            progress=not as_json,
            say=say,
            queries_path=queries,
        )
    except Exception as exc:
        if type(exc).__name__ in USER_ERRORS:
            return {
                "template_id": template_id,
                "status": "failed",
                "error": _one_line(exc),
                "error_type": type(exc).__name__,
            }
        raise
    return asdict(result)


def _summary_table(rows: list[dict[str, Any]], gate_metric: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "template", "status", "model", gate_metric, "base full prompt", "train s", "GGUF MB", "note"
    )
    for row in rows:
        scores = row.get("eval_scores") or {}
        mine = scores.get("internalized", {}).get(gate_metric)
        ref = scores.get("base_full_prompt", {}).get(gate_metric)
        table.add_row(
            row["template_id"][:12],
            row["status"],
            row.get("model_id") or "-",
            f"{mine:.3f}" if mine is not None else "-",
            f"{ref:.3f}" if ref is not None else "-",
            str(row.get("timings_s", {}).get("train", "-")),
            f"{row.get('gguf_size_bytes', 0) / 2**20:.1f}" if row.get("gguf_size_bytes") else "-",
            row.get("error") or row.get("reason") or "; ".join(row.get("notes") or []),
        )
    Console(stderr=False).print(table)


def _report(rows: list[dict[str, Any]], gate_metric: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows if len(rows) != 1 else rows[0], indent=1, default=str))
    else:
        _summary_table(rows, gate_metric)
    failed = [r for r in rows if r["status"] == "failed"]
    if len(rows) == 1 and failed:
        raise CliError(failed[0]["error"])
    if failed:
        raise CliError(f"{len(failed)} of {len(rows)} templates failed")


@click.command("internalize")
@click.argument("template_id", required=False)
@click.option("--all", "all_templates", is_flag=True, help="Every template with enough requests and saving.")
@click.option(
    "--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Targets (JSONL)."
)
@click.option(
    "--queries",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='More queries (JSONL, {"query": ...} a line) the teacher answers; needs distill_alpha < 1.',
)
@click.option(
    "--min-saving", default=0.0, show_default=True, help="With --all: est. monthly saving ($) needed."
)
@_with_config_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def internalize(
    ctx: click.Context,
    template_id: str | None,
    all_templates: bool,
    labels: Path | None,
    queries: Path | None,
    min_saving: float,
    config_file: str | None,
    budget_min: float | None,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Fine-tune a local model that answers TEMPLATE_ID's requests from the query alone.

    Before training it prints its plan (stages, records, tokens, expected minutes); with --budget-min N
    the template stages train on fewer records so that each job fits in N minutes."""
    settings = get_settings(ctx)
    cfg = _config(settings, config_file, overrides, budget_min)
    db = _open(settings)
    if all_templates == bool(template_id):
        raise CliError("give a TEMPLATE_ID or --all (not both)")
    if all_templates:
        ids = [
            r["id"]
            for r in db.query(
                "select id from templates where n_requests >= ? and coalesce(est_monthly_saving, 0) >= ? "
                "order by est_monthly_saving desc",
                [cfg.min_requests, min_saving],
            )
        ]
        if not ids:
            raise CliError(f"no template has {cfg.min_requests}+ requests and ${min_saving}+ monthly saving")
    else:
        ids = [_resolve_template(db, template_id or "")]
    if queries and all_templates:
        raise CliError("--queries belongs to one template: give a TEMPLATE_ID, not --all")
    rows = [_run_one(settings, tid, cfg, labels, as_json, queries) for tid in ids]
    _report(rows, cfg.gate_metric, as_json)


@click.group("models", invoke_without_command=True)
@click.option("--template", "template_id", default=None, help="Only this template's models.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def models(ctx: click.Context, template_id: str | None, as_json: bool) -> None:
    """List internalized models (or `activate ID` / `retire ID`)."""
    if ctx.invoked_subcommand is not None:
        return
    from internalizer.registry import list_models

    rows = list_models(_open(get_settings(ctx)), template_id)
    if as_json:
        for row in rows:
            for key in ("config", "stage_losses", "eval_scores", "calibration"):
                row[key] = json.loads(row[key]) if row.get(key) else None
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("No internalized models yet: run `promptintern internalize TEMPLATE_ID`.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "template", "status", "quant", "score", "train reqs", "created")
    for row in rows:
        scores = json.loads(row["eval_scores"] or "{}").get("internalized", {})
        metric = json.loads(row["config"] or "{}").get("gate_metric", "chrf")
        value = scores.get(metric)
        table.add_row(
            row["id"],
            (row["template_id"] or "")[:12],
            row["status"],
            row["quant"],
            f"{metric} {value:.3f}" if value is not None else "-",
            str(row["n_train_requests"]),
            (row["created_at"] or "")[:19],
        )
    Console().print(table)


def _change_status(ctx: click.Context, model_id: str, action: str) -> None:
    from internalizer import registry

    db = _open(get_settings(ctx))
    try:
        if action == "activate":  # a person asked: the route serves this model (mode active)
            row = registry.activate(db, model_id, by_operator=True)
        else:
            row = registry.retire(db, model_id)
    except registry.RegistryError as exc:
        raise CliError(str(exc)) from exc
    click.echo(f"model {row['id']} is now {row['status']} (template {row['template_id']})")


@models.command("activate")
@click.argument("model_id")
@click.pass_context
def activate(ctx: click.Context, model_id: str) -> None:
    """Serve MODEL_ID for its template (the previous active model is retired)."""
    _change_status(ctx, model_id, "activate")


@models.command("retire")
@click.argument("model_id")
@click.pass_context
def retire(ctx: click.Context, model_id: str) -> None:
    """Stop serving MODEL_ID; its template's traffic goes upstream again."""
    _change_status(ctx, model_id, "retire")


def templates_due(db: sqlite_utils.Database, min_requests: int, min_growth: float) -> list[str]:
    """Templates with enough requests and no model yet, or whose traffic grew since their newest model."""
    due = []
    for row in db.query("select id, n_requests from templates order by est_monthly_saving desc"):
        if (row["n_requests"] or 0) < min_requests:
            continue
        last = next(
            iter(
                db.query(
                    "select * from models where template_id = ? order by created_at desc limit 1", [row["id"]]
                )
            ),
            None,
        )
        if last is None:
            due.append(row["id"])
            continue
        n_eval = json.loads(last["eval_scores"] or "{}").get("internalized", {}).get("n", 0)
        seen = (last["n_train_requests"] or 0) + int(n_eval)
        if row["n_requests"] >= seen * (1 + min_growth):
            due.append(row["id"])
    return due


@click.command("nightly")
@click.option("--min-growth", default=0.2, show_default=True, help="Traffic growth that triggers a retrain.")
@_with_config_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nightly(
    ctx: click.Context,
    min_growth: float,
    config_file: str | None,
    budget_min: float | None,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Mine the log, then internalize every template that qualifies (for cron).

    With --budget-min N the whole night takes about N minutes: templates go largest expected saving first,
    each gets the time still left, and those that do not fit are left for the next night."""
    from internalizer.mine import mine as run_mine

    started = time.monotonic()
    settings = get_settings(ctx)
    cfg = _config(settings, config_file, overrides)
    total = budget_min if budget_min is not None else 0.0
    db = _open(settings)
    mined = run_mine(db)
    if not as_json:
        click.echo(f"mined {len(mined.templates)} templates from {mined.n_requests} requests", err=True)
    due = templates_due(db, cfg.min_requests, min_growth)
    if not due:
        if as_json:
            click.echo("[]")
        else:
            click.echo("Nothing to internalize: no template has enough new traffic.")
        return
    rows = _run_within(settings, due, cfg, total, started, as_json)
    left = [r["template_id"][:12] for r in rows if r["status"] == "left"]
    if left and not as_json:
        click.echo(f"left for the next night: {', '.join(left)}", err=True)
    _report(rows, cfg.gate_metric, as_json)


def _run_within(
    settings: Settings, ids: list[str], cfg: Any, total_min: float, started: float, as_json: bool
) -> list[dict[str, Any]]:
    """Internalize `ids` in order; with `total_min`, each job gets the minutes still left, and a template
    with too little time left (or whose plan does not fit it) is left for the next run."""
    rows = []
    for template_id in ids:
        if not total_min:
            rows.append(_run_one(settings, template_id, cfg, None, as_json))
            continue
        left_min = total_min - (time.monotonic() - started) / 60
        if left_min < MIN_JOB_MIN:
            reason = f"{max(left_min, 0):.1f} min of the night's budget left"
            rows.append({"template_id": template_id, "status": "left", "reason": reason})
            continue
        row = _run_one(settings, template_id, dataclasses.replace(cfg, budget_min=left_min), None, as_json)
        if row.get("error_type") == "PlanError":
            row = {"template_id": template_id, "status": "left", "reason": row["error"]}
        rows.append(row)
    return rows
