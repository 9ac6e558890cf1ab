"""Per-template status for the dashboard's cards, and the next step when there is nothing to show yet.

A template's status, from the routes and models tables:
- active: a route in mode active whose model is active (matching requests are served locally);
- shadow: a route in mode shadow whose model is active (served upstream, the local model runs alongside);
- off: a route switched off, or one whose model was retired, or retired models only (all traffic upstream);
- candidate: no route, but an internalized model that did not pass its gate or was not activated;
- mined: found in the log, not internalized yet.

Each card carries the report's figures for the template (zeros when it had no traffic in the period), its
model and gate score (the model's score on the gate metric it was trained with), the live agreement of
shadow answers with the upstream's in the period, and the command that changes it (for a serving template,
the kill switch).
"""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils

STATUS_ORDER = ("active", "shadow", "candidate", "off", "mined")

_TEMPLATES = """
select t.id, t.name, r.mode, r.model_id as route_model, m.status as route_model_status, r.canary_percent
from templates t left join routes r on r.template_id = t.id left join models m on m.id = r.model_id
union
select r.template_id, t.name, r.mode, r.model_id, m.status, r.canary_percent
from routes r left join templates t on t.id = r.template_id left join models m on m.id = r.model_id
where t.id is null
"""
_NEWEST_MODELS = """
select template_id, id, status, config, eval_scores from models
order by coalesce(activated_at, created_at, '') desc, rowid desc
"""
_SHADOW = """
select coalesce(r.template_id, rt.template_id), avg(r.shadow_agreement), count(*)
from requests r left join request_templates rt on rt.request_id = r.request_id
where r.shadow_agreement is not null and r.startTime >= :since
group by 1
"""


def template_cards(
    db: sqlite_utils.Database, by_template: list[dict[str, Any]], since: str, zero: dict[str, Any]
) -> list[dict[str, Any]]:
    """One card per known template (mined, routed or with traffic in the period), serving ones first.

    `by_template`: the report's per-template figures; `zero`: the figures of an empty period.
    """
    figures = {row["template_id"]: row for row in by_template if row["template_id"] is not None}
    models: dict[str, list[dict[str, Any]]] = {}
    for template_id, model_id, status, config, scores in db.execute(_NEWEST_MODELS):
        models.setdefault(template_id, []).append(
            {"id": model_id, "status": status, "config": config, "scores": scores}
        )
    shadow = {tid: (mean, n) for tid, mean, n in db.execute(_SHADOW, {"since": since})}
    rows = {row[0]: row for row in db.execute(_TEMPLATES)}
    for template_id in figures.keys() - rows.keys():
        rows[template_id] = (template_id, figures[template_id]["template_name"], None, None, None, None)

    cards = []
    for template_id, name, mode, route_model, route_model_status, canary in rows.values():
        status = _status(mode, route_model_status, models.get(template_id, []))
        model = _card_model(route_model, models.get(template_id, []))
        metric, score = _gate_score(model)
        agreement, samples = shadow.get(template_id, (None, 0))
        numbers = {k: v for k, v in figures.get(template_id, zero).items() if k not in ("template_id",)}
        cards.append(
            {
                **numbers,
                "template_id": template_id,
                "template_name": name,
                "status": status,
                "model_id": model["id"] if model else None,
                "canary_percent": canary,
                "gate_metric": metric,
                "gate_score": score,
                "shadow_agreement": agreement,
                "shadow_samples": samples,
                **_command(status, template_id, model),
            }
        )
    cards.sort(key=lambda c: (STATUS_ORDER.index(c["status"]), -c["requests"], c["template_id"]))
    return cards


def _status(mode: str | None, model_status: str | None, models: list[dict[str, Any]]) -> str:
    if mode in ("active", "shadow"):
        return mode if model_status == "active" else "off"
    if mode == "off":
        return "off"
    if any(model["status"] == "candidate" for model in models):
        return "candidate"
    return "off" if models else "mined"


def _card_model(route_model: str | None, models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The route's model; without a route, the newest candidate, else the newest active, else the newest."""
    if route_model is not None:
        return next((model for model in models if model["id"] == route_model), None)
    rank = {"candidate": 0, "active": 1}
    return min(models, key=lambda model: rank.get(model["status"], 2), default=None)  # min keeps the newest


def _gate_score(model: dict[str, Any] | None) -> tuple[str | None, float | None]:
    if model is None:
        return None, None
    try:
        metric = (json.loads(model["config"] or "{}") or {}).get("gate_metric") or "chrf"
        score = (json.loads(model["scores"] or "{}") or {}).get("internalized", {}).get(metric)
    except (ValueError, AttributeError):
        return None, None
    return metric, score if isinstance(score, int | float) else None


def _command(status: str, template_id: str, model: dict[str, Any] | None) -> dict[str, str]:
    if status in ("active", "shadow"):
        return {"command": f"promptintern routes off {template_id}", "command_does": "switch it off"}
    if status == "off" and model is not None and model["status"] == "active":
        return {"command": f"promptintern routes set {template_id} --mode active", "command_does": "serve it"}
    if status == "candidate" and model is not None:
        return {"command": f"promptintern models activate {model['id']}", "command_does": "activate it"}
    return {"command": f"promptintern internalize {template_id}", "command_does": "internalize it"}


def next_step(db: sqlite_utils.Database, report: dict[str, Any]) -> dict[str, str] | None:
    """What to do next when the log has not got as far as local serving (None once something is served)."""
    logged = db.execute("select count(*) from requests").fetchone()[0]
    if logged == 0:
        return {
            "title": "No requests logged yet",
            "text": "Point an OpenAI client at this gateway (base_url ending in /v1), or load past traffic:",
            "command": "promptintern import traffic.jsonl",
        }
    cards = report["templates"]
    if not cards:
        return {
            "title": f"{logged:,} requests logged, no recurring prompt found yet",
            "text": "Mine the log for prompt templates (a few requests must share the same instructions):",
            "command": "promptintern mine",
        }
    if not any(card["status"] in ("active", "shadow", "off") for card in cards):
        candidate = next((c for c in cards if c["status"] == "candidate"), None)
        if candidate is not None:
            return {
                "title": "Internalized, not serving yet",
                "text": "A model was trained but is not active (see its gate score); activate it with:",
                "command": candidate["command"],
            }
        return {
            "title": f"{len(cards)} templates mined, none internalized yet",
            "text": "Train a local model for the largest (or for every one worth it: promptintern nightly):",
            "command": cards[0]["command"],
        }
    if report["totals"]["requests"] == 0:
        return {
            "title": "No requests in this period",
            "text": "Choose a longer period above, or send traffic through the gateway.",
            "command": "",
        }
    return None
