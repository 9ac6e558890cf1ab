"""Session-wide test settings: offline, and every test's PROMPTINTERN_HOME in a temporary folder."""

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# llama.cpp's OpenMP threads busy-wait by default, which starves everything else on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh PROMPTINTERN_HOME for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("PROMPTINTERN_HOME", str(path))
    return path
