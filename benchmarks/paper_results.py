"""The paper table's results file: written after every finished method, so a cut-off run leaves a file.

`benchmarks/results/<dataset>.json` holds every figure (metrics, tokens, latency, throughput, costs,
ablations, targets) and `<dataset>.md` the table rendered from it; `partial: true` until the run ends.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.paper_cost import PriceModel

METHODS: dict[str, tuple[str, str, str]] = {
    # key: (label, trained?, prompt at inference)
    "base_full": ("Base model, full prompt (instructions + 5 retrieved examples)", "no", "full"),
    "base_compressed_50": (
        "Base model, prompt compressed to 50% (surprisal pruning)",
        "no",
        "compressed 50%",
    ),
    "base_compressed_25": (
        "Base model, prompt compressed to 25% (surprisal pruning)",
        "no",
        "compressed 25%",
    ),
    "ft_full": ("Fine-tuned with the full prompt", "yes", "full"),
    "ft_query": ("Fine-tuned query-only, one stage", "yes", "query"),
    "promptintern": ("PromptIntern: progressive template compression + example absorption", "yes", "query"),
    "base_full_cached": (
        "Base model, full prompt, 5 fixed examples, llama.cpp prefix KV cache",
        "no",
        "full, cached",
    ),
    "promptintern_distill": (
        "PromptIntern + distillation (teacher: the full-prompt fine-tune, top-K KL)",
        "yes",
        "query",
    ),
    "ft_query_distill": (
        "Query-only fine-tune + distillation (one stage, teacher: the full-prompt fine-tune)",
        "yes",
        "query",
    ),
}
ABLATIONS = ("schedule", "stages", "train_size", "distill_alpha", "distill_topk", "distill_teacher")


class Results:
    def __init__(self, out_dir: Path, dataset: str, header: dict[str, Any], stem: str | None = None) -> None:
        self.json_path = Path(out_dir) / f"{stem or dataset}.json"
        self.md_path = Path(out_dir) / f"{stem or dataset}.md"
        self.data: dict[str, Any] = {
            "dataset": dataset,
            "partial": True,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": "cpu"},
            **header,
            "methods": {},
            "upstream": {},
            "ablations": {kind: [] for kind in ABLATIONS},
            "skipped": [],
            "targets": {},
        }

    @property
    def methods(self) -> dict[str, Any]:
        return self.data["methods"]

    def add_method(self, key: str, entry: dict[str, Any]) -> None:
        label, trained, prompt = METHODS[key]
        self.methods[key] = {"label": label, "trained": trained, "prompt": prompt, **entry}
        self.save()

    def add_ablation(self, kind: str, entry: dict[str, Any]) -> None:
        self.data["ablations"].setdefault(kind, []).append(entry)
        self.save()

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        self.save()

    def save(self, final: bool = False) -> None:
        self.data["partial"] = not final
        self.data["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        os.replace(tmp, self.json_path)
        self.md_path.write_text(render_markdown(self.data))


def add_upstream_costs(results: Results, prices: PriceModel, static_tokens: dict[str, int]) -> None:
    """What the same traffic costs at the upstream API, with and without provider prompt caching."""
    methods = results.methods
    rows = {}
    for key, traffic, cached in (
        ("full_retrieved_nocache", "base_full", 0),
        ("full_retrieved_cached", "base_full", static_tokens["retrieved"]),
        ("full_fixed_cached", "base_full_cached", static_tokens["fixed"]),
    ):
        perf = methods[traffic]["perf"]
        label = {
            "full_retrieved_nocache": "full prompt, retrieved examples, no caching",
            "full_retrieved_cached": "full prompt, retrieved examples, instructions cached",
            "full_fixed_cached": "full prompt, fixed examples, whole prefix cached",
        }[key]
        rows[key] = {
            "label": f"{prices.upstream_model}: {label}",
            "input_tokens": perf["mean_input_tokens"],
            "output_tokens": perf["mean_output_tokens"],
            "cached_tokens": float(cached),
            "cost_per_1k": prices.upstream_per_1k(
                perf["mean_input_tokens"], perf["mean_output_tokens"], cached
            ),
        }
    results.data["upstream"] = rows
    results.save()


def check_targets(results: Results, metric: str) -> None:
    """The product's targets, each met or missed with its figures, from the methods measured so far."""
    m = results.methods
    targets = {}
    # Accuracy is judged on every metric of the task, not only the primary one: on a small dev set the
    # primary metric moves in steps of 100/n points and two methods can tie on it while differing widely.
    names = list(results.data.get("metric_names") or [metric])
    if "promptintern" in m and "ft_full" in m:
        ours, reference = m["promptintern"]["metrics"], m["ft_full"]["metrics"]
        gaps = {name: reference[name] - ours[name] for name in names}
        # Matching a fine-tune that learned nothing (scores 0) proves nothing: not counted as met.
        vacuous = reference[metric] <= 0
        targets["accuracy within 1 point of full-prompt fine-tuning"] = {
            "met": max(gaps.values()) <= 1.0 and not vacuous,
            "detail": ", ".join(f"{n} {ours[n]:.1f} vs {reference[n]:.1f}" for n in names)
            + (" (not meaningful: the full-prompt fine-tune scores 0)" if vacuous else ""),
        }
    for ours_key in ("promptintern_distill", "ft_query_distill"):
        if ours_key in m and "ft_full" in m:
            ours, reference = m[ours_key]["metrics"], m["ft_full"]["metrics"]
            gaps = {name: reference[name] - ours[name] for name in names}
            targets[f"{ours_key}: within 1 point of full-prompt fine-tuning (every metric)"] = {
                "met": max(gaps.values()) <= 1.0 and reference[metric] > 0,
                "detail": ", ".join(f"{n} {ours[n]:.1f} vs {reference[n]:.1f}" for n in names),
            }
        if ours_key in m and "ft_query" in m:
            ours, plain = m[ours_key]["metrics"], m["ft_query"]["metrics"]
            targets[f"{ours_key}: above the plain query-only fine-tune ({metric})"] = {
                "met": ours[metric] > plain[metric],
                "detail": ", ".join(f"{n} {ours[n]:.1f} vs {plain[n]:.1f}" for n in names),
            }
    if "promptintern_distill" in m and "base_full" in m and results.data["dataset"] == "banking77":
        ours, full = m["promptintern_distill"]["metrics"], m["base_full"]["metrics"]
        targets["Banking77: distilled query-only accuracy >= the base model with the full prompt"] = {
            "met": ours[metric] >= full[metric] and ours[metric] > 0,  # 0 vs 0 proves nothing
            "detail": f"{metric} {ours[metric]:.1f} vs {full[metric]:.1f}",
        }
    compressed = [k for k in ("base_compressed_50", "base_compressed_25") if k in m]
    if "promptintern" in m and compressed:
        ours = m["promptintern"]["metrics"]
        best = {name: max(m[k]["metrics"][name] for k in compressed) for name in names}
        targets["far above the compressed-prompt baselines (every metric)"] = {
            "met": all(ours[name] > best[name] for name in names),
            "detail": ", ".join(f"{n} {ours[n]:.1f} vs best compressed {best[n]:.1f}" for n in names),
        }
    if "promptintern" in m and "base_full" in m:
        pi, full = m["promptintern"]["perf"], m["base_full"]["perf"]
        saved = 1 - pi["mean_input_tokens"] / full["mean_input_tokens"]
        targets[">= 90% fewer input tokens than the full prompt"] = {
            "met": saved >= 0.9,
            "detail": f"{pi['mean_input_tokens']:.0f} vs {full['mean_input_tokens']:.0f} "
            f"({100 * saved:.1f}% fewer)",
        }
        speedup = full["latency_p50_ms"] / pi["latency_p50_ms"]
        targets[">= 5x lower p50 latency than the full prompt (retrieved examples)"] = {
            "met": speedup >= 5,
            "detail": f"p50 {pi['latency_p50_ms']:.0f} ms vs {full['latency_p50_ms']:.0f} ms "
            f"({speedup:.1f}x)",
        }
    if "promptintern" in m and "base_full_cached" in m:
        pi, cached = m["promptintern"]["perf"], m["base_full_cached"]["perf"]
        targets["no slower than the fixed-prefix full prompt with llama.cpp KV reuse"] = {
            "met": pi["latency_p50_ms"] <= cached["latency_p50_ms"],
            "detail": f"p50 {pi['latency_p50_ms']:.0f} ms vs {cached['latency_p50_ms']:.0f} ms",
        }
    upstream = results.data.get("upstream", {})
    if "promptintern" in m and upstream:
        cheapest = min(upstream[k]["cost_per_1k"] for k in ("full_retrieved_cached", "full_fixed_cached"))
        local = m["promptintern"]["cost_per_1k_local"]
        targets[">= 80% lower cost than the upstream with provider prompt caching"] = {
            "met": local <= 0.2 * cheapest,
            "detail": f"${local:.5f} vs ${cheapest:.5f} per 1k requests "
            f"({100 * (1 - local / cheapest):.1f}% lower)",
        }
    results.data["targets"] = targets
    results.save()


