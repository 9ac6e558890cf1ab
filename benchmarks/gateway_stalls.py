"""Where the gateway's latency tail comes from: pauses inside the server under 32 concurrent clients.

The gateway runs in its own process (pinned to the last core, like benchmarks/gateway_overhead.py), in front
of the 50 ms fake upstream, with three probes: every garbage collection's pause (gc.callbacks), every group
commit of the log writer, and the process's CPU time per request. Clients send JSON requests in a closed
loop (each sends its next request when its last completes). With `--before DIR` the gateway of another
source tree (e.g. `git archive REV | tar -x -C DIR`) is measured in the same run, the targets taking turns
in short windows so background load falls on both alike.

  .venv/bin/python benchmarks/gateway_stalls.py [--before DIR] [--clients 32] [--seconds 12]

Writes benchmarks/results/gateway_stalls.{json,md} and prints the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `--serve` runs the gateway of the tree on PYTHONPATH (the one measured); everything else runs this tree's.
SERVING = sys.argv[1:2] == ["--serve"]
if not SERVING:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
KEY = "sk-bench-stalls"


# ---- the server under test (run as `gateway_stalls.py --serve ...` in its own process) ------------------


def serve(upstream_url: str, port: int, home: str, stats_path: str) -> None:
    import uvicorn

    from gateway.app import create_app
    from gateway.log import writer as writer_module
    from gateway.settings import Settings, UpstreamModel

    pauses: list[tuple[int, float]] = []  # (generation, ms) of every collection
    commits: list[float] = []
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["gc"] = time.perf_counter()
        else:
            pauses.append((info["generation"], (time.perf_counter() - started["gc"]) * 1000))

    commit = writer_module.LogWriter._commit

    def timed_commit(self, conn, batch):  # noqa: ANN001
        begin = time.perf_counter()
        commit(self, conn, batch)
        commits.append((time.perf_counter() - begin) * 1000)

    gc.callbacks.append(on_gc)
    writer_module.LogWriter._commit = timed_commit
    model = UpstreamModel(
        name="fake", litellm_model="openai/fake", api_base=upstream_url, api_key="up-key", transport="direct",
        price={"input_cost_per_token": 1e-7, "output_cost_per_token": 4e-7},
    )  # fmt: skip
    app = create_app(Settings(home=home, models=[model], api_keys=[KEY]))

    def report(*_: Any) -> None:  # SIGUSR1: write what was seen since the last report, then start afresh
        Path(stats_path).write_text(json.dumps({"gc": pauses, "commits": commits}))
        pauses.clear()
        commits.clear()

    signal.signal(signal.SIGUSR1, report)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the load ------------------------------------------------------------------------------------------


async def closed_loop(url: str, model: str, bodies: list[dict], clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        warm_until = time.perf_counter() + 1.0
        end = warm_until + seconds

        async def client(i: int) -> None:
            while time.perf_counter() < end:
                payload = {**bodies[i % len(bodies)], "model": model}
                begin = time.perf_counter()
                async with session.post(
                    f"{url}/chat/completions", json=payload, headers={"authorization": f"Bearer {KEY}"}
                ) as response:
                    response.raise_for_status()
                    await response.read()
                if warm_until <= time.perf_counter() <= end:
                    latencies.append((time.perf_counter() - begin) * 1000)
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Gateway:
    def __init__(self, name: str, tree: Path, upstream_url: str, work: Path, cpus: set[int] | None) -> None:
        from gateway.loopback import bind_free_socket

        sock = bind_free_socket()
        self.name, self.port = name, sock.getsockname()[1]
        sock.close()
        self.stats_path = work / f"{name}.stats.json"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", upstream_url, str(self.port)]
        command += [str(work / f"home-{name}"), str(self.stats_path)]
        self.process = subprocess.Popen(command, env=env, cwd=tree, stderr=subprocess.DEVNULL)
        if cpus:
            os.sched_setaffinity(self.process.pid, cpus)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"{name} did not start")
        self.latencies: list[float] = []
        self.cpu_s = 0.0
        self.pauses: list[tuple[int, float]] = []
        self.commits: list[float] = []

    def window(self, bodies: list[dict], clients: int, seconds: float) -> None:
        before = cpu_seconds(self.process.pid)
        self.take_stats()  # start the window afresh
        got = asyncio.run(closed_loop(self.url, "fake", bodies, clients, seconds))
        self.cpu_s += cpu_seconds(self.process.pid) - before
        self.latencies += got
        stats = self.take_stats()
        self.pauses += [tuple(p) for p in stats["gc"]]
        self.commits += stats["commits"]

    def take_stats(self) -> dict[str, Any]:
        self.stats_path.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        for _ in range(100):
            if self.stats_path.exists():
                try:
                    return json.loads(self.stats_path.read_text())
                except ValueError:
                    pass  # still being written
            time.sleep(0.05)
        return {"gc": [], "commits": []}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summary(latencies: list[float]) -> dict[str, Any]:
    return {"n": len(latencies), "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from demo.nl2bash_app import build_requests
    from tests.support.fake_upstream import FakeUpstreamProcess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="also measure the gateway of this source tree")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per target")
    parser.add_argument("--rounds", type=int, default=3, help="windows per target, the targets taking turns")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after start-up before the load")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[-1]} if len(cpus) >= 2 else None
    if server_cpus:
        os.sched_setaffinity(0, set(cpus[:-1]))
    bodies = [r.body("x", max_tokens=64) for r in build_requests(50, seed=0)]
    report: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python", "benchmarks/gateway_stalls.py", *map(shlex.quote, argv or [])]
        ),
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}},
        "load_average_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="gw-stalls-") as tmp, FakeUpstreamProcess(50.0) as fake:
        work = Path(tmp)
        trees = [("after", ROOT)] + ([("before", args.before)] if args.before else [])
        gateways = [Gateway(name, tree, fake.url, work, server_cpus) for name, tree in trees]
        try:
            time.sleep(args.settle)  # start-up's own warm-ups (litellm's import) are over
            direct: list[float] = []
            for _ in range(args.rounds):
                direct += asyncio.run(
                    closed_loop(fake.url, "fake", bodies, args.clients, args.seconds / args.rounds)
                )
                for gateway in gateways:
                    gateway.window(bodies, args.clients, args.seconds / args.rounds)
        finally:
            for gateway in gateways:
                gateway.stop()
    base = summary(direct)
    report["direct"] = base
    for gateway in gateways:
        stats = summary(gateway.latencies)
        full = [ms for generation, ms in gateway.pauses if generation == 2]
        report[gateway.name] = {
            **stats,
            "added_p50_ms": stats["p50_ms"] - base["p50_ms"],
            "added_p99_ms": stats["p99_ms"] - base["p99_ms"],
            "cpu_ms_per_request": 1000 * gateway.cpu_s / max(1, stats["n"]),
            "gc_full_collections": len(full),
            "gc_full_pause_max_ms": max(full, default=0.0),
            "gc_full_pause_total_ms": sum(full),
            "gc_young_pause_max_ms": max((ms for g, ms in gateway.pauses if g < 2), default=0.0),
            "commit_p99_ms": pct(gateway.commits, 99),
            "commit_max_ms": max(gateway.commits, default=0.0),
        }
    report["load_average_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_stalls.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gateway_stalls.md").write_text(markdown(report, [g.name for g in gateways]))
    print((args.out / "gateway_stalls.md").read_text())
    print(f"Made by: {report['command']}")
    return report


def markdown(report: dict[str, Any], names: list[str]) -> str:
    rows = [
        ("requests measured", "n", "{:.0f}"),
        ("p50 ms (direct: {direct_p50:.1f})", "p50_ms", "{:.1f}"),
        ("p99 ms (direct: {direct_p99:.1f})", "p99_ms", "{:.1f}"),
        ("added p50 ms", "added_p50_ms", "{:+.1f}"),
        ("added p99 ms", "added_p99_ms", "{:+.1f}"),
        ("CPU ms per request (server process)", "cpu_ms_per_request", "{:.2f}"),
        ("full GC collections in the window", "gc_full_collections", "{:.0f}"),
        ("longest full GC pause ms", "gc_full_pause_max_ms", "{:.1f}"),
        ("all full GC pauses ms", "gc_full_pause_total_ms", "{:.0f}"),
        ("longest young-generation GC pause ms", "gc_young_pause_max_ms", "{:.1f}"),
        ("log group commit p99 / max ms", None, None),
    ]
    direct = report["direct"]
    config = report["config"]
    lines = [
        f"# Gateway stalls: {config['clients']} concurrent clients, 50 ms fake upstream, JSON requests",
        "",
        f"Command: `{report['command']}`  ",
        f"{config['seconds']:g} s measured per target in {config['rounds']} windows (the targets taking"
        f" turns); server pinned to its own core; 1-minute load average"
        f" {report['load_average_at_start']:.1f} at start, {report['load_average_at_end']:.1f} at end"
        " (the machine is shared).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, key, fmt in rows:
        label = label.format(direct_p50=direct["p50_ms"], direct_p99=direct["p99_ms"])
        if key is None:
            cells = [
                f"{report[n]['commit_p99_ms'] or 0:.1f} / {report[n]['commit_max_ms']:.1f}" for n in names
            ]
        else:
            cells = [fmt.format(report[n][key]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "A full collection stops the event loop and every request in flight; before the start-up heap was"
        " frozen it walked every module's and litellm's objects.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if SERVING:
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main(sys.argv[1:])
