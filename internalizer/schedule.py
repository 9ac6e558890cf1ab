"""The PromptIntern schedule: how much template (ratio r_t) and how many examples (k_t) each stage keeps.

Stages 1..T keep r_t of the template tokens and k_t retrieved examples, both falling from their start
values towards 0; stage T+1 is the query-only stage, the format the model is served in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Steepness of the exponential schedules: e^-3 ~ 5% left at the end of the curve.
_LAMBDA = 3.0


@dataclass(frozen=True)
class Stage:
    index: int  # 1-based
    template_ratio: float
    n_examples: int

    @property
    def query_only(self) -> bool:
        return self.template_ratio == 0.0 and self.n_examples == 0


def keep_fraction(step: int, n_steps: int, kind: str) -> float:
    """Fraction kept at progressive stage `step` (0-based) of `n_steps`: 1.0 at the first, > 0 at the last.

    The curve runs from 1 at x=0 to 0 at x=1 with x = step / n_steps, so the stage after the last
    progressive one (x=1) is the query-only stage.
    linear: 1 - x; exponential: drops fast, then flattens; inverse-exponential: stays high, then drops.
    """
    if n_steps <= 0:
        return 0.0
    x = step / n_steps
    if kind == "linear":
        return 1.0 - x
    if kind == "exponential":
        return (math.exp(-_LAMBDA * x) - math.exp(-_LAMBDA)) / (1.0 - math.exp(-_LAMBDA))
    if kind == "inverse-exponential":
        return 1.0 - (math.exp(_LAMBDA * x) - 1.0) / (math.exp(_LAMBDA) - 1.0)
    raise ValueError(f"unknown schedule {kind!r}")


def build_stages(n_progressive: int, kind: str, ratio_start: float, examples_start: int) -> list[Stage]:
    """`n_progressive` stages on the schedule, then the query-only stage."""
    stages = []
    for step in range(n_progressive):
        fraction = keep_fraction(step, n_progressive, kind)
        stages.append(
            Stage(
                index=step + 1,
                template_ratio=round(ratio_start * fraction, 4),
                n_examples=int(round(examples_start * fraction)),
            )
        )
    stages.append(Stage(index=n_progressive + 1, template_ratio=0.0, n_examples=0))
    return stages
