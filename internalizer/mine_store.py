"""Mining's side of the database: read the request log, compute each template's figures, write the
mining tables in one transaction."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlite_utils

from gateway.templates.matcher import MatchResult, Template
from gateway.templates.query_format import query_only_messages
from gateway.templates.request_shape import Message, chat_messages
from internalizer.mine_align import ExampleInfo

MONTH_DAYS = 30.0
MIN_SPAN_HOURS = 1.0  # a log spanning minutes is extrapolated as if it spanned an hour


@dataclass
class LoggedRequest:
    request_id: str
    start_time: str | None
    prompt_tokens: int
    total_tokens: int
    spend: float
    messages: list[Message]


def load_requests(db: sqlite_utils.Database) -> tuple[int, list[LoggedRequest]]:
    """(rows in the log, the text-only chat requests among them), oldest first."""
    rows = db.conn.execute(
        "select request_id, startTime, messages, params, prompt_tokens, total_tokens, spend "
        "from requests order by startTime, request_id"
    ).fetchall()
    out = []
    for request_id, start, messages_json, params_json, prompt_tokens, total_tokens, spend in rows:
        try:
            request = json.loads(params_json) if params_json else {}
            request = request if isinstance(request, dict) else {}
            request["messages"] = json.loads(messages_json)
        except (TypeError, ValueError):
            continue
        messages = chat_messages(request)
        if messages is not None:
            out.append(
                LoggedRequest(
                    request_id, start, prompt_tokens or 0, total_tokens or 0, spend or 0.0, messages
                )
            )
    return len(rows), out


def known_examples(db: sqlite_utils.Database) -> dict[str, ExampleInfo]:
    if "examples" not in db.table_names():
        return {}
    return {
        row["hash"]: ExampleInfo(row["input"] or "", row["output"] or "", row["raw"] or "")
        for row in db.query("select hash, input, output, raw from examples")
    }


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def removed_share(request: LoggedRequest, match: MatchResult) -> float:
    """Share of the prompt internalization removes: 1 - query-only prompt / full prompt, in characters."""
    full = sum(len(text) for _, text in request.messages)
    kept = sum(len(m["content"]) for m in query_only_messages(match.slots))
    return max(0.0, 1.0 - kept / full) if full else 0.0


def template_rows(
    templates: list[Template], requests: list[LoggedRequest], matches: list[MatchResult | None]
) -> list[dict]:
    """The figures of every template.

    Estimated monthly saving (dollars) = sum over the template's requests of
        spend * (prompt_tokens / total_tokens) * removed_share
    i.e. the part of each request's cost paid for prompt tokens, times the share of those tokens the
    internalized model no longer needs (everything but the query-only prompt), then scaled to 30 days:
        * 30 days / observed span of the whole log (first to last request, at least one hour).
    Completion tokens are still generated (locally), so they are not counted as saved.
    """
    times = [t for t in (_parse_time(r.start_time) for r in requests) if t is not None]
    span_days = max((max(times) - min(times)).total_seconds() / 86400, MIN_SPAN_HOURS / 24) if times else 1.0
    total_prompt = sum(r.prompt_tokens for r in requests) or 1
    per: dict[str, list[tuple[LoggedRequest, MatchResult]]] = defaultdict(list)
    for request, match in zip(requests, matches, strict=True):
        if match is not None:
            per[match.template_id].append((request, match))
    mined_at = datetime.now(UTC).isoformat()
    rows = []
    for template in templates:
        members = per.get(template.id, [])
        starts = [r.start_time for r, _ in members if r.start_time]
        prompt = sum(r.prompt_tokens for r, _ in members)
        saving = sum(
            r.spend * (r.prompt_tokens / r.total_tokens if r.total_tokens else 1.0) * removed_share(r, m)
            for r, m in members
        )
        rows.append(
            {
                "id": template.id,
                "name": template.name,
                "static_text": template.static_text,
                "structure": json.dumps(template.structure(), ensure_ascii=False),
                "slots": json.dumps(template.slot_names),
                "n_requests": len(members),
                "first_seen": min(starts) if starts else None,
                "last_seen": max(starts) if starts else None,
                "mean_prompt_tokens": prompt / len(members) if members else 0.0,
                "prompt_token_share": prompt / total_prompt,
                "spend": sum(r.spend for r, _ in members),
                "est_monthly_saving": saving * MONTH_DAYS / span_days,
                "mined_at": mined_at,
            }
        )
    return rows


def write_tables(
    db: sqlite_utils.Database,
    templates: list[Template],
    rows: list[dict],
    examples: dict[str, ExampleInfo],
    requests: list[LoggedRequest],
    matches: list[MatchResult | None],
) -> None:
    """Replace the mining tables in one transaction (all or nothing)."""
    uses: Counter[tuple[str, str]] = Counter()
    assigned = []
    for request, match in zip(requests, matches, strict=True):
        if match is None:
            continue
        uses.update((match.template_id, h) for h in match.example_hashes)
        assigned.append(
            (
                request.request_id,
                match.template_id,
                match.query,
                json.dumps(match.slots, ensure_ascii=False),
                json.dumps(match.example_hashes),
            )
        )
    pool_rows = []
    for template in templates:
        for digest in {*template.inline_pool.values(), *template.turn_pool.values()}:
            pool_rows.append((template.id, digest, uses[(template.id, digest)]))
    example_uses: Counter[str] = Counter()
    for (_, digest), n in uses.items():
        example_uses[digest] += n
    example_rows = [
        (digest, examples[digest].input, examples[digest].output, examples[digest].raw, example_uses[digest])
        for digest in sorted({d for _, d, _ in pool_rows})
        if digest in examples
    ]
    columns = list(rows[0]) if rows else []
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("request_templates", "template_examples", "examples", "templates"):
            conn.execute(f"DELETE FROM {table}")
        if rows:
            conn.executemany(
                f"INSERT INTO templates ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                [[row[c] for c in columns] for row in rows],
            )
        conn.executemany(
            "INSERT INTO examples (hash, input, output, raw, n_uses) VALUES (?, ?, ?, ?, ?)", example_rows
        )
        written = {row[0] for row in example_rows}
        conn.executemany(
            "INSERT INTO template_examples (template_id, example_hash, n_uses) VALUES (?, ?, ?)",
            [row for row in pool_rows if row[1] in written],
        )
        conn.executemany(
            "INSERT INTO request_templates (request_id, template_id, query, slots, example_hashes) "
            "VALUES (?, ?, ?, ?, ?)",
            assigned,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
