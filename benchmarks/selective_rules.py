"""How often three threshold rules over-promise on synthetic held-out sets (benchmarks/selective.py): the
lowest threshold that passes its bound, a fixed sequence testing every distinct threshold, and the fixed
sequence at checkpoints the gate uses."""

from __future__ import annotations

import random
from typing import Any

from gateway.routing.selective import CurvePoint, choose_threshold, coverage_curve, fewest_reaching, z_for

LEVEL = 0.95  # one-sided confidence of the bound, as the gate's default


def threshold_rules(n_sets: int = 400) -> list[dict[str, Any]]:
    """A model whose answers agree with probability 1 + 0.2 c (confidence c uniform in [-3, 0]): the
    answers at least t confident agree 1 + 0.1 t of the time, so 0.9 is met up to t = -1 (1/3 routed).
    For each rule and held-out size: how often it finds a threshold, how often that threshold's true
    agreement is more than 2 points under the target, and the true coverage it gets."""
    z = z_for(LEVEL)
    fewest = fewest_reaching(0.9, z)

    def lowest_passing(curve: list[CurvePoint]) -> CurvePoint | None:
        passing = [p for p in curve if p.lower_bound >= 0.9]
        return min(passing, key=lambda p: p.threshold) if passing else None

    def every_threshold(curve: list[CurvePoint]) -> CurvePoint | None:
        chosen = None
        for point in curve:
            if point.n_routed < fewest:
                continue
            if point.lower_bound < 0.9:
                break
            chosen = point
        return chosen

    def gate(curve: list[CurvePoint]) -> CurvePoint | None:
        return choose_threshold(curve, 0.9, z)

    rows = []
    for n in (100, 300, 1000, 3000):
        rules = (
            ("lowest passing", lowest_passing),
            ("fixed sequence, every threshold", every_threshold),
            ("fixed sequence, checkpoints (gate)", gate),
        )
        for rule, pick in rules:
            found = over = 0
            coverage = []
            for seed in range(n_sets):
                rng = random.Random(seed)
                pairs = []
                for _ in range(n):
                    c = -3 * rng.random()
                    pairs.append((c, float(rng.random() < 1 + 0.2 * c)))
                curve = coverage_curve(pairs, z)
                chosen = pick(curve)
                if chosen is None:
                    continue
                found += 1
                over += (1 + 0.1 * chosen.threshold) < 0.88
                coverage.append(-chosen.threshold / 3)
            rows.append({
                "held_out": n, "rule": rule, "sets": n_sets, "found": found,
                "over_promised_by_2pt": over, "over_promised_share": over / found if found else None,
                "mean_true_coverage": sum(coverage) / len(coverage) if coverage else None,
            })  # fmt: skip
    return rows
