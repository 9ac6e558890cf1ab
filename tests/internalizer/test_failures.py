"""Failure paths: a bad base model, an export that fails verification. One clear line; nothing damaged."""

from __future__ import annotations

import json
import resource
import signal

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import open_db
from internalizer.base import BaseModelError
from internalizer.export import ExportError
from internalizer.job import internalize
from tests.internalizer.conftest import fast_config


@pytest.mark.parametrize("content", [None, b"GGUF\x03\x00\x00\x00garbage", b"not a model at all"])
def test_missing_or_corrupt_base_model_fails_with_one_line(tiny_env, tmp_path, monkeypatch, content):
    settings, template_id = tiny_env
    bad = tmp_path / "base.gguf"
    if content is not None:
        bad.write_bytes(content)
    monkeypatch.setenv("PROMPTINTERN_BASE_MODEL", str(bad))
    result = CliRunner().invoke(main, ["internalize", template_id[:10], "-o", "min_eval=4"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: base model") and "base.gguf" in lines[-1]
    assert "Traceback" not in result.output
    settings.base_model = str(bad)
    with pytest.raises(BaseModelError):
        internalize(settings, template_id, fast_config(), progress=False)
    assert open_db(settings.db_path)["models"].count == 0


def test_failed_verification_leaves_the_active_model_untouched(tiny_env):
    settings, template_id = tiny_env
    first = internalize(settings, template_id, fast_config(export_lora_adapter=True), progress=False)
    assert first.status == "active"
    # the LoRA alone, as a llama.cpp adapter on the base GGUF, gives the merged model's outputs
    adapter = settings.models_dir / f"{first.model_id}.lora.gguf"
    assert adapter.is_file() and first.eval_scores["verification"]["adapter_agreement"] == 1.0
    db = open_db(settings.db_path)
    before_models = list(db.query("select * from models"))
    before_route = db["routes"].get(template_id)
    before_files = sorted(p.name for p in settings.models_dir.iterdir())

    # an export that llama.cpp cannot reproduce well enough (an impossible bar forces it)
    with pytest.raises(ExportError, match="failed verification"):
        internalize(settings, template_id, fast_config(verify_min_agreement=1.01), progress=False)

    assert list(db.query("select * from models")) == before_models
    assert db["routes"].get(template_id) == before_route
    assert sorted(p.name for p in settings.models_dir.iterdir()) == before_files
    row = db["models"].get(first.model_id)
    assert row["status"] == "active" and json.loads(row["eval_scores"])["internalized"]["n"] == 4


def test_disk_full_while_exporting_leaves_no_file(tiny_gguf, tmp_path):
    """A write that hits the file size limit (EFBIG, as a full disk gives ENOSPC) fails in one line."""
    from internalizer.base import load_base
    from internalizer.export import export_model
    from internalizer.train import lora_model

    base = load_base(tiny_gguf)
    model = lora_model(base.model, fast_config())
    models_dir = tmp_path / "models"
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get an OSError, not a killed process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the tiny GGUF is ~430 KB
    try:
        with pytest.raises(ExportError, match="writing m-x.gguf failed"):
            export_model(model, base, models_dir, "m-x", "f32", [], 8, 1.0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert list(models_dir.iterdir()) == []
