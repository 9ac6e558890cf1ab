"""The plan and its budget: fewer records in the template stages only, an impossible budget stops the job
before any training with one line, and `nightly` leaves what does not fit for the next night."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import open_db
from internalizer.config import InternalizeConfig
from internalizer.packing import IGNORE, Sequence
from internalizer.plan import PlanError, StepCost, apply_plan, make_plan
from internalizer.schedule import build_stages
from tests.internalizer.conftest import fast_overrides

PREFIX = list(range(1, 301))


def _stage_data(stages, n: int) -> list[list[Sequence]]:
    """n records per stage: a 300-token template prefix in template stages, the query alone in the last."""
    data = []
    for stage in stages:
        prefix = [] if stage.query_only else PREFIX
        labels = [IGNORE] * (len(prefix) + 25) + [7] * 5  # a 25-token query, a 5-token answer
        data.append([Sequence(prefix + [500 + i] * 30, labels, len(prefix), f"r{i}") for i in range(n)])
    return data


def _plan(budget_min: float, n: int = 200):
    cfg = InternalizeConfig(stages=2, batch_size=8, budget_min=budget_min)
    stages = build_stages(2, "linear", 1.0, 0)
    data = _stage_data(stages, n)
    cost = StepCost([(330, 0.33), (30, 0.03)])  # 1 ms per token
    plan = make_plan(stages, data, [1.0, 1.0, 2.0], cfg, cost, setup_s=30.0, finish_s=60.0)
    return plan, data, cfg


def test_without_a_budget_every_stage_trains_every_record_and_the_plan_says_so():
    plan, _, _ = _plan(0)
    assert [(s.records, s.available) for s in plan.stages] == [(200, 200)] * 3
    first, _, last = plan.stages
    assert first.steps == 25 and last.steps == 50  # 200 records, 8 per step; the last stage 2 epochs
    # The shared prefix is counted once per row, not once per record.
    assert first.tokens_unpacked == 200 * 330 and first.tokens == 25 * (300 + 8 * 30)
    assert plan.total_s == pytest.approx(30 + 60 + sum(s.expected_s for s in plan.stages), abs=0.5)
    lines = plan.describe()
    assert lines[0].startswith("plan: 3 stages, expected") and "budget" not in lines[0]
    assert "stage 1 (template 100%, 0 shots): 200/200 records, 25 steps" in lines[1]
    assert "stage 3 (query only): 200/200 records, 50 steps" in lines[3]


def test_a_budget_caps_records_in_the_template_stages_only():
    full, data, cfg = _plan(0)
    budget_min = (full.total_s - 0.5 * sum(s.expected_s for s in full.stages[:2])) / 60
    plan, data, cfg = _plan(budget_min)
    assert plan.total_s <= budget_min * 60 and plan.fitted
    template, query_only = plan.stages[:2], plan.stages[2]
    assert all(8 <= s.records < s.available for s in template)
    assert query_only.records == query_only.available == 200 and query_only.steps == 50
    assert "met by training the template stages on fewer records" in plan.describe()[0]
    chosen = apply_plan(plan, data, cfg.seed)
    assert [len(c) for c in chosen] == [s.records for s in plan.stages]
    assert chosen[2] == data[2]


def test_an_impossible_budget_is_one_clear_line():
    with pytest.raises(PlanError) as error:
        _plan(1.0)  # setup and export alone take 1.5 min
    message = str(error.value)
    assert "\n" not in message and message.startswith("a budget of 1 min is too small: the job needs about")


def test_impossible_budget_fails_before_training_with_one_line(tiny_env):
    settings, template_id = tiny_env
    result = CliRunner().invoke(main, ["internalize", template_id, "--budget-min", "0.01", *fast_overrides()])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: a budget of 0.01 min is too small")
    assert "Traceback" not in result.output
    assert not list(settings.runs_dir.glob("*/*/stage-*"))  # nothing trained
    assert open_db(settings.db_path)["models"].count == 0  # nothing was left half done

    # With time enough, the job runs within what is left of the night.
    result = CliRunner().invoke(main, ["nightly", "--budget-min", "30", "--json", *fast_overrides()])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["status"] == "active" and 29 < row["minutes"]["budget"] <= 30
    assert row["minutes"]["actual"] <= row["minutes"]["budget"]


def test_nightly_leaves_what_its_budget_cannot_hold_for_the_next_night(tiny_env):
    settings, template_id = tiny_env
    result = CliRunner().invoke(main, ["nightly", "--budget-min", "0.5", "--json", *fast_overrides()])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["template_id"] == template_id and row["status"] == "left" and "budget" in row["reason"]
    text = CliRunner().invoke(main, ["nightly", "--budget-min", "0.5", *fast_overrides()])
    assert text.exit_code == 0 and f"left for the next night: {template_id[:12]}" in text.stderr
    assert open_db(settings.db_path)["models"].count == 0  # nothing was left half done

    # With time enough, the job runs within what is left of the night.
    result = CliRunner().invoke(main, ["nightly", "--budget-min", "30", "--json", *fast_overrides()])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["status"] == "active" and 29 < row["minutes"]["budget"] <= 30
    assert row["minutes"]["actual"] <= row["minutes"]["budget"]
