"""Calibrating a model's confidence on held-out requests: the coverage / agreement curve and its threshold.

The gate runs the exported model on the held-out queries in llama.cpp (as the gateway serves it), keeping
each answer's token log-probabilities (gateway/local/confidence.py, the same recorder the gateway's pool
uses). Each answer is scored for agreement with the logged upstream answer (or the label): `exact`,
`chrf` (the gateway's own agreement functions, so the live checks score the same way) or a task metric
of internalizer/evaluate.py (`bash`). The curve, the threshold and the figures behind them are stored
with the model (`models.calibration`, JSON) and drawn by `promptintern report`.

Threshold: the lowest confidence whose routed answers' agreement has a one-sided Wilson lower bound of at
least the target (gateway/routing/selective.py). The model serves selectively when that threshold routes
at least `route_min_coverage` of the held-out requests; `route_threshold` is then the threshold the
gateway applies (None: no confidence check, every answer is served, as for a model that passes the
whole-model gate without a selective threshold).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.local.confidence import DEFAULT_SIGNAL, SIGNALS, LogprobRecorder, confidence
from gateway.routing.selective import LIVE_METRICS, answer_agreement, choose_threshold, coverage_curve, z_for
from internalizer.evaluate import TASK_METRICS

CALIBRATION_SCHEMA = "promptintern.calibration/1"


@dataclass(frozen=True)
class ScoredAnswer:
    text: str
    token_logprobs: tuple[float, ...]
    seconds: float = 0.0  # llama.cpp wall time for this answer (prompt evaluation and generation)
    cpu_seconds: float = 0.0  # CPU time this process used meanwhile (llama.cpp's threads)
    # Wall seconds from the request's start to each sampling step (the first comes after the prompt): what
    # an answer stopped part way through cost (benchmarks/selective.py prices escalations with it).
    step_seconds: tuple[float, ...] = ()


def generate_scored(
    gguf_path: Path, conversations: Sequence[Sequence[dict[str, str]]], max_tokens: int, n_ctx: int = 4096
) -> list[ScoredAnswer]:
    """Greedy llama.cpp answers with the log-probability of each generated token, computed as the
    gateway's pool serves them: one model for all the conversations, the cache never reset, so each one
    reuses the prefix it shares with the one before (the chat template's opening) and the measured time
    per answer is the time serving it costs."""
    if not conversations:
        return []
    from llama_cpp import LogitsProcessorList

    from internalizer.export import open_llama

    llm = open_llama(gguf_path, n_ctx=n_ctx)
    try:
        answers = []
        for messages in conversations:
            recorder = LogprobRecorder()
            steps: list[float] = []
            started, cpu_started = time.perf_counter(), time.process_time()

            def clock(_ids: Any, logits: Any, steps: list[float] = steps, started: float = started) -> Any:
                steps.append(time.perf_counter() - started)
                return logits

            reply = llm.create_chat_completion(
                messages=list(messages),
                max_tokens=max_tokens,
                temperature=0.0,
                top_k=1,
                logits_processor=LogitsProcessorList([recorder, clock]),
            )
            text = reply["choices"][0]["message"]["content"] or ""
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            answers.append(ScoredAnswer(text, tuple(recorder.logprobs), wall, cpu, tuple(steps)))
        return answers
    finally:
        llm.close()


def item_agreement(metric: str, prediction: str, reference: str) -> float:
    """Agreement of one answer with its reference under `metric` (module doc)."""
    if metric in LIVE_METRICS:
        return answer_agreement(metric, reference, prediction)
    if metric in TASK_METRICS:
        return TASK_METRICS[metric](prediction, reference)
    known = ", ".join([*LIVE_METRICS, *TASK_METRICS])
    raise ValueError(f"unknown agreement metric {metric!r}; known: {known}")


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Probability that a random agreeing answer is more confident than a random disagreeing one (ties
    count half); None when one of the two classes is empty."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def calibrate(
    answers: Sequence[ScoredAnswer],
    references: Sequence[str],
    *,
    metric: str = "exact",
    signal: str = DEFAULT_SIGNAL,
    target: float = 0.9,
    level: float = 0.95,
    min_coverage: float = 0.1,
) -> dict[str, Any]:
    """The calibration stored with a model: curve, threshold, and how selective serving would do."""
    if len(answers) != len(references):
        raise ValueError("answers and references differ in length")
    if signal not in SIGNALS:
        raise ValueError(f"confidence signal must be one of {', '.join(SIGNALS)}, not {signal!r}")
    agreements = [item_agreement(metric, a.text, ref) for a, ref in zip(answers, references, strict=True)]
    confidences = {name: [confidence(a.token_logprobs, name) for a in answers] for name in SIGNALS}
    z = z_for(level)
    # An answer with no scored token (an empty one) is never served: it counts in the coverage only.
    scored = [(c, a) for c, a in zip(confidences[signal], agreements, strict=True) if c is not None]
    curve = coverage_curve(scored, z, total=len(answers))
    chosen = choose_threshold(curve, target, z)
    useful = chosen is not None and chosen.coverage >= min_coverage
    agree = [a >= 1.0 for a in agreements]
    n = len(answers)
    return {
        "schema": CALIBRATION_SCHEMA,
        "signal": signal,
        "metric": metric,
        "target": target,
        "level": level,
        "min_coverage": min_coverage,
        "n": n,
        "overall_agreement": sum(agreements) / n if n else None,
        "threshold": chosen.threshold if chosen else None,
        "coverage": chosen.coverage if chosen else 0.0,
        "agreement": chosen.agreement if chosen else None,
        "lower_bound": chosen.lower_bound if chosen else None,
        "selective": useful,
        "route_threshold": chosen.threshold if useful and chosen else None,
        "auroc": {name: auroc([_score(v) for v in values], agree) for name, values in confidences.items()},
        "curve": [point.as_dict() for point in curve],
    }


def summary(calibration: dict[str, Any]) -> str:
    """One line for the job's notes and the CLI."""
    if not calibration.get("n"):
        return "calibration: no held-out requests"
    target, metric = calibration["target"], calibration["metric"]
    if calibration["threshold"] is None:
        overall = calibration["overall_agreement"]
        return (
            f"calibration: no confidence threshold reaches {metric} agreement {target:.2f} "
            f"(overall {overall:.2f} on {calibration['n']} held-out)"
        )
    verdict = "serves selectively" if calibration["selective"] else "below the minimum coverage"
    share = 100 * calibration["coverage"]
    return (
        f"calibration: confidence >= {calibration['threshold']:.4g} routes {share:.0f}% "
        f"of {calibration['n']} held-out at {metric} agreement {calibration['agreement']:.2f} "
        f"(lower bound {calibration['lower_bound']:.2f} >= {target:.2f}): {verdict}"
    )


def _score(value: float | None) -> float:
    return float("-inf") if value is None else value
