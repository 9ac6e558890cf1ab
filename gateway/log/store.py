"""The SQLite log store: open a database in WAL mode and bring its schema up to date.

Migrations are an append-only list of small functions, recorded by name in `_migrations` (the way
simonw/llm does it). Never edit or reorder a migration that has shipped; append a new one.
Column names follow LiteLLM's SpendLogs where they overlap (request_id, model, startTime, spend...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_requests(db: sqlite_utils.Database) -> None:
    db["requests"].create(
        {
            "request_id": str,
            "startTime": str,  # ISO 8601 UTC
            "endTime": str,
            "api_key_id": str,  # sha256 prefix of the gateway key, never the key
            "model": str,  # model the client asked for
            "model_served": str,  # backend model that answered
            "api_base": str,  # backend address (no credentials)
            "route": str,  # upstream | local | fallback | shadow
            "messages": str,  # JSON
            "params": str,  # JSON: every other request field
            "stream": int,
            "response": str,  # assistant text
            "finish_reason": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "total_tokens": int,
            "cached_prompt_tokens": int,
            "ttft_ms": float,
            "latency_ms": float,
            "overhead_ms": float,
            "spend": float,
            "status": int,  # HTTP status returned to the client
            "error": str,
            "source": str,  # gateway | import
            "content_hash": str,  # sha256 of request+response, makes imports idempotent
            "template_id": str,
            "counterfactual_prompt_tokens": int,
            "counterfactual_completion_tokens": int,
            "counterfactual_spend": float,  # full prompt upstream, no caching
            "counterfactual_cached_spend": float,  # full prompt upstream, static prefix cached
            "local_compute_s": float,
            "shadow_response": str,
            "shadow_agreement": float,
        },
        pk="request_id",
    )
    db["requests"].create_index(["startTime"])
    db["requests"].create_index(["content_hash"])
    db["requests"].create_index(["template_id"])


@migration
def m002_templates(db: sqlite_utils.Database) -> None:
    db["templates"].create(
        {
            "id": str,  # hash of the static structure: stable across re-runs
            "name": str,
            "static_text": str,  # the template with slot markers
            "structure": str,  # JSON: messages with static parts and slots
            "slots": str,  # JSON list of slot names
            "n_requests": int,
            "first_seen": str,
            "last_seen": str,
            "mean_prompt_tokens": float,
            "prompt_token_share": float,
            "spend": float,
            "est_monthly_saving": float,
            "mined_at": str,
        },
        pk="id",
    )
    db["examples"].create(
        {"hash": str, "input": str, "output": str, "raw": str, "n_uses": int},
        pk="hash",
    )
    db["template_examples"].create(
        {"template_id": str, "example_hash": str, "n_uses": int},
        pk=("template_id", "example_hash"),
        foreign_keys=[("template_id", "templates", "id"), ("example_hash", "examples", "hash")],
    )
    # Which template each logged request belongs to (and what its variable parts were).
    db["request_templates"].create(
        {"request_id": str, "template_id": str, "query": str, "slots": str, "example_hashes": str},
        pk="request_id",
    )
    db["request_templates"].create_index(["template_id"])


@migration
def m003_models(db: sqlite_utils.Database) -> None:
    db["models"].create(
        {
            "id": str,
            "template_id": str,
            "gguf_path": str,
            "sha256": str,
            "quant": str,
            "base_model": str,
            "config": str,  # JSON of the training config
            "stage_losses": str,  # JSON
            "eval_scores": str,  # JSON
            "n_train_requests": int,
            "status": str,  # candidate | active | retired
            "created_at": str,
            "activated_at": str,
        },
        pk="id",
    )
    db["models"].create_index(["template_id", "status"])


@migration
def m004_routes(db: sqlite_utils.Database) -> None:
    db["routes"].create(
        {
            "template_id": str,
            "model_id": str,
            "mode": str,  # active | shadow | off (kill switch)
            "canary_percent": float,
            "updated_at": str,
        },
        pk="template_id",
    )


@migration
def m005_requests_token_source(db: sqlite_utils.Database) -> None:
    # "usage" (reported by the backend) or "estimated" (an imported line without usage); NULL = gateway row.
    db["requests"].add_column("token_source", str)


@migration
def m006_requests_completion_id(db: sqlite_utils.Database) -> None:
    # The `chatcmpl-...` id the client received, so a request a client reports can be found in the log.
    db["requests"].add_column("completion_id", str)
    db["requests"].create_index(["completion_id"])


@migration
def m007_requests_sanitized(db: sqlite_utils.Database) -> None:
    # What the gateway had to change to store a row (gateway/log/storable.py); NULL = stored as it came.
    db["requests"].add_column("sanitized", str)


@migration
def m008_selective_routing(db: sqlite_utils.Database) -> None:
    # A model's calibration (JSON: confidence signal, metric, target, coverage/agreement curve, threshold).
    db["models"].add_column("calibration", str)
    # The confidence threshold a route applies now (NULL = none: every answer served) and why it last
    # changed (live calibration writes it).
    db["routes"].add_column("threshold", float)
    db["routes"].add_column("note", str)
    # The local answer's confidence (local, escalated and shadow rows).
    db["requests"].add_column("local_confidence", float)


def open_db(path: str | Path, busy_timeout_ms: int = 10000) -> sqlite_utils.Database:
    """Open (creating if needed) a log database in WAL mode with every migration applied."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.conn.execute("PRAGMA journal_mode=WAL")
    db.conn.execute("PRAGMA synchronous=NORMAL")  # durable across process kills in WAL mode
    db.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> None:
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
    done = {row["name"] for row in db["_migrations"].rows}
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with db.conn:
            fn(db)
            db["_migrations"].insert({"name": fn.__name__, "applied_at": _now()})


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
