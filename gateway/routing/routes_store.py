"""The `routes` table: which template is served by which local model, and how (active, shadow, off).

Readers get an immutable `RoutesSnapshot` (routes joined with their model's GGUF path and status), so the
app can swap one reference atomically when routes change: a request sees either the old set or the new,
never a mix. `routes_fingerprint` is a cheap query the app can poll (per request or every second) to know
when to reload; the CLI in another process changes routes only through the functions here.

Only a route whose mode is active or shadow AND whose model row exists with status `active` serves
traffic (`RoutesSnapshot.serving`): retiring or deleting a model stops its traffic at the next reload.

A route may carry a confidence threshold (gateway/routing/selective.py): answers below it are escalated
upstream. It starts as the model's calibrated threshold whenever the route points at a model, and live
calibration may raise it or set the route to shadow (`adjust_route`), never touching a route turned off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

import sqlite_utils

MODES = ("active", "shadow", "off")
SERVING_MODES = ("active", "shadow")


class RouteError(ValueError):
    """A route change that cannot be made (unknown template, no model, bad mode): one clear line."""


@dataclass(frozen=True)
class Route:
    template_id: str
    model_id: str
    mode: str  # active | shadow | off
    canary_percent: float  # share of matched requests sent local (active) or shadowed (shadow), 0..100
    updated_at: str
    template_name: str | None
    gguf_path: str | None  # None when the model row is gone
    model_status: str | None  # candidate | active | retired | None (row deleted)
    # Selective routing: answers less confident than `threshold` go upstream (None = no check); the
    # confidence signal, agreement metric and target come from the model's calibration.
    threshold: float | None = None
    signal: str | None = None
    metric: str | None = None
    target: float | None = None
    note: str | None = None  # why live calibration last changed the route

    @property
    def serves(self) -> bool:
        return self.mode in SERVING_MODES and self.model_status == "active" and bool(self.gguf_path)

    def as_dict(self) -> dict[str, object]:
        return {
            "template_id": self.template_id,
            "template_name": self.template_name,
            "model_id": self.model_id,
            "mode": self.mode,
            "canary_percent": self.canary_percent,
            "model_status": self.model_status,
            "gguf_path": self.gguf_path,
            "serves": self.serves,
            "updated_at": self.updated_at,
            "threshold": self.threshold,
            "signal": self.signal,
            "metric": self.metric,
            "target": self.target,
            "note": self.note,
        }


@dataclass(frozen=True)
class RoutesSnapshot:
    routes: Mapping[str, Route]  # template_id -> Route (read-only mapping)
    fingerprint: str

    def get(self, template_id: str) -> Route | None:
        return self.routes.get(template_id)

    def serving(self, template_id: str) -> Route | None:
        """The route for `template_id` if it may take traffic now, else None (the request goes upstream)."""
        route = self.routes.get(template_id)
        return route if route is not None and route.serves else None


EMPTY_SNAPSHOT = RoutesSnapshot(routes=MappingProxyType({}), fingerprint="")

_JOINED = """
select r.template_id, r.model_id, r.mode, r.canary_percent, r.updated_at,
       t.name as template_name, m.gguf_path, m.status as model_status, r.threshold, r.note,
       json_extract(m.calibration, '$.signal') as signal, json_extract(m.calibration, '$.metric') as metric,
       json_extract(m.calibration, '$.target') as target
