"""A realistic request log for report, dashboard and routes tests: two templates, untemplated traffic,
two days, routes upstream / local / fallback / shadow, one upstream error.

Prices are gpt-4o-mini's ($0.15 / $0.60 per million tokens, cached input at half price); the local
machine costs $0.10 an hour. The figures the tests expect are derived by hand in test_report.py.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import sqlite_utils

from gateway.accounting.savings import actual_spend, counterfactual, upstream_spend
from gateway.log.store import open_db
from gateway.settings import Price

PRICE = Price(input_cost_per_token=0.15e-6, output_cost_per_token=0.60e-6, cache_read_ratio=0.5)
COST_PER_HOUR = 0.10
DAY1, DAY2 = "2026-11-20", "2026-11-21"
NL2BASH, SQL = "tpl_nl2bash_5f0c1e9a", "tpl_sqlhelp_a81b22d0"
FULL_PROMPT, PREFIX, QUERY_ONLY, ANSWER = 1200, 1100, 25, 20

_ids = itertools.count(1)


def _row(day: str, second: int, route: str, **values) -> dict:
    n = next(_ids)
    return {
        "request_id": f"chatcmpl-{n:04d}",
        "startTime": f"{day}T10:{second // 60:02d}:{second % 60:02d}.{n:06d}+00:00",
        "model": "gpt-4o-mini",
        "route": route,
        "status": 200,
        "source": "gateway",
        "messages": json.dumps([{"role": "user", "content": f"request {n}"}]),
        **values,
    }


def _upstream(
    day, second, latency_ms, prompt=FULL_PROMPT, completion=ANSWER, template=None, cf=True, **extra
):
    row = _row(
        day,
        second,
        extra.pop("route", "upstream"),
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=latency_ms,
        spend=actual_spend(
            upstream_spend(PRICE, prompt, completion), extra.get("local_compute_s", 0), COST_PER_HOUR
        ),
        template_id=template,
        **extra,
    )
    if cf and template:
        row.update(
            counterfactual(PRICE, prompt, completion, PREFIX, extra.get("local_compute_s", 0)).as_columns()
        )
    return row


def _local(day, second, latency_ms, compute_s=0.1):
    return _row(
        day,
        second,
        "local",
        model_served="local/nl2bash-v1",
        prompt_tokens=QUERY_ONLY,
        completion_tokens=ANSWER,
        latency_ms=latency_ms,
        spend=actual_spend(0.0, compute_s, COST_PER_HOUR),
        template_id=NL2BASH,
        **counterfactual(PRICE, FULL_PROMPT, ANSWER, PREFIX, compute_s).as_columns(),
    )


def seed(db_path: Path) -> sqlite_utils.Database:
    db = open_db(db_path)
    db["templates"].insert_all(
        [
            {"id": NL2BASH, "name": "nl2bash ShellPilot", "n_requests": 12},
            {"id": SQL, "name": "sql helper", "n_requests": 4},
        ]
    )
    db["models"].insert_all(
        [
            {
                "id": "nl2bash-v1",
                "template_id": NL2BASH,
                "gguf_path": "/m/nl2bash-v1.gguf",
                "status": "active",
            },
            {
                "id": "nl2bash-v0",
                "template_id": NL2BASH,
                "gguf_path": "/m/nl2bash-v0.gguf",
                "status": "retired",
            },
            {"id": "sql-v1", "template_id": SQL, "gguf_path": "/m/sql-v1.gguf", "status": "candidate"},
        ]
    )
    # Day 1, before mining: the template's requests went upstream and only mining linked them to it.
    day1_nl2bash = [_upstream(DAY1, i, lat) for i, lat in enumerate([800, 900, 1000, 1100])]
    day1_plain = [_upstream(DAY1, 10 + i, lat, prompt=300, completion=50) for i, lat in enumerate([500, 700])]
    # Day 2, routing on: 6 local, 1 fallback (local 0.05 s wasted), 1 upstream (outside the canary),
    # 1 shadow (upstream answer, local run alongside); the sql template goes upstream, one request failed.
    day2 = [_local(DAY2, i, lat) for i, lat in enumerate([100, 110, 120, 130, 140, 150])]
    day2 += [
        _upstream(DAY2, 20, 1500, template=NL2BASH, route="fallback", local_compute_s=0.05),
        _upstream(DAY2, 21, 950, template=NL2BASH),
        _upstream(DAY2, 22, 1000, template=NL2BASH, route="shadow", local_compute_s=0.1),
    ]
    day2 += [_upstream(DAY2, 30 + i, lat, prompt=800, template=SQL) for i, lat in enumerate([600, 650, 700])]
    day2 += [
        _row(DAY2, 40, "upstream", status=502, latency_ms=30.0, error="upstream unavailable", template_id=SQL)
    ]
    with db.conn:
        db["requests"].insert_all(day1_nl2bash + day1_plain + day2, alter=False)
        db["request_templates"].insert_all(
            {
                "request_id": r["request_id"],
                "template_id": NL2BASH,
                "query": "q",
                "slots": "{}",
                "example_hashes": "[]",
            }
            for r in day1_nl2bash
        )
    return db


# For the dashboard: NL2Bash served locally (an active route, 90% canary) by a model with a gate score and
# one shadowed answer; the sql template's model a candidate; a mined template with no traffic and a name
# long enough to break a careless layout.
LONG_TEMPLATE = "tpl_" + "f" * 60
LONG_NAME = "SummarizeTheFollowingCustomerSupportConversation" * 5  # no space or hyphen to break at


def seed_dashboard(db_path: Path) -> sqlite_utils.Database:
    db = seed(db_path)
    with db.conn:
        db["models"].update(
            "nl2bash-v1",
            {
                "config": json.dumps({"gate_metric": "chrf"}),
                "eval_scores": json.dumps({"internalized": {"chrf": 0.912, "n": 40.0}}),
            },
        )
        db["models"].update(
            "sql-v1",
            {
                "config": json.dumps({"gate_metric": "exact_match"}),
                "eval_scores": json.dumps({"internalized": {"exact_match": 0.41, "n": 12.0}}),
            },
        )
        db["routes"].insert(
            {"template_id": NL2BASH, "model_id": "nl2bash-v1", "mode": "active", "canary_percent": 90.0,
             "updated_at": f"{DAY2}T09:00:00+00:00"}
        )  # fmt: skip
        db.execute("update requests set shadow_agreement = 0.8 where route = 'shadow'")
        db.execute("update requests set response = 'ls -la /tmp' where status = 200")
        db["templates"].insert({"id": LONG_TEMPLATE, "name": LONG_NAME, "n_requests": 0})
    return db
