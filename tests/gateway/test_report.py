"""The savings report on a seeded log: per template, per day, totals, --since, the CLI and its chart."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from gateway.accounting.report import build_report, parse_since, percentile
from gateway.accounting.savings import local_compute_cost, upstream_spend
from gateway.cli import main
from tests.gateway import seed_log
from tests.gateway.seed_log import DAY1, DAY2, NL2BASH, PRICE, SQL

UP = upstream_spend(PRICE, 1200, 20)  # one nl2bash request upstream, full prompt
CACHED = upstream_spend(PRICE, 1200, 20, cached_prompt_tokens=1100)  # ... with its static prefix cached
SQL_UP = upstream_spend(PRICE, 800, 20)
PLAIN = upstream_spend(PRICE, 300, 50)
L01, L005 = local_compute_cost(0.1, 0.10), local_compute_cost(0.05, 0.10)


@pytest.fixture
def report(tmp_path):
    db = seed_log.seed(tmp_path / "logs.db")
    return build_report(db, local_cost_per_hour=seed_log.COST_PER_HOUR)


def _by_template(report, template_id):
    return next(t for t in report["by_template"] if t["template_id"] == template_id)


def test_routed_template_figures(report):
    t = _by_template(report, NL2BASH)
    assert t["template_name"] == "nl2bash ShellPilot"
    # 4 upstream on day 1 (linked by mining) + 6 local, 1 fallback, 1 upstream, 1 shadow on day 2.
    assert (t["requests"], t["routed"], t["fallbacks"], t["shadowed"], t["errors"]) == (13, 6, 1, 1, 0)
    assert t["routed_share"] == pytest.approx(6 / 13)
    assert t["input_tokens_before"] == 13 * 1200
    assert t["input_tokens_after"] == 7 * 1200 + 6 * 25
    assert t["input_token_reduction_pct"] == pytest.approx(100 * 6 * (1200 - 25) / (13 * 1200))
    # before = served upstream with the full prompt [800, 900, 1000, 1100, 950, 1000 (shadow)];
    # after = sent local [100..150 local, 1500 fallback]; linear interpolation between ranks.
    assert t["latency_p50_before_ms"] == pytest.approx(975)
    assert t["latency_p95_before_ms"] == pytest.approx(1075)
    assert t["latency_p50_after_ms"] == pytest.approx(130)
    assert t["latency_p95_after_ms"] == pytest.approx(150 + 0.7 * 1350)
    spend_after = 7 * UP + 7 * L01 + L005  # upstream bills + local compute (6 local, shadow, fallback)
    assert t["spend_after"] == pytest.approx(spend_after)
    assert t["spend_before_uncached"] == pytest.approx(13 * UP)
    assert t["spend_before_cached"] == pytest.approx(7 * UP + 6 * CACHED)
    assert t["saved_vs_uncached"] == pytest.approx(6 * (UP - L01) - L01 - L005)
    assert t["saved_vs_cached"] == pytest.approx(6 * (CACHED - L01) - L01 - L005)
    assert 0 < t["saved_vs_cached"] < t["saved_vs_uncached"]  # caching already discounts the prefix


def test_unrouted_traffic_saves_nothing(report):
    sql = _by_template(report, SQL)
    assert (sql["requests"], sql["routed"], sql["errors"]) == (4, 0, 1)
    assert sql["input_token_reduction_pct"] == 0
    assert sql["spend_after"] == pytest.approx(3 * SQL_UP)
    assert sql["saved_vs_cached"] == pytest.approx(0) and sql["saved_vs_uncached"] == pytest.approx(0)
    assert sql["latency_p50_before_ms"] == pytest.approx(650)  # the 502 is not a latency sample
    assert sql["latency_p50_after_ms"] is None
    plain = _by_template(report, None)
    assert (plain["requests"], plain["template_name"], plain["routed_share"]) == (2, None, 0)
    assert plain["spend_after"] == pytest.approx(2 * PLAIN)


def test_days_and_totals_add_up(report):
    assert [d["day"] for d in report["by_day"]] == [DAY1, DAY2]
    day1, day2 = report["by_day"]
    assert (
        day1["requests"] == 6
        and day1["routed"] == 0
        and day1["spend_after"] == pytest.approx(4 * UP + 2 * PLAIN)
    )
    assert day2["requests"] == 13 and day2["routed"] == 6
    totals = report["totals"]
    assert totals["requests"] == 19
    for figure in ("requests", "routed", "input_tokens_before", "input_tokens_after", "spend_after"):
        assert totals[figure] == pytest.approx(sum(t[figure] for t in report["by_template"]))
        assert totals[figure] == pytest.approx(sum(d[figure] for d in report["by_day"]))
        assert totals[figure] == pytest.approx(sum(c[figure] for c in report["by_template_day"]))
    # Templates by baseline spend: nl2bash first, the untemplated traffic and sql after it.
    assert report["by_template"][0]["template_id"] == NL2BASH
    cell = next(c for c in report["by_template_day"] if c["template_id"] == NL2BASH and c["day"] == DAY1)
    assert (cell["requests"], cell["routed"], cell["latency_p50_after_ms"]) == (4, 0, None)


def test_since_filters_by_start_time(tmp_path):
    db = seed_log.seed(tmp_path / "logs.db")
    only_day2 = build_report(db, parse_since(DAY2), local_cost_per_hour=seed_log.COST_PER_HOUR)
    assert only_day2["since"] == "2026-11-21T00:00:00+00:00"
    assert [d["day"] for d in only_day2["by_day"]] == [DAY2]
    assert _by_template(only_day2, NL2BASH)["requests"] == 9
    # The untemplated requests were all on day 1.
    assert all(t["template_id"] is not None for t in only_day2["by_template"])


def test_parse_since_forms():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-20T08:00:00+02:00") == datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since"):
        parse_since("last tuesday")


def test_percentile_matches_linear_interpolation():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48)


def test_empty_log_gives_an_empty_report(tmp_path):
    from gateway.log.store import open_db

    empty = build_report(open_db(tmp_path / "logs.db"), local_cost_per_hour=0.1)
    assert empty["totals"]["requests"] == 0 and empty["totals"]["routed_share"] is None
    assert empty["by_template"] == [] and empty["by_day"] == []


def test_cli_report_json_text_and_chart(home, tmp_path):
    seed_log.seed(home / "logs.db")
    runner = CliRunner()
    chart = tmp_path / "chart.png"
    result = runner.invoke(main, ["report", "--json", "--chart", str(chart)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "promptintern.report/1"
    assert _by_template(data, NL2BASH)["routed"] == 6
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 20_000
    assert f"chart: {chart}" in result.stderr

    text = runner.invoke(main, ["report", "--since", DAY2], terminal_width=250)
    assert text.exit_code == 0, text.output
    assert "Per template" in text.output and "Per day" in text.output and DAY1 not in text.output
    written = text.output.strip().splitlines()[-1].removeprefix("chart: ")
    assert written.startswith(str(home / "reports")) and written.endswith(".png")


def test_cli_report_bad_since_is_one_line(home):
    result = CliRunner().invoke(main, ["report", "--since", "yesterday-ish", "--no-chart"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: --since must be like")
    assert len(result.output.strip().splitlines()) == 1