def retarget(json_path: Path, metric: str | None = None) -> Results:
    """Re-check the targets of a finished results file and re-render its table (no re-run)."""
    data = json.loads(Path(json_path).read_text())
    results = Results(Path(json_path).parent, data["dataset"], {}, stem=Path(json_path).stem)
    results.data = data
    check_targets(results, metric or data["primary_metric"])
    results.save(final=not data.get("partial", True))
    return results


def _jsonable(value: Any) -> Any:
    return str(value)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(data: dict[str, Any]) -> str:
    metrics = data.get("metric_names", [])
    state = "PARTIAL RUN" if data["partial"] else "complete run"
    lines = [
        f"# {data['dataset']}: PromptIntern vs baselines ({state})",
        "",
        f"Config `{data.get('config')}`; {data.get('n_dev')} dev requests, {data.get('n_train')} training "
        f"requests; SmolLM2-135M-Instruct, {data.get('quant', 'Q4_1')} GGUF in llama.cpp, "
        f"{data.get('n_threads')} threads, greedy, max {data.get('max_tokens')} new tokens. "
        f"Started {data['started_utc']}, updated {data.get('updated_utc')}.",
        "",
        "| method | trained? | prompt | "
        + " | ".join(metrics)
        + " | input tokens | p50 ms | p95 ms | req/s | "
        "$ / 1k req (local) |",
        "|---|---|---|" + "---:|" * (len(metrics) + 5),
    ]
    for entry in data["methods"].values():
        scores = entry.get("metrics", {})
        perf = entry.get("perf", {})
        lines.append(
            f"| {entry['label']} | {entry['trained']} | {entry['prompt']} | "
            + " | ".join(_fmt(scores.get(m)) for m in metrics)
            + f" | {_fmt(perf.get('mean_input_tokens'))} | {_fmt(perf.get('latency_p50_ms'), 0)} | "
            f"{_fmt(perf.get('latency_p95_ms'), 0)} | {_fmt(perf.get('throughput_rps'), 2)} | "
            f"{_fmt(entry.get('cost_per_1k_local'), 4)} |"
        )
    upstream = data.get("upstream", {})
    if upstream:
        lines += ["", "Upstream API cost of the same traffic (price model in the JSON's `price_model`):", ""]
        lines += ["| upstream traffic | input tokens | cached tokens | $ / 1k req |", "|---|---:|---:|---:|"]
        for row in upstream.values():
            lines.append(
                f"| {row['label']} | {_fmt(row['input_tokens'])} | {_fmt(row['cached_tokens'])} | "
                f"{_fmt(row['cost_per_1k'], 4)} |"
            )
    if data.get("targets"):
        lines += ["", "Targets:", ""]
        for name, target in data["targets"].items():
            lines.append(f"- {'MET' if target['met'] else 'MISSED'}: {name}: {target['detail']}")
    for kind, rows in data.get("ablations", {}).items():
        if rows:
            lines += ["", f"Ablation `{kind}` (query-only on {rows[0].get('n_dev')} dev requests):", ""]
            lines += [
                "| value | " + " | ".join(metrics) + " | train s |",
                "|---|" + "---:|" * (len(metrics) + 1),
            ]
            for row in rows:
                lines.append(
                    f"| {row['value']} | "
                    + " | ".join(_fmt(row["metrics"].get(m)) for m in metrics)
                    + f" | {_fmt(row.get('train_seconds'), 0)} |"
                )
    if data.get("skipped"):
        lines += ["", "Skipped (time budget or errors):", ""]
        lines += [f"- {item['what']}: {item['why']}" for item in data["skipped"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m benchmarks.paper_results benchmarks/results/nl2bash.json
    import sys

    for argument in sys.argv[1:]:
        print(retarget(Path(argument)).md_path)
