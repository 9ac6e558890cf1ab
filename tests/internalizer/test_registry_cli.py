"""Registry semantics (one active model per template, atomic activation) and the `models` / `compress` /
`nightly` commands, through the real CLI on a real SQLite file."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import open_db
from gateway.settings import load_settings
from internalizer import registry
from tests.internalizer.conftest import fast_overrides


def _candidate(db, models_dir, model_id, template_id="tpl-1"):
    path = models_dir / f"{model_id}.gguf"
    path.write_bytes(b"GGUF")
    return registry.register(
        db,
        model_id=model_id,
        template_id=template_id,
        gguf_path=path,
        sha256="0" * 64,
        quant="q8_0",
        base_model="base.gguf",
        config={"gate_metric": "chrf"},
        stage_losses=[],
        eval_scores={"internalized": {"chrf": 0.8, "n": 5}},
        n_train_requests=45,
    )


@pytest.fixture
def db(home):
    settings = load_settings()
    settings.ensure_home()
    database = open_db(settings.db_path)
    database["templates"].insert({"id": "tpl-1", "name": "t", "n_requests": 50})
    return database, settings.models_dir


def _active(db):
    return [r["id"] for r in db.query("select id from models where status = 'active'")]


def test_activation_is_exclusive_and_routes_the_template(db):
    database, models_dir = db
    _candidate(database, models_dir, "m-a")
    _candidate(database, models_dir, "m-b")
    registry.activate(database, "m-a")
    assert _active(database) == ["m-a"] and database["routes"].get("tpl-1")["model_id"] == "m-a"
    registry.activate(database, "m-b")
    assert _active(database) == ["m-b"] and database["models"].get("m-a")["status"] == "retired"
    route = database["routes"].get("tpl-1")
    assert route["model_id"] == "m-b" and route["mode"] == "active"
    registry.retire(database, "m-b")
    assert _active(database) == [] and database["routes"].get("tpl-1")["mode"] == "off"


def test_activating_a_model_whose_file_is_gone_changes_nothing(db):
    database, models_dir = db
    _candidate(database, models_dir, "m-a")
    registry.activate(database, "m-a")
    _candidate(database, models_dir, "m-b")
    (models_dir / "m-b.gguf").unlink()
    with pytest.raises(registry.RegistryError, match="missing"):
        registry.activate(database, "m-b")
    assert _active(database) == ["m-a"] and database["routes"].get("tpl-1")["model_id"] == "m-a"


def test_models_cli_lists_activates_and_retires(db):
    database, models_dir = db
    runner = CliRunner()
    assert "No internalized models" in runner.invoke(main, ["models"]).output
    _candidate(database, models_dir, "m-a")
    _candidate(database, models_dir, "m-b")
    listed = runner.invoke(main, ["models", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.output)
    assert {r["id"] for r in rows} == {"m-a", "m-b"} and rows[0]["eval_scores"]["internalized"]["chrf"] == 0.8
    result = runner.invoke(main, ["models", "activate", "m-a"])
    assert result.exit_code == 0 and "now active" in result.output
    assert "m-a" in runner.invoke(main, ["models"]).output
    assert runner.invoke(main, ["models", "retire", "m-a"]).exit_code == 0
    assert _active(database) == []
    missing = runner.invoke(main, ["models", "activate", "m-zzz"])
    assert missing.exit_code == 1 and missing.stderr.strip() == "Error: no model 'm-zzz'"


def test_compress_command_prints_a_shorter_template(tiny_env):
    settings, template_id = tiny_env
    result = CliRunner().invoke(main, ["compress", template_id, "--rate", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["kept_ratio"] <= 0.55 and "{{query}}" in payload["text"]


def test_nightly_mines_internalizes_then_waits_for_more_traffic(tiny_env):
    settings, template_id = tiny_env
    runner = CliRunner()
    result = runner.invoke(main, ["nightly", "--json", *fast_overrides()])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["template_id"] == template_id and row["status"] == "active"
    db = open_db(settings.db_path)
    assert db["models"].get(row["model_id"])["status"] == "active"
    again = runner.invoke(main, ["nightly", *fast_overrides()])
    assert again.exit_code == 0 and "Nothing to internalize" in again.output
