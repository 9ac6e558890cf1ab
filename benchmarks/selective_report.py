"""The selective-routing benchmark's outputs: the markdown table and the plot (benchmarks/selective.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.local.confidence import SIGNALS


def write_markdown(results: dict[str, Any], path: Path, level: float) -> None:
    lines = [
        "# Selective routing: serve locally only what the local model is sure of",
        "",
        f"{results['config']} config on {results['machine']}. Query-only LoRA on SmolLM2-135M-Instruct "
        "(Q8_0, llama.cpp); threshold chosen on a calibration slice (of dev, or with `--cal-unlogged` of "
        f"the train requests the job never logged; one-sided Wilson bound at {level}, fixed sequence at "
        "checkpoints), judged on a disjoint test slice of dev. Upstream = gpt-4o-mini with the "
        "static prefix cached on every request; local compute $0.10/h at the measured time per answer; every "
        "request is answered locally first, so an escalation costs its local time plus the upstream price; "
        "under a signal that can only fall (sum, min) the gateway stops an answer at the token that takes it "
        "below the threshold, so an escalation costs the local time up to there (measured per sampling "
        'step; the column "escalations generated whole" prices them as if generated to the end).',
        "",
        *[
            f"- {ds['dataset']}: `{ds['command']}`, {ds['seconds'] / 60:.1f} min, 1-min load average "
            f"{ds['load_average'][0]:.1f} -> {ds['load_average'][1]:.1f} on 2 cores"
            for ds in results["datasets"]
        ],
        "",
        "## Which confidence signal (AUROC for telling agreeing answers apart, test slice)",
        "",
        "| dataset | overall agreement | agreeing / test answers | " + " | ".join(SIGNALS) + " |",
        "|---|---:|---:|" + "---:|" * len(SIGNALS),
    ]
    for ds in results["datasets"]:
        aurocs = " | ".join(fmt_or_na(ds["signals"][s]["auroc_test"], 3) for s in SIGNALS)
        n = _count(ds, "test")  # the dev split may hold fewer than asked
        agreeing = round(ds["overall_agreement_test"] * n)
        lines.append(
            f"| {ds['dataset']} | {ds['overall_agreement_test']:.3f} | {agreeing} / {n} | {aurocs} |"
        )
    lines += ["", f"Chosen signal: **{results['chosen_signal']}** ({results['signal_reason']}).", ""]
    signal = results["chosen_signal"]
    lines += [
        f"## Selective vs all-or-nothing routing ({signal} token log-probability)",
        "",
        "| dataset | target | threshold | coverage | routed agreement | escalated | $ / 1k selective | "
        "saving | saving, CPU-time basis | saving, escalations generated whole | all-or-nothing routes | "
        "$ / 1k all-or-nothing | $ / 1k cached upstream |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for ds in results["datasets"]:
        for t in ds["signals"][signal]["targets"]:
            aon = t["all_or_nothing"]
            lines.append(
                f"| {ds['dataset']} | {t['target']} | {fmt_or_na(t['threshold'], 3)} | "
                f"{100 * t['coverage']:.1f}% | {fmt_or_na(t['routed_agreement'], 3)} | "
                f"{100 * t['escalation_rate']:.1f}% | "
                f"${t['cost_per_1k']:.4f} | {t['saving_vs_cached_pct']:.1f}% | "
                f"{t['cpu_time_basis']['saving_vs_cached_pct']:.1f}% | {_whole(t)} | {aon['routes']} | "
                f"${aon['cost_per_1k']:.4f} | ${ds['upstream_cached_per_1k']:.4f} |"
            )
    lines += ["", "Other signals at target 0.9 (coverage / routed agreement / saving on the test slice):", ""]
    for ds in results["datasets"]:
        parts = []
        for s in SIGNALS:
            t = next(x for x in ds["signals"][s]["targets"] if x["target"] == 0.9)
            agreement = fmt_or_na(t["routed_agreement"], 3)
            parts.append(f"{s} {100 * t['coverage']:.1f}% / {agreement} / {t['saving_vs_cached_pct']:.1f}%")
        lines.append(f"- {ds['dataset']}: " + "; ".join(parts))
    lines += ["", "## Per dataset", ""]
    for ds in results["datasets"]:
        tr, cfg = ds["trained"], ds["config"]
        model = (
            f"the given model `{tr['model']}`"
            if tr.get("train_seconds") is None
            else f"{cfg['n_train']} training requests x {cfg['epochs']} epochs "
            f"({tr['train_seconds']:.0f} s training, {tr['export_seconds']:.0f} s export)"
        )
        lines.append(
            f"- {ds['dataset']}: {model}; agreement metric "
            f"`{cfg['metric']}`; {_count(ds, 'calibration')} calibration / {_count(ds, 'test')} test "
            f"requests; full prompt {ds['full_prompt_tokens_mean']:.0f} tokens ({ds['cached_prefix_tokens']} "
            f"cached); local answer {1000 * ds['local_seconds_mean']:.0f} ms wall / "
            f"{1000 * ds['local_cpu_seconds_mean']:.0f} ms CPU mean "
            f"({ds['mean_answer_tokens']:.1f} tokens); {ds['seconds']:.0f} s in all."
        )
    lines += [
        "",
        "## Threshold rules on synthetic held-out sets (true agreement crosses 0.9 at 1/3 coverage)",
        "",
        "| held-out | rule | found | over-promised by > 2 points | mean true coverage |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in results["threshold_rules"]:
        share = row["over_promised_share"]
        lines.append(
            f"| {row['held_out']} | {row['rule']} | {row['found']}/{row['sets']} | "
            f"{row['over_promised_by_2pt']} ({'n/a' if share is None else f'{100 * share:.0f}%'}) | "
            f"{fmt_or_na(row['mean_true_coverage'], 3)} |"
        )
    target = results["target_check"]
    verdict = "met" if target["met"] else "missed"
    lines += [
        "",
        "Target (0.9 agreement, >= 30% saving vs the cached upstream, on a template whose model fails the "
        f"all-or-nothing gate): **{verdict}** ({target['detail']}).",
    ]
    path.write_text("\n".join(lines) + "\n")


def _count(ds: dict[str, Any], slice_name: str) -> int:
    return sum(item["slice"] == slice_name for item in ds["items"])


def _whole(target: dict[str, Any]) -> str:
    whole = target.get("generated_whole")  # absent from results written before the gateway stopped answers
    return "n/a" if whole is None else f"{whole['saving_vs_cached_pct']:.1f}%"


def fmt_or_na(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = results["datasets"]
    figure = Figure(figsize=(12, 4.5 * len(datasets)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(datasets), 2, squeeze=False)
    for row, ds in enumerate(datasets):
        curve_ax, cost_ax = axes[row]
        for signal in SIGNALS:
            curve = ds["signals"][signal]["test_curve"]
            auc = ds["signals"][signal]["auroc_test"]
            curve_ax.plot(
                [p["coverage"] for p in curve], [p["agreement"] for p in curve],
                label=f"{signal} (AUROC {fmt_or_na(auc, 2)})",
            )  # fmt: skip
        for t in ds["signals"][results["chosen_signal"]]["targets"]:
            if t["routed_agreement"] is not None:
                curve_ax.plot([t["coverage"]], [t["routed_agreement"]], "ko")
                curve_ax.annotate(f"target {t['target']}", (t["coverage"], t["routed_agreement"]), fontsize=8)
        curve_ax.axhline(ds["overall_agreement_test"], color="grey", ls=":", label="all answers")
        curve_ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="coverage (share served locally)",
                     ylabel="agreement of the served answers",
                     title=f"{ds['dataset']}: coverage / agreement (test slice)")  # fmt: skip
        curve_ax.legend(fontsize="small")
        targets = ds["signals"][results["chosen_signal"]]["targets"]
        x = range(len(targets))
        cost_ax.bar([i - 0.2 for i in x], [t["cost_per_1k"] for t in targets], 0.4, label="selective")
        cost_ax.bar([i + 0.2 for i in x], [t["all_or_nothing"]["cost_per_1k"] for t in targets], 0.4,
                    label="all-or-nothing")  # fmt: skip
        cost_ax.axhline(ds["upstream_cached_per_1k"], color="black", ls="--", label="upstream, prefix cached")
        cost_ax.set_xticks(list(x), [f"target {t['target']}" for t in targets])
        cost_ax.set(
            ylabel="dollars per 1,000 requests",
            title=f"{ds['dataset']}: cost (local compute at wall time; no threshold = not activated)",
        )
        cost_ax.legend(fontsize="small")
    figure.savefig(path)
