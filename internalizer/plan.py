"""The training plan: what each stage trains on and how long the job should take, fitted to a time budget.

Before training, one step of the first template stage and one of the query-only stage are timed (forward
and backward on real packed rows, no update), and every step's cost is interpolated from its size. With a
budget, the stages that carry a template train on a seeded subset of their records, the largest that
fits; the final query-only stage, the one that is served, always trains on every record. A budget that
cannot hold even one step per template stage is a PlanError, raised before any training.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from internalizer.config import InternalizeConfig
from internalizer.packing import Row, Sequence, step_rows
from internalizer.schedule import Stage
from internalizer.train import time_step


class PlanError(RuntimeError):
    """The job cannot fit its budget; the message is one line a user can act on."""


@dataclass
class StepCost:
    """Seconds of a training step: its rows go through the model one by one, and a row's seconds are
    interpolated by its tokens through the (tokens, seconds) rows timed."""

    points: list[tuple[int, float]] = field(default_factory=list)

    def __call__(self, rows: list[Row]) -> float:
        return sum(self.row_seconds(row.n_tokens) for row in rows)

    def row_seconds(self, size: int) -> float:
        if not self.points:
            return 0.0
        (s1, t1), (s2, t2) = sorted(self.points)[0], sorted(self.points)[-1]
        if s2 == s1:
            return t2 * size / max(s2, 1)
        slope = max((t2 - t1) / (s2 - s1), 0.0)
        return max(t1 + slope * (size - s1), 0.5 * min(t1, t2))


def measure_step_cost(
    model: Any,
    stages: list[Stage],
    stage_data: list[list[Sequence]],
    cfg: InternalizeConfig,
    pad_id: int,
    device: Any,
    done: set[int],
) -> StepCost:
    """Time one row of the first template stage left and one of the query-only stage. A short untimed
    pass comes first: the first pass also pays for allocations."""
    cost = StepCost()
    todo = [i for i, s in enumerate(stages) if s.index not in done and stage_data[i]]
    picks = [i for i in todo if not stages[i].query_only][:1] + [i for i in todo if stages[i].query_only][-1:]
    first_rows = {i: step_rows(stage_data[i], cfg, stages[i].index, 1.0)[0][:1] for i in picks}
    if picks:
        warm = min(first_rows.values(), key=lambda rows: rows[0].n_tokens)
        time_step(model, warm, pad_id, device, cfg)
    for i in picks:
        rows = first_rows[i]
        cost.points.append((rows[0].n_tokens, time_step(model, rows, pad_id, device, cfg)))
    return cost


def stage_epochs(stages: list[Stage], cfg: InternalizeConfig) -> list[float]:
    """The served query-only stage trains `final_stage_epochs`, every other stage `epochs_per_stage`."""
    return [cfg.final_stage_epochs if s.query_only else cfg.epochs_per_stage for s in stages]


@dataclass
class StagePlan:
    stage: int
    template_ratio: float
    n_examples: int
    records: int  # records trained on
    available: int  # records with a training sequence in this stage
    epochs: float
    steps: int
    tokens: int  # tokens trained on (each row's shared prefix counted once)
    tokens_unpacked: int  # the same steps without the shared prefix: every sequence whole
    expected_s: float
    done: bool = False  # finished by an earlier run of the same job

    @property
    def query_only(self) -> bool:
        return self.template_ratio == 0.0 and self.n_examples == 0

    def describe(self) -> str:
        what = (
            "query only"
            if self.query_only
            else f"template {self.template_ratio:.0%}, {self.n_examples} shot{'s' * (self.n_examples != 1)}"
        )
        saved = f" ({self.tokens_unpacked:,} unpacked)" if self.tokens_unpacked != self.tokens else ""
        when = "done in an earlier run" if self.done else f"~{self.expected_s / 60:.1f} min"
        return (
            f"stage {self.stage} ({what}): {self.records}/{self.available} records, {self.steps} steps, "
            f"{self.tokens:,} tokens{saved}, {when}"
        )


@dataclass
class Plan:
    stages: list[StagePlan]
    setup_s: float  # spent before training, the warm-up included
    finish_s: float  # export and evaluation (an estimate)
    budget_s: float = 0.0  # 0 = none
    fitted: bool = False  # template stages were given fewer records to fit the budget
    teacher_s: float = 0.0  # the distillation teacher's pass over the whole prompts (an estimate)

    @property
    def training_s(self) -> float:
        return sum(s.expected_s for s in self.stages if not s.done) + self.teacher_s

    @property
    def total_s(self) -> float:
        return self.setup_s + self.training_s + self.finish_s

    def describe(self) -> list[str]:
        budget = ""
        if self.budget_s:
            budget = f"; budget {self.budget_s / 60:.1f} min"
            budget += ", met by training the template stages on fewer records" if self.fitted else ""
        head = (
            f"plan: {len(self.stages)} stages, expected {self.total_s / 60:.1f} min "
            f"(setup {self.setup_s / 60:.1f}, training {self.training_s / 60:.1f}, "
            f"export and evaluation ~{self.finish_s / 60:.1f}){budget}"
        )
        teacher = [f"  teacher pass (distillation): ~{self.teacher_s / 60:.1f} min"] if self.teacher_s else []
        return [head] + ["  " + s.describe() for s in self.stages] + teacher

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"training_s": round(self.training_s, 1), "total_s": round(self.total_s, 1)}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))


def chosen_records(sequences: list[Sequence], n: int, seed: int, stage: int) -> list[Sequence]:
    """A seeded subset of n sequences in their original order (each stage draws its own)."""
    if n >= len(sequences):
        return list(sequences)
    keep = set(random.Random(seed * 7919 + stage).sample(range(len(sequences)), n))
    return [s for i, s in enumerate(sequences) if i in keep]


def plan_stage(
    stage: Stage,
    sequences: list[Sequence],
    n_records: int,
    epochs: float,
    cfg: InternalizeConfig,
    cost: Callable[[list[Row]], float],
    done: bool = False,
) -> StagePlan:
    chosen = chosen_records(sequences, n_records, cfg.seed, stage.index)
    batches = step_rows(chosen, cfg, stage.index, epochs)
    return StagePlan(
        stage=stage.index,
        template_ratio=stage.template_ratio,
        n_examples=stage.n_examples,
        records=len(chosen),
        available=len(sequences),
        epochs=epochs,
        steps=len(batches),
        tokens=sum(r.n_tokens for rows in batches for r in rows),
        tokens_unpacked=sum(len(s) for rows in batches for r in rows for s in r.sequences),
        expected_s=round(sum(cost(rows) for rows in batches), 1),
        done=done,
    )


def make_plan(
    stages: list[Stage],
    stage_data: list[list[Sequence]],
    epochs: list[float],
    cfg: InternalizeConfig,
    cost: Callable[[list[Row]], float],
    setup_s: float,
    finish_s: float,
    done: set[int] = frozenset(),  # type: ignore[assignment]
    saved: dict[int, int] | None = None,
    teacher_s: float = 0.0,
) -> Plan:
    """Every record in every stage; with `cfg.budget_min`, the largest template-stage share that fits.

    `saved` (stage -> records) is the plan of an interrupted run of the same job: a resume keeps it."""
    budget_s = cfg.budget_min * 60

    def plan_for(share: float) -> Plan:
        planned = []
        for stage, sequences, epochs_ in zip(stages, stage_data, epochs, strict=True):
            n = len(sequences)
            if saved and stage.index in saved:
                n = min(n, saved[stage.index])
            elif not stage.query_only and share < 1.0:
                n = max(min(n, cfg.batch_size), round(share * n))
            planned.append(plan_stage(stage, sequences, n, epochs_, cfg, cost, stage.index in done))
        fitted = any(p.records < p.available for p in planned if not p.query_only)
        return Plan(
            planned,
            round(setup_s, 1),
            round(finish_s, 1),
            budget_s,
            fitted=fitted,
            teacher_s=round(teacher_s, 1),
        )

    full = plan_for(1.0)
    if saved or not budget_s or full.total_s <= budget_s:
        return full
    smallest = plan_for(0.0)
    if smallest.total_s > budget_s:
        query_only = sum(s.expected_s for s in smallest.stages if s.query_only and not s.done)
        raise PlanError(
            f"a budget of {cfg.budget_min:g} min is too small: the job needs about "
            f"{math.ceil(smallest.total_s / 60)} min even with {cfg.batch_size} records per template stage "
            f"(query-only stage {query_only / 60:.1f} min, export and evaluation {finish_s / 60:.1f} min, "
            f"setup {setup_s / 60:.1f} min)"
        )
    low, high = 0.0, 1.0  # share of records that fits .. share that does not
    for _ in range(12):
        middle = (low + high) / 2
        if plan_for(middle).total_s <= budget_s:
            low = middle
        else:
            high = middle
    return plan_for(low)


def apply_plan(plan: Plan, stage_data: list[list[Sequence]], seed: int) -> list[list[Sequence]]:
    """Each stage's sequences as the plan chose them."""
    return [
        chosen_records(sequences, planned.records, seed, planned.stage)
        for planned, sequences in zip(plan.stages, stage_data, strict=True)
    ]
