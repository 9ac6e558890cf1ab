"""Selective routing's pure parts: confidence signals, the Wilson bound, the coverage curve, the threshold
choice (and what a small held-out set may promise), escalation, live verdicts, live route changes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.accounting.report import build_report
from gateway.local.confidence import SIGNALS, confidence, logprobs_from_openai
from gateway.log.store import open_db
from gateway.routing.routes_store import adjust_route, get_route, route_off, set_route
from gateway.routing.selective import (
    answer_agreement,
    choose_threshold,
    coverage_curve,
    escalates,
    fewest_reaching,
    live_verdict,
    wilson_bounds,
    z_for,
)
from tests.gateway.seed_log import NL2BASH, seed

Z95 = z_for(0.95)


def test_the_three_signals_of_an_answer():
    logprobs = [-0.1, -2.0, -0.3]
    assert confidence(logprobs, "sum") == pytest.approx(-2.4)
    assert confidence(logprobs, "mean") == pytest.approx(-0.8)
    assert confidence(logprobs, "min") == -2.0
    assert all(confidence([], s) is None and confidence(None, s) is None for s in SIGNALS)
    with pytest.raises(ValueError, match="mean, min, sum"):
        confidence(logprobs, "max")


def test_logprobs_from_an_openai_choice():
    choice = {"content": [{"token": "ls", "logprob": -0.25}, {"token": " -", "logprob": -1.5}]}
    assert logprobs_from_openai(choice) == [-0.25, -1.5]
    assert logprobs_from_openai(None) == [] and logprobs_from_openai({"content": None}) == []


def test_wilson_bounds_match_known_values():
    low, high = wilson_bounds(0.9, 100, 1.959964)  # the textbook 95% two-sided interval for 90/100
    assert (round(low, 3), round(high, 3)) == (0.826, 0.945)
    assert wilson_bounds(1.0, 0, Z95) == (0.0, 1.0)
    # Perfect agreement on n requests promises at most n / (n + z^2): 5 of 5 cannot promise 0.9.
    assert wilson_bounds(1.0, 5, Z95)[0] == pytest.approx(5 / (5 + Z95**2))
    assert wilson_bounds(1.0, 5, Z95)[0] < 0.9 < wilson_bounds(1.0, 30, Z95)[0]


@given(
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=1, max_value=10_000),
    st.floats(min_value=0.5, max_value=3.5),
)
def test_wilson_bounds_hold_the_mean_and_shrink_with_n(mean, n, z):
    low, high = wilson_bounds(mean, n, z)
    assert 0 <= low <= mean + 1e-12 and mean - 1e-12 <= high <= 1
    low4, high4 = wilson_bounds(mean, 4 * n, z)
    assert low4 >= low - 1e-12 and high4 <= high + 1e-12


def synthetic(n: int, seed: int = 0) -> list[tuple[float, float]]:
    """A model whose answers agree with probability 1 + 0.2 x confidence (40% at -3, 100% at 0): the answers
    at least t confident agree 1 + 0.1 t of the time, so the 0.9 target is met from t = -1 (1/3 routed)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        conf = -3 * rng.random()
        pairs.append((conf, float(rng.random() < 1 + 0.2 * conf)))
    return pairs


def test_the_curve_routes_the_most_confident_first():
    pairs = [(-0.1, 1.0), (-0.2, 1.0), (-0.2, 0.0), (-1.0, 0.0)]
    curve = coverage_curve(pairs, Z95)
    assert [p.threshold for p in curve] == [-0.1, -0.2, -1.0]  # a tie is one threshold
    assert [p.n_routed for p in curve] == [1, 3, 4]
    assert [p.coverage for p in curve] == [0.25, 0.75, 1.0]
    assert [p.agreement for p in curve] == pytest.approx([1.0, 2 / 3, 0.5])
    assert all(p.lower_bound < p.agreement for p in curve)
    # Answers that could not be scored count in the coverage only.
    assert coverage_curve(pairs, Z95, total=8)[-1].coverage == 0.5


