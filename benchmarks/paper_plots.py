"""Plots of the paper table, drawn only from a results file the benchmark wrote.

`<dataset>_methods.png`: accuracy, input tokens and p50 latency per method.
`<dataset>_ablations.png`: accuracy against schedule, number of stages and training requests.
Usage: `.venv/bin/python -m benchmarks.paper_plots benchmarks/results/nl2bash.json`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SHORT = {
    "base_full": "base\nfull",
    "base_compressed_50": "base\n50%",
    "base_compressed_25": "base\n25%",
    "ft_full": "FT\nfull",
    "ft_query": "FT\nquery",
    "promptintern": "Prompt-\nIntern",
    "base_full_cached": "base full\nKV cached",
    "promptintern_distill": "PromptIntern\n+ distil",
    "ft_query_distill": "FT query\n+ distil",
}
CATEGORICAL = ("schedule", "distill_teacher")


def _title(data: dict[str, Any]) -> str:
    state = "PARTIAL run" if data.get("partial") else "run"
    return f"{data['dataset']} ({data.get('config')} config {state}, {data.get('n_dev')} dev requests)"


def plot_methods(data: dict[str, Any], path: Path) -> Path | None:
    methods = data.get("methods", {})
    if not methods:
        return None
    metric = data["primary_metric"]
    keys = list(methods)
    labels = [SHORT.get(k, k) for k in keys]
    panels = [
        (f"{metric} (%)", [methods[k]["metrics"].get(metric, 0.0) for k in keys]),
        ("mean input tokens", [methods[k]["perf"]["mean_input_tokens"] for k in keys]),
        ("latency p50 (ms)", [methods[k]["perf"]["latency_p50_ms"] for k in keys]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (name, values) in zip(axes, panels, strict=True):
        colors = ["tab:orange" if k.startswith("promptintern") else "tab:blue" for k in keys]
        ax.bar(range(len(keys)), values, color=colors)
        ax.set_xticks(range(len(keys)), labels, fontsize=8)
        ax.set_title(name)
        ax.set_ylim(0, max([*values, 1.0]) * 1.15)
        for x, value in enumerate(values):
            ax.annotate(
                f"{value:.0f}" if value >= 10 else f"{value:.1f}",
                (x, value),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    fig.suptitle(_title(data))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ablations(data: dict[str, Any], path: Path) -> Path | None:
    ablations = {k: v for k, v in data.get("ablations", {}).items() if v}
    if not ablations:
        return None
    metric = data["primary_metric"]
    titles = {
        "schedule": "schedule",
        "stages": "number of stages (last = query-only)",
        "train_size": "training requests",
        "distill_alpha": "distillation alpha (1 = cross-entropy only)",
        "distill_topk": "teacher top-K",
        "distill_teacher": "teacher",
    }
    # The primary metric moves in coarse steps on a small dev set; BLEU (where the task has it) is finer.
    shown = [metric] + [m for m in ("bleu",) if m != metric and m in data.get("metric_names", [])]
    fig, axes = plt.subplots(1, len(ablations), figsize=(5 * len(ablations), 4), squeeze=False)
    for ax, (kind, rows) in zip(axes[0], ablations.items(), strict=True):
        if kind not in CATEGORICAL:  # numeric axes in order, whatever order the points were trained in
            rows = sorted(rows, key=lambda row: float(row["value"]))
        values = [str(row["value"]) for row in rows]
        width = 0.8 / len(shown)
        for i, (name, color) in enumerate(zip(shown, ("tab:orange", "tab:gray"), strict=False)):
            scores = [row["metrics"].get(name, 0.0) for row in rows]
            if kind in CATEGORICAL:
                xs = [x + (i - (len(shown) - 1) / 2) * width for x in range(len(values))]
                ax.bar(xs, scores, width=width, color=color, label=name)
            else:
                ax.plot(range(len(values)), scores, marker="o", color=color, label=name)
        ax.set_xticks(range(len(values)), values)
        ax.set_title(titles.get(kind, kind))
        ax.set_ylabel("score (%)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(f"PromptIntern ablations, query-only at inference: {_title(data)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(data: dict[str, Any], out_dir: Path, stem: str | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    stem = stem or data["dataset"]
    written = [
        plot_methods(data, out_dir / f"{stem}_methods.png"),
        plot_ablations(data, out_dir / f"{stem}_ablations.png"),
    ]
    return [p for p in written if p is not None]


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        results_path = Path(argument)
        print(
            *write_plots(json.loads(results_path.read_text()), results_path.parent, results_path.stem),
            sep="\n",
        )
