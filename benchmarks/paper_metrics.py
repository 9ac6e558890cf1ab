"""Task metrics for the paper benchmark: BLEU, NL2Bash template match, CoNaLa tokens, tldr placeholders.

Each function is the documented scorer of data/README.md, written here because none of the official
scorers is a dependency: corpus BLEU-4 is the unsmoothed `compute_bleu` of tensorflow/nmt that the
CoNaLa scorer uses, with CoNaLa's `tokenize_for_bleu_eval` tokenisation.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Sequence

from internalizer.bash_template import SHELL_OPERATORS, bash_template

# ---------------------------------------------------------------- generic


def normalize_ws(text: str) -> str:
    """Strip and collapse every run of whitespace to one space."""
    return " ".join(text.split())


def code_tokens(code: str) -> list[str]:
    """CoNaLa's official BLEU tokenisation: split at non-word characters and camelCase, one quote symbol."""
    code = re.sub(r"([^A-Za-z0-9_])", r" \1 ", code)
    code = re.sub(r"([a-z])([A-Z])", r"\1 \2", code)
    code = re.sub(r"\s+", " ", code)
    code = code.replace('"', "`").replace("'", "`")
    return [token for token in code.split(" ") if token]


def _ngrams(tokens: Sequence[str], max_order: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for order in range(1, max_order + 1):
        for start in range(len(tokens) - order + 1):
            counts[tuple(tokens[start : start + order])] += 1
    return counts


def corpus_bleu(
    references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]], max_order: int = 4
) -> float:
    """Corpus-level BLEU (0..1) of token lists, one reference each, no smoothing (tensorflow/nmt)."""
    matches = [0] * max_order
    possible = [0] * max_order
    ref_length = hyp_length = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref_length += len(reference)
        hyp_length += len(hypothesis)
        overlap = _ngrams(hypothesis, max_order) & _ngrams(reference, max_order)
        for ngram, count in overlap.items():
            matches[len(ngram) - 1] += count
        for order in range(1, max_order + 1):
            if len(hypothesis) - order + 1 > 0:
                possible[order - 1] += len(hypothesis) - order + 1
    precisions = [m / p if p else 0.0 for m, p in zip(matches, possible, strict=True)]
    if min(precisions) <= 0 or hyp_length == 0:
        return 0.0
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    ratio = hyp_length / ref_length if ref_length else 1.0
    brevity = 1.0 if ratio > 1.0 else math.exp(1 - 1 / ratio)
    return geo_mean * brevity


def _f1(predicted: collections.Counter, reference: collections.Counter) -> float:
    common = sum((predicted & reference).values())
    if not predicted and not reference:
        return 1.0
    if common == 0:
        return 0.0
    precision, recall = common / sum(predicted.values()), common / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------- NL2Bash


def _utilities_and_flags(template: list[str]) -> collections.Counter:
    return collections.Counter(
        t for t in template if t not in ("ARG", "$(", ")") and t not in SHELL_OPERATORS
    )


def nl2bash_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match (whitespace-normalised), template match, utility/flag F1 and BLEU-4, all in percent."""
    exact = template = f1 = 0.0
    for prediction, reference in zip(predictions, references, strict=True):
        exact += normalize_ws(prediction) == normalize_ws(reference)
        predicted_template, reference_template = bash_template(prediction), bash_template(reference)
        template += predicted_template == reference_template
        f1 += _f1(_utilities_and_flags(predicted_template), _utilities_and_flags(reference_template))
    n = max(len(references), 1)
    bleu = corpus_bleu([code_tokens(r) for r in references], [code_tokens(p) for p in predictions])
    return {
        "exact_match": 100 * exact / n,
        "template_match": 100 * template / n,
        "util_flag_f1": 100 * f1 / n,
        "bleu": 100 * bleu,
    }


# ---------------------------------------------------------------- CoNaLa


def conala_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-4 and exact match, both under the official CoNaLa tokenisation, in percent."""
    refs = [code_tokens(r) for r in references]
    hyps = [code_tokens(p) for p in predictions]
    exact = sum(r == h for r, h in zip(refs, hyps, strict=True))
    return {"bleu": 100 * corpus_bleu(refs, hyps), "exact_match": 100 * exact / max(len(refs), 1)}


# ---------------------------------------------------------------- tldr

_ALTERNATIVES = re.compile(r"\{\{\[([^\]|]+)\|([^\]]+)\]\}\}")
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")


def tldr_template(code: str, long_to_short: dict[str, str] | None = None) -> list[str]:
    """tldr syntax with every `{{...}}` as `ARG` and `{{[-s|--long]}}` as its short form, as tokens.

    `long_to_short` maps long option forms (taken from the reference) to short ones, so a prediction that
    writes `--long` alone matches a reference `{{[-s|--long]}}`.
    """
    code = _ALTERNATIVES.sub(lambda m: m.group(1), normalize_ws(code))
    code = _PLACEHOLDER.sub("ARG", code)
    tokens = code.split(" ") if code else []
    mapping = long_to_short or {}
    return [mapping.get(token, token) for token in tokens]


def tldr_alternatives(reference: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in _ALTERNATIVES.finditer(reference)}


def tldr_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Command-name accuracy, exact match with placeholders abstracted, token F1, in percent."""
    name = exact = f1 = 0.0
    for prediction, reference in zip(predictions, references, strict=True):
        alternatives = tldr_alternatives(reference)
        predicted, expected = tldr_template(prediction, alternatives), tldr_template(reference, alternatives)
        name += bool(predicted) and bool(expected) and predicted[0] == expected[0]
        exact += predicted == expected
        f1 += _f1(collections.Counter(predicted), collections.Counter(expected))
    n = max(len(references), 1)
    return {"command_name_acc": 100 * name / n, "exact_match": 100 * exact / n, "token_f1": 100 * f1 / n}


# ---------------------------------------------------------------- Banking77


def banking77_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Accuracy (the predicted intent equals the label, case and surrounding space ignored), in percent."""
    correct = sum(
        p.strip().lower() == r.strip().lower() for p, r in zip(predictions, references, strict=True)
    )
    return {"accuracy": 100 * correct / max(len(references), 1)}
