"""Mining as a job on the log: re-runs keep ids, empty logs are fine, writes are all or nothing, figures."""

from __future__ import annotations

import json
import sqlite3

import pytest

from gateway.log.store import open_db
from internalizer.mine import MineConfig, mine
from tests.internalizer.mine_traffic import add_requests, assigned, nl2bash, sys_user, user

SHELL = (
    "You are a shell expert. Convert the user's request into one bash command.\nReply with the command only."
)
DOCS = "Write the man-page style synopsis for the task below.\nKeep it to one line."


@pytest.fixture
def db(tmp_path):
    database = open_db(tmp_path / "logs.db")
    yield database
    database.close()


def test_rerun_on_a_grown_log_keeps_ids_updates_counts_and_adds_templates(db):
    pairs = nl2bash(60, seed=20)
    add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[:10]])
    first = mine(db)
    [shell_id] = first.new_ids
    add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[10:25]], start=10)
    add_requests(db, [sys_user(DOCS, p["nl"]) for p in pairs[25:40]], start=25)
    second = mine(db)
    counts = {row["id"]: row["n_requests"] for row in db.query("select id, n_requests from templates")}
    assert counts[shell_id] == 25
    assert len(second.new_ids) == 1 and counts[second.new_ids[0]] == 15
    third = mine(db)  # nothing new: same ids, same counts
    assert third.new_ids == [] and {r["id"]: r["n_requests"] for r in third.templates} == counts


def test_empty_log_and_log_without_recurring_prompt(db):
    result = mine(db)
    assert (result.n_requests, result.templates, result.new_ids) == (0, [], [])
    pairs = nl2bash(30, seed=21)
    add_requests(db, [user(p["nl"]) for p in pairs])  # every prompt a one-off
    result = mine(db)
    assert result.n_requests == 30 and result.templates == [] and result.n_assigned == 0
    assert db.execute("select count(*) from templates").fetchone()[0] == 0


def test_requests_with_tools_stay_unclustered(db):
    pairs = nl2bash(16, seed=25)
    tool = {"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}
    with_tools = add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[:8]])
    for request_id in with_tools:  # the same prompt, but the model may call a tool: not a text template
        db["requests"].update(request_id, {"params": json.dumps({"tools": [tool]})})
    ids = add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[8:]], start=8)
    result = mine(db)
    assert result.n_requests == 16 and result.n_matchable == 8
    assert set(assigned(db)) == set(ids)


def test_min_support_keeps_rare_prompts_unclustered(db):
    pairs = nl2bash(20, seed=22)
    add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[:4]])
    assert mine(db, MineConfig(min_support=5)).templates == []
    assert len(mine(db, MineConfig(min_support=3)).templates) == 1


def test_a_failed_write_leaves_the_previous_tables_intact(db):
    pairs = nl2bash(40, seed=23)
    add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[:20]])
    mine(db)
    before = {t: list(db.query(f"select * from {t}")) for t in ("templates", "request_templates", "examples")}
    add_requests(db, [sys_user(DOCS, p["nl"]) for p in pairs[20:]], start=20)
    db.execute(
        "create trigger fail_mining before insert on request_templates "
        "begin select raise(abort, 'disk full'); end"
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        mine(db)
    after = {t: list(db.query(f"select * from {t}")) for t in ("templates", "request_templates", "examples")}
    assert after == before and len(before["request_templates"]) == 20


def test_template_figures_and_estimated_monthly_saving(db):
    pairs = nl2bash(30, seed=24)
    ids = add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[:20]])  # one a minute: 19 min span
    add_requests(db, [user(f"hey {p['nl']}") for p in pairs[20:30]], start=20)  # one-offs: 29 min in all
    mine(db)
    [row] = db.query("select * from templates")
    requests = {r["request_id"]: r for r in db.query("select * from requests")}
    mine_rows = [requests[i] for i in ids]
    all_prompt = sum(r["prompt_tokens"] for r in requests.values())
    assert row["n_requests"] == 20
    assert row["first_seen"] == mine_rows[0]["startTime"] and row["last_seen"] == mine_rows[-1]["startTime"]
    assert row["mean_prompt_tokens"] == pytest.approx(sum(r["prompt_tokens"] for r in mine_rows) / 20)
    assert row["prompt_token_share"] == pytest.approx(sum(r["prompt_tokens"] for r in mine_rows) / all_prompt)
    assert row["spend"] == pytest.approx(sum(r["spend"] for r in mine_rows))
    # Saving: prompt part of the spend x share of the prompt removed, over the log's span (floored at 1 h).
    slots = assigned(db)
    removed = 0.0
    for r in mine_rows:
        query = slots[r["request_id"]]["query"]
        share = 1 - len(query) / (len(SHELL) + len(query))
        removed += r["spend"] * r["prompt_tokens"] / r["total_tokens"] * share
    assert row["est_monthly_saving"] == pytest.approx(removed * 30 * 24)
    assert 0 < row["est_monthly_saving"]
