"""`promptintern routes`: list, set, kill switch; the routes snapshot the app swaps atomically."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.log.store import open_db
from gateway.routing.routes_store import (
    RouteError,
    load_routes,
    routes_changed,
    routes_fingerprint,
    set_route,
)
from tests.gateway import seed_log
from tests.gateway.seed_log import NL2BASH, SQL


@pytest.fixture
def db(home):
    return seed_log.seed(home / "logs.db")


def _cli(*args: str):
    result = CliRunner().invoke(main, list(args), terminal_width=200)
    return result


def test_no_routes_yet(home):
    assert _cli("routes").output.startswith("No routes yet")
    assert json.loads(_cli("routes", "--json").output) == []


def test_set_creates_a_route_to_the_newest_active_model_and_lists_it(db):
    result = _cli("routes", "set", NL2BASH[:8], "--mode", "shadow", "--canary", "25")  # a unique prefix
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{NL2BASH}: shadow, canary 25%, model nl2bash-v1"
    [route] = json.loads(_cli("routes", "--json").output)
    assert route | {"updated_at": None} == {
        "template_id": NL2BASH,
        "template_name": "nl2bash ShellPilot",
        "model_id": "nl2bash-v1",
        "mode": "shadow",
        "canary_percent": 25.0,
        "model_status": "active",
        "gguf_path": "/m/nl2bash-v1.gguf",
        "serves": True,
        "updated_at": None,
        # An uncalibrated model: no confidence threshold, every answer served.
        "threshold": None,
        "signal": None,
        "metric": None,
        "target": None,
        "note": None,
    }
    table = _cli("routes").output
    assert NL2BASH in table and "nl2bash-v1" in table and "shadow" in table

    # Changing one field keeps the others.
    assert _cli("routes", "set", NL2BASH, "--mode", "active").exit_code == 0
    route = load_routes(db).get(NL2BASH)
    assert (route.mode, route.canary_percent, route.model_id) == ("active", 25.0, "nl2bash-v1")


def test_kill_switch_stops_serving_at_the_next_snapshot(db):
    set_route(db, NL2BASH, mode="active")
    before = load_routes(db)
    assert before.serving(NL2BASH) is not None
    result = _cli("routes", "off", NL2BASH)
    assert result.exit_code == 0 and "off" in result.output
    assert routes_changed(db, before)
    after = load_routes(db)
    assert after.serving(NL2BASH) is None and after.get(NL2BASH).mode == "off"
    assert before.serving(NL2BASH) is not None  # the old snapshot is immutable: in-flight readers unaffected
    with pytest.raises(TypeError):
        after.routes[NL2BASH] = before.routes[NL2BASH]  # type: ignore[index]


def test_retired_or_deleted_model_stops_serving(db):
    set_route(db, NL2BASH, mode="active")
    snapshot = load_routes(db)
    db["models"].update("nl2bash-v1", {"status": "retired"})
    assert routes_changed(db, snapshot)
    assert load_routes(db).serving(NL2BASH) is None
    db["models"].update("nl2bash-v1", {"status": "active"})
    assert load_routes(db).serving(NL2BASH) is not None
    db["models"].delete("nl2bash-v1")
    gone = load_routes(db).get(NL2BASH)
    assert gone.model_status is None and not gone.serves
    assert "deleted" in _cli("routes").output


def test_fingerprint_is_stable_without_changes(db):
    set_route(db, NL2BASH, mode="active")
    assert routes_fingerprint(db) == routes_fingerprint(db) == load_routes(db).fingerprint
    db["requests"].insert({"request_id": "unrelated", "model": "m"})  # log traffic does not count
    assert not routes_changed(db, load_routes(db))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["routes", "set", SQL, "--mode", "active"], "has no active model"),
        (["routes", "set", SQL, "--model", "nl2bash-v1"], "was trained for template"),
        (["routes", "set", NL2BASH, "--model", "nope"], "no model 'nope'"),
        (["routes", "set", NL2BASH, "--canary", "120"], "between 0 and 100"),
        (["routes", "set", "tpl_"], "nothing to change"),
        (["routes", "set", "tpl_", "--mode", "off"], "ambiguous"),
        (["routes", "set", "zzz", "--mode", "off"], "no template or route matches"),
        (["routes", "off", SQL], "no route for template"),
    ],
)
def test_user_errors_are_one_line(db, args, message):
    result = _cli(*args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert message in result.output, result.output
    assert len(lines) == 1 or args[-1] == "120"  # click's own usage errors span a few lines


def test_mode_choices_are_enforced(db):
    result = _cli("routes", "set", NL2BASH, "--mode", "sometimes")
    assert result.exit_code == 2 and "sometimes" in result.output
    with pytest.raises(RouteError, match="mode must be"):
        set_route(db, NL2BASH, mode="sometimes")


def test_failed_change_leaves_the_route_as_it_was(db):
    set_route(db, NL2BASH, mode="active", canary_percent=50)
    with pytest.raises(RouteError):
        set_route(db, NL2BASH, model_id="sql-v1")  # another template's model
    again = open_db(db.conn.execute("pragma database_list").fetchone()[2])
    route = load_routes(again).get(NL2BASH)
    assert (route.model_id, route.mode, route.canary_percent) == ("nl2bash-v1", "active", 50.0)