@given(
    st.lists(
        st.tuples(st.floats(min_value=-50, max_value=0), st.floats(min_value=0, max_value=1)), max_size=60
    ),
    st.floats(min_value=0.5, max_value=0.99),
)
def test_any_curve_is_ordered_and_any_chosen_threshold_keeps_its_bound(pairs, target):
    curve = coverage_curve(pairs, Z95)
    assert [p.n_routed for p in curve] == sorted({p.n_routed for p in curve})
    assert all(a.threshold > b.threshold for a, b in zip(curve, curve[1:], strict=False))
    assert all(p.lower_bound <= p.agreement + 1e-12 for p in curve)
    assert (curve[-1].coverage == 1.0) if pairs else curve == []
    chosen = choose_threshold(curve, target, Z95)
    if chosen is not None:
        routed = [a for c, a in pairs if c >= chosen.threshold]
        assert wilson_bounds(sum(routed) / len(routed), len(routed), Z95)[0] >= target - 1e-9


def test_the_threshold_is_the_lowest_the_fixed_sequence_reaches():
    pairs = synthetic(20_000)
    curve = coverage_curve(pairs, Z95)
    chosen = choose_threshold(curve, 0.9, Z95)
    assert chosen is not None and chosen.lower_bound >= 0.9
    needed = fewest_reaching(0.9, Z95)
    assert wilson_bounds(1.0, needed, Z95)[0] >= 0.9 > wilson_bounds(1.0, needed - 1, Z95)[0]
    # The checkpoints, `needed` answers apart from the most confident down: every one down to the chosen
    # threshold passes, the next one fails.
    tested, checkpoint = [], needed
    for point in curve:
        if point.n_routed >= checkpoint:
            tested.append(point)
            checkpoint = point.n_routed + needed
    assert all(b.n_routed - a.n_routed == needed for a, b in zip(tested, tested[1:], strict=False))
    passed = [p for p in tested if p.threshold >= chosen.threshold]
    assert passed[-1] == chosen and all(p.lower_bound >= 0.9 for p in passed)
    failed = tested[len(passed)]
    assert failed.lower_bound < 0.9
    assert 0.25 < chosen.coverage < 1 / 3 + 0.02  # near the true crossing, a little under it
    routed = [a for c, a in pairs if c >= chosen.threshold]
    assert sum(routed) / len(routed) >= 0.9
    # A stricter target routes less; an unreachable one routes nothing; a minimum coverage is enforced.
    stricter = choose_threshold(curve, 0.97, Z95)
    assert stricter is not None and stricter.coverage < chosen.coverage
    assert choose_threshold(curve, 1.0, Z95) is None
    assert choose_threshold(curve, 0.9, Z95, min_coverage=0.95) is None


def test_one_early_disagreement_does_not_end_the_search():
    """600 answers, right but for one at rank 30 and every tenth from rank 400 on: testing every threshold
    stops at the 30th (29/30 cannot promise 0.9); the checkpoints test 25, 50, ... and go on past 400."""
    pairs = [(-0.001 * i, 0.0 if i == 29 or (i >= 400 and i % 10 == 0) else 1.0) for i in range(600)]
    chosen = choose_threshold(coverage_curve(pairs, Z95), 0.9, Z95)
    assert chosen is not None and chosen.n_routed >= 400
    assert chosen.lower_bound >= 0.9


def test_a_small_held_out_set_cannot_over_promise():
    """Ten held-out answers, all right: the point estimate says 100%, the bound says not even 0.9."""
    assert choose_threshold(coverage_curve([(-0.1 * i, 1.0) for i in range(10)], Z95), 0.9, Z95) is None
    assert choose_threshold(coverage_curve([(-0.01 * i, 1.0) for i in range(30)], Z95), 0.9, Z95) is not None
    # Over many held-out sets of 100 requests, a threshold found keeps its promise on fresh traffic.
    kept = []
    for seed_ in range(200):
        chosen = choose_threshold(coverage_curve(synthetic(100, seed_), Z95), 0.9, Z95)
        if chosen is not None:
            true_agreement = 1 + 0.1 * chosen.threshold  # of the answers at least this confident
            kept.append(true_agreement >= 0.88)
    assert len(kept) >= 20 and sum(kept) / len(kept) >= 0.9


def test_escalation_below_the_threshold_or_without_a_score():
    assert not escalates(-0.5, None) and not escalates(None, None)  # no threshold: serve everything
    assert escalates(-0.5, -0.2) and not escalates(-0.1, -0.2) and not escalates(-0.2, -0.2)
    assert escalates(None, -0.2)  # no log-probabilities: the answer cannot be vouched for


