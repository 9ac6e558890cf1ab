"""Markdown table and PNG plot for benchmarks/gateway_overhead.py's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MODES = ("json", "stream")


def write_markdown(report: dict[str, Any], path: Path) -> None:
    concurrency = report["config"]["concurrency"]
    head = (
        "| target | mode | p50 ms | p99 ms | added p50 ms | added p99 ms | TTFT p50 ms | self-reported ms | "
    )
    head += " | ".join(f"req/s @{c}" for c in concurrency) + " | errors |"
    lines = [
        f"# Gateway overhead ({report['config']['latency_ms']:g} ms fake upstream, "
        f"~{report['prompt']['tokens']} token prompt)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['platform']}, "
        f"Python {report['machine']['python']}; pinning: {report['config']['pinning']}; "
        f"event loop of the servers: {report['config']['server_event_loop']}; 1-minute load average "
        f"{report['machine']['load_average_at_start']:.1f} at start, "
        f"{report['machine']['load_average_at_end']:.1f} at end  ",
        f"Sequential: {report['config']['sequential']} requests per row; throughput: "
        f"{report['config']['duration_s']:g} s per concurrency level and target, in "
        f"{report['config'].get('rounds', 1)} windows, the targets taking turns.",
        "",
        head,
        "|" + "---|" * (9 + len(concurrency)),
    ]
    for name, modes in report["results"].items():
        for mode, entry in modes.items():
            seq = entry.get("sequential", {})
            rates = [_num(entry.get(f"concurrent_{c}", {}).get("requests_per_s"), 0) for c in concurrency]
            errors = sum(v.get("errors", 0) for k, v in entry.items() if isinstance(v, dict))
            crashed = " (crashed)" if entry.get("crashed") else ""
            cells = [
                name,
                mode,
                _num(seq.get("p50_ms")),
                _num(seq.get("p99_ms")),
                _num(entry.get("added_p50_ms")),
                _num(entry.get("added_p99_ms")),
                _num(seq.get("ttft_p50_ms")),
                _num(seq.get("overhead_header_p50_ms")),
                *rates,
                f"{errors}{crashed}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *concurrent_table(report)]
    log = report["gateway_log"]
    durable = (
        "every completed response has its row"
        if log["rows"] >= log["responses_completed"]
        else "ROWS MISSING"
    )
    lines += [
        "",
        "added = p50 (p99) of the target minus that of `direct`, measured in the same rounds (targets take"
        " turns, one request each, same body). self-reported = the gateway's `x-promptintern-overhead-ms`"
        " header p50 (time in the gateway's own code; for a stream, up to its first byte). req/s = completed"
        " responses per second with that many requests in flight.",
        "",
        *verdicts(report),
        "",
        f"Gateway request log: {log['rows']} rows for {log['responses_completed']} completed responses"
        f" ({durable}).",
    ]
    if report.get("litellm_proxy_error"):
        lines.append(f"LiteLLM proxy: {report['litellm_proxy_error']}")
    path.write_text("\n".join(lines) + "\n")


def concurrent_table(report: dict[str, Any]) -> list[str]:
    """Latency with requests in flight: p50/p99, and what each target adds to `direct` at that load."""
    concurrency = report["config"]["concurrency"]
    head = "| target | mode | " + " | ".join(
        f"p50 @{c} | p99 @{c} | added p50 @{c} | added p99 @{c}" for c in concurrency
    )
    lines = [head + " |", "|" + "---|" * (2 + 4 * len(concurrency))]
    for name, modes in report["results"].items():
        for mode, entry in modes.items():
            cells = [name, mode]
            for c in concurrency:
                stats = entry.get(f"concurrent_{c}", {})
                cells += [_num(stats.get(k)) for k in ("p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "With requests in flight: each client sends its next request when the last one completes (closed"
        " loop); added = the target's p50 (p99) minus `direct`'s at the same concurrency.",
    ]
    return lines


def verdicts(report: dict[str, Any]) -> list[str]:
    """One line per mode: the gateway's added p50 against the 2 ms target and against the LiteLLM proxy."""
    lines = []
    results = report["results"]
    for mode in MODES:
        ours = results.get("gateway-direct", {}).get(mode, {}).get("added_p50_ms")
        if ours is None:
            continue
        proxy = results.get("litellm-proxy", {}).get(mode, {}).get("added_p50_ms")
        target = "meets" if ours < 2.0 else "misses"
        versus = f"; LiteLLM proxy adds {proxy:.2f} ms" if proxy is not None else ""
        lines.append(
            f"- {mode}: gateway (direct transport) adds {ours:.2f} ms p50 ({target} the 2 ms target){versus}."
        )
    return lines


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report["results"] if n != "direct"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.38
    for i, mode in enumerate(MODES):
        added = [report["results"][n][mode].get("added_p50_ms") or 0.0 for n in names]
        left.bar(np.arange(len(names)) + (i - 0.5) * width, added, width, label=mode)
    left.axhline(2.0, color="grey", linestyle="--", linewidth=1, label="2 ms target")
    left.set_xticks(np.arange(len(names)), names)
    left.set_ylabel("added latency p50 (ms)")
    left.set_title("Added latency, sequential")
    left.legend()
    targets = list(report["results"])
    concurrency = report["config"]["concurrency"]
    bar = 0.8 / (len(targets) * len(MODES))
    for j, (name, mode) in enumerate((n, m) for n in targets for m in MODES):
        entry = report["results"][name][mode]
        rates = [entry.get(f"concurrent_{c}", {}).get("requests_per_s", 0.0) for c in concurrency]
        right.bar(np.arange(len(concurrency)) + (j - len(targets)) * bar + bar / 2, rates, bar,
                  label=f"{name} {mode}")  # fmt: skip
    right.set_xticks(np.arange(len(concurrency)), [f"{c} in flight" for c in concurrency])
    right.set_ylabel("requests / s")
    right.set_title("Throughput")
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"Gateway overhead vs direct and LiteLLM proxy ({report['config']['latency_ms']:g} ms upstream)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
