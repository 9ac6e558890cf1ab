"""`promptintern demo`: the gateway on the embedded default, real NL->bash traffic through it, a summary.

Offline and keyless: the gateway starts in this process on a free loopback port with no upstream
configured, so it runs its embedded llama.cpp server on SmolLM2-135M-Instruct. The traffic is the NL2Bash
app of gateway.nl2bash_app (a long system prompt + 5 few-shot examples + the query), sent with the official
`openai` client. The summary is read back from the request log, so it shows what the log really holds.

Each step is a small function so later issues can extend the demo into the full loop
(mine -> internalize -> route) without rewriting it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from gateway.cli import CliError, get_settings
from gateway.nl2bash_app import AppRequest, build_requests
from gateway.settings import Settings

DEMO_TIMEOUT_S = 300.0


@dataclass
class ReplayResult:
    """What the client saw: the gateway's request ids, answers, and failures."""

    request_ids: list[str] = field(default_factory=list)
    answers: list[tuple[AppRequest, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def demo_settings(settings: Settings) -> Settings:
    """The user's settings with no upstream models and no gateway keys: the embedded default, loopback.

    The timeout is raised because the first request evaluates the whole ~650-token prompt on CPU, which
    takes a minute on a busy 2-core machine; later requests reuse llama.cpp's cached prompt prefix.
    """
    timeout = max(settings.upstream_timeout_s, DEMO_TIMEOUT_S)
    return settings.model_copy(
        update={"models": [], "api_keys": [], "default_model": None, "upstream_timeout_s": timeout}
    )


@contextlib.contextmanager
def running_gateway(settings: Settings) -> Iterator[str]:
    """Serve create_app(settings) under uvicorn in a thread on a free 127.0.0.1 port; yield its /v1 URL."""
    from gateway.app import create_app
    from gateway.fake_upstream import serve_in_thread

    app = create_app(settings)
    # The embedded llama.cpp server starts inside the lifespan, so allow for its start-up time.
    server, thread, port = serve_in_thread(app, timeout_s=settings.embedded_start_timeout_s + 30)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def demo_traffic(n: int, examples: str, layout: str, seed: int) -> list[AppRequest]:
    return build_requests(n, examples=examples, layout=layout, seed=seed)  # type: ignore[arg-type]


def replay(base_url: str, model: str, requests: Sequence[AppRequest], max_tokens: int) -> ReplayResult:
    """Send every request once, in order, with the official openai client (temperature 0), with a bar."""
    from openai import APIStatusError, OpenAI, OpenAIError
    from tqdm import tqdm

    result = ReplayResult()
    client = OpenAI(base_url=base_url, api_key="demo-no-key", max_retries=0, timeout=DEMO_TIMEOUT_S + 30)
    started = time.perf_counter()
    for request in tqdm(requests, desc="replaying", unit="req", file=sys.stderr):
        try:
            raw = client.chat.completions.with_raw_response.create(**request.body(model, max_tokens))
        except APIStatusError as exc:  # the gateway answered with an error: it is in the log too
            result.request_ids.append(exc.response.headers.get("x-request-id", ""))
            result.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        except OpenAIError as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        result.request_ids.append(raw.headers.get("x-request-id", ""))
        result.answers.append((request, raw.parse().choices[0].message.content or ""))
    result.wall_s = time.perf_counter() - started
    client.close()
    return result


def log_summary(settings: Settings, request_ids: Sequence[str]) -> dict[str, Any]:
    """Usage totals of these requests, read back from the log."""
    from gateway.cli_logs import percentile, usage_summary
    from gateway.store import open_db

    db = open_db(settings.db_path)
    try:
        ids = [request_id for request_id in request_ids if request_id]
        where = f" WHERE request_id IN ({', '.join('?' for _ in ids)})" if ids else " WHERE 0"
        summary = usage_summary(db, where, ids)
        overheads = [r["overhead_ms"] for r in db.query(f"SELECT overhead_ms FROM requests{where}", ids)]
    finally:
        db.close()
    summary["overhead_ms_p50"] = percentile(sorted(v for v in overheads if v is not None), 50)
    return summary


def format_summary(summary: dict[str, Any], result: ReplayResult, settings: Settings) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f} ms"

    sent = len(result.answers) + len(result.errors)
    rate = sent / result.wall_s if result.wall_s else 0.0
    lines = [
        "",
        f"Demo summary (from the request log {settings.db_path})",
        f"  requests logged     {summary['requests']:,} of {sent:,} sent ({summary['errors']:,} errors)",
        f"  prompt tokens       {summary['prompt_tokens']:,} ({summary['cached_prompt_tokens']:,} cached)",
        f"  completion tokens   {summary['completion_tokens']:,}",
        f"  spend               ${summary['spend']:.6f} (compute at ${settings.local_cost_per_hour}/hour)",
        f"  latency p50 / p95   {ms(summary['latency_ms_p50'])} / {ms(summary['latency_ms_p95'])}",
        f"  gateway overhead    {ms(summary['overhead_ms_p50'])} p50",
        f"  wall time           {result.wall_s:,.1f} s ({rate:.2f} requests/s)",
    ]
    if result.answers:
        request, answer = result.answers[0]
        lines += ["", "First request:", f"  query      {request.pair.nl}", f"  reference  {request.pair.cmd}"]
        answer_lines = answer.strip().splitlines() or ["(empty)"]
        more = " ..." if len(answer_lines) > 1 else ""
        lines += [f"  model      {answer_lines[0]}{more}"]
    if result.errors:
        lines += ["", f"First error: {result.errors[0]}"]
    lines += ["", "Look at the log with `promptintern logs` (or `promptintern logs --usage`)."]
    return "\n".join(lines)


@click.command()
@click.option("--requests", "n_requests", default=100, show_default=True, help="How many requests to replay.")
@click.option("--examples", type=click.Choice(["fixed", "retrieved"]), default="fixed", show_default=True)
@click.option("--layout", type=click.Choice(["turns", "inline"]), default="turns", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Which queries and examples (deterministic).")
@click.option("--max-tokens", default=48, show_default=True, help="Completion limit per request.")
@click.pass_context
def demo(ctx: click.Context, n_requests: int, examples: str, layout: str, seed: int, max_tokens: int) -> None:
    """Replay NL2Bash traffic through the gateway on the embedded model (offline) and summarize the log."""
    if n_requests < 1:
        raise CliError("--requests must be at least 1")
    settings = demo_settings(get_settings(ctx))
    settings.ensure_home()
    requests = demo_traffic(n_requests, examples, layout, seed)
    click.echo(
        f"Starting the gateway on the embedded {settings.embedded_model_name} (llama.cpp, offline)...",
        err=True,
    )
    try:
        with running_gateway(settings) as base_url:
            click.echo(f"Gateway at {base_url}; replaying {len(requests)} NL2Bash requests.", err=True)
            result = replay(base_url, settings.embedded_model_name, requests, max_tokens)
    except RuntimeError as exc:
        raise CliError(f"the gateway did not start: {exc}") from exc
    summary = log_summary(settings, result.request_ids)
    click.echo(format_summary(summary, result, settings))
    if not result.answers:
        raise CliError(f"every request failed; first error: {result.errors[0]}")
