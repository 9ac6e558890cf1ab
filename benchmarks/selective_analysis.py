"""The selective-routing benchmark's figures from its recorded answers (benchmarks/selective.py): for each
confidence signal the AUROC and the coverage / agreement curve, and for each target the threshold chosen on
the calibration slice, judged on the test slice against all-or-nothing routing and the cached upstream."""

from __future__ import annotations

import math
import os
from typing import Any

from benchmarks.selective_report import fmt_or_na
from benchmarks.selective_rules import LEVEL
from gateway.local.confidence import FALLING_SIGNALS, SIGNALS, confidence
from gateway.routing.selective import CurvePoint, choose_threshold, coverage_curve, wilson_bounds, z_for
from internalizer.calibrate import auroc

TARGETS = (0.8, 0.9, 0.95)
MIN_COVERAGE = 0.0  # report every threshold found; the gate's activation minimum is a separate setting
MIN_CLASS = 10  # agreeing and disagreeing answers a dataset needs for its AUROC to count in the choice


def judge(
    cal: list[tuple[float | None, float]],
    test: list[tuple[float | None, float, float, float]],
    target: float,
    z: float,
    stop_share: Any = None,
) -> dict[str, Any]:
    """Selective and all-or-nothing routing at `target`: the threshold from the calibration slice,
    judged on the test slice. test items: (confidence, agreement, local $, upstream $). `stop_share(i,
    threshold)`: the share of test answer i's local cost spent before the gateway stops it under that
    threshold (an escalated answer under a falling signal); None: every answer is generated whole."""
    cal_curve = coverage_curve([(c, a) for c, a in cal if c is not None], z, total=len(cal))
    chosen = choose_threshold(cal_curve, target, z, MIN_COVERAGE)
    n = len(test)
    upstream_per_1k = 1000 * sum(u for *_, u in test) / n
    local_all = 1000 * sum(loc for _, _, loc, _ in test) / n
    served = [chosen is not None and c is not None and c >= chosen.threshold for c, *_ in test]
    routed = [t for t, local in zip(test, served, strict=True) if local]
    # With a threshold, every request is answered locally first (an escalated one up to where the gateway
    # stops it) and the escalated ones then pay the upstream too; without one the gate does not activate
    # the model and everything goes upstream.
    escalated = n - len(routed) if chosen is not None else 0
    escalated_upstream = sum(u for (*_, u), local in zip(test, served, strict=True) if not local)
    local_spent = local_all
    if chosen is not None and stop_share is not None:
        local_spent = (
            1000
            * sum(
                loc * (1.0 if local else stop_share(i, chosen.threshold))
                for i, ((_, _, loc, _), local) in enumerate(zip(test, served, strict=True))
            )
            / n
        )
    selective_per_1k = local_spent + 1000 * escalated_upstream / n if chosen is not None else upstream_per_1k
    whole_mean = sum(a for _, a in cal) / len(cal)
    whole_passes = wilson_bounds(whole_mean, len(cal), z)[0] >= target
    return {
        "target": target,
        "activated": chosen is not None,
        "threshold": chosen.threshold if chosen else None,
        "calibration_coverage": chosen.coverage if chosen else 0.0,
        "calibration_lower_bound": chosen.lower_bound if chosen else None,
        "coverage": len(routed) / n,
        "routed_agreement": sum(a for _, a, _, _ in routed) / len(routed) if routed else None,
        "escalation_rate": escalated / n,
        "agreement_served": (sum(a for _, a, _, _ in routed) + n - len(routed))
        / n,  # upstream agrees with itself
        "cost_per_1k": selective_per_1k,
        "saving_vs_cached_pct": 100 * (1 - selective_per_1k / upstream_per_1k),
        "all_or_nothing": {
            "routes": "all" if whole_passes else "none",
            "calibration_agreement": whole_mean,
            "cost_per_1k": local_all if whole_passes else upstream_per_1k,
            "agreement_served": (sum(a for _, a, _, _ in test) / n) if whole_passes else 1.0,
            "saving_vs_cached_pct": 100 * (1 - local_all / upstream_per_1k) if whole_passes else 0.0,
        },
    }


def _both_bases(cal, tests, target: float, z: float, stop_share: Any = None) -> dict[str, Any]:
    """`judge` with local compute priced by wall time, plus the costs with it priced by CPU time; and the
    wall-time costs had every escalated answer been generated whole (the gateway before it stopped them)."""
    wall, cpu = (judge(cal, test, target, z, stop_share) for test in tests)
    whole = judge(cal, tests[0], target, z)
    keys = ("cost_per_1k", "saving_vs_cached_pct")
    return wall | {
        "cpu_time_basis": {k: cpu[k] for k in keys}
        | {"all_or_nothing": {k: cpu["all_or_nothing"][k] for k in keys}},
        "generated_whole": {k: whole[k] for k in keys},
    }


def stopped_share(item: dict[str, Any], signal: str, threshold: float) -> float:
    """The share of an answer's time spent before the gateway stops it for falling below `threshold`
    (gateway/api/local_serving.py): up to the sampling step after its first token below it, when that
    token's log-probability is known. 1.0 for a signal that can rise again, or without step times."""
    steps, logprobs = item.get("step_s") or [], item.get("token_logprobs") or []
    if signal not in FALLING_SIGNALS or not steps or item["wall_s"] <= 0:
        return 1.0
    for j in range(len(logprobs)):
        if (confidence(logprobs[: j + 1], signal) or 0.0) < threshold:
            return min(1.0, steps[j + 1] / item["wall_s"]) if j + 1 < len(steps) else 1.0
    return 1.0


