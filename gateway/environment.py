"""The process environment the product relies on, set in one place: the CLI's entry, `create_app`, the
test session and the benchmark scripts call `apply_defaults()` before they load litellm, llama.cpp or
Hugging Face code. An explicit setting in the environment always wins.
"""

from __future__ import annotations

import os

DEFAULTS = {
    # No network at run time: litellm's bundled cost map, never the online copy...
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # ...and no model or tokenizer fetched from a hub (the base model and MiniLM ship as files).
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # llama.cpp's OpenMP threads busy-wait by default: on a small shared machine the spinning threads starve
    # the one doing the work (measured 10-50x slower requests on 2 cores). Read when llama.cpp's library
    # loads, so it must be set before that, in-process or in a child server.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def apply_defaults() -> None:
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
