"""How sure a local model is of its own answer, from the log-probabilities of the tokens it generated.

Three signals over the answer's token log-probabilities (natural log, the model's raw distribution,
whatever temperature sampled the answer):
- `sum`: the log-probability of the whole answer (its sequence probability), which falls with length;
- `mean`: the mean token log-probability (length-normalised);
- `min`: the least likely token, the one place the model hesitated most.
Which one routes best was measured (benchmarks/selective.py, README): `sum` told agreeing answers from the
others best (AUROC 0.83 on Banking77 against 0.79 for `min` and 0.75 for `mean`), so it is the default;
the choice is stored with each model's calibration, so the gateway always scores an answer the way its
threshold was calibrated.

The tokens counted are the answer's generated tokens up to, not including, the token that ended it (the
end-of-text token or the last token of a stop string): llama.cpp in process (`LogprobRecorder`) and a
llama.cpp / vLLM server asked for `logprobs` then report the same tokens. (An answer cut by the length
cap: the server also reports its last token, the in-process recorder does not; one token of many.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SIGNALS = ("mean", "min", "sum")
DEFAULT_SIGNAL = "sum"  # the signal calibrations use unless configured otherwise (see the module doc)
# Signals that can only fall as tokens are added (log-probabilities are <= 0): an answer below a threshold
# part way through stays below it, so the router stops generating it and escalates at once.
FALLING_SIGNALS = ("min", "sum")


def confidence(token_logprobs: Sequence[float] | None, signal: str) -> float | None:
    """The answer's confidence under `signal`; None when there are no log-probabilities to score."""
    if signal not in SIGNALS:
        raise ValueError(f"confidence signal must be one of {', '.join(SIGNALS)}, not {signal!r}")
    if not token_logprobs:
        return None
    values = [float(v) for v in token_logprobs]
    if signal == "sum":
        return sum(values)
    if signal == "mean":
        return sum(values) / len(values)
    return min(values)


class LogprobRecorder:
    """A llama.cpp logits processor that records the log-probability of each token the model generates.

    llama-cpp-python calls it before each sampling step with the tokens so far and the raw logits (in
    token-id order). The token sampled at one step appears at the end of the next step's tokens, so its
    log-probability is read from the logits kept from the step before. Costs ~0.05 ms per token (one
    log-sum-exp over the vocabulary), against tens of ms to generate the token. One recorder per answer.
    """

    def __init__(self) -> None:
        self.prompt_tokens = 0  # tokens before the first sampling step
        self.steps = 0  # sampling steps seen (generated tokens, plus the step that ended the answer)
        self.logprobs: list[float] = []
        self._previous: np.ndarray | None = None
        self._previous_lse = 0.0
        self._previous_length = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        length = len(input_ids)
        if self.steps == 0:
            self.prompt_tokens = length
        elif self._previous is not None and length == self._previous_length + 1:
            token = int(input_ids[-1])
            self.logprobs.append(float(self._previous[token]) - self._previous_lse)
        logits = np.asarray(scores, dtype=np.float32)
        top = float(logits.max())
        self._previous_lse = top + float(np.log(np.exp(logits - top).sum()))
        self._previous = logits.copy()  # llama.cpp reuses the buffer for the next step
        self._previous_length = length
        self.steps += 1
        return scores


def logprobs_from_openai(choice_logprobs: Any) -> list[float]:
    """Token log-probabilities from an OpenAI-style `choices[i].logprobs` object (None -> [])."""
    if not isinstance(choice_logprobs, dict):
        return []
    content = choice_logprobs.get("content") or []
    return [
        float(item["logprob"])
        for item in content
        if isinstance(item, dict) and item.get("logprob") is not None
    ]
