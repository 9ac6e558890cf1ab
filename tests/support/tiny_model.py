"""A tiny llama (two layers, ~100K parameters) with its own small BPE tokenizer, written as a GGUF.

Tests and the CPU demo use it as a stand-in base model, so train -> merge -> GGUF -> llama.cpp runs in
seconds. A random network gives flat logits and LoRA learns nothing from it, so it is first pretrained
(all parameters, a few hundred steps) on chat-formatted text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from internalizer.gguf_io import write_from_scratch

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_FILLER = [
    "system user assistant Input: Output: Examples: Translate the request into a command.",
    "0123456789 !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ {{query}} {{examples}}",
    "The quick brown fox jumps over the lazy dog. find grep ls cat sort head tail wc sed awk xargs",
]


def build_tokenizer(texts: Sequence[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 split regex, as llama.cpp's `gpt-2` pre-tokenizer) with ChatML specials."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts) + _FILLER, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def chat_texts(pairs: Sequence[tuple[str, str]], system: str) -> list[str]:
    """Each pair twice: under the system prompt and query-only, so both formats are familiar."""
    texts = []
    for query, answer in pairs:
        texts.append(
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer}<|im_end|>\n"
        )
        texts.append(f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
    return texts


def pretrain(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], steps: int, seed: int
) -> float:
    """Full-parameter next-token training on `texts`; returns the last loss."""
    rng = random.Random(seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:128] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = rng.sample(encoded, min(8, len(encoded)))
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return loss.item()


def build_tiny_gguf(
    out_path: Path,
    pairs: Sequence[tuple[str, str]],
    system: str = "Translate the request into one bash command. Reply with the command only.",
    steps: int = 200,
    seed: int = 0,
    hidden_size: int = 64,
    context: int = 4096,
) -> Path:
    """Tokenizer + tiny llama pretrained on `pairs`, written as an F32 GGUF at `out_path`."""
    torch.manual_seed(seed)
    texts = chat_texts(pairs, system)
    tokenizer = build_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,  # rotary positions: no weights, only the context llama.cpp allows
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    pretrain(model, tokenizer, texts, steps, seed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_from_scratch(out_path, model.state_dict(), config, tokenizer, quant="f32", name="tiny-llama")
    return out_path
