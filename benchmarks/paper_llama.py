"""Serve chat requests through llama.cpp and time each one end to end (templating, prompt eval, generation).

Every method of the table goes through `measure` on the same llama.cpp build, thread count and
generation cap. The prefix (KV) cache is cleared before each request unless `reuse_prefix` is set, so the
uncached methods pay for their whole prompt, as they would with per-query retrieved examples.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.accounting.report import percentile

Messages = list[dict[str, str]]


@dataclass
class Measurement:
    replies: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    # The machine's 1-minute load average before and after: latency is only comparable under similar load.
    load_average: tuple[float, float] = (0.0, 0.0)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_s)
        n = len(lat)
        return {
            "requests": n,
            "mean_input_tokens": statistics.fmean(self.prompt_tokens) if n else 0.0,
            "mean_output_tokens": statistics.fmean(self.completion_tokens) if n else 0.0,
            "latency_p50_ms": 1000 * (percentile(lat, 50) or 0.0),
            "latency_p95_ms": 1000 * (percentile(lat, 95) or 0.0),
            "throughput_rps": n / self.wall_s if self.wall_s else 0.0,
            "load_average_1min": list(self.load_average),
        }


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LlamaRunner:
    """One GGUF loaded in llama.cpp; greedy decoding so every method is deterministic."""

    def __init__(self, gguf_path: Path, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        from llama_cpp import Llama  # imported here: the metrics and the tests of them do not need it

        threads = n_threads or cpu_threads()
        self.path = Path(gguf_path)
        self.llm = Llama(
            model_path=str(gguf_path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            seed=0,
            verbose=False,
        )

    def measure(
        self,
        requests: Sequence[Messages],
        max_tokens: int,
        reuse_prefix: bool = False,
        warmup: int = 1,
        progress: Callable[[int], None] | None = None,
    ) -> Measurement:
        """Run the requests one after another, timing each; the first `warmup` ones are run twice."""
        for messages in requests[:warmup]:  # page the weights in and fill caches: not part of the timing
            self._complete(messages, max_tokens, reuse_prefix)
        result = Measurement()
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        for index, messages in enumerate(requests):
            began = time.perf_counter()
            reply, usage = self._complete(messages, max_tokens, reuse_prefix)
            result.latencies_s.append(time.perf_counter() - began)
            result.replies.append(reply)
            result.prompt_tokens.append(int(usage["prompt_tokens"]))
            result.completion_tokens.append(int(usage["completion_tokens"]))
            if progress:
                progress(index + 1)
        result.wall_s = time.perf_counter() - start
        result.load_average = (load_before, os.getloadavg()[0])
        return result

    def _complete(self, messages: Messages, max_tokens: int, reuse_prefix: bool) -> tuple[str, dict]:
        if not reuse_prefix:
            self.llm.reset()  # forget the evaluated tokens: the next prompt is evaluated from its first token
        response = self.llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=1, seed=0
        )
        return response["choices"][0]["message"]["content"] or "", response["usage"]

    def close(self) -> None:
        self.llm.close()
