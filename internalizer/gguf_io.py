"""Write llama-architecture weights as GGUF files that llama.cpp loads, with the `gguf` package.

Three writers:
- `write_from_base`: merged weights under the metadata of an existing GGUF (tokenizer, chat template and
  hyperparameters copied as they are), the usual path when the base model came from a GGUF.
- `write_from_scratch`: hyperparameters from a transformers config and a byte-level BPE tokenizer, for a
  base loaded from a Hugging Face directory and for the tiny test model.
- `write_lora_adapter`: the LoRA alone, as a llama.cpp adapter (`Llama(..., lora_path=...)`).

llama.cpp's convert script permutes the rows of the Q and K projections for its rotary layout, and
transformers undoes that when it loads a GGUF; writing back applies the same permutation again.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

QUANT_TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q5_1": (GGMLQuantizationType.Q5_1, LlamaFileType.MOSTLY_Q5_1),
    "q5_0": (GGMLQuantizationType.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "q4_1": (GGMLQuantizationType.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "q4_0": (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0),
}


class GGUFWriteError(RuntimeError):
    pass


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order for a Q or K projection (as convert_hf_to_gguf.py's `permute`).

    For K pass the number of KV heads. Rows of each head are interleaved: (h, 2, d/2) -> (h, d/2, 2).
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_rotary` (what transformers applies when it reads a GGUF)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_tensor_name(hf_name: str) -> str | None:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (the `gguf` package's llama map,
    the one llama.cpp's convert script uses); None for tensors GGUF omits."""
    if "rotary_emb" in hf_name:  # recomputed by llama.cpp, not stored
        return None
    parts = hf_name.split(".")
    layer = int(parts[2]) if len(parts) > 2 and parts[:2] == ["model", "layers"] and parts[2].isdigit() else 0
    name = _llama_name_map(_blocks_for(layer)).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise GGUFWriteError(f"no GGUF name for tensor {hf_name}")
    return name


def _blocks_for(layer: int) -> int:
    """Map sizes in steps of 64 layers, so one cached map serves every model of that depth."""
    return (layer // 64 + 1) * 64


@functools.cache
def _llama_name_map(n_blocks: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)


def llama_tensors(
    state_dict: dict[str, Any], n_head: int, n_head_kv: int, tied: bool
) -> dict[str, np.ndarray]:
    """A transformers llama state dict as float32 arrays under GGUF names, Q/K permuted for llama.cpp."""
    out: dict[str, np.ndarray] = {}
    for hf_name, tensor in state_dict.items():
        name = gguf_tensor_name(hf_name)
        if name is None or (tied and name == "output.weight"):
            continue
        array = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            array = permute_rotary(array, n_head)
        elif name.endswith("attn_k.weight"):
            array = permute_rotary(array, n_head_kv)
        out[name] = array
    return out


def _add_tensor(writer: GGUFWriter, name: str, array: np.ndarray, quant: str) -> None:
    array = np.ascontiguousarray(array, dtype=np.float32)
    qtype = QUANT_TYPES[quant][0]
    # Norms and other vectors stay F32, as llama.cpp's own converter does; block quants need whole blocks.
    if array.ndim == 1 or qtype == GGMLQuantizationType.F32:
        writer.add_tensor(name, array)
    elif qtype == GGMLQuantizationType.F16 or array.shape[-1] % 32 != 0:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        packed = gguf.quants.quantize(array, qtype)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)


def _finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_llama_meta(base_gguf: Path) -> dict[str, Any]:
    reader = GGUFReader(base_gguf)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise GGUFWriteError(
            f"{base_gguf.name} is a {arch!r} model; only llama-architecture GGUFs are supported"
        )
    return {
        "n_head": int(reader.fields["llama.attention.head_count"].contents()),
        "n_head_kv": int(reader.fields["llama.attention.head_count_kv"].contents()),
        "tensor_names": [t.name for t in reader.tensors],
        "reader": reader,
    }


def write_from_base(out_path: Path, state_dict: dict[str, Any], base_gguf: Path, quant: str = "q8_0") -> None:
    """Merged weights with every metadata key of `base_gguf` (tokenizer, chat template) copied over."""
    meta = read_llama_meta(base_gguf)
    reader: GGUFReader = meta["reader"]
    base_names = meta["tensor_names"]
    tensors = llama_tensors(
        state_dict, meta["n_head"], meta["n_head_kv"], tied="output.weight" not in base_names
    )
    if set(tensors) != set(base_names):
        raise GGUFWriteError(
            f"tensor names differ from the base GGUF: missing {sorted(set(base_names) - set(tensors))[:3]}, "
            f"extra {sorted(set(tensors) - set(base_names))[:3]}"
        )
    writer = GGUFWriter(out_path, "llama")
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "general.file_type":
            value = int(QUANT_TYPES[quant][1])
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    for name in base_names:  # same tensor order as the base
        _add_tensor(writer, name, tensors[name], quant)
    _finish(writer)


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def write_from_scratch(
    out_path: Path,
    state_dict: dict[str, Any],
    config: Any,
    tokenizer: Any,
    quant: str = "f32",
    name: str = "llama",
    pre_tokenizer: str = "gpt-2",
) -> None:
    """Hyperparameters from a transformers LlamaConfig, vocabulary from a byte-level BPE fast tokenizer.

    `pre_tokenizer` names llama.cpp's split regex: "gpt-2" matches the plain `ByteLevel` pre-tokenizer.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"].get("type") != "BPE":
        raise GGUFWriteError("only byte-level BPE tokenizers can be written from scratch")
    writer = GGUFWriter(out_path, "llama")
    writer.add_name(name)
    writer.add_type("model")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_file_type(int(QUANT_TYPES[quant][1]))

    vocab = spec["model"]["vocab"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    by_id = {index: token for token, index in vocab.items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for index in range(config.vocab_size):
        if index in added:
            tokens.append(added[index]["content"])
            types.append(gguf.TokenType.CONTROL if added[index]["special"] else gguf.TokenType.USER_DEFINED)
        elif index in by_id:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    tensors = llama_tensors(
        state_dict, config.num_attention_heads, config.num_key_value_heads, bool(config.tie_word_embeddings)
    )
    for tensor_name, array in tensors.items():
        _add_tensor(writer, tensor_name, array, quant)
    _finish(writer)


def write_lora_adapter(
    out_path: Path, lora_state_dict: dict[str, Any], alpha: float, n_head: int, n_head_kv: int
) -> None:
    """A peft LoRA state dict as a llama.cpp adapter GGUF (`blk.N.attn_q.weight.lora_a` / `.lora_b`).

    llama.cpp scales by alpha / rank, as peft does. Q/K rows are permuted, so only B (the rows) changes.
    """
    writer = GGUFWriter(out_path, "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for key, tensor in sorted(lora_state_dict.items()):
        # peft: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        which = "lora_a" if ".lora_A." in key else "lora_b"
        hf_name = key.split("base_model.model.", 1)[-1].replace(".lora_A", "").replace(".lora_B", "")
        name = gguf_tensor_name(hf_name)
        array = tensor.detach().float().cpu().numpy()
        if which == "lora_b" and name.endswith("attn_q.weight"):
            array = permute_rotary(array, n_head)
        elif which == "lora_b" and name.endswith("attn_k.weight"):
            array = permute_rotary(array, n_head_kv)
        writer.add_tensor(f"{name}.{which}", np.ascontiguousarray(array, dtype=np.float32))
    _finish(writer)