def test_answer_agreement_exact_or_graded():
    assert answer_agreement("exact", "ls -la", "```\nls  -la\n```") == 1.0
    assert answer_agreement("exact", "ls -la", "ls -l") == 0.0
    assert 0 < answer_agreement("chrf", "ls -la", "ls -l") < 1
    assert answer_agreement("bash", "ls -la", "ls -l") == 0.0  # unknown to the gateway: exact


def test_live_verdicts():
    good = [(-0.1, 1.0)] * 30
    assert live_verdict(good, 0.9, -0.5, Z95, 20).action == "keep"
    bad_few = [(-0.1, 0.0)] * 5
    assert live_verdict(bad_few, 0.9, -0.5, Z95, 20).action == "keep"  # too few to judge
    # The less confident half disagrees: a higher threshold keeps the promise.
    split = [(-0.05, 1.0)] * 40 + [(-0.4, 0.0)] * 40
    raised = live_verdict(split, 0.9, -0.5, Z95, 20)
    assert raised.action == "raise" and raised.threshold == -0.05 and raised.agreement == 0.5
    assert "threshold raised to -0.05" in raised.note(0.9)
    hopeless = [(-0.1 * (i % 7), float(i % 2)) for i in range(40)]
    verdict = live_verdict(hopeless, 0.9, -1.0, Z95, 20)
    assert verdict.action == "shadow" and "shadow" in verdict.note(0.9)
    assert verdict.upper_bound < 0.9


def test_live_calibration_never_undoes_an_operators_off(tmp_path):
    db = seed(tmp_path / "logs.db")
    route = set_route(db, NL2BASH, mode="active")
    assert adjust_route(db, NL2BASH, route.model_id, note="tightened", threshold=-0.3)
    changed = get_route(db, NL2BASH)
    assert (changed.threshold, changed.note) == (-0.3, "tightened") and changed.mode == route.mode
    assert not adjust_route(db, NL2BASH, "another-model", note="x", mode="shadow")  # not its model any more
    route_off(db, NL2BASH)
    assert not adjust_route(db, NL2BASH, route.model_id, note="worse", mode="shadow")
    assert get_route(db, NL2BASH).mode == "off"
    db.close()


def test_a_migrated_log_has_the_selective_columns(tmp_path):
    db = open_db(tmp_path / "logs.db")
    assert "calibration" in db["models"].columns_dict
    assert {"threshold", "note"} <= set(db["routes"].columns_dict)
    assert "local_confidence" in db["requests"].columns_dict


def test_the_report_counts_an_escalation_as_local_time_plus_the_upstream_price(tmp_path):
    db = open_db(tmp_path / "logs.db")
    compute_s, rate = 0.36, 0.10  # 0.36 s of a $0.10/hour machine: $0.00001
    local_dollars = compute_s * rate / 3600
    common = {"template_id": "tpl", "status": 200, "latency_ms": 100.0, "local_compute_s": compute_s}
    db["requests"].insert_all(
        [
            {"request_id": "r1", "startTime": "2026-11-20T10:00:00+00:00", "route": "local",
             "prompt_tokens": 25, "spend": local_dollars, "counterfactual_prompt_tokens": 1200,
             "counterfactual_spend": 0.001, "counterfactual_cached_spend": 0.0006, "local_confidence": -0.1,
             "shadow_agreement": 1.0, **common},
            {"request_id": "r2", "startTime": "2026-11-20T10:00:01+00:00", "route": "escalated",
             "prompt_tokens": 1200, "spend": 0.0002 + local_dollars, "local_confidence": -2.0, **common},
        ]
    )  # fmt: skip
    [entry] = build_report(db, local_cost_per_hour=rate)["by_template"]
    assert (entry["routed"], entry["escalated"], entry["coverage"]) == (1, 1, 0.5)
    assert (entry["live_compared"], entry["live_agreement"]) == (1, 1.0)
    # Before: the routed request's cached counterfactual, the escalated one's upstream bill alone.
    assert entry["spend_before_cached"] == pytest.approx(0.0006 + 0.0002)
    assert entry["spend_after"] == pytest.approx(2 * local_dollars + 0.0002)
    assert entry["saved_vs_cached"] == pytest.approx(0.0006 - 2 * local_dollars)
    assert entry["input_tokens_before"] == 2400 and entry["input_tokens_after"] == 1225
