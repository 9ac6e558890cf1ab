"""Scores for the evaluation gate: exact match after normalisation, chrF, and task metrics for code.

`score(predictions, references, task_metric)` returns means in [0, 1]. Task metrics are a hook: a name
in TASK_METRICS -> a function(prediction, reference) -> float; "bash" compares command templates
(utilities, flags and shell operators; every other argument counts as one ARG), as NL2Bash's authors do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.scoring import chrf, normalise
from internalizer.bash_template import bash_template


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def bash_template_match(prediction: str, reference: str) -> float:
    return float(bash_template(normalise(prediction)) == bash_template(normalise(reference)))


TASK_METRICS: dict[str, Callable[[str, str], float]] = {"bash": bash_template_match}


def score(
    predictions: Sequence[str], references: Sequence[str], task_metric: str | None = None
) -> dict[str, float]:
    """Mean exact match and chrF (and the task metric, under its own name) over the pairs."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    n = max(len(references), 1)
    scores = {
        "exact": sum(map(exact_match, predictions, references)) / n,
        "chrf": sum(map(chrf, predictions, references)) / n,
    }
    if task_metric:
        if task_metric not in TASK_METRICS:
            raise ValueError(f"unknown task metric {task_metric!r}; known: {', '.join(TASK_METRICS)}")
        scores[task_metric] = sum(map(TASK_METRICS[task_metric], predictions, references)) / n
    scores["n"] = float(len(references))
    return {k: round(v, 4) for k, v in scores.items()}


def gate_bar(
    scores: dict[str, dict[str, float]], metric: str, threshold: float, vs_full_prompt: bool
) -> float:
    """The score the internalized model must reach: the floor, raised to the base model's full-prompt score
    when `vs_full_prompt` (the query-only model may not be worse than the prompt it replaces)."""
    reference = scores.get("base_full_prompt") if vs_full_prompt else None
    return max(threshold, reference[metric]) if reference else threshold


def gate_passes(scores: dict[str, float], metric: str, threshold: float) -> bool:
    if metric not in scores:
        raise ValueError(f"gate metric {metric!r} was not computed (scores: {', '.join(scores)})")
    return scores[metric] >= threshold
