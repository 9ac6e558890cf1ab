"""How close a shadow (local) answer is to the upstream answer: 1.0 for the same text, else a chrF score.

Texts are compared after normalisation (gateway/scoring.py: code fences, a `$ ` prompt and whitespace runs
do not count as disagreement), with the same chrF the evaluation gate uses, so live agreement and the gate's
held-out score are on one scale.
"""

from __future__ import annotations

from gateway.scoring import chrf, normalise


def agreement(reference: str | None, candidate: str | None) -> float:
    """1.0 when the normalised texts are equal, otherwise their chrF in [0, 1)."""
    ref, hyp = normalise(reference or ""), normalise(candidate or "")
    if ref == hyp:
        return 1.0
    return min(chrf(hyp, ref), 0.999999)  # only equal texts agree fully
