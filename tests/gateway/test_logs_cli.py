"""`promptintern logs`: seed a migrated log, assert on what the CLI prints."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import open_db


def run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def seed(home, count: int = 5) -> None:
    """count gateway rows, one a second, latencies 100, 200, ... ms; every other one for model 'big'."""
    db = open_db(home / "logs.db")
    db["requests"].insert_all(
        {
            "request_id": f"req-{i}",
            "startTime": f"2026-11-22T10:00:0{i}+00:00",
            "model": "big" if i % 2 else "small",
            "model_served": "big-2025" if i % 2 else "small",
            "route": "local" if i == 4 else "upstream",
            "messages": json.dumps(
                [
                    {"role": "system", "content": "You are ShellPilot."},
                    {"role": "user", "content": f"question {i} about 100% of files"},
                ]
            ),
            "params": json.dumps({"temperature": 0}),
            "response": f"answer-{i}",
            "prompt_tokens": 100,
            "completion_tokens": 10 + i,
            "cached_prompt_tokens": 40,
            "latency_ms": 100.0 * (i + 1),
            "spend": 0.001,
            "status": 200 if i != 3 else 502,
            "error": "upstream 5xx" if i == 3 else None,
            "source": "gateway",
        }
        for i in range(count)
    )
    db.close()


def headers(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("# ")]


def test_missing_log_says_so_and_creates_nothing(home):
    result = run("logs")
    assert "No request log at" in result.stderr and result.stdout == ""
    assert run("logs", "--json").stdout.strip() == "[]"
    assert "No request log" in run("logs", "--usage").stderr
    assert not (home / "logs.db").exists()


def test_empty_log(home):
    open_db(home / "logs.db").close()
    assert "No requests in" in run("logs").stderr
    usage = json.loads(run("logs", "--usage", "--json").stdout)
    assert usage["requests"] == 0 and usage["latency_ms_p50"] is None


def test_last_n_oldest_first_with_prompt_and_response(home):
    seed(home)
    output = run("logs").stdout  # default: the last 3
    assert [line.split()[1] for line in headers(output)] == [
        "2026-11-22T10:00:02+00:00",
        "2026-11-22T10:00:03+00:00",
        "2026-11-22T10:00:04+00:00",
    ]
    assert "question 4 about 100% of files" in output and "answer-4" in output
    assert "You are ShellPilot." not in output  # only the last message unless --full
    assert "(+ 1 earlier messages" in output
    assert "upstream 5xx" in output  # the failed request shows its error
    assert len(headers(run("logs", "-n", "0").stdout)) == 5
    assert len(headers(run("logs", "-n", "1").stdout)) == 1
    assert "[system] You are ShellPilot." in run("logs", "-n", "1", "--full").stdout
    short = run("logs", "--short", "-n", "2").stdout.splitlines()
    assert len(short) == 2 and short[1].startswith("2026-11-22T10:00:04+00:00  small  local  200")
    assert short[1].endswith("'question 4 about 100% of files' -> 'answer-4'")


def test_search_model_filter_and_json(home):
    seed(home)
    found = json.loads(run("logs", "-q", "question 2", "--json").stdout)
    assert [row["request_id"] for row in found] == ["req-2"]
    assert found[0]["messages"][1]["content"] == "question 2 about 100% of files"  # decoded, not a string
    assert found[0]["params"] == {"temperature": 0}
    by_response = json.loads(run("logs", "-q", "answer-3", "--json").stdout)
    assert [row["request_id"] for row in by_response] == ["req-3"]
    # % is matched literally, not as a LIKE wildcard
    assert json.loads(run("logs", "-q", "0%", "-n", "0", "--json").stdout) != []
    assert json.loads(run("logs", "-q", "1%", "--json").stdout) == []
    big = json.loads(run("logs", "-m", "big", "-n", "0", "--json").stdout)
    assert [row["request_id"] for row in big] == ["req-1", "req-3"]
    assert [
        r["request_id"] for r in json.loads(run("logs", "-m", "big-2025", "-n", "0", "--json").stdout)
    ] == [
        "req-1",
        "req-3",
    ]
    assert "No matching requests" in run("logs", "-q", "nowhere").stderr


def test_usage_totals_and_percentiles(home):
    seed(home)
    usage = json.loads(run("logs", "--usage", "--json").stdout)
    assert usage["requests"] == 5 and usage["errors"] == 1
    assert usage["prompt_tokens"] == 500 and usage["cached_prompt_tokens"] == 200
    assert usage["completion_tokens"] == 10 + 11 + 12 + 13 + 14
    assert usage["spend"] == pytest.approx(0.005)
    # latencies 100..500 ms: p50 = 300, p95 interpolated = 480
    assert usage["latency_ms_p50"] == pytest.approx(300.0)
    assert usage["latency_ms_p95"] == pytest.approx(480.0)
    assert usage["by_route"]["local"]["requests"] == 1 and usage["by_route"]["upstream"]["requests"] == 4
    filtered = json.loads(run("logs", "--usage", "--json", "-m", "small").stdout)
    assert filtered["requests"] == 3

    text = run("logs", "--usage").stdout
    assert "requests           5 (1 errors)" in text
    assert "latency p50 / p95  300.0 ms / 480.0 ms" in text
    assert "[local]" in text and "[upstream]" in text


def test_logs_path_honours_home(home):
    assert run("logs", "path").stdout.strip() == str(home / "logs.db")


def test_negative_count_is_an_error(home):
    result = CliRunner().invoke(main, ["logs", "-n", "-1"])
    assert result.exit_code == 1 and "-n must be 0" in result.stderr


def test_search_sees_quotes_inside_the_stored_json(home):
    db = open_db(home / "logs.db")
    messages = [{"role": "user", "content": 'find files named "*.txt"\nin /tmp'}]
    db["requests"].insert(
        {"request_id": "q", "startTime": "2026-11-22T10:00:00+00:00", "messages": json.dumps(messages)}
    )
    db.close()
    for text in ('named "*.txt"', 'named "*.txt"\nin /tmp'):
        assert [row["request_id"] for row in json.loads(run("logs", "-q", text, "--json").stdout)] == ["q"]
