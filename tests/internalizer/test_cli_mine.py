"""`promptintern mine`, `templates`, `templates show` and `match`, run through the real CLI on a real log."""

from __future__ import annotations

import json
import random

from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import open_db
from tests.internalizer.mine_traffic import add_requests, nl2bash, sys_user, user

SHELL = (
    "You are a shell expert. Convert the user's request into one bash command.\nReply with the command only."
)


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def few_shot(shots: list[dict], query: str) -> str:
    body = "\n\n".join(f"Input: {s['nl']}\nOutput: {s['cmd']}" for s in shots)
    return f"Translate each request into bash.\n\n{body}\n\nInput: {query}\nOutput:"


def seed(home) -> list[dict]:
    pairs = nl2bash(80, seed=30)
    rng = random.Random(5)
    db = open_db(home / "logs.db")
    add_requests(db, [sys_user(SHELL, p["nl"]) for p in pairs[10:30]])
    add_requests(db, [user(few_shot(rng.sample(pairs[:10], 2), p["nl"])) for p in pairs[30:70]], start=20)
    add_requests(db, [user(f"quick one: {p['nl']}?") for p in pairs[70:80]], start=60)
    db.close()
    return pairs


def test_mine_on_an_empty_log_and_on_one_offs_says_so(home):
    assert "empty" in run("mine").stdout
    db = open_db(home / "logs.db")
    add_requests(db, [user(f"{p['nl']}, please") for p in nl2bash(20, seed=31)])
    db.close()
    assert "No recurring prompt in 20 requests" in run("mine").stdout
    assert "No templates yet" in run("templates").stdout
    assert json.loads(run("templates", "--json").stdout) == []


def test_mine_then_list_and_show_templates(home):
    seed(home)
    out = run("mine").stdout
    assert "Mined 2 templates (2 new) covering 60 of 70 requests" in out
    listed = json.loads(run("templates", "--json").stdout)
    assert [t["n_requests"] for t in listed] == [40, 20]  # the few-shot prompt is longer: more to save
    assert listed[0]["est_monthly_saving"] > listed[1]["est_monthly_saving"] > 0
    assert all(t["slots"] == ["query"] and t["id"].startswith("tpl_") for t in listed)
    table = run("templates").stdout
    assert listed[0]["id"] in table and listed[1]["id"] in table
    shown = run("templates", "show", listed[0]["id"]).stdout
    assert "{{examples}}" in shown and "Input: {{query}}" in shown
    assert "Example pool (10)" in shown and "query=" in shown
    detail = json.loads(run("templates", "show", listed[0]["id"][:9], "--json").stdout)
    assert detail["id"] == listed[0]["id"] and len(detail["examples"]) == 10 and len(detail["requests"]) == 3
    assert sum(e["n_uses"] for e in detail["examples"]) == 80
    missing = run("templates", "show", "tpl_nope", code=1)
    assert missing.stderr.strip() == "Error: no template 'tpl_nope': see `promptintern templates`"


def test_match_prints_one_object_per_line_in_order(home, tmp_path):
    pairs = seed(home)
    run("mine")
    shell_id, few_id = (
        next(t["id"] for t in json.loads(run("templates", "--json").stdout) if t["n_requests"] == n)
        for n in (20, 40)
    )
    lines = [
        {
            "messages": sys_user(SHELL, "count the lines of notes.txt")
            + [{"role": "assistant", "content": "wc -l"}]
        },
        {
            "request": {"model": "m", "messages": user(few_shot(pairs[3:5], "show free memory"))},
            "response": _resp(),
        },
        {
            "request": {"messages": sys_user(SHELL.replace("one bash", "one zsh"), "list files")},
            "response": _resp(),
        },
        {"request": {"messages": user(few_shot([{"nl": "new", "cmd": "x"}], "q"))}, "response": _resp()},
        {"request": {"messages": sys_user(SHELL + " Be brief.", "list files")}, "response": _resp()},
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    printed = [json.loads(line) for line in run("match", str(path), "--json").stdout.splitlines()]
    assert printed == [
        {
            "template_id": shell_id,
            "query": "count the lines of notes.txt",
            "slots": {"query": "count the lines of notes.txt"},
        },
        {"template_id": few_id, "query": "show free memory", "slots": {"query": "show free memory"}},
        {"template_id": None, "query": None, "slots": {}},
        {"template_id": None, "query": None, "slots": {}},
        {"template_id": None, "query": None, "slots": {}},
    ]
    assert run("match", str(path)).stdout.splitlines()[2] == "3: no template"
    path.write_text('{"messages": 3}\n')
    assert "line 1" in run("match", str(path), code=1).stderr


def _resp() -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": "ls"}, "finish_reason": "stop"}]}
