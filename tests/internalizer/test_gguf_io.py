"""Export tensor layout: llama.cpp's Q/K rotary permutation, checked through transformers and llama.cpp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from internalizer.base import load_base
from internalizer.dataset import prompt_ids
from internalizer.gguf_io import gguf_tensor_name, permute_rotary, unpermute_rotary, write_from_base


def test_permutation_interleaves_rotary_halves_per_head():
    n_head, head_dim = 2, 4
    weight = np.arange(n_head * head_dim)[:, None].astype(np.float32)  # row i holds i
    permuted = permute_rotary(weight, n_head)
    # per head: rows (0, 1 | 2, 3) -> (0, 2, 1, 3): first and second halves interleaved
    assert permuted[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert np.array_equal(unpermute_rotary(permuted, n_head), weight)


def test_tensor_names():
    assert gguf_tensor_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    assert gguf_tensor_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    assert gguf_tensor_name("model.embed_tokens.weight") == "token_embd.weight"


def _last_logits(path, ids) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=256,
        logits_all=True,
        verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )
    llm.eval(ids)
    logits = np.array(llm.scores[len(ids) - 1])
    llm.close()
    return logits


def _perturbed(base) -> dict[str, torch.Tensor]:
    """The base weights with Q and K changed, so a layout error cannot hide behind symmetric weights."""
    generator = torch.Generator().manual_seed(0)
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    for name, value in state.items():
        if "q_proj" in name or "k_proj" in name:
            value += 0.05 * torch.randn(value.shape, generator=generator)
    return state


def test_written_gguf_reads_back_into_the_same_weights(tiny_gguf, tmp_path):
    base = load_base(tiny_gguf)
    state = _perturbed(base)
    out = tmp_path / "copy.gguf"
    write_from_base(out, state, tiny_gguf, "f32")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        assert torch.equal(back[name], state[name]), name


def test_llama_cpp_logits_match_torch(tiny_gguf, tmp_path):
    base = load_base(tiny_gguf)
    state = _perturbed(base)
    base.model.load_state_dict(state)
    out = tmp_path / "copy.gguf"
    write_from_base(out, state, tiny_gguf, "f32")
    ids = prompt_ids(base.tokenizer, [{"role": "user", "content": "find all python files in src"}])
    with torch.no_grad():
        expected = base.model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    got = _last_logits(out, ids)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
    # the same check with the Q/K rows left unpermuted fails: the test can see a layout error
    wrong = {k: v for k, v in state.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("internalizer.gguf_io.permute_rotary", lambda w, n: w)
        write_from_base(tmp_path / "wrong.gguf", wrong, tiny_gguf, "f32")
    bad = _last_logits(tmp_path / "wrong.gguf", ids)
    assert np.abs(bad - expected).max() / np.abs(expected).max() > 1e-3
