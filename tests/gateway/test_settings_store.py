"""Settings precedence and the migration runner."""

import sqlite3

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import MIGRATIONS, open_db
from gateway.settings import Settings, SettingsError, load_settings


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


def test_an_unknown_key_is_rejected_with_its_line(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("port: 9000\napikeys: [sk-typo]\n")  # a typo that would otherwise mean "no auth"
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert str(caught.value) == f"apikeys ({config} line 2): unknown setting"


def test_an_unknown_key_inside_a_model_names_its_path_and_line(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("models:\n  - name: m\n    litellm_model: openai/m\n    api_bas: http://127.0.0.1:1\n")
    with pytest.raises(SettingsError, match=r"^models\.0\.api_bas \(.*gw\.yaml line 4\): unknown setting$"):
        load_settings(config)


def test_unknown_keys_are_rejected_outside_a_file_too():
    with pytest.raises(ValueError, match="apikeys"):
        Settings(apikeys=["sk-typo"])


def test_a_bad_env_value_names_the_field_and_the_variable(monkeypatch):
    monkeypatch.setenv("PROMPTINTERN_PORT", "abc")
    expected = r"^port \(env PROMPTINTERN_PORT\): Input should be a valid integer"
    with pytest.raises(SettingsError, match=expected):
        load_settings()


def test_a_bad_file_value_names_the_field_and_the_line(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("host: 127.0.0.1\n\nupstream_retries: many\n")
    with pytest.raises(SettingsError, match=r"^upstream_retries \(.*gw\.yaml line 3\): Input should be"):
        load_settings(config)


def test_a_yaml_syntax_error_gives_its_line(tmp_path):
    config = tmp_path / "gw.yaml"
    config.write_text("port: 9000\nmodels:\n  - name: m\n   litellm_model: x\n")
    with pytest.raises(SettingsError, match=r"gw\.yaml line 4: invalid YAML"):
        load_settings(config)


def test_unknown_promptintern_env_vars_are_not_settings(monkeypatch):
    monkeypatch.setenv("PROMPTINTERN_CONFIG_UNUSED", "x")  # env vars also name other things (CONFIG, ...)
    assert load_settings().port == 8080


@pytest.mark.parametrize("value", ["abc", "80.5", "", " ", "8080x", "1e3", "\u0661\u0662"])
def test_any_bad_port_is_one_clear_line(monkeypatch, value):
    monkeypatch.setenv("PROMPTINTERN_PORT", value)
    try:
        settings = load_settings()
    except SettingsError as exc:
        assert str(exc).startswith("port (env PROMPTINTERN_PORT): ")
        assert "\n" not in str(exc)
    else:  # pydantic accepts what int() accepts, e.g. Arabic-Indic digits
        assert settings.port == int(value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("apikeys: [sk-typo]\n", "apikeys ({path} line 1): unknown setting"),
        ("port: [\n", "{path} line 2: invalid YAML"),
    ],
)
def test_the_cli_prints_one_line_and_exits_non_zero(tmp_path, home, text, expected):
    config = tmp_path / "gw.yaml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(config), "logs", "path"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: invalid settings: ")
    assert expected.format(path=config) in lines[0]


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