from routes r
left join models m on m.id = r.model_id
left join templates t on t.id = r.template_id
order by r.template_id
"""


def load_routes(db: sqlite_utils.Database) -> RoutesSnapshot:
    rows = [_route(row) for row in _query(db, _JOINED)]
    return RoutesSnapshot(
        routes=MappingProxyType({route.template_id: route for route in rows}),
        fingerprint=_fingerprint_of(rows),
    )


def routes_fingerprint(db: sqlite_utils.Database) -> str:
    """Changes whenever a route or the status/path of a routed model changes (one small query)."""
    return _fingerprint_of([_route(row) for row in _query(db, _JOINED)])


def routes_changed(db: sqlite_utils.Database, snapshot: RoutesSnapshot) -> bool:
    return routes_fingerprint(db) != snapshot.fingerprint


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (with `escape '\\'`) matching what starts with `prefix`: `%` and `_` taken literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def resolve_template_id(db: sqlite_utils.Database, prefix: str) -> str:
    """A full template id from an exact id or a unique prefix (as git does with commits)."""
    pattern = like_prefix(prefix)
    by_route = "select template_id from routes where template_id like ? escape '\\'"
    ids = {row[0] for row in db.execute(by_route, [pattern])}
    if "templates" in db.table_names():
        by_template = "select id from templates where id like ? escape '\\'"
        ids |= {row[0] for row in db.execute(by_template, [pattern])}
    if prefix in ids:
        return prefix
    if len(ids) == 1:
        return ids.pop()
    if not ids:
        raise RouteError(f"no template or route matches {prefix!r}")
    raise RouteError(f"{prefix!r} is ambiguous: {len(ids)} templates start with it")


def set_route(
    db: sqlite_utils.Database,
    template_id: str,
    *,
    mode: str | None = None,
    canary_percent: float | None = None,
    model_id: str | None = None,
) -> Route:
    """Create or change the route of `template_id`; unspecified fields keep their value.

    A new route needs a model: `model_id`, or else the template's newest model with status `active`.
    """
    if mode is not None and mode not in MODES:
        raise RouteError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise RouteError(f"canary percent must be between 0 and 100, not {canary_percent}")
    with db.conn:  # one transaction: readers see the old route or the new one
        existing = next(iter(_query(db, "select * from routes where template_id = ?", [template_id])), None)
        model_id = model_id or (existing["model_id"] if existing else _newest_active_model(db, template_id))
        model = next(
            iter(_query(db, "select template_id, status from models where id = ?", [model_id])), None
        )
        if model is None:
            raise RouteError(f"no model {model_id!r}")
        if model["template_id"] != template_id:
            raise RouteError(
                f"model {model_id} was trained for template {model['template_id']}, not {template_id}"
            )
        new_model = existing is None or existing["model_id"] != model_id
        row = {
            "template_id": template_id,
            "model_id": model_id,
            "mode": mode or (existing["mode"] if existing else "active"),
            # A route pointed at a model starts from that model's calibrated threshold.
            "threshold": calibrated_threshold(db, model_id) if new_model else existing["threshold"],
            "note": None if new_model else existing["note"],
            "canary_percent": float(
                canary_percent
                if canary_percent is not None
                else (existing["canary_percent"] if existing else 100)
            ),
            "updated_at": datetime.now(UTC).isoformat(),
        }
        db["routes"].upsert(row, pk="template_id")
    return get_route(db, template_id)


def calibrated_threshold(db: sqlite_utils.Database, model_id: str) -> float | None:
    """The threshold a route to `model_id` applies: its calibration's `route_threshold` (None: no check)."""
    row = db.execute(
        "select json_extract(calibration, '$.route_threshold') from models where id = ?", [model_id]
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def adjust_route(
    db: sqlite_utils.Database,
    template_id: str,
    model_id: str,
    *,
    note: str,
    threshold: float | None = None,
    mode: str | None = None,
) -> bool:
    """Live calibration's change: raise the threshold and/or set the mode, if the route still serves
    `model_id` and is not off (an operator's kill switch is never undone). True if changed."""
    if mode is not None and mode not in SERVING_MODES:
        raise RouteError(f"live calibration may set active or shadow, not {mode!r}")
    assignments, params = ["note = ?", "updated_at = ?"], [note, datetime.now(UTC).isoformat()]
    if threshold is not None:
        assignments.append("threshold = ?")
        params.append(threshold)
    if mode is not None:
        assignments.append("mode = ?")
        params.append(mode)
    with db.conn:
        cursor = db.conn.execute(
            f"update routes set {', '.join(assignments)} "
            "where template_id = ? and model_id = ? and mode != 'off'",
            [*params, template_id, model_id],
        )
    return cursor.rowcount > 0


def route_off(db: sqlite_utils.Database, template_id: str) -> Route:
    """The kill switch: the template's traffic goes upstream from the app's next reload on."""
    if get_route(db, template_id) is None:
        raise RouteError(f"no route for template {template_id}")
    return set_route(db, template_id, mode="off")


def get_route(db: sqlite_utils.Database, template_id: str) -> Route | None:
    return load_routes(db).get(template_id)


def _newest_active_model(db: sqlite_utils.Database, template_id: str) -> str:
    row = next(
        iter(
            _query(
                db,
                "select id from models where template_id = ? and status = 'active' "
                "order by coalesce(activated_at, created_at) desc limit 1",
                [template_id],
            )
        ),
        None,
    )
    if row is None:
        raise RouteError(f"template {template_id} has no active model: internalize it first or pass --model")
    return row["id"]


def _query(db: sqlite_utils.Database, sql: str, params: list[object] | None = None) -> list[dict]:
    cursor = db.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _route(row: dict) -> Route:
    return Route(
        template_id=row["template_id"],
        model_id=row["model_id"],
        mode=row["mode"] or "off",
        canary_percent=float(row["canary_percent"] if row["canary_percent"] is not None else 100.0),
        updated_at=row["updated_at"] or "",
        template_name=row["template_name"],
        gguf_path=row["gguf_path"],
        model_status=row["model_status"],
        threshold=row["threshold"],
        signal=row["signal"],
        metric=row["metric"],
        target=row["target"],
        note=row["note"],
    )


def _fingerprint_of(routes: list[Route]) -> str:
    text = "\n".join(
        f"{r.template_id}|{r.model_id}|{r.mode}|{r.canary_percent}|{r.updated_at}|{r.gguf_path}|{r.model_status}"
        f"|{r.threshold}|{r.signal}"
        for r in routes
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]
