"""`promptintern demo`: the whole loop on the embedded default, offline: replay, nightly, replay, report.

Offline and keyless: the gateway starts in this process on a free loopback port with no upstream
configured, so it runs its embedded llama.cpp server on SmolLM2-135M-Instruct. The traffic is the NL2Bash
app of demo.nl2bash_app (a long system prompt + 5 few-shot examples + the query), sent with the official
`openai` client. Steps (each a small function):
1. replay NL2Bash training queries through the gateway (served upstream with the full prompt, logged);
2. nightly (demo.nightly): mine the log, internalize the template, export, gate, activate;
3. wait until the running gateway's router serves the new model, then replay held-out (dev) queries with
   the same template: they are routed query-only to the local model;
4. print the savings (gateway.accounting.report) and the accuracy (the gate's held-out scores, the served
   answers).
Every figure is read back from the log, the report or the models row.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click

from demo.nightly import DEMO_GATE_THRESHOLD, TARGETS, demo_config, run_nightly
from demo.nl2bash_app import AppRequest, build_requests
from demo.summary import format_loop_summary, savings_figures, served_accuracy
from gateway.cli import CliError, get_settings
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
    from gateway.loopback import serve_in_thread

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
        except OpenAIError as exc:  # no answer from the gateway: keep request_ids aligned with requests
            result.request_ids.append("")
            result.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        result.request_ids.append(raw.headers.get("x-request-id", ""))
        result.answers.append((request, raw.parse().choices[0].message.content or ""))
    result.wall_s = time.perf_counter() - started
    client.close()
    return result


def log_summary(settings: Settings, request_ids: Sequence[str]) -> dict[str, Any]:
    """Usage totals of these requests, read back from the log."""
    from gateway.accounting.report import percentile
    from gateway.cli.logs import usage_summary
    from gateway.log.store import open_db

    db = open_db(settings.db_path)
    try:
        ids = [request_id for request_id in request_ids if request_id]
        where = f" WHERE request_id IN ({', '.join('?' for _ in ids)})" if ids else " WHERE 0"
        summary = usage_summary(db, where, ids)
        overheads = [r["overhead_ms"] for r in db.query(f"SELECT overhead_ms FROM requests{where}", ids)]
    finally:
        db.close()
    summary["overhead_ms_p50"] = percentile([v for v in overheads if v is not None], 50)
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


def wait_until_served(base_url: str, model_id: str, timeout_s: float = 180.0) -> bool:
    """Poll GET /v1/models until the router lists `model_id` (it loads the GGUF before taking traffic)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="demo-no-key", max_retries=0)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if any(model.id == model_id for model in client.models.list()):
                return True
            time.sleep(0.5)
        return False
    finally:
        client.close()


def loop_traffic(
    n_train: int, n_fresh: int, examples: str, layout: str, seed: int
) -> tuple[list[AppRequest], list[AppRequest]]:
    """Training queries from NL2Bash's train split, fresh ones from its dev split, one app (same template)."""
    train = build_requests(n_train, examples=examples, layout=layout, seed=seed)  # type: ignore[arg-type]
    fresh = build_requests(n_fresh, split="dev", examples=examples, layout=layout, seed=seed)  # type: ignore[arg-type]
    return train, fresh


def announce(step: str) -> None:
    click.echo(f"\n== {step}", err=True)


@click.command()
@click.option("--requests", "n_requests", default=200, show_default=True, help="Training requests to replay.")
@click.option("--fresh", "n_fresh", default=40, show_default=True, help="Held-out requests replayed after.")
@click.option(
    "--targets",
    type=click.Choice(TARGETS),
    default="gold",
    show_default=True,
    help="Train on NL2Bash's gold commands or on the upstream's logged answers.",
)
@click.option(
    "--gate-threshold",
    default=DEMO_GATE_THRESHOLD,
    show_default=True,
    help="chrF floor the model needs (it must also match the full prompt's chrF).",
)
@click.option("--threads", default=0, show_default=True, help="Torch threads for training (0: all cores).")
@click.option("--quick", is_flag=True, help="A tiny run (a few requests, a few steps) for tests.")
@click.option("--examples", type=click.Choice(["fixed", "retrieved"]), default="fixed", show_default=True)
@click.option("--layout", type=click.Choice(["turns", "inline"]), default="turns", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Which queries and examples (deterministic).")
@click.option("--max-tokens", default=32, show_default=True, help="Completion limit per request.")
@click.pass_context
def demo(
    ctx: click.Context,
    n_requests: int,
    n_fresh: int,
    targets: str,
    gate_threshold: float,
    threads: int,
    quick: bool,
    examples: str,
    layout: str,
    seed: int,
    max_tokens: int,
) -> None:
    """The whole loop offline: replay NL2Bash traffic, internalize its template, route, report."""
    if quick:
        n_requests, n_fresh = min(n_requests, 12), min(n_fresh, 3)
    if n_requests < 1 or n_fresh < 1:
        raise CliError("--requests and --fresh must be at least 1")
    settings = demo_settings(get_settings(ctx))
    settings.ensure_home()
    cfg = demo_config(quick, threads, gate_threshold)
    train, fresh = loop_traffic(n_requests, n_fresh, examples, layout, seed)
    timings: dict[str, float] = {}
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    click.echo(
        f"Starting the gateway on the embedded {settings.embedded_model_name} (llama.cpp, offline)...",
        err=True,
    )
    try:
        with running_gateway(settings) as base_url:
            announce(
                f"1/4 replay: {len(train)} NL2Bash requests with the full few-shot prompt via {base_url}"
            )
            first = replay(base_url, settings.embedded_model_name, train, max_tokens)
            click.echo(format_summary(log_summary(settings, first.request_ids), first, settings), err=True)
            if not first.answers:
                raise CliError(f"every request failed; first error: {first.errors[0]}")
            timings["replay"] = time.perf_counter() - clock

            announce(f"2/4 nightly: mine, internalize (targets: {targets}), export, gate, activate")
            try:
                nightly = run_nightly(settings, cfg, first.request_ids, train, targets, _say)
            except Exception as exc:
                from internalizer.cli_train import USER_ERRORS

                if type(exc).__name__ in USER_ERRORS:
                    raise CliError(f"nightly failed: {exc}".splitlines()[0]) from exc
                raise
            timings["nightly"] = time.perf_counter() - clock - timings["replay"]

            model_id = nightly.job["model_id"]
            if nightly.job["status"] == "active" and not wait_until_served(base_url, model_id):
                raise CliError(f"the gateway did not start serving {model_id} within 180 s")
            fresh_at = datetime.now(UTC)
            served_note = "routed to it" if nightly.job["status"] == "active" else "gate failed: upstream"
            announce(f"3/4 replay: {len(fresh)} held-out requests, same template ({model_id}: {served_note})")
            second = replay(base_url, settings.embedded_model_name, fresh, max_tokens)
            timings["fresh replay"] = time.perf_counter() - clock - timings["replay"] - timings["nightly"]
    except RuntimeError as exc:  # the gateway's start-up (embedded llama.cpp server) or the router
        raise CliError(f"the demo failed: {exc}".splitlines()[0]) from exc
    timings["total"] = time.perf_counter() - clock

    announce("4/4 report")
    savings = savings_figures(settings, nightly.template_id, started_at, fresh_at)
    served = {"before": served_accuracy(first.answers), "after": served_accuracy(second.answers)}
    click.echo(format_loop_summary(nightly, savings, served, timings))
    if second.errors:
        raise CliError(f"{len(second.errors)} fresh requests failed; first: {second.errors[0]}")


def _say(message: str) -> None:
    click.echo(f"  {message}", err=True)
