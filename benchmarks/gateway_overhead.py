"""Gateway overhead: added latency and max throughput, against the upstream called directly and LiteLLM proxy.

Every target sits in front of the same fixed-latency OpenAI-compatible server
(tests/support/fake_upstream.py, its own process, 50 ms by default) on loopback, and all are measured in the
same run with the same requests:

  direct           the fake upstream itself (the floor)
  gateway-direct   `promptintern serve`, logging on, model with transport "direct" (pooled HTTP pass-through)
  gateway-litellm  the same gateway process, model with transport "litellm" (litellm.acompletion)
  litellm-proxy    `litellm --config cfg.yaml` (LiteLLM proxy, 1 worker, default settings, master key)
  gateway-direct@before  with --compare-tree DIR: the same gateway from another source tree (e.g. the
                   commit before a change, `git archive REV | tar -x -C DIR`), so before and after are
                   measured side by side in one run, under the same load

Both servers check a Bearer key. The prompt is one NL2Bash app request (system prompt + 5 few-shot
examples + query, ~600 tokens; a different query each time). For each target and for JSON and SSE
streaming: sequential latency (p50/p99; "added" = minus direct's) and, with 8 and 32 requests in flight
for a fixed time, throughput and latency (added p50/p99 = minus direct's at the same concurrency). On a
machine with 2+ cores the server under test is pinned to its own core and the client and the fake upstream
share the others, so the two do not steal each other's CPU.

Writes benchmarks/results/gateway_overhead.{json,md,png} and prints the command that made them.
  .venv/bin/python benchmarks/gateway_overhead.py            # full run, ~7 minutes on 2 cores
  .venv/bin/python benchmarks/gateway_overhead.py --quick    # smoke run, ~3 minutes
  .venv/bin/python benchmarks/gateway_overhead.py --no-litellm-proxy --no-litellm-transport \
      --compare-tree /tmp/before                              # before/after a change, side by side
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gateway_overhead_report import MODES, write_markdown, write_plot  # noqa: E402
from demo.nl2bash_app import build_requests  # noqa: E402
from gateway.environment import apply_defaults  # noqa: E402
from gateway.loopback import bind_free_socket  # noqa: E402
from tests.support.fake_upstream import FakeUpstreamProcess  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
KEY = "sk-bench-0123456789abcdef0123456789abcdef"


@dataclass
class Target:
    name: str
    base_url: str
    model: str
    process: subprocess.Popen | None = None  # None: the fake upstream, owned elsewhere


# ---- servers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    sock = bind_free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def wait_http(url: str, process: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before serving {url}")
        try:
            if httpx.get(url, timeout=2, headers={"authorization": f"Bearer {KEY}"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} after {timeout_s:.0f} s")


def start_gateway(
    work: Path, upstream_url: str, cpus: set[int] | None, tree: Path | None = None, label: str = ""
) -> list[Target]:
    """One `promptintern serve` process with two models on the fake upstream, one per transport; from
    another source tree when `tree` is given (its targets named with `label`)."""
    models = [
        {"name": f"fake-{t}", "litellm_model": "openai/fake", "api_base": upstream_url, "api_key": "up-key",
         "transport": t, "price": {"input_cost_per_token": 1e-7, "output_cost_per_token": 4e-7}}
        for t in ("direct", "litellm")
    ]  # fmt: skip
    config = work / f"gateway{label}.yaml"
    config.write_text(json.dumps({"models": models}))  # JSON is YAML
    port = free_port()
    env = {**os.environ, "PROMPTINTERN_HOME": str(work / f"home{label}"), "PROMPTINTERN_API_KEYS": KEY}
    command = [str(BIN / "promptintern"), "--config", str(config), "serve", "--port", str(port)]
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
        command = [sys.executable, "-m", "gateway.cli", *command[1:]]
    process = spawn(command, env, work / f"gateway{label}.log", cpus)
    wait_http(f"http://127.0.0.1:{port}/health", process, 60)
    url = f"http://127.0.0.1:{port}/v1"
    return [
        Target(f"gateway-direct{label}", url, "fake-direct", process),
        Target(f"gateway-litellm{label}", url, "fake-litellm"),
    ]


def start_litellm_proxy(work: Path, upstream_url: str, cpus: set[int] | None) -> Target:
    config = work / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "fake",
                        "litellm_params": {
                            "model": "openai/fake",
                            "api_base": upstream_url,
                            "api_key": "up-key",
                        },
                    }
                ],
                "general_settings": {"master_key": KEY},
                "litellm_settings": {"telemetry": False},
            }
        )
    )
    port = free_port()
    command = [str(BIN / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", "1"]
    process = spawn(command, dict(os.environ), work / "litellm.log", cpus)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", process, 120)
    return Target("litellm-proxy", f"http://127.0.0.1:{port}/v1", "fake", process)


def spawn(command: list[str], env: dict[str, str], log: Path, cpus: set[int] | None) -> subprocess.Popen:
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    if cpus:
        os.sched_setaffinity(process.pid, cpus)  # its threads and workers inherit it
    return process


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


# ---- load ------------------------------------------------------------------------------------------------


COMPLETED: dict[str, int] = {}  # responses fully received, per target (warm-up included)


@dataclass
class Sample:
    latency_ms: float
    ttft_ms: float
    overhead_ms: float | None  # the gateway's own x-promptintern-overhead-ms header


# aiohttp as the load generator: httpx's async pool collapses with many connections (measured here: 45
# requests/s with 32 in flight against the 50 ms fake, where aiohttp reaches 359), which would cap every row.
FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, AssertionError, KeyError)


def new_session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15))


async def one_request(
    session: aiohttp.ClientSession, target: Target, body: dict[str, Any], stream: bool
) -> Sample:
    payload = {**body, "model": target.model}
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    headers = {"authorization": f"Bearer {KEY}"}
    url = f"{target.base_url}/chat/completions"
    started = time.perf_counter()
    ttft = None
    async with session.post(url, json=payload, headers=headers) as response:
        response.raise_for_status()
        if not stream:
            assert (await response.json())["choices"][0]["message"]["content"]
        else:
            async for line in response.content:
                if ttft is None and b'"content"' in line:
                    ttft = (time.perf_counter() - started) * 1000
                if line.strip() == b"data: [DONE]":
                    break
            else:
                raise RuntimeError("stream ended without [DONE]")
        overhead = response.headers.get("x-promptintern-overhead-ms")
    elapsed = (time.perf_counter() - started) * 1000
    COMPLETED[target.name] = COMPLETED.get(target.name, 0) + 1
    return Sample(elapsed, ttft if ttft is not None else elapsed, float(overhead) if overhead else None)


async def sequential(targets: list[Target], bodies: list[dict], stream: bool, n: int) -> dict[str, dict]:
    """n requests per target, one at a time, the targets taking turns (round robin) so that background load
    on the machine hits every target alike; each round sends all targets the same body."""
    samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
    errors = dict.fromkeys(samples, 0)
    sessions = {t.name: new_session(1) for t in targets}
    try:
        for i in range(n + 10):  # 10 warm-up rounds, not counted
            for target in targets:
                try:
                    sample = await one_request(sessions[target.name], target, bodies[i % len(bodies)], stream)
                except FAILURES:
                    errors[target.name] += 1
                    continue
                if i >= 10:
                    samples[target.name].append(sample)
    finally:
        for session in sessions.values():
            await session.close()
    return {name: summarize(samples[name], errors[name]) for name in samples}


async def concurrent(
    target: Target, bodies: list[dict], stream: bool, workers: int, seconds: float
) -> tuple[list[Sample], int]:
    """`workers` clients, each sending its next request when the last completes, for `seconds` (after a
    1 s warm-up): the samples completed inside the window and the errors."""
    samples: list[Sample] = []
    errors = 0
    async with new_session(workers) as session:
        warm_until = time.perf_counter() + 1.0
        end = warm_until + seconds

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < end:
                try:
                    sample = await one_request(session, target, bodies[i % len(bodies)], stream)
                except FAILURES:
                    errors += 1
                    await asyncio.sleep(0.05)  # a dead server must not turn into a busy loop
                    continue
                finally:
                    i += workers
                if warm_until <= time.perf_counter() <= end:
                    samples.append(sample)  # completed inside the measured window

        await asyncio.gather(*(worker(k) for k in range(workers)))
    return samples, errors


def under_load(
    targets: list[Target], bodies: list[dict], stream: bool, workers: int, seconds: float, rounds: int
) -> dict[str, dict]:
    """Every target in turn, `rounds` windows of seconds/rounds each, so that background load on a shared
    machine falls on every target alike (as the sequential rounds do)."""
    samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
    errors = dict.fromkeys(samples, 0)
    for _ in range(rounds):
        for target in targets:
            if target.process is not None and target.process.poll() is not None:
                continue  # crashed: reported by the caller
            got, failed = asyncio.run(concurrent(target, bodies, stream, workers, seconds / rounds))
            samples[target.name] += got
            errors[target.name] += failed
    out = {}
    for name, got in samples.items():
        out[name] = summarize(got, errors[name])
        out[name]["requests_per_s"] = len(got) / seconds
    return out


def summarize(samples: list[Sample], errors: int) -> dict[str, Any]:
    if not samples:
        return {"n": 0, "errors": errors}
    latency = np.array([s.latency_ms for s in samples])
    ttft = np.array([s.ttft_ms for s in samples])
    overheads = [s.overhead_ms for s in samples if s.overhead_ms is not None]
    return {
        "n": len(samples),
        "errors": errors,
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
        "mean_ms": float(latency.mean()),
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "overhead_header_p50_ms": float(np.percentile(overheads, 50)) if overheads else None,
    }


# ---- the run ---------------------------------------------------------------------------------------------


def measure(targets: list[Target], bodies: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {t.name: {} for t in targets}
    for mode in MODES:
        stream = mode == "stream"
        alive = [t for t in targets if t.process is None or t.process.poll() is None]
        print(f"  all targets      {mode:6s} sequential x{args.sequential}", file=sys.stderr, flush=True)
        for name, stats in asyncio.run(sequential(alive, bodies, stream, args.sequential)).items():
            results[name][mode] = {"sequential": stats}
        for workers in args.concurrency:
            print(f"  all targets      {mode:6s} {workers} in flight", file=sys.stderr, flush=True)
            alive = [t for t in targets if t.process is None or t.process.poll() is None]
            for name, stats in under_load(alive, bodies, stream, workers, args.duration, args.rounds).items():
                results[name].setdefault(mode, {})[f"concurrent_{workers}"] = stats
        for target in targets:
            if target.process is not None and target.process.poll() is not None:
                results[target.name].setdefault(mode, {})["crashed"] = True  # e.g. the proxy under streams
    for modes in results.values():
        for mode, entry in modes.items():
            base, this = results["direct"][mode].get("sequential", {}), entry.get("sequential", {})
            if "p50_ms" in this and "p50_ms" in base:
                entry["added_p50_ms"] = this["p50_ms"] - base["p50_ms"]
                entry["added_p99_ms"] = this["p99_ms"] - base["p99_ms"]
            for workers in args.concurrency:
                base = results["direct"][mode].get(f"concurrent_{workers}", {})
                this = entry.get(f"concurrent_{workers}", {})
                if "p50_ms" in this and "p50_ms" in base:
                    this["added_p50_ms"] = this["p50_ms"] - base["p50_ms"]
                    this["added_p99_ms"] = this["p99_ms"] - base["p99_ms"]
            rates = [v.get("requests_per_s", 0.0) for k, v in entry.items() if k.startswith("concurrent_")]
            entry["max_requests_per_s"] = max(rates, default=0.0)
    return results


def logged_rows(work: Path) -> int:
    rows = 0
    for db in work.glob("home*/logs.db"):
        with sqlite3.connect(db) as conn:
            rows += conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0, help="fixed latency of the fake upstream")
    parser.add_argument("--sequential", type=int, default=200, help="sequential requests per target and mode")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per concurrency level")
    parser.add_argument(
        "--rounds", type=int, default=3, help="windows per concurrency level, the targets taking turns"
    )
    parser.add_argument("--no-litellm-proxy", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument(
        "--no-litellm-transport", action="store_true", help="skip the gateway's litellm transport"
    )
    parser.add_argument(
        "--compare-tree", type=Path, help="also measure the gateway of this tree (gateway-direct@before)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server under test to a core")
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 sequential, 2 s per level")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.sequential, args.duration = 30, 2.0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    apply_defaults()
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2 and not args.no_pin
    server_cpus = {cpus[-1]} if pin else None  # the server under test gets the last core to itself
    if pin:
        os.sched_setaffinity(0, set(cpus[:-1]))  # the client, and the fake upstream started below
    requests = build_requests(50, seed=0)
    bodies = [r.body("x", max_tokens=64) for r in requests]
    from gateway.accounting.savings import estimate_prompt_tokens

    prompt_tokens = round(
        float(np.mean([estimate_prompt_tokens("gpt-4o-mini", b["messages"]) for b in bodies]))
    )
    report: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/gateway_overhead.py", *map(shlex.quote, argv or [])]
        ),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()[0],  # other work on the machine skews every row alike
        },
        "config": {
            "latency_ms": args.latency_ms,
            "sequential": args.sequential,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "rounds": args.rounds,
            # uvicorn picks uvloop when installed; on plain asyncio it stalls ~40 ms per keep-alive request
            "server_event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "pinning": f"server under test on CPU {cpus[-1]}, client + fake upstream on the rest"
            if pin
            else "off",
        },
        "prompt": {
            "tokens": prompt_tokens,
            "chars": int(np.mean([len(json.dumps(b["messages"])) for b in bodies])),
        },
    }
    with tempfile.TemporaryDirectory(prefix="gw-overhead-") as tmp:
        work = Path(tmp)
        targets: list[Target] = []
        fake = FakeUpstreamProcess(args.latency_ms)  # its own process, on uvloop like the servers under test
        fake_url = fake.url
        try:
            targets.append(Target("direct", fake_url, "fake"))
            print("starting the gateway...", file=sys.stderr, flush=True)
            gateway = start_gateway(work, fake_url, server_cpus)
            targets += gateway[:1] if args.no_litellm_transport else gateway
            if args.compare_tree is not None:
                print(f"starting the gateway from {args.compare_tree}...", file=sys.stderr, flush=True)
                targets += start_gateway(work, fake_url, server_cpus, args.compare_tree, "@before")[:1]
                report["config"]["compare_tree"] = str(args.compare_tree)
            if not args.no_litellm_proxy:
                print("starting the LiteLLM proxy...", file=sys.stderr, flush=True)
                try:
                    targets.append(start_litellm_proxy(work, fake_url, server_cpus))
                except (RuntimeError, FileNotFoundError) as exc:
                    report["litellm_proxy_error"] = f"not measured: {exc}"
            report["results"] = measure(targets, bodies, args)
        finally:
            for target in targets:
                stop(target.process)
            fake.stop()
        completed = sum(n for name, n in COMPLETED.items() if name.startswith("gateway-"))
        report["gateway_log"] = {"rows": logged_rows(work), "responses_completed": completed}
    report["machine"]["load_average_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "gateway_overhead.md")
    write_plot(report, args.out / "gateway_overhead.png")
    print((args.out / "gateway_overhead.md").read_text())
    print(f"Made by: {report['command']}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