def analyse(ds: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one dataset from its recorded answers (so the tables can be redone from the JSON)."""
    z = z_for(LEVEL)
    cal = [i for i in ds["items"] if i["slice"] == "calibration"]
    test = [i for i in ds["items"] if i["slice"] == "test"]
    n = len(test)
    # Local compute priced two ways: the wall time each answer took (the gateway's own rule: the worker was
    # busy that long), and the CPU time it used (a share of the machine; other work on this shared machine
    # stretches wall time without using this request's CPU).
    per_s = ds["local_per_hour"] / 3600
    cores = os.cpu_count() or 1
    local_costs = ([i["wall_s"] * per_s for i in test], [i["cpu_s"] * per_s / cores for i in test])
    up_costs = [i["upstream_usd"] for i in test]
    test_agree = [i["agreement"] for i in test]
    signals: dict[str, Any] = {}
    for signal in SIGNALS:
        cal_conf = [i["confidence"][signal] for i in cal]
        test_conf = [i["confidence"][signal] for i in test]
        test_curve = coverage_curve(
            [(c, a) for c, a in zip(test_conf, test_agree, strict=True) if c is not None], z, n
        )
        signals[signal] = {
            "auroc_test": _auroc(test_conf, test_agree),
            "auroc_calibration": _auroc(cal_conf, [i["agreement"] for i in cal]),
            "test_curve": [_point(p) for p in test_curve],
            "targets": [
                _both_bases(
                    list(zip(cal_conf, [i["agreement"] for i in cal], strict=True)),
                    [list(zip(test_conf, test_agree, costs, up_costs, strict=True)) for costs in local_costs],
                    target,
                    z,
                    lambda index, threshold, signal=signal: stopped_share(test[index], signal, threshold),
                )
                for target in TARGETS
            ],
        }
    return {
        "overall_agreement_test": sum(test_agree) / n,
        "overall_agreement_calibration": sum(i["agreement"] for i in cal) / len(cal),
        "upstream_cached_per_1k": 1000 * sum(up_costs) / n,
        "local_per_1k": 1000 * sum(local_costs[0]) / n,
        "local_per_1k_cpu_time": 1000 * sum(local_costs[1]) / n,
        "local_seconds_mean": sum(i["wall_s"] for i in test) / n,
        "local_cpu_seconds_mean": sum(i["cpu_s"] for i in test) / n,
        "mean_answer_tokens": sum(i["tokens"] for i in test) / n,
        "signals": signals,
    }


def _auroc(confidences: list[float | None], agreements: list[float]) -> float | None:
    scores = [-math.inf if c is None else c for c in confidences]
    return auroc(scores, [a >= 1.0 for a in agreements])


def _point(point: CurvePoint) -> dict[str, float]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in point.as_dict().items()}


def check_target(datasets: list[dict[str, Any]], signal: str) -> dict[str, Any]:
    """Met if, on a dataset whose model fails all-or-nothing routing at 0.9, selective routing at 0.9 keeps
    routed agreement >= 0.9 on the test slice and saves >= 30% of the cached upstream's cost."""
    met, details = False, []
    for ds in datasets:
        t = next(x for x in ds["signals"][signal]["targets"] if x["target"] == 0.9)
        fails_gate = t["all_or_nothing"]["routes"] == "none"
        agreement_ok = (t["routed_agreement"] or 0) >= 0.9
        wall, cpu = t["saving_vs_cached_pct"], t["cpu_time_basis"]["saving_vs_cached_pct"]
        met |= fails_gate and agreement_ok and wall >= 30
        details.append(
            f"{ds['dataset']}: all-or-nothing routes {t['all_or_nothing']['routes']}; selective routes "
            f"{100 * t['coverage']:.1f}% at agreement {fmt_or_na(t['routed_agreement'], 3)}, "
            f"saving {wall:.1f}% (wall-time basis) / {cpu:.1f}% (CPU-time basis)"
        )
    return {"met": met, "detail": "; ".join(details)}


def choose_signal(datasets: list[dict[str, Any]]) -> tuple[str, str]:
    """The signal with the highest AUROC (calibration and test slices averaged), over the datasets with
    at least MIN_CLASS agreeing and MIN_CLASS disagreeing test answers (an AUROC over a handful of agreeing
    answers says little); all datasets when none qualifies."""

    def qualifies(ds: dict[str, Any]) -> bool:
        agreeing = ds["overall_agreement_test"] * ds["config"]["n_test"]
        return MIN_CLASS <= agreeing <= ds["config"]["n_test"] - MIN_CLASS

    counted = [ds for ds in datasets if qualifies(ds)] or datasets
    score = {
        s: sum(
            ((ds["signals"][s]["auroc_test"] or 0) + (ds["signals"][s]["auroc_calibration"] or 0)) / 2
            for ds in counted
        )
        / max(1, len(counted))
        for s in SIGNALS
    }
    chosen = max(SIGNALS, key=lambda s: score[s])
    names = ", ".join(ds["dataset"] for ds in counted)
    figures = ", ".join(f"{s} {v:.3f}" for s, v in score.items())
    reason = f"highest AUROC, calibration and test slices averaged, over {names}: {figures}"
    return chosen, reason
