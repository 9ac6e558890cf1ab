"""Settings precedence and the migration runner."""

import sqlite3

import pytest

from gateway.log.store import MIGRATIONS, open_db
from gateway.settings import load_settings


def test_env_overrides_file_and_flags_override_env(tmp_path, monkeypatch):
    config = tmp_path / "gw.yaml"
    config.write_text(
        "port: 9000\nupstream_retries: 5\napi_keys: [sk-file]\n"
        "models:\n  - {name: m, litellm_model: openai/m, api_base: 'http://127.0.0.1:1/v1', api_key: sk-up}\n"
    )
    monkeypatch.setenv("PROMPTINTERN_UPSTREAM_RETRIES", "7")
    monkeypatch.setenv("PROMPTINTERN_API_KEYS", "sk-a, sk-b")
    settings = load_settings(config, port=9100)
    assert settings.port == 9100
    assert settings.upstream_retries == 7
    assert [k.get_secret_value() for k in settings.api_keys] == ["sk-a", "sk-b"]
    assert settings.models[0].api_key.get_secret_value() == "sk-up"
    assert "sk-up" not in repr(settings)  # secrets never show in reprs or logs


def test_home_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTINTERN_HOME", str(tmp_path / "h"))
    settings = load_settings()
    assert settings.db_path == tmp_path / "h" / "logs.db"


def test_bad_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(bad)


def test_migrations_apply_once_and_db_is_wal(tmp_path):
    path = tmp_path / "logs.db"
    db = open_db(path)
    applied = [row["name"] for row in db["_migrations"].rows]
    assert applied == [fn.__name__ for fn in MIGRATIONS]
    db["requests"].insert({"request_id": "r1", "model": "m"})
    db.conn.commit()
    db.close()
    again = open_db(path)  # re-opening applies nothing twice and keeps the data
    assert again["_migrations"].count == len(MIGRATIONS)
    assert again["requests"].get("r1")["model"] == "m"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
