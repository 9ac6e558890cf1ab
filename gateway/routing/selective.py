"""Selective routing: serve locally only the answers the local model is sure of. Pure functions.

A model's calibration (internalizer/calibrate.py) scores its held-out answers by confidence
(gateway/local/confidence.py) and by agreement with the upstream's answers, and draws the coverage /
agreement curve: for each threshold, the share of requests at least that confident (coverage) and the
mean agreement of those (routed agreement). The chosen threshold is the lowest whose routed agreement
still reaches the target with a one-sided Wilson lower bound, found by fixed-sequence testing from the most
confident down at checkpoints a fixed number of answers apart (`choose_threshold`), so a small held-out set
cannot promise more than it showed. Per request, an answer below the threshold is escalated: the original
request goes upstream.

Live calibration checks the promise on traffic: a share of the locally served requests is also answered
upstream (a background shadow call) and compared. Once enough comparisons exist and the Wilson UPPER bound
of their agreement is below the target (the route is then clearly worse than promised, not just unlucky),
the threshold is raised to the lowest one that reaches the target on the live comparisons, or, if none
does with a useful share, the route goes to shadow.

Agreement is one function (`answer_agreement`): "exact" (the normalised texts are equal: 1 or 0) or
"chrf" (the shadow agreement score, 1.0 for equal texts); a metric the gateway does not know (a task
metric such as "bash", used offline) is checked live as "exact", the stricter reading.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

from gateway.routing.agreement import agreement

LIVE_METRICS = ("exact", "chrf")


def z_for(level: float) -> float:
    """The one-sided normal quantile of a confidence level (0.95 -> 1.645)."""
    if not 0.5 <= level < 1.0:
        raise ValueError(f"confidence level must be in [0.5, 1), not {level}")
    return NormalDist().inv_cdf(level)


def wilson_bounds(mean: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (or of a mean of scores in [0, 1], whose variance is at most
    that of a proportion with the same mean, so the interval is conservative for them)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(mean, 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - spread), min(1.0, centre + spread)


@dataclass(frozen=True)
class CurvePoint:
    """Route every request whose confidence >= threshold: its share, and those requests' agreement."""

    threshold: float
    n_routed: int
    coverage: float
    agreement: float
    lower_bound: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def coverage_curve(
    pairs: Iterable[tuple[float, float]], z: float, total: int | None = None
) -> list[CurvePoint]:
    """One point per distinct confidence (most confident first) over (confidence, agreement) pairs;
    coverage is over `total` requests (default: the pairs; more when some answers had no confidence)."""
    ordered = sorted(pairs, key=lambda pair: -pair[0])
    total = max(total or 0, len(ordered))
    points: list[CurvePoint] = []
    agreed = 0.0
    for index, (conf, score) in enumerate(ordered):
        agreed += score
        if index + 1 < len(ordered) and ordered[index + 1][0] == conf:
            continue  # a tie: the threshold routes all of them or none
        n = index + 1
        mean = agreed / n
        points.append(CurvePoint(conf, n, n / total, mean, wilson_bounds(mean, n, z)[0]))
    return points


def fewest_reaching(target: float, z: float) -> int:
    """The fewest answers whose perfect record has a lower bound reaching `target` (< 1)."""
    needed = 1
    while wilson_bounds(1.0, needed, z)[0] < target:
        needed += 1
    return needed


def choose_threshold(
    curve: Sequence[CurvePoint], target: float, z: float, min_coverage: float = 0.0
) -> CurvePoint | None:
    """The lowest threshold reached by fixed-sequence testing: from the most confident threshold down,
    checkpoint by checkpoint, each routed set's lower bound must reach `target`, and the search stops at
    the first checkpoint that does not.

    The checkpoints are `needed` answers apart, where `needed` is the fewest answers whose perfect record
    reaches the target: the first tested threshold routes `needed` answers, the next one `needed` more,
    and so on (a tie can route more; the next checkpoint counts from there). The sequence depends on the
    confidences only, never on the agreements, so testing it one step at a time keeps the bound's level.
    Testing every distinct threshold instead lets one early disagreement (one wrong answer among the
    first thirty) end the search at a few percent of coverage; taking the lowest of all thresholds that
    pass tests every threshold and keeps the luckiest, which over-promises far more often on small
    held-out sets (both measured in benchmarks/selective.py, "threshold rules on synthetic models").
    None when no checkpoint passes, or the one found routes less than `min_coverage`.
    """
    if target >= 1.0:
        return None  # no finite record proves perfect agreement
    needed = fewest_reaching(target, z)
    chosen = None
    checkpoint = needed
    for point in curve:
        if point.n_routed < checkpoint:
            continue
        if point.lower_bound < target:
            break
        chosen = point
        checkpoint = point.n_routed + needed
    return chosen if chosen is not None and chosen.coverage >= min_coverage else None


def escalates(confidence: float | None, threshold: float | None) -> bool:
    """Whether an answer goes upstream instead: below the threshold, or unscored (no log-probabilities)."""
    if threshold is None:
        return False
    return confidence is None or confidence < threshold


def answer_agreement(metric: str, reference: str | None, candidate: str | None) -> float:
    """Agreement of a local answer with the upstream's (module doc); the one place live checks score it."""
    score = agreement(reference, candidate)
    if metric == "chrf":
        return score
    return 1.0 if score == 1.0 else 0.0


@dataclass(frozen=True)
class LiveVerdict:
    action: str  # keep | raise | shadow
    n: int
    agreement: float
    upper_bound: float
    threshold: float | None = None  # the raised threshold (action raise)

    def note(self, target: float) -> str:
        seen = f"live agreement {self.agreement:.2f} on {self.n} compared requests < target {target:.2f}"
        if self.action == "raise":
            return f"{seen}: threshold raised to {self.threshold:.4g}"
        if self.action == "shadow":
            return f"{seen}: no higher threshold reaches it; route set to shadow"
        return ""


def live_verdict(
    compared: Sequence[tuple[float, float]],
    target: float,
    threshold: float | None,
    z: float,
    min_samples: int,
    min_coverage: float = 0.0,
) -> LiveVerdict:
    """What to do about a route given its live (confidence, agreement) comparisons of served answers."""
    n = len(compared)
    mean = sum(score for _, score in compared) / n if n else 1.0
    upper = wilson_bounds(mean, n, z)[1] if n else 1.0
    if n < min_samples or upper >= target:
        return LiveVerdict("keep", n, mean, upper)
    curve = coverage_curve(compared, z)
    higher = [p for p in curve if threshold is None or p.threshold > threshold]
    raised = choose_threshold(higher, target, z, min_coverage)
    if raised is not None:
        return LiveVerdict("raise", n, mean, upper, raised.threshold)
    return LiveVerdict("shadow", n, mean, upper)
