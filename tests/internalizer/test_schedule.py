from __future__ import annotations

import pytest

from internalizer.schedule import build_stages, keep_fraction


@pytest.mark.parametrize("kind", ["linear", "exponential", "inverse-exponential"])
def test_every_schedule_starts_full_decreases_and_ends_query_only(kind):
    stages = build_stages(4, kind, ratio_start=1.0, examples_start=4)
    assert [s.index for s in stages] == [1, 2, 3, 4, 5]
    assert stages[0].template_ratio == 1.0 and stages[0].n_examples == 4
    ratios = [s.template_ratio for s in stages]
    assert ratios == sorted(ratios, reverse=True) and len(set(ratios)) == len(ratios)
    assert [s.n_examples for s in stages] == sorted((s.n_examples for s in stages), reverse=True)
    assert stages[-1].query_only and not any(s.query_only for s in stages[:-1])


def test_linear_schedule_values():
    stages = build_stages(3, "linear", ratio_start=0.9, examples_start=3)
    assert [(s.template_ratio, s.n_examples) for s in stages] == [(0.9, 3), (0.6, 2), (0.3, 1), (0.0, 0)]


def test_exponential_drops_early_and_inverse_drops_late():
    assert (
        keep_fraction(1, 4, "exponential")
        < keep_fraction(1, 4, "linear")
        < keep_fraction(1, 4, "inverse-exponential")
    )
    assert keep_fraction(0, 4, "exponential") == pytest.approx(1.0)
    assert keep_fraction(4, 4, "inverse-exponential") == pytest.approx(0.0)


def test_zero_progressive_stages_is_query_only_training():
    stages = build_stages(0, "linear", 1.0, 3)
    assert len(stages) == 1 and stages[0].query_only


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule"):
        keep_fraction(1, 3, "cosine")
