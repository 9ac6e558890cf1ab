"""How close a shadow (local) answer is to the upstream answer: 1.0 for the same text, else a chrF score.

Texts are compared after normalisation (surrounding whitespace stripped, runs of whitespace collapsed,
one pair of enclosing code fences removed), so formatting noise does not count as disagreement. chrF
(Popović 2015): character n-gram F-score, n = 1..6 averaged, recall weighted twice as much as precision.
"""

from __future__ import annotations

import re
from collections import Counter

_FENCE = re.compile(r"^```[\w-]*\n(.*)\n```$", re.DOTALL)
MAX_N = 6
BETA = 2.0


def normalise(text: str) -> str:
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    return " ".join(text.split())


def agreement(reference: str | None, candidate: str | None) -> float:
    """1.0 when the normalised texts are equal, otherwise their chrF in [0, 1)."""
    ref, hyp = normalise(reference or ""), normalise(candidate or "")
    if ref == hyp:
        return 1.0
    return min(chrf(ref, hyp), 0.999999)  # only equal texts agree fully


def chrf(reference: str, candidate: str) -> float:
    scores = []
    for n in range(1, MAX_N + 1):
        ref, hyp = _ngrams(reference, n), _ngrams(candidate, n)
        if not ref or not hyp:
            continue
        common = sum((ref & hyp).values())
        precision, recall = common / sum(hyp.values()), common / sum(ref.values())
        if precision + recall == 0:
            scores.append(0.0)
            continue
        beta2 = BETA * BETA
        scores.append((1 + beta2) * precision * recall / (beta2 * precision + recall))
    return sum(scores) / len(scores) if scores else 0.0


def _ngrams(text: str, n: int) -> Counter[str]:
    text = text.replace(" ", "")  # chrF ignores whitespace
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))
