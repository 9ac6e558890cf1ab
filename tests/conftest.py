"""Session-wide test settings: offline, and every test's PROMPTINTERN_HOME in a temporary folder."""

import pytest

from gateway.environment import apply_defaults

apply_defaults()  # before any test module loads litellm, llama.cpp or transformers


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh PROMPTINTERN_HOME for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("PROMPTINTERN_HOME", str(path))
    return path
