"""Routing benchmark: matched requests full-prompt upstream vs query-only local; the matcher's overhead.

Part 1, same machine, one run, one gateway: NL2Bash app requests (long system prompt + 5 few-shot turns +
the query) through the gateway, alternating rounds where the template's route is off (the request goes to
the embedded llama.cpp server on SmolLM2-135M with its full prompt) and active (the router rewrites it to
the query alone and serves it from the same GGUF in-process, as the "internalized" model). The upstream is
measured twice: with its KV cache holding the previous request's prefix (one app alone on the server:
llama.cpp then evaluates only the new tokens, like provider prompt caching) and with another app's short
request in between (a shared server: the whole prompt is evaluated). End-to-end client latency p50/p95,
prompt tokens, and the ratios. Greedy decoding, the same max_tokens on every path.

Part 2, matcher overhead on unmatched traffic: the gateway in front of the fake provider (its own process,
0 ms latency), router disabled vs enabled with the mined template loaded, sending near-miss requests (the
app's prompt with its last instruction changed: the matcher's worst case, since the template's prefix
matches and the mismatch is found late) and the gateway's own time (`x-promptintern-overhead-ms`) and
end-to-end latency are compared.

Part 3 (`--backends`, on its own), the price of serving local models out of process: the same query-only
requests served by the in-process llama.cpp pool (`local_backend: llama_cpp`) and by the default supervised
llama.cpp server child (`llama_cpp_server`), two gateways running at once and taking turns request by
request. Part 1 pins the in-process pool, as when its figures were first recorded.

Loopback only, bounded by --n. Writes benchmarks/results/routing.{json,md,png} (part 3:
routing_backends.{json,md}) and prints the command.
  .venv/bin/python benchmarks/routing.py             # ~6 minutes on 2 cores
  .venv/bin/python benchmarks/routing.py --quick     # smoke run, ~2 minutes
  .venv/bin/python benchmarks/routing.py --backends  # part 3 only, ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gateway.environment import apply_defaults  # noqa: E402

apply_defaults()  # both llama.cpp instances (the embedded server, the local pool) sleep while waiting

from demo.nl2bash_app import NL2BashApp, load_pairs  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.log.store import open_db  # noqa: E402
from gateway.loopback import serve_in_thread  # noqa: E402
from gateway.routing.routes_store import set_route  # noqa: E402
from gateway.settings import Settings, UpstreamModel  # noqa: E402
from gateway.templates.matcher import Matcher  # noqa: E402
from gateway.upstream.base_model import smollm2_gguf_path  # noqa: E402
from internalizer.mine import mine  # noqa: E402
from internalizer.registry import register  # noqa: E402
from tests.support.fake_upstream import FakeUpstreamProcess  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL_ID = "m-bench-internalized"


def seed(db_path: Path, app: NL2BashApp, queries: list[str]) -> str:
    """Log the app's requests, mine them, register the GGUF as the template's model; the template id."""
    db = open_db(db_path)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "request_id": f"seed-{i:04d}",
            "startTime": (t0 + timedelta(minutes=i)).isoformat(),
            "messages": json.dumps(app.messages(q)),
            "params": "{}",
            "status": 200,
            "source": "import",
        }
        for i, q in enumerate(queries)
    ]
    db["requests"].insert_all(rows)
    [template_id] = mine(db).new_ids
    register(
        db, model_id=MODEL_ID, template_id=template_id, gguf_path=smollm2_gguf_path(), sha256="-",
        quant="q4_1", base_model="smollm2-135m", config={}, stage_losses=[], eval_scores={},
        n_train_requests=0,
    )  # fmt: skip
    db.execute("update models set status = 'active' where id = ?", [MODEL_ID])
    db.conn.commit()
    set_route(db, template_id, model_id=MODEL_ID, mode="off")
    db.close()
    return template_id


def set_mode(db_path: Path, template_id: str, mode: str) -> None:
    db = open_db(db_path)
    set_route(db, template_id, mode=mode)
    db.close()


def serve(settings: Settings) -> tuple[str, Any]:
    server, thread, port = serve_in_thread(create_app(settings), timeout_s=300)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return f"http://127.0.0.1:{port}/v1", stop


def post(client: httpx.Client, url: str, body: dict) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.post(f"{url}/chat/completions", json=body)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response


def wait_route(client: httpx.Client, url: str, body: dict, want: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if post(client, url, body)[1].headers["x-promptintern-route"] == want:
            return
        time.sleep(0.2)
    raise RuntimeError(f"route never became {want}")


def stats(values: list[float]) -> dict[str, float]:
    array = np.array(values)
    return {
        "n": len(values),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "mean": float(array.mean()),
    }


# ---- part 1: full prompt upstream vs query-only local -----------------------------------------------------


PATHS = {  # name -> (route mode, expected route header, evict the upstream's cached prefix first)
    "upstream_cold_prefix": ("off", "upstream", True),
    "upstream_warm_prefix": ("off", "upstream", False),
    "local_query_only": ("active", "local", False),
}


def latency_part(
    home: Path, app: NL2BashApp, queries: list[str], n: int, rounds: int, max_tokens: int
) -> dict:
    settings = Settings(
        home=home, local_threads=os.cpu_count() or 2, router_poll_s=0.2, local_backend="llama_cpp"
    )
    settings.ensure_home()
    template_id = seed(settings.db_path, app, queries[:20])
    url, stop = serve(settings)
    model = settings.embedded_model_name
    measured: dict[str, list[float]] = {name: [] for name in PATHS}
    prompt_tokens: dict[str, list[int]] = {name: [] for name in PATHS}
    fresh = iter(queries[20:])
    other_app = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1}
    try:
        with httpx.Client(timeout=300) as client:
            for round_no in range(rounds):
                for name, (mode, route, evict) in PATHS.items():
                    set_mode(settings.db_path, template_id, mode)
                    warm = {"model": model, "messages": app.messages(queries[0]), "max_tokens": 1}
                    wait_route(client, url, warm, route)
                    for _ in range(n // rounds):
                        if evict:  # another app's request in between: the llama.cpp KV cache loses our prefix
                            post(client, url, other_app)
                        messages = app.messages(next(fresh))
                        body = {
                            "model": model,
                            "messages": messages,
                            "max_tokens": max_tokens,
                            "temperature": 0,
                        }
                        elapsed, response = post(client, url, body)
                        assert response.headers["x-promptintern-route"] == route
                        measured[name].append(elapsed)
                        prompt_tokens[name].append(response.json()["usage"]["prompt_tokens"])
                    print(
                        f"  round {round_no + 1}/{rounds} {name}: {len(measured[name])} requests", flush=True
                    )
    finally:
        stop()
    paths = {
        name: {**stats(measured[name]), "prompt_tokens_mean": float(np.mean(prompt_tokens[name]))}
        for name in PATHS
    }
    local = paths["local_query_only"]
    return {
        "template_id": template_id,
        "max_tokens": max_tokens,
        **paths,
        "speedup_p50_vs_cold": paths["upstream_cold_prefix"]["p50"] / local["p50"],
        "speedup_p95_vs_cold": paths["upstream_cold_prefix"]["p95"] / local["p95"],
        "speedup_p50_vs_warm": paths["upstream_warm_prefix"]["p50"] / local["p50"],
        "speedup_p95_vs_warm": paths["upstream_warm_prefix"]["p95"] / local["p95"],
        "raw_ms": measured,
    }


# ---- part 2: the matcher's overhead on unmatched traffic -----------------------------------------------


def overhead_part(home: Path, app: NL2BashApp, queries: list[str], n: int) -> dict:
    """Both gateways run at once and take turns, so machine noise hits them alike."""
    names = {False: "no_router", True: "router"}
    samples: dict[str, dict[str, list[float]]] = {
        name: {"overhead": [], "latency": []} for name in names.values()
    }
    bodies = []
    for i in range(n + 20):
        messages = app.messages(queries[20 + i % (len(queries) - 20)])
        messages[0] = {**messages[0], "content": messages[0]["content"] + " Be brief."}  # a near miss
        bodies.append({"model": "fake", "messages": messages})
    with FakeUpstreamProcess(latency_ms=0) as fake, httpx.Client(timeout=30) as client:
        gateways = {}
        for enabled, name in names.items():
            settings = Settings(
                home=home / name,
                models=[UpstreamModel(name="fake", litellm_model="openai/echo", api_base=fake.url,
                                      api_key="sk-fake", transport="direct")],
                router_enabled=enabled,
            )  # fmt: skip
            settings.ensure_home()
            seed(settings.db_path, app, queries[:20])
            gateways[name] = serve(settings)
        try:
            for i, body in enumerate(bodies):
                for name, (url, _) in gateways.items():
                    elapsed, response = post(client, url, body)
                    assert response.headers["x-promptintern-route"] == "upstream"
                    if i >= 20:  # warm-up excluded
                        samples[name]["latency"].append(elapsed)
                        samples[name]["overhead"].append(
                            float(response.headers["x-promptintern-overhead-ms"])
                        )
        finally:
            for _, stop in gateways.values():
                stop()
        matcher = Matcher.from_db(open_db(home / "router" / "logs.db"))
    results: dict[str, Any] = {
        name: {"overhead_ms": stats(s["overhead"]), "latency_ms": stats(s["latency"])}
        for name, s in samples.items()
    }
    for name in names.values():
        print(f"  {name}: overhead p50 {results[name]['overhead_ms']['p50']:.3f} ms", flush=True)
    results["matcher_us"] = matcher_micro(matcher, bodies)
    results["added_overhead_p50_ms"] = (
        results["router"]["overhead_ms"]["p50"] - results["no_router"]["overhead_ms"]["p50"]
    )
    results["added_overhead_p95_ms"] = (
        results["router"]["overhead_ms"]["p95"] - results["no_router"]["overhead_ms"]["p95"]
    )
    return results


def matcher_micro(matcher: Matcher, bodies: list[dict]) -> dict[str, float]:
    """The matcher alone on the same near-miss requests, in microseconds per call."""
    times = []
    for _ in range(5):
        for body in bodies:
            started = time.perf_counter()
            assert matcher.match(body) is None
            times.append((time.perf_counter() - started) * 1e6)
    return stats(times)


# ---- part 3: in-process llama.cpp vs a supervised llama.cpp server child ---------------------------------

BACKENDS = {"llama_cpp": "in-process llama.cpp", "llama_cpp_server": "llama.cpp server child (default)"}


def backends_part(home: Path, app: NL2BashApp, queries: list[str], n: int, max_tokens: int) -> dict:
    """Both gateways run at once and take turns, so machine noise hits them alike."""
    measured: dict[str, list[float]] = {name: [] for name in BACKENDS}
    with FakeUpstreamProcess(latency_ms=0) as fake, httpx.Client(timeout=300) as client:
        gateways = {}
        for backend in BACKENDS:
            settings = Settings(
                home=home / backend,
                models=[UpstreamModel(name="fake", litellm_model="openai/echo", api_base=fake.url,
                                      api_key="sk-fake", transport="direct")],
                local_backend=backend, local_threads=os.cpu_count() or 2, router_poll_s=0.2,
            )  # fmt: skip
            settings.ensure_home()
            template_id = seed(settings.db_path, app, queries[:20])
            set_mode(settings.db_path, template_id, "active")
            gateways[backend] = serve(settings)
        try:
            for url, _ in gateways.values():
                warm = {"model": "fake", "messages": app.messages(queries[0]), "max_tokens": 1}
                wait_route(client, url, warm, "local")
            for query in queries[20 : 20 + n]:
                body = {"model": "fake", "messages": app.messages(query), "max_tokens": max_tokens,
                        "temperature": 0}  # fmt: skip
                for backend, (url, _) in gateways.items():
                    elapsed, response = post(client, url, body)
                    assert response.headers["x-promptintern-route"] == "local"
                    measured[backend].append(elapsed)
        finally:
            for _, stop in gateways.values():
                stop()
    results = {name: stats(values) for name, values in measured.items()}
    results["added_p50_ms"] = results["llama_cpp_server"]["p50"] - results["llama_cpp"]["p50"]
    results["added_p95_ms"] = results["llama_cpp_server"]["p95"] - results["llama_cpp"]["p95"]
    results["max_tokens"] = max_tokens
    results["raw_ms"] = measured
    return results


def write_backends_markdown(result: dict, path: Path) -> None:
    part = result["backends"]
    lines = [
        "# Local serving: in-process llama.cpp vs a supervised llama.cpp server child",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}, {result['date']}",
        "",
        "Matched NL2Bash requests served query-only by SmolLM2-135M (Q4_1), "
        f"max_tokens={part['max_tokens']}, greedy, end to end through the gateway. Both gateways ran at once "
        "and took turns request by request.",
        "",
        "| local backend | requests | p50 ms | p95 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in BACKENDS.items():
        p = part[name]
        lines.append(f"| {label} | {p['n']} | {p['p50']:.0f} | {p['p95']:.0f} | {p['mean']:.0f} |")
    lines += [
        "",
        f"The child adds {part['added_p50_ms']:.1f} ms at p50 and {part['added_p95_ms']:.1f} ms at p95 (one "
        "loopback HTTP hop and llama-cpp-python's server; for streams, the gateway also counts the tokens "
        "with the GGUF's tokenizer). In exchange a GGUF that crashes llama.cpp takes down the child, not the "
        "gateway.",
        "",
    ]
    path.write_text("\n".join(lines))


# ---- output -------------------------------------------------------------------------------------------


LABELS = {
    "upstream_cold_prefix": "full prompt -> embedded llama.cpp upstream, prefix not cached",
    "upstream_warm_prefix": "full prompt -> embedded llama.cpp upstream, prefix cached",
    "local_query_only": "query-only -> local internalized model",
}


def write_markdown(result: dict, path: Path) -> None:
    lat, ovh = result["latency"], result["overhead"]
    local = lat["local_query_only"]
    lines = [
        "# Routing benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}, {result['date']}",
        "",
        "## Matched NL2Bash requests, end to end through the gateway "
        f"(max_tokens={lat['max_tokens']}, greedy)",
        "",
        "| path | requests | prompt tokens (mean) | p50 ms | p95 ms | p50 / local | p95 / local |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        p = lat[name]
        lines.append(
            f"| {label} | {p['n']} | {p['prompt_tokens_mean']:.0f} | {p['p50']:.0f} | {p['p95']:.0f} | "
            f"{p['p50'] / local['p50']:.2f}x | {p['p95'] / local['p95']:.2f}x |"
        )
    lines += [
        "",
        "Same GGUF (SmolLM2-135M-Instruct Q4_1), same threads and OpenMP policy on every path. The upstream "
        "is llama.cpp's server, which keeps the previous prompt in its KV cache: when consecutive requests "
        "share the long few-shot prefix (one app alone on the server) only the new tokens are evaluated, "
        "like provider prompt caching; 'not cached' puts another app's request in between, as on a shared "
        "server. The local prompt includes the model's chat template (SmolLM2 adds its default system "
        "prompt).",
        "",
        "## Matcher overhead on unmatched (near-miss) traffic, gateway in front of a 0 ms fake provider",
        "",
        "| gateway | requests | overhead p50 ms | overhead p95 ms | latency p50 ms | latency p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("no_router", "router"):
        o, l_ = ovh[name]["overhead_ms"], ovh[name]["latency_ms"]
        lines.append(
            f"| {name.replace('_', ' ')} | {o['n']} | {o['p50']:.3f} | {o['p95']:.3f} | "
            f"{l_['p50']:.2f} | {l_['p95']:.2f} |"
        )
    m = ovh["matcher_us"]
    lines += [
        "",
        "Both gateways ran at the same time and took turns request by request.  ",
        f"The matcher alone on the same requests: {m['p50']:.1f} us at p50, {m['p95']:.1f} us at p95.  ",
        f"Added by the router: {ovh['added_overhead_p50_ms']:.3f} ms at p50, "
        f"{ovh['added_overhead_p95_ms']:.3f} ms at p95 "
        "(`x-promptintern-overhead-ms`: gateway time, upstream wait excluded).",
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["latency"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    data = [lat["raw_ms"][name] for name in LABELS]
    ticks = ["full prompt\nupstream, cold", "full prompt\nupstream, cached", "query-only\nlocal"]
    axes[0].boxplot(data, tick_labels=ticks, showfliers=True)
    axes[0].set_ylabel("end-to-end latency (ms)")
    axes[0].set_title("Matched requests through the gateway")
    ovh = result["overhead"]
    names = ["no_router", "router"]
    p50 = [ovh[n]["overhead_ms"]["p50"] for n in names]
    p95 = [ovh[n]["overhead_ms"]["p95"] for n in names]
    x = np.arange(2)
    axes[1].bar(x - 0.2, p50, 0.4, label="p50")
    axes[1].bar(x + 0.2, p95, 0.4, label="p95")
    axes[1].set_xticks(x, ["without router", "with router"])
    axes[1].set_ylabel("gateway overhead (ms)")
    axes[1].set_title("Unmatched traffic: gateway overhead")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="matched requests per path (part 1)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating upstream/local rounds (part 1)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--overhead-n", type=int, default=400, help="unmatched requests per gateway (part 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: --n 8 --rounds 2 --overhead-n 100")
    parser.add_argument("--backends", action="store_true", help="part 3 only: in-process vs child")
    parser.add_argument("--backends-n", type=int, default=24, help="requests per local backend (part 3)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.overhead_n = 8, 2, 100
    pool = load_pairs("train")
    app = NL2BashApp(pool, examples="fixed", layout="turns", seed=0)
    fixed = {p.id for p in app.fixed_examples}
    queries = [p.nl for p in load_pairs("dev") if p.id not in fixed]
    command = (
        "LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/routing.py "
        + shlex.join(argv if argv is not None else sys.argv[1:])
    )
    if args.backends:
        with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
            print("part 3: in-process llama.cpp vs llama.cpp server child", flush=True)
            part = backends_part(Path(tmp), app, queries, args.backends_n, args.max_tokens)
        result = {
            "command": command.strip(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "backends": part,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "routing_backends.json").write_text(json.dumps(result, indent=2))
        write_backends_markdown(result, args.out / "routing_backends.md")
        print((args.out / "routing_backends.md").read_text())
        print(f"command: {command.strip()}")
        return
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        print("part 1: full prompt upstream vs query-only local", flush=True)
        latency = latency_part(Path(tmp) / "latency", app, queries, args.n, args.rounds, args.max_tokens)
        print("part 2: matcher overhead on unmatched traffic", flush=True)
        overhead = overhead_part(Path(tmp) / "overhead", app, queries, args.overhead_n)
    result = {
        "command": command.strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "latency": latency,
        "overhead": overhead,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "routing.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, args.out / "routing.md")
    write_plot(result, args.out / "routing.png")
    print((args.out / "routing.md").read_text())
    print(f"wrote {args.out / 'routing.json'}, routing.md, routing.png")
    print(f"command: {command.strip()}")


if __name__ == "__main__":
    main()
