"""The demo's closing summary: savings from the report JSON, accuracy from the gate and the served answers.

Savings come from gateway.accounting.report.build_report over the fresh traffic only (so every "before" is the
counterfactual of a routed request, not diluted by the training traffic); the latency "before" is the
full-prompt upstream latency of the first replay, "after" the routed requests' latency, both on the same
template and machine. Accuracy has two sources: the job's held-out evaluation (the internalized model from
the query alone vs the base model with the full few-shot prompt, on the same held-out requests), and the
answers the client actually received in each replay, scored against NL2Bash's gold commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from demo.nl2bash_app import AppRequest
from gateway.settings import Settings


def template_figures(report: dict[str, Any], template_id: str) -> dict[str, Any]:
    """The report's figures for one template ({} when it has no row in the window)."""
    return next((row for row in report["by_template"] if row["template_id"] == template_id), {})


def savings_figures(
    settings: Settings, template_id: str, started: datetime, fresh: datetime
) -> dict[str, Any]:
    """Token, cost and latency figures of the routed template, from the savings report."""
    from gateway.accounting.report import build_report
    from gateway.log.store import open_db

    db = open_db(settings.db_path)
    try:
        rate = settings.local_cost_per_hour
        after = template_figures(build_report(db, fresh, local_cost_per_hour=rate), template_id)
        whole = template_figures(build_report(db, started, local_cost_per_hour=rate), template_id)
    finally:
        db.close()
    p50_before, p50_after = whole.get("latency_p50_before_ms"), whole.get("latency_p50_after_ms")
    return {
        "fresh": after,
        "latency_p50_before_ms": p50_before,
        "latency_p95_before_ms": whole.get("latency_p95_before_ms"),
        "latency_p50_after_ms": p50_after,
        "latency_p95_after_ms": whole.get("latency_p95_after_ms"),
        "latency_speedup": p50_before / p50_after if p50_before and p50_after else None,
    }


def served_accuracy(answers: Sequence[tuple[AppRequest, str]]) -> dict[str, float]:
    """Scores of the answers the client received against the gold commands (exact, chrF, bash template)."""
    from internalizer.evaluate import score  # pure Python (no torch)

    return score([a for _, a in answers], [r.pair.cmd for r, _ in answers], "bash")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _speedup(ratio: float | None) -> str:
    if not ratio:
        return ""
    return f" ({ratio:.1f}x faster)" if ratio >= 1 else f" ({1 / ratio:.1f}x slower)"


def _scores(scores: dict[str, Any] | None) -> str:
    if not scores:
        return "-"
    return (
        f"chrF {scores['chrf']:.3f}  bash-template {scores.get('bash', 0):.3f}  exact {scores['exact']:.3f}"
    )


def format_loop_summary(
    nightly: Any, savings: dict[str, Any], served: dict[str, dict[str, float]], timings: dict[str, float]
) -> str:
    """The demo's final printout; every figure is read from the log, the report or the models row."""
    job = nightly.job
    scores = job["eval_scores"]
    gate_value = scores.get("internalized", {}).get(nightly.gate_metric)
    passed = gate_value is not None and gate_value >= nightly.gate_threshold
    fresh = savings["fresh"]
    speedup = savings["latency_speedup"]
    n_eval = int(scores.get("internalized", {}).get("n", 0))
    lines = [
        "",
        "PromptIntern demo: the whole loop",
        f"  template            {nightly.template_id[:12]} ({nightly.template_name}); "
        f"{nightly.n_templates} mined",
        f"  model               {job['model_id']} ({job['status']}): "
        f"{sum(s['steps'] for s in job['stages'])} LoRA steps over {len(job['stages'])} stages, "
        f"{job['timings_s'].get('train', 0):,.0f} s of training, "
        f"{job['gguf_size_bytes'] / 2**20:.0f} MB GGUF",
        f"  targets             {_targets_line(nightly.targets)}",
        f"  gate                {nightly.gate_metric} {gate_value if gate_value is not None else '-'} "
        f"{'>=' if passed else '<'} {nightly.gate_threshold} -> {'passed' if passed else 'FAILED'}",
        "",
        f"Held-out accuracy ({n_eval} requests held out of training, vs gold commands):",
        f"  internalized, query only      {_scores(scores.get('internalized'))}",
        f"  base model, full prompt       {_scores(scores.get('base_full_prompt'))}",
        f"  base model, query only        {_scores(scores.get('base_query_only'))}",
        "",
        "Answers the client received (vs gold commands):",
        f"  before: full prompt upstream  {_scores(served.get('before'))}",
        f"  after: fresh traffic          {_scores(served.get('after'))}",
        "",
        f"Routed template, fresh traffic (from the report): {fresh.get('requests', 0)} requests, "
        f"{fresh.get('routed', 0)} routed local, {fresh.get('fallbacks', 0)} fallbacks",
        f"  input tokens        {fresh.get('input_tokens_before', 0):,} -> "
        f"{fresh.get('input_tokens_after', 0):,}"
        f" ({_pct(fresh.get('input_token_reduction_pct'))} fewer)",
        f"  latency p50         {_ms(savings['latency_p50_before_ms'])} full prompt upstream -> "
        f"{_ms(savings['latency_p50_after_ms'])} local" + _speedup(speedup),
        f"  latency p95         {_ms(savings['latency_p95_before_ms'])} -> "
        f"{_ms(savings['latency_p95_after_ms'])}",
        f"  spend               ${fresh.get('spend_before_uncached', 0):.6f} uncached / "
        f"${fresh.get('spend_before_cached', 0):.6f} cached baseline -> ${fresh.get('spend_after', 0):.6f}",
        f"  saved               ${fresh.get('saved_vs_cached', 0):.6f} vs the cached baseline "
        f"(${fresh.get('saved_vs_uncached', 0):.6f} vs uncached)",
        "",
        "Step times: " + ", ".join(f"{name} {seconds:,.0f} s" for name, seconds in timings.items()),
        "Full tables: `promptintern report` (and --json); models: `promptintern models`.",
    ]
    return "\n".join(lines)


def _targets_line(targets: str) -> str:
    if targets == "gold":
        return (
            "NL2Bash gold commands (--labels): the embedded upstream is the 135M base model itself, "
            "too weak a teacher to distil"
        )
    return "the upstream's logged answers (distillation); accuracy is then agreement with the upstream"
