"""`promptintern export --template ID`: a template's traffic as OpenAI fine-tuning JSONL.

One line per successful request of the template: `{"messages": [...the request's messages..., {"role":
"assistant", "content": <the answer>}]}`, the format OpenAI's fine-tuning API, most trainers and
`promptintern import` read, so a user can take their data elsewhere. Failed requests and empty answers are
left out; `--upstream-only` keeps only answers from the upstream model (not from internalized ones).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import sqlite_utils

from gateway.cli import CliError, get_settings
from gateway.log.store import open_db
from gateway.routing.routes_store import RouteError, resolve_template_id

_ROWS = """
select r.messages, r.response from requests r
left join request_templates rt on rt.request_id = r.request_id
where coalesce(r.template_id, rt.template_id) = :template
  and r.status = 200 and r.messages is not null and coalesce(r.response, '') != ''
  and (:upstream_only = 0 or r.route in ('upstream', 'fallback', 'shadow'))
order by r.startTime, r.rowid
"""


def fine_tuning_lines(
    db: sqlite_utils.Database, template_id: str, upstream_only: bool = False
) -> Iterator[dict[str, Any]]:
    """The template's successful requests as fine-tuning records (rows with unreadable messages skipped)."""
    for messages_json, response in db.execute(
        _ROWS, {"template": template_id, "upstream_only": int(upstream_only)}
    ):
        try:
            messages = json.loads(messages_json)
        except ValueError:
            continue
        if not isinstance(messages, list) or not messages:
            continue
        yield {"messages": [*messages, {"role": "assistant", "content": response}]}


@click.command("export")
@click.option("-t", "--template", "template", required=True, help="Template id (or a unique prefix of it).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
@click.option("--upstream-only", is_flag=True, help="Only answers the upstream gave (not local models').")
@click.pass_context
def export(ctx: click.Context, template: str, output: Path | None, upstream_only: bool) -> None:
    """Write a template's traffic as OpenAI fine-tuning JSONL (request messages + the answer)."""
    settings = get_settings(ctx)
    if not settings.db_path.is_file():
        raise CliError(f"no request log at {settings.db_path}: nothing to export")
    db = open_db(settings.db_path)
    try:
        try:
            template_id = resolve_template_id(db, template)
        except RouteError as exc:
            raise CliError(f"{exc} (see `promptintern templates`)") from None
        if output is None:
            count = _write(db, template_id, upstream_only, sys.stdout)
        else:
            output.parent.mkdir(parents=True, exist_ok=True)
            with output.open("w", encoding="utf-8") as out:
                count = _write(db, template_id, upstream_only, out)
    finally:
        db.close()
    where = f" to {output}" if output else ""
    click.echo(f"Exported {count} requests of template {template_id}{where}.", err=True)


def _write(db: sqlite_utils.Database, template_id: str, upstream_only: bool, out: IO[str]) -> int:
    count = 0
    for record in fine_tuning_lines(db, template_id, upstream_only):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
