"""The gateway as a drop-in for the clients people point at an OpenAI endpoint: the openai SDK with or
without /v1 in its base_url, model lookups, LangChain's ChatOpenAI, the request ids clients record, the log
for other tools (fine-tuning JSONL, Datasette), and the CLI's first impressions (--version, a busy port)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from importlib.resources import files

import httpx
import openai
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import open_db
from tests.gateway import seed_log
from tests.gateway.seed_log import NL2BASH

MESSAGES = [{"role": "user", "content": "one two three four"}]
TRANSPORTS = ["", "-litellm"]


def cli(home, *args: str, expect: int = 0):
    result = CliRunner().invoke(
        main, list(args), env={"PROMPTINTERN_HOME": str(home)}, catch_exceptions=False
    )
    assert result.exit_code == expect, result.output
    return result


def test_a_base_url_without_v1_works_too(gateway):
    client = openai.OpenAI(base_url=gateway.root, api_key="unused", max_retries=0)
    assert client.chat.completions.create(model="echo", messages=MESSAGES).choices[0].message.content == (
        "echo: one two three four"
    )
    chunks = list(client.chat.completions.create(model="echo-litellm", messages=MESSAGES, stream=True))
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two three four"
    )
    assert {m.id for m in client.models.list().data} == {m.name for m in gateway.settings.models}


def test_one_model_can_be_looked_up_and_an_unknown_one_is_a_404(gateway):
    client = gateway.client()
    model = client.models.retrieve("echo")
    assert (model.id, model.object) == ("echo", "model")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-nonexistent")
    error = caught.value.response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"


@pytest.mark.parametrize("suffix", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True])
def test_the_id_a_client_sees_is_in_the_log_and_found_by_logs_q(gateway, suffix, stream):
    client = gateway.client()
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="echo" + suffix, messages=MESSAGES, stream=True
        ) as response:
            chunks = list(response.parse())
            request_id = response.headers["x-request-id"]
        seen = chunks[0].id
    else:
        raw = client.chat.completions.with_raw_response.create(model="echo" + suffix, messages=MESSAGES)
        seen, request_id = raw.parse().id, raw.headers["x-request-id"]
    assert seen.startswith("chatcmpl-")
    assert gateway.row(request_id)["completion_id"] == seen
    found = json.loads(cli(gateway.settings.home, "logs", "-q", seen, "--json").output)
    assert [row["request_id"] for row in found] == [request_id]
    assert seen in cli(gateway.settings.home, "logs", "-q", seen).output


def test_in_flight_requests_are_counted_until_a_stream_ends(gateway):
    def in_flight() -> float:
        text = httpx.get(f"{gateway.root}/metrics").text
        [line] = [line for line in text.splitlines() if line.startswith("promptintern_requests_in_flight ")]
        return float(line.split()[1])

    assert in_flight() == 0
    with gateway.client().chat.completions.with_streaming_response.create(
        model="dripping", messages=MESSAGES, stream=True
    ) as response:
        stream = response.iter_lines()
        next(stream)  # the stream has started; the upstream sends a chunk every 100 ms
        assert in_flight() == 1
        list(stream)
    time.sleep(0.1)
    assert in_flight() == 0


# ---- LangChain -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", TRANSPORTS)
def test_langchain_chat_openai(gateway, fake_upstream, suffix):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool

    llm = langchain_openai.ChatOpenAI(
        base_url=gateway.url, api_key="unused", model="echo" + suffix, max_retries=0, max_tokens=3,
        stream_usage=True,
    )  # fmt: skip
    answer = llm.invoke("one two three four")
    assert answer.content == "echo: one two"  # LangChain sends max_completion_tokens: honoured
    assert answer.usage_metadata["output_tokens"] == 3
    assert fake_upstream.received[-1]["max_tokens"] == 3
    streamed = "".join(chunk.content for chunk in llm.stream("one two three four"))
    assert streamed == "echo: one two"

    @tool
    def run_shell(text: str) -> str:
        """Run a shell command."""
        return text

    [call] = llm.bind_tools([run_shell]).invoke("list the files").tool_calls
    assert (call["name"], call["args"]) == ("run_shell", {"text": "list the files"})


# ---- the log for other tools ----------------------------------------------------------------------------


def test_export_writes_fine_tuning_jsonl_that_imports_back(home, tmp_path):
    seed_log.seed_dashboard(home / "logs.db")
    out = tmp_path / "nl2bash.jsonl"
    result = cli(home, "export", "--template", NL2BASH[:12], "-o", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    db = open_db(home / "logs.db")
    expected = db.execute(
        "select count(*) from requests r left join request_templates rt using (request_id) "
        "where coalesce(r.template_id, rt.template_id) = ? and r.status = 200",
        [NL2BASH],
    ).fetchone()[0]
    assert len(lines) == expected == 13 and f"Exported 13 requests of template {NL2BASH}" in result.output
    for record in lines:
        *prompt, answer = record["messages"]
        assert prompt[-1]["role"] == "user" and answer == {"role": "assistant", "content": "ls -la /tmp"}
    upstream_only = cli(home, "export", "--template", NL2BASH, "--upstream-only").output
    assert upstream_only.count('"messages"') == 13 - 6  # without the 6 local answers

    other = tmp_path / "elsewhere"
    imported = cli(other, "import", str(out), "-m", "gpt-4o-mini").output
    assert "Imported 13 requests" in imported


def test_export_of_an_unknown_template_is_one_line(home):
    seed_log.seed(home / "logs.db")
    result = cli(home, "export", "--template", "tpl_nope", expect=1)
    assert result.output.strip().startswith("Error: no template or route matches 'tpl_nope'")


def test_datasette_metadata_describes_every_column_and_the_facets(home):
    metadata = json.loads(files("gateway.log").joinpath("datasette_metadata.json").read_text())
    db = open_db(home / "logs.db")
    tables = metadata["databases"][(home / "logs.db").stem]["tables"]
    for table, spec in tables.items():
        assert set(spec["columns"]) == set(db[table].columns_dict), table
        assert set(spec.get("facets", [])) <= set(db[table].columns_dict)
    assert tables["requests"]["facets"] == ["route", "template_id", "model", "status"]
    command = cli(home, "logs", "datasette").stdout.strip()
    assert (
        command
        == f"datasette {home / 'logs.db'} --metadata {files('gateway.log') / 'datasette_metadata.json'}"
    )


# ---- the CLI's first impressions -----------------------------------------------------------------------


def test_version_and_short_help():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.startswith("promptintern, version ")
    short = runner.invoke(main, ["-h"])
    assert short.exit_code == 0 and "serve" in short.output and "export" in short.output
    assert runner.invoke(main, ["logs", "-h"]).output.startswith("Usage: ")


def test_serve_on_a_busy_port_is_one_line_and_a_failure(tmp_path, fake_upstream):
    config = tmp_path / "config.yaml"
    model = {
        "name": "echo",
        "litellm_model": "openai/echo",
        "api_base": fake_upstream.url,
        "transport": "direct",
    }
    config.write_text(json.dumps({"models": [model]}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PROMPTINTERN_HOME": str(tmp_path / "home")},
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port}: the port is in use (another gateway?); "
        "choose another with --port or PROMPTINTERN_PORT"
    )
    assert "http://" not in done.stderr  # it never claimed to be listening
