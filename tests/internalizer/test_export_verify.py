"""Export verification: llama.cpp must reproduce torch's greedy outputs, up to genuine near-ties only."""

from __future__ import annotations

import copy

import torch

from internalizer.base import end_of_turn_id, load_base
from internalizer.dataset import prompt_ids
from internalizer.export import NEAR_TIE_LOGITS, first_divergence, logit_gap, verify, write_gguf
from internalizer.gguf_io import read_llama_meta

from .conftest import TINY_SYSTEM, short_pairs


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3], stop_id=0) is None
    assert first_divergence([1, 2, 3], [1, 5, 3], stop_id=0) == (1, 2, 5)
    # One side stopped: its token at that position is the stop token.
    assert first_divergence([1, 2], [1, 2, 7], stop_id=0) == (2, 0, 7)
    assert first_divergence([1, 2, 7], [1], stop_id=0) == (1, 2, 0)


def _prompt(base, text: str) -> list[int]:
    messages = [{"role": "system", "content": TINY_SYSTEM}, {"role": "user", "content": text}]
    return prompt_ids(base.tokenizer, messages)


def _last_hidden(model, ids: list[int]) -> torch.Tensor:
    """The input of the LM head at the last position (after the final norm)."""
    seen = {}
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.setdefault("h", inp[0][0, -1]))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    return seen["h"].detach()


def _set_gap(model, ids: list[int], top: int, other: int, gap: float) -> None:
    """Move `other`'s LM-head row along the hidden state so that logit[top] - logit[other] == gap."""
    h = _last_hidden(model, ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        current = float(logits[top] - logits[other])
        model.lm_head.weight[other] += (current - gap) * h / h.dot(h)


def _model_pair(tiny_gguf, tmp_path, torch_gap: float):
    """A torch model that prefers token A over B by `torch_gap` at a prompt's first answer token, and a
    GGUF of the same weights except that B leads A by a little there: a flip of exactly that size."""
    base = load_base(tiny_gguf)
    assert "output.weight" not in read_llama_meta(tiny_gguf)["tensor_names"]  # tied: one row per token
    ids = _prompt(base, short_pairs(1)[0].nl)
    model = copy.deepcopy(base.model).eval()
    with torch.no_grad():
        ranked = model(input_ids=torch.tensor([ids])).logits[0, -1].argsort(descending=True).tolist()
    stop = end_of_turn_id(base.tokenizer)
    top, other = [t for t in ranked if t != stop and t not in ids][:2]
    gguf_model = copy.deepcopy(model)
    _set_gap(model, ids, top, other, torch_gap)
    _set_gap(gguf_model, ids, top, other, -0.05)
    path = tmp_path / "flipped.gguf"
    write_gguf(path, gguf_model, base, "f32")
    return base, model, ids, path, (top, other)


def test_a_flip_within_a_near_tie_counts_as_reproduced(tiny_gguf, tmp_path):
    base, model, ids, path, (top, other) = _model_pair(tiny_gguf, tmp_path, torch_gap=0.1)
    check = verify(path, model, base.tokenizer, [ids], max_new_tokens=4)
    assert (check.n_equal, check.n_near_tie, check.agreement) == (0, 1, 1.0)
    assert check.mismatches[0]["at_token"] == 0
    assert abs(check.mismatches[0]["torch_logit_gap"] - 0.1) < 0.02
    assert logit_gap(model, ids, top, other) == -logit_gap(model, ids, other, top)


def test_a_flip_with_a_clear_gap_fails_verification(tiny_gguf, tmp_path):
    base, model, ids, path, _ = _model_pair(tiny_gguf, tmp_path, torch_gap=NEAR_TIE_LOGITS + 1.0)
    check = verify(path, model, base.tokenizer, [ids], max_new_tokens=4)
    assert (check.n_equal, check.n_near_tie, check.agreement) == (0, 0, 0.0)
    assert check.mismatches[0]["torch_logit_gap"] > NEAR_TIE_LOGITS
