"""Load the base model and its tokenizer from a llama-architecture GGUF file or a local Hugging Face dir.

transformers dequantizes a GGUF to float32 and gives token ids equal to llama.cpp's. A GGUF-loaded model
carries a quantizer marker that blocks saving, so it is rebuilt as a plain model from its config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gateway.environment import apply_defaults
from gateway.settings import Settings


class BaseModelError(RuntimeError):
    """The base model cannot be used; the message is one line a user can act on."""


@dataclass
class BaseModel:
    model: Any  # transformers LlamaForCausalLM, float32, eval mode
    tokenizer: Any
    source: Path  # the GGUF file or HF directory it came from
    gguf_path: Path | None  # set when loaded from a GGUF: export copies its metadata

    @property
    def name(self) -> str:
        return self.source.name


def resolve_base_path(settings: Settings, override: str | None = None) -> Path:
    """The configured base model: the job's override, then settings.base_model, then bundled SmolLM2."""
    chosen = override or getattr(settings, "base_model", None)
    if chosen:
        return Path(chosen).expanduser()
    from gateway.upstream.base_model import BaseModelMissing, smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except BaseModelMissing as exc:
        raise BaseModelError(str(exc)) from exc


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_gguf(path: Path) -> None:
    """Fail fast with one line on a missing, truncated or non-llama GGUF (before the slow load)."""
    if not path.is_file():
        raise BaseModelError(f"base model not found: {path}")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
        n_tensors = len(reader.tensors)
    except Exception as exc:
        raise BaseModelError(
            f"base model {path.name} is not a readable GGUF file ({type(exc).__name__})"
        ) from exc
    if arch != "llama":
        raise BaseModelError(
            f"base model {path.name} is a {arch!r} model; only llama architectures are supported"
        )
    if n_tensors == 0:
        raise BaseModelError(f"base model {path.name} holds no tensors")


def _plain_copy(model: Any) -> Any:
    """The same weights in a model without the GGUF quantizer marker."""
    values = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    config = model.config.__class__.from_dict(values)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def load_base(path: Path, device: torch.device | None = None) -> BaseModel:
    """Base model (float32, eval mode, on `device`) + tokenizer from a GGUF file or an HF directory."""
    path = Path(path)
    apply_defaults()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            gguf_path = None
        else:
            check_gguf(path)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = _plain_copy(AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name))
            gguf_path = path
    except BaseModelError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(f"cannot load base model {path.name}: {first}") from exc
    if getattr(model.config, "model_type", None) != "llama":
        raise BaseModelError(
            f"base model {path.name} is {model.config.model_type!r}, not a llama architecture"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device or pick_device()).eval()
    return BaseModel(model=model, tokenizer=tokenizer, source=path, gguf_path=gguf_path)


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn: ChatML's <|im_end|> when the vocabulary has it."""
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id is not None:
        return token_id
    return tokenizer.eos_token_id
