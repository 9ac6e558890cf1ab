"""Exact token counts for a stream from a llama.cpp server, which sends no `usage` when streaming.

llama-cpp-python's server renders the chat with the GGUF's own Jinja chat template and tokenizes the result;
this does the same with the same code (`Jinja2ChatFormatter`, a vocab-only `Llama`: the tokenizer without the
weights, loaded once per GGUF), so the counts equal those of a non-streamed request. The completion's count
is the tokenization of the streamed text. llama_cpp is imported only when a local stream needs it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from gateway.accounting.pricing import Usage
from gateway.templates.request_shape import message_text


class LocalTokenCounter:
    def __init__(self, gguf_path: Path) -> None:
        self.gguf_path = gguf_path
        self._lock = threading.Lock()
        self._llama: Any = None
        self._formatter: Any = None

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = Llama(str(self.gguf_path), vocab_only=True, verbose=False)
        template = llama.metadata.get("tokenizer.chat_template")
        if template:
            eos = llama._model.token_get_text(llama.token_eos())
            bos = llama._model.token_get_text(llama.token_bos())
            self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        self._llama = llama

    def count(self, messages: list[dict[str, Any]], completion: str) -> Usage:
        """Prompt tokens as llama.cpp's server counts them, and the completion's tokens. Thread-safe."""
        with self._lock:
            if self._llama is None:
                self._load()
            llama = self._llama
            if self._formatter is not None:
                rendered = self._formatter(messages=messages)
                prompt_ids = llama.tokenize(
                    rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
                )
            else:  # no template in the GGUF: the plain text of the messages (an estimate)
                text = "\n".join(message_text(m) for m in messages)
                prompt_ids = llama.tokenize(text.encode(), add_bos=True, special=False)
            completion_ids = (
                llama.tokenize(completion.encode(), add_bos=False, special=True) if completion else []
            )
        return Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(completion_ids))


class TokenCounters:
    """One counter per GGUF file, created on first use."""

    def __init__(self) -> None:
        self._counters: dict[Path, LocalTokenCounter] = {}
        self._lock = threading.Lock()

    def for_model(self, gguf_path: Path) -> LocalTokenCounter:
        with self._lock:
            counter = self._counters.get(gguf_path)
            if counter is None:
                counter = self._counters[gguf_path] = LocalTokenCounter(gguf_path)
            return counter
