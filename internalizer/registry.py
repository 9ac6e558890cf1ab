"""The `models` table: internalized models as candidates, the one active model per template, retired ones.

Activation is one SQLite transaction: the template's previous active model is retired, the new one made
active and the template's route pointed at it (with the model's calibrated confidence threshold), so a
reader never sees two active models or none in between. Only rows whose GGUF exists and passed
verification are ever written (export publishes first).

The route's mode and canary share are the operator's: an automatic activation (a model that passed the
gate in `nightly`) points an existing route at the new model but keeps its mode, so a template switched
off (or to shadow) stays so. Only a person changes the mode: `models activate` (`by_operator=True`) or
`routes set`. A template with no route yet gets one, active at 100%.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.routing.routes_store import calibrated_threshold, like_prefix


class RegistryError(RuntimeError):
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat()


def new_model_id(template_id: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return f"m-{template_id[:8]}-{stamp}-{secrets.token_hex(2)}"


def register(
    db: sqlite_utils.Database,
    *,
    model_id: str,
    template_id: str,
    gguf_path: Path,
    sha256: str,
    quant: str,
    base_model: str,
    config: dict[str, Any],
    stage_losses: list[dict[str, Any]],
    eval_scores: dict[str, Any],
    n_train_requests: int,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Insert a candidate model row (`calibration`: internalizer/calibrate.py's curve and threshold)."""
    row = {
        "id": model_id,
        "template_id": template_id,
        "gguf_path": str(gguf_path),
        "sha256": sha256,
        "quant": quant,
        "base_model": base_model,
        "config": json.dumps(config),
        "stage_losses": json.dumps(stage_losses),
        "eval_scores": json.dumps(eval_scores),
        "n_train_requests": n_train_requests,
        "status": "candidate",
        "created_at": _now(),
        "activated_at": None,
    }
    if calibration is not None:
        row["calibration"] = json.dumps(calibration)
    with db.conn:
        db.conn.execute(
            f"insert into models ({', '.join(row)}) values ({', '.join('?' for _ in row)})",
            list(row.values()),
        )
    return row


def get_model(db: sqlite_utils.Database, model_id: str) -> dict[str, Any]:
    """A model by id or unique id prefix."""
    rows = list(
        db.query(
            "select * from models where id = ? or id like ? escape '\\' order by id",
            [model_id, like_prefix(model_id)],
        )
    )
    exact = [r for r in rows if r["id"] == model_id]
    if exact:
        return exact[0]
    if not rows:
        raise RegistryError(f"no model {model_id!r}")
    if len(rows) > 1:
        raise RegistryError(f"{model_id!r} is ambiguous: {len(rows)} models start with it")
    return rows[0]


def list_models(db: sqlite_utils.Database, template_id: str | None = None) -> list[dict[str, Any]]:
    sql = "select * from models"
    params: list[Any] = []
    if template_id:
        sql += " where template_id = ?"
        params.append(template_id)
    return list(db.query(sql + " order by created_at desc", params))


def active_model(db: sqlite_utils.Database, template_id: str) -> dict[str, Any] | None:
    return next(
        iter(db.query("select * from models where template_id = ? and status = 'active'", [template_id])),
        None,
    )


def activate(db: sqlite_utils.Database, model_id: str, *, by_operator: bool = False) -> dict[str, Any]:
    """Make `model_id` its template's active model and route the template to it, atomically.

    The route's mode changes only when a person asked (`by_operator`); otherwise it stays as set.
    """
    model = get_model(db, model_id)
    if model["status"] == "active":
        return model
    if not Path(model["gguf_path"]).is_file():
        raise RegistryError(f"model {model['id']}: its GGUF {model['gguf_path']} is missing")
    now = _now()
    conn = db.conn
    with conn:  # one transaction: retire the old, activate the new, point the route
        conn.execute(
            "update models set status = 'retired' where template_id = ? and status = 'active'",
            [model["template_id"]],
        )
        conn.execute("update models set status = 'active', activated_at = ? where id = ?", [now, model["id"]])
        existing = conn.execute(
            "select canary_percent, mode from routes where template_id = ?", [model["template_id"]]
        ).fetchone()
        canary = existing[0] if existing and existing[0] is not None else 100.0
        mode = "active" if by_operator or existing is None or not existing[1] else existing[1]
        conn.execute(
            "insert into routes (template_id, model_id, mode, canary_percent, updated_at, threshold, note) "
            "values (?, ?, ?, ?, ?, ?, null) "
            "on conflict(template_id) do update set model_id = excluded.model_id, mode = excluded.mode, "
            "canary_percent = excluded.canary_percent, updated_at = excluded.updated_at, "
            "threshold = excluded.threshold, note = null",
            [model["template_id"], model["id"], mode, canary, now, calibrated_threshold(db, model["id"])],
        )
    return get_model(db, model["id"])


def retire(db: sqlite_utils.Database, model_id: str) -> dict[str, Any]:
    """Retire a model; a route serving it is switched off (the template's traffic goes upstream)."""
    model = get_model(db, model_id)
    with db.conn:
        db.conn.execute("update models set status = 'retired' where id = ?", [model["id"]])
        db.conn.execute(
            "update routes set mode = 'off', updated_at = ? where template_id = ? and model_id = ?",
            [_now(), model["template_id"], model["id"]],
        )
    return get_model(db, model["id"])
