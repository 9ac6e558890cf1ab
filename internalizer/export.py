"""Merge the LoRA into the base weights, write a GGUF, check it in llama.cpp against torch, then publish it.

The GGUF is written under a temporary name in the models folder and renamed to its final name only after
llama.cpp reproduced the merged torch model's greedy outputs; on any failure the temporary file is
removed, so no half-written or unverified file is ever left for a registry row to point at.

A prompt whose outputs diverge still counts as reproduced when, at the first differing token, torch itself
rated llama.cpp's choice within NEAR_TIE_LOGITS of its own: 8-bit rounding legitimately flips such
near-ties (a briefly trained model has many), while a broken export diverges with a large gap.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict

from internalizer.base import BaseModel, end_of_turn_id
from internalizer.gguf_io import write_from_base, write_from_scratch, write_lora_adapter

# Torch logit gap under which llama.cpp picking the other token is quantization noise, not a wrong file.
NEAR_TIE_LOGITS = 0.5


class ExportError(RuntimeError):
    pass


@dataclass
class Verification:
    n: int
    n_equal: int
    n_near_tie: int = 0  # diverged only where torch's top two tokens were within NEAR_TIE_LOGITS
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    adapter_agreement: float | None = None  # base GGUF + LoRA GGUF (informative: the base may be 4-bit)

    @property
    def n_reproduced(self) -> int:
        return self.n_equal + self.n_near_tie

    @property
    def agreement(self) -> float:
        return self.n_reproduced / self.n if self.n else 1.0


@dataclass
class ExportResult:
    gguf_path: Path
    sha256: str
    size_bytes: int
    quant: str
    verification: Verification
    adapter_path: Path | None = None


def open_llama(path: Path, n_ctx: int = 2048, lora_path: Path | None = None, exact: bool = False) -> Any:
    """llama.cpp on a GGUF; `exact` keeps the KV cache in F32 so outputs can be compared with torch."""
    import llama_cpp

    kwargs: dict[str, Any] = {}
    if exact:
        kwargs.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return llama_cpp.Llama(
        model_path=str(path),
        lora_path=str(lora_path) if lora_path else None,
        n_ctx=n_ctx,
        n_threads=os.cpu_count() or 2,
        verbose=False,
        **kwargs,
    )


def llama_greedy(llm: Any, prompt_ids: list[int], max_new_tokens: int, stop_id: int) -> list[int]:
    llm.reset()
    out: list[int] = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if token in (stop_id, llm.token_eos()) or len(out) >= max_new_tokens:
            break
        out.append(token)
    return out


@torch.no_grad()
def torch_greedy(model: Any, prompt_ids: list[int], max_new_tokens: int, stop_id: int) -> list[int]:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    generated = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_id,
        pad_token_id=stop_id,
    )[0, len(prompt_ids) :].tolist()
    return generated[: generated.index(stop_id)] if stop_id in generated else generated


def first_divergence(expected: list[int], got: list[int], stop_id: int) -> tuple[int, int, int] | None:
    """(position, torch's token, llama.cpp's token) where two greedy outputs first differ; a side that
    already stopped contributes `stop_id`. None when they are equal."""
    if expected == got:
        return None
    common = min(len(expected), len(got))
    i = next((k for k in range(common) if expected[k] != got[k]), common)
    return (
        i,
        expected[i] if i < len(expected) else stop_id,
        got[i] if i < len(got) else stop_id,
    )


@torch.no_grad()
def logit_gap(model: Any, context: list[int], preferred: int, other: int) -> float:
    """How much higher torch rates `preferred` than `other` as the next token after `context`."""
    device = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([context], device=device)).logits[0, -1].float()
    return float(logits[preferred] - logits[other])


def verify(
    gguf_path: Path,
    merged: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    lora_path: Path | None = None,
) -> Verification:
    """Greedy token ids of llama.cpp on the GGUF vs the merged torch model, prompt by prompt."""
    stop_id = end_of_turn_id(tokenizer)
    n_ctx = max([len(p) for p in prompts] + [0]) + max_new_tokens + 16
    llm = open_llama(gguf_path, n_ctx=max(n_ctx, 256), lora_path=lora_path, exact=True)
    result = Verification(n=len(prompts), n_equal=0)
    try:
        for prompt in prompts:
            expected = torch_greedy(merged, prompt, max_new_tokens, stop_id)
            got = llama_greedy(llm, prompt, max_new_tokens, stop_id)
            divergence = first_divergence(expected, got, stop_id)
            if divergence is None:
                result.n_equal += 1
                continue
            at, want, have = divergence
            gap = logit_gap(merged, prompt + expected[:at], want, have)
            if gap <= NEAR_TIE_LOGITS:
                result.n_near_tie += 1
            result.mismatches.append(
                {
                    "torch": tokenizer.decode(expected),
                    "llama.cpp": tokenizer.decode(got),
                    "at_token": at,
                    "torch_logit_gap": round(gap, 4),
                }
            )
    finally:
        llm.close()
    return result


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_gguf(path: Path, merged: Any, base: BaseModel, quant: str) -> None:
    state = {k: v for k, v in merged.state_dict().items()}
    if base.gguf_path is not None:
        write_from_base(path, state, base.gguf_path, quant)
    else:
        write_from_scratch(
            path, state, merged.config, base.tokenizer, quant, name=f"{base.name}-internalized"
        )


def export_model(
    peft_model: Any,
    base: BaseModel,
    models_dir: Path,
    model_id: str,
    quant: str,
    verify_prompts: list[list[int]],
    max_new_tokens: int,
    min_agreement: float,
    lora_adapter: bool = False,
) -> ExportResult:
    """Merge, write `<model_id>.gguf` (and optionally `<model_id>.lora.gguf`), verify, publish.

    Raises ExportError (one line) and leaves nothing behind when writing or verification fails.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / f"{model_id}.gguf"
    tmp = models_dir / f".{model_id}.gguf.tmp"
    adapter_final = models_dir / f"{model_id}.lora.gguf"
    adapter_tmp = models_dir / f".{model_id}.lora.gguf.tmp"
    lora_state = get_peft_model_state_dict(peft_model) if lora_adapter else None
    merged = peft_model.merge_and_unload().eval()
    try:
        try:
            write_gguf(tmp, merged, base, quant)
            if lora_state is not None:
                if base.gguf_path is None:
                    raise ExportError("a LoRA adapter GGUF needs a GGUF base model")
                config = merged.config
                write_lora_adapter(
                    adapter_tmp,
                    lora_state,
                    peft_model.peft_config["default"].lora_alpha,
                    config.num_attention_heads,
                    config.num_key_value_heads,
                )
        except OSError as exc:  # disk full, permissions: one line, nothing left behind
            raise ExportError(f"writing {final.name} failed: {exc.strerror or exc}") from exc
        check = verify(tmp, merged, base.tokenizer, verify_prompts, max_new_tokens)
        if check.agreement < min_agreement:
            raise ExportError(
                f"{quant} export failed verification: llama.cpp matched torch on {check.n_reproduced}/"
                f"{check.n} prompts ({check.n_near_tie} up to a near-tie; needs {min_agreement:.0%})"
            )
        if lora_state is not None:
            assert base.gguf_path is not None
            adapter_check = verify(
                base.gguf_path, merged, base.tokenizer, verify_prompts[:2], max_new_tokens, adapter_tmp
            )
            check.adapter_agreement = adapter_check.agreement
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, final)
        if lora_state is not None:
            os.replace(adapter_tmp, adapter_final)
    finally:
        tmp.unlink(missing_ok=True)
        adapter_tmp.unlink(missing_ok=True)
    return ExportResult(final, digest, size, quant, check, adapter_final if lora_state is not None else None)
