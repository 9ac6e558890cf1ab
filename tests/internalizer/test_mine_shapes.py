"""Mining on each traffic shape the issue lists: one test per shape, on a real SQLite log."""

from __future__ import annotations

import random

import pytest

from gateway.log.store import open_db
from gateway.templates.matcher import Matcher
from internalizer.mine import mine
from tests.internalizer.mine_traffic import add_requests, assigned, nl2bash, sys_user, user

SYSTEM = (
    "You are a shell expert working on a Linux server.\n"
    "Convert the user's request into one bash command. Reply with the command only."
)


@pytest.fixture
def db(tmp_path):
    database = open_db(tmp_path / "logs.db")
    yield database
    database.close()


def templates(db) -> list[dict]:
    return list(db.query("select * from templates order by n_requests desc"))


def test_static_system_message_and_query_only_user_message(db):
    pairs = nl2bash(12)
    ids = add_requests(db, [sys_user(SYSTEM, p["nl"]) for p in pairs])
    result = mine(db)
    [row] = templates(db)
    assert row["n_requests"] == 12 and result.n_assigned == 12
    assert row["static_text"] == f"[system]\n{SYSTEM}\n[user]\n{{{{query}}}}"
    rows = assigned(db)
    assert [rows[i]["query"] for i in ids] == [p["nl"] for p in pairs]
    assert all(
        rows[i]["slots"] == {"query": p["nl"]} and rows[i]["example_hashes"] == []
        for i, p in zip(ids, pairs, strict=False)
    )


@pytest.mark.parametrize("where", ["end", "middle"])
def test_instructions_and_query_in_one_user_message(db, where):
    rules = "Rules:\n- Use POSIX tools only.\n- Never use sudo.\n\n"
    after = "\nAnswer:" if where == "end" else "\n\nRespond with a single line of bash and nothing else."
    pairs = nl2bash(10, seed=1)
    ids = add_requests(db, [user(f"{rules}Question: {p['nl']}{after}") for p in pairs])
    mine(db)
    [row] = templates(db)
    assert row["static_text"] == f"[user]\n{rules}Question: {{{{query}}}}{after}"
    rows = assigned(db)
    assert [rows[i]["query"] for i in ids] == [p["nl"] for p in pairs]


def test_query_before_the_instructions(db):
    pairs = nl2bash(10, seed=12)
    after = "\n\nTranslate the request above into one bash command.\nNo explanation."
    ids = add_requests(db, [user(p["nl"].rstrip(".") + after) for p in pairs])
    mine(db)
    [row] = templates(db)
    assert row["static_text"] == "[user]\n{{query}}" + after
    rows = assigned(db)
    assert [rows[i]["query"] for i in ids] == [p["nl"].rstrip(".") for p in pairs]
    matcher = Matcher.from_db(db)
    assert matcher.match({"messages": user("list files" + after)}).query == "list files"
    assert matcher.match({"messages": user("list files" + after + " Please.")}) is None


@pytest.mark.parametrize("where", ["end", "middle"])
def test_instructions_and_query_sharing_one_line(db, where):
    pairs = nl2bash(10, seed=9)
    if where == "end":
        prompts = [f"You are a bash expert. Convert this request into one command: {p['nl']}" for p in pairs]
        expected = "[user]\nYou are a bash expert. Convert this request into one command: {{query}}"
    else:
        prompts = [
            f"Convert this request: {p['nl'].rstrip('.')}. Reply with the command only." for p in pairs
        ]
        expected = "[user]\nConvert this request: {{query}}. Reply with the command only."
    ids = add_requests(db, [user(prompt) for prompt in prompts])
    mine(db)
    [row] = templates(db)
    assert row["static_text"] == expected
    rows = assigned(db)
    assert [rows[i]["query"] for i in ids] == [
        p["nl"].rstrip(".") if where == "middle" else p["nl"] for p in pairs
    ]


def test_few_shot_examples_as_alternating_turns(db):
    pool = nl2bash(8, seed=2)
    queries = nl2bash(30, seed=3)[10:]
    rng = random.Random(0)
    requests, carried = [], []
    for q in queries:
        shots = rng.sample(pool, 3)
        messages = [{"role": "system", "content": SYSTEM}]
        for shot in shots:
            messages += [
                {"role": "user", "content": shot["nl"]},
                {"role": "assistant", "content": shot["cmd"]},
            ]
        requests.append(messages + [{"role": "user", "content": q["nl"]}])
        carried.append(shots)
    ids = add_requests(db, requests)
    mine(db)
    [row] = templates(db)
    assert row["static_text"] == f"[system]\n{SYSTEM}\n[user]\n{{{{examples}}}}\n\n{{{{query}}}}"
    rows = assigned(db)
    examples = {r["hash"]: r for r in db.query("select * from examples")}
    for request_id, q, shots in zip(ids, queries, carried, strict=False):
        assert rows[request_id]["query"] == q["nl"]
        got = [(examples[h]["input"], examples[h]["output"]) for h in rows[request_id]["example_hashes"]]
        assert got == [(s["nl"], s["cmd"]) for s in shots]
    assert db.execute("select count(*) from template_examples").fetchone()[0] == 8


