"""`promptintern import FILE`: both line formats, idempotence, all-or-nothing on a bad line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gateway.accounting import savings
from gateway.cli import main
from gateway.log.store import open_db


def chat_line(user: str, answer: str, *, usage: bool = True, timestamp=None, model="gpt-4o-mini") -> dict:
    response = {
        "id": f"chatcmpl-{abs(hash(user))}",
        "object": "chat.completion",
        "created": 1763800000,
        "model": f"{model}-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
    }
    if usage:
        response["usage"] = {
            "prompt_tokens": 1000,
            "completion_tokens": 10,
            "total_tokens": 1010,
            "prompt_tokens_details": {"cached_tokens": 400},
        }
    line = {
        "request": {
            "model": model,
            "messages": [{"role": "system", "content": "You write bash."}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": 32,
        },
        "response": response,
    }
    if timestamp is not None:
        line["timestamp"] = timestamp
    return line


def fine_tuning_line(user: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You write bash."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def write_jsonl(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def rows(home) -> list[dict]:
    db = open_db(home / "logs.db")
    try:
        return list(db.query("SELECT * FROM requests ORDER BY startTime"))
    finally:
        db.close()


def test_imports_both_formats_with_usage_spend_and_timestamps(home, tmp_path):
    path = write_jsonl(
        tmp_path / "traffic.jsonl",
        [
            chat_line("list files", "ls", timestamp="2026-11-20T10:00:00Z"),
            "",  # blank lines are allowed
            chat_line("show disk usage", "df -h", timestamp=1763632800),  # Unix seconds
            fine_tuning_line("count lines in a.txt", "wc -l a.txt"),
        ],
    )
    result = run("import", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"Imported 3 requests from {path}, skipped 0 duplicates (token counts estimated for 1)."
    )

    logged = {row["response"]: row for row in rows(home)}
    assert set(logged) == {"ls", "df -h", "wc -l a.txt"}
    ls = logged["ls"]
    assert ls["startTime"] == "2026-11-20T10:00:00+00:00"
    assert (ls["source"], ls["route"], ls["status"], ls["token_source"]) == (
        "import",
        "upstream",
        200,
        "usage",
    )
    assert (ls["model"], ls["model_served"]) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert (ls["prompt_tokens"], ls["completion_tokens"], ls["cached_prompt_tokens"]) == (1000, 10, 400)
    assert json.loads(ls["messages"])[1] == {"role": "user", "content": "list files"}
    assert json.loads(ls["params"]) == {"temperature": 0, "max_tokens": 32}
    # gpt-4o-mini in litellm's bundled cost map: $0.15/M input, half price when cached, $0.60/M output.
    assert ls["spend"] == pytest.approx(600 * 0.15e-6 + 400 * 0.075e-6 + 10 * 0.6e-6)
    assert logged["df -h"]["startTime"] == "2025-11-20T10:00:00+00:00"

    fine_tuned = logged["wc -l a.txt"]
    assert fine_tuned["token_source"] == "estimated"
    messages = json.loads(fine_tuned["messages"])
    assert [m["role"] for m in messages] == ["system", "user"]  # the answer is the response, not a message
    assert fine_tuned["prompt_tokens"] == savings.estimate_prompt_tokens("", messages) > 0
    assert fine_tuned["completion_tokens"] == savings.estimate_text_tokens("", "wc -l a.txt") > 0
    assert fine_tuned["spend"] is None  # no model given: unpriced, not free


def test_reimport_adds_nothing_and_duplicates_in_a_file_count_once(home, tmp_path):
    line = chat_line("list files", "ls", timestamp="2026-11-20T10:00:00Z")
    path = write_jsonl(tmp_path / "t.jsonl", [line, line, fine_tuning_line("pwd please", "pwd")])
    first = run("import", path)
    assert "Imported 2 requests" in first.stdout and "skipped 1 duplicates" in first.stdout
    second = run("import", path)
    assert "Imported 0 requests" in second.stdout and "skipped 3 duplicates" in second.stdout
    assert len(rows(home)) == 2


def test_same_request_at_another_time_is_new_traffic(home, tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            chat_line("ls", "ls", timestamp="2026-11-20T10:00:00Z"),
            chat_line("ls", "ls", timestamp="2026-11-21T10:00Z"),
        ],
    )
    assert "Imported 2 requests" in run("import", path).stdout


def test_default_model_prices_fine_tuning_lines(home, tmp_path):
    path = write_jsonl(tmp_path / "ft.jsonl", [fine_tuning_line("print the date", "date")])
    assert run("import", "--model", "gpt-4o-mini", path).exit_code == 0
    (row,) = rows(home)
    assert row["model"] == "gpt-4o-mini"
    assert row["spend"] == pytest.approx(row["prompt_tokens"] * 0.15e-6 + row["completion_tokens"] * 0.6e-6)


BAD_LINES = [
    ('{"request": {"model": "m", "messages": [', "malformed JSON"),
    ("[1, 2]", "expected a JSON object, got a list"),
    ('{"request": {"model": "m"}, "response": {"choices": []}}', 'missing "request.messages"'),
    ('{"messages": "hello"}', '"messages" must be a list, got a string'),
    ('{"messages": []}', '"messages" is empty'),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}', "got a number"),
    ('{"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}', '"messages[0].role"'),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
    (
        '{"request": {"messages": [{"role": "user", "content": "hi"}]}, "response": "ls"}',
        '"response" must be',
    ),
    (json.dumps({**chat_line("a", "b"), "timestamp": "yesterday"}), "not ISO 8601"),
    ('{"prompt": "hi", "completion": "there"}', 'expected "request" and "response" keys'),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_bad_line_names_its_line_and_imports_nothing(home, tmp_path, bad, message):
    good = [chat_line("list files", "ls"), fine_tuning_line("pwd please", "pwd")]
    path = write_jsonl(tmp_path / "bad.jsonl", [*good, bad, chat_line("later", "echo later")])
    result = CliRunner().invoke(main, ["import", path])
    assert result.exit_code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: {path}: line 3: ")
    assert message in error and error.endswith("nothing was imported")
    assert rows(home) == []  # the two valid lines before it were not written either


def test_empty_file_is_a_clear_error(home, tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "   "])
    result = CliRunner().invoke(main, ["import", path])
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("holds no records (empty file): nothing to import")


def test_missing_file_is_a_usage_error(home, tmp_path):
    result = CliRunner().invoke(main, ["import", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
