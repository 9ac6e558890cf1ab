from __future__ import annotations

from internalizer.dataset import Example
from internalizer.retrieve import ExampleRetriever

POOL = [
    Example("a", "list all files including hidden ones", "ls -la"),
    Example("b", "show disk usage of the current directory", "du -sh ."),
    Example("c", "count the lines in main.c", "wc -l main.c"),
    Example("d", "find all python files under the current directory", "find . -name '*.py'"),
    Example("e", "compress the logs folder into logs.tar.gz", "tar -czf logs.tar.gz logs"),
    Example("f", "List all files including hidden ones", "ls -la"),  # duplicate input (case)
]


def test_nearest_examples_first_self_excluded_and_no_duplicates():
    retriever = ExampleRetriever(POOL)
    assert len(retriever) == 5  # the duplicate input is indexed once
    nearest = retriever.top_k("how many lines does main.c have", 2)
    assert nearest[0].hash == "c" and len(nearest) == 2
    # the record's own query is in the pool: never returned as its own example
    own = retriever.top_k("list all files including hidden ones", 3)
    assert "a" not in {e.hash for e in own} and "f" not in {e.hash for e in own} and len(own) == 3
    assert retriever.top_k_batch(["a", "b"], 0) == [[], []]


def test_empty_pool():
    assert ExampleRetriever([]).top_k("anything", 3) == []