INLINE_FORMATS = {
    "input_output": ("Input: {i}\nOutput: {o}", "\n\n", "Input: {q}\nOutput:"),
    "q_a": ("Q: {i}\nA: {o}", "\n", "Q: {q}\nA:"),
    "markdown": ("### Example\n**Request**: {i}\n**Command**: {o}", "\n\n", "### Task\n{q}"),
    "xml": ("<example>\n<input>{i}</input>\n<output>{o}</output>\n</example>", "\n", "<query>{q}</query>"),
}


@pytest.mark.parametrize("fmt", sorted(INLINE_FORMATS))
@pytest.mark.parametrize("retrieved", [False, True], ids=["fixed", "retrieved"])
def test_few_shot_examples_inline_as_repeated_blocks(db, fmt, retrieved):
    block, sep, query_block = INLINE_FORMATS[fmt]
    pool = nl2bash(10, seed=4)
    queries = nl2bash(40, seed=5)[12:]
    rng = random.Random(1)
    requests, carried = [], []
    for q in queries:
        shots = rng.sample(pool, 3) if retrieved else pool[:3]
        shown = sep.join(block.format(i=s["nl"], o=s["cmd"]) for s in shots)
        requests.append(
            user(f"Translate each request into bash.\n\n{shown}\n\n{query_block.format(q=q['nl'])}")
        )
        carried.append(shots)
    ids = add_requests(db, requests)
    mine(db)
    [row] = templates(db)
    assert row["n_requests"] == len(queries)
    assert "{{examples}}" in row["static_text"] and "{{query}}" in row["static_text"]
    rows = assigned(db)
    examples = {r["hash"]: r for r in db.query("select * from examples")}
    for request_id, q, shots in zip(ids, queries, carried, strict=False):
        assert rows[request_id]["query"] == q["nl"]
        got = [(examples[h]["input"], examples[h]["output"]) for h in rows[request_id]["example_hashes"]]
        assert got == [(s["nl"], s["cmd"]) for s in shots]


def test_more_than_one_variable_slot(db):
    pairs = nl2bash(12, seed=6)
    hosts = ["web", "db", "cache", "mail", "ci", "proxy", "dns", "backup", "vpn", "log", "git", "queue"]
    docs = [f"{h} runs Debian {n % 3 + 10}.\nIts data lives under /srv/{h}{n}." for n, h in enumerate(hosts)]
    messages = [
        sys_user(SYSTEM, f"Context:\n{doc}\n\nQuestion: {p['nl']}\nAnswer:")
        for doc, p in zip(docs, pairs, strict=False)
    ]
    ids = add_requests(db, messages)
    mine(db)
    [row] = templates(db)
    assert row["static_text"].endswith("[user]\nContext:\n{{context}}\n\nQuestion: {{query}}\nAnswer:")
    rows = assigned(db)
    assert [rows[i]["slots"] for i in ids] == [
        {"context": d, "query": p["nl"]} for d, p in zip(docs, pairs, strict=False)
    ]


def test_interleaved_apps_rare_templates_and_one_offs(db):
    pairs = nl2bash(200, seed=7)
    apps = {
        "shell": lambda q: sys_user(SYSTEM, q),
        "docs": lambda q: user(f"Write the man-page style synopsis for this task.\nTask: {q}\nSynopsis:"),
        "rare": lambda q: sys_user("You only answer with a single awk program, nothing else at all.", q),
    }
    plan = ["shell"] * 60 + ["docs"] * 40 + ["rare"] * 5 + ["one-off"] * 25
    random.Random(2).shuffle(plan)
    messages, labels = [], []
    for kind, p in zip(plan, pairs, strict=False):
        messages.append(user(f"hey, {p['nl']} (thanks!)") if kind == "one-off" else apps[kind](p["nl"]))
        labels.append(kind)
    ids = add_requests(db, messages)
    mine(db)
    by_template: dict[str, set[str]] = {}
    rows = assigned(db)
    for request_id, label in zip(ids, labels, strict=False):
        if request_id in rows:
            by_template.setdefault(rows[request_id]["template_id"], set()).add(label)
    assert sorted(len(v) for v in by_template.values()) == [1, 1, 1]  # pure clusters
    assert sorted(next(iter(v)) for v in by_template.values()) == ["docs", "rare", "shell"]
    one_offs = [i for i, label in zip(ids, labels, strict=False) if label == "one-off"]
    assert not any(i in rows for i in one_offs)
    assert sum(1 for i, label in zip(ids, labels, strict=False) if label != "one-off" and i in rows) == 105


def test_changed_wording_gives_two_templates(db):
    pairs = nl2bash(30, seed=8)
    v1 = "You are a careful Linux administrator.\nWrite one bash command for the task below."
    v2 = "You are a careful Linux administrator.\nWrite one POSIX sh command for the task below."
    ids = add_requests(db, [sys_user(v1 if n < 15 else v2, p["nl"]) for n, p in enumerate(pairs)])
    mine(db)
    rows = templates(db)
    assert len(rows) == 2 and {r["n_requests"] for r in rows} == {15}
    assert {v1 in r["static_text"] for r in rows} == {True, False}
    done = assigned(db)
    assert len({done[i]["template_id"] for i in ids[:15]}) == 1
    assert {done[i]["template_id"] for i in ids[:15]} != {done[i]["template_id"] for i in ids[15:]}
    matcher = Matcher.from_db(db)
    assert matcher.match({"messages": sys_user(v2, "list files")}).template_id == done[ids[-1]]["template_id"]
