"""Comparing two answers: the one text normalisation and the one chrF, shared by the shadow agreement
(gateway/routing/agreement.py) and the evaluation gate (internalizer/evaluate.py), so the two can be compared.
"""

from __future__ import annotations

import re
from collections import Counter

_FENCE = re.compile(r"^```[\w-]*\n?|\n?```$")


def normalise(text: str) -> str:
    """Strip code fences, a leading `$ ` prompt and surrounding space; collapse runs of whitespace."""
    text = _FENCE.sub("", text.strip()).strip()
    text = re.sub(r"^\$\s+", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(prediction: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF (Popović 2015) of normalised texts: character n-gram precision and recall averaged over
    n = 1..6, then their F-beta (recall weighted beta times precision); whitespace ignored, as sacrebleu."""
    hyp, ref = re.sub(r"\s+", "", normalise(prediction)), re.sub(r"\s+", "", normalise(reference))
    if not hyp or not ref:
        return float(hyp == ref)
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        if not h or not r:
            continue
        overlap = sum((h & r).values())
        precisions.append(overlap / sum(h.values()))
        recalls.append(overlap / sum(r.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p == 0 and r == 0:
        return 0.0
    return (1 + beta**2) * p * r / (beta**2 * p + r)
