"""The pieces routing relies on, alone: shadow agreement scores and the log writer's update path."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.accounting.pricing import Pricer, counterfactual_price
from gateway.log.writer import LogWriter
from gateway.routing.agreement import agreement
from gateway.scoring import normalise
from gateway.settings import Price, Settings, UpstreamModel


def test_agreement_is_one_only_for_the_same_normalised_text():
    assert agreement("ls -la  /tmp\n", "```bash\nls -la /tmp\n```") == 1.0
    assert normalise("  a \n\n b ") == "a b"
    close = agreement("find . -name '*.py' | xargs wc -l", "find . -name '*.py' | xargs wc -c")
    far = agreement("find . -name '*.py' | xargs wc -l", "tar czf backup.tgz /home")
    assert 0.5 < close < 1.0 and 0 <= far < close
    assert agreement("ls", "") == 0.0 and agreement(None, None) == 1.0


@pytest.fixture
def writer(tmp_path):
    log_writer = LogWriter(tmp_path / "logs.db")
    log_writer.start()
    yield log_writer
    log_writer.stop()


def test_an_update_follows_its_row_and_adds_to_spend(writer):
    row = {"request_id": "req-1", "startTime": "2026-01-01T00:00:00", "status": 200, "spend": 0.5}
    writer.submit(row)
    writer.submit_update("req-1", {"shadow_response": "ls", "shadow_agreement": 0.75}, {"spend": 0.25})
    writer.submit_update("req-1", {}, {"local_compute_s": 1.5}).result(timeout=10)
    with sqlite3.connect(writer.db_path) as conn:
        got = conn.execute(
            "select shadow_response, shadow_agreement, spend, local_compute_s from requests"
        ).fetchone()
    assert got == ("ls", 0.75, 0.75, 1.5)
    assert writer.rows == 1


def test_only_routing_columns_can_be_updated(writer):
    with pytest.raises(ValueError, match="messages"):
        writer.submit_update("req-1", {"messages": "[]"})


def test_the_counterfactual_is_priced_at_the_upstream_or_the_reference_model(tmp_path):
    settings = Settings(home=tmp_path, prices={"paid": Price(input_cost_per_token=3e-6)})
    pricer = Pricer(settings)
    paid = UpstreamModel(name="paid", litellm_model="openai/whatever")
    assert counterfactual_price(pricer, paid) == Price(input_cost_per_token=3e-6)
    embedded = UpstreamModel(name="smollm2", litellm_model="openai/smollm2", local=True)
    reference = counterfactual_price(pricer, embedded)  # litellm's offline map: gpt-4o-mini
    assert reference is not None
    assert (reference.input_cost_per_token, reference.output_cost_per_token) == (1.5e-7, 6e-7)
    other = Pricer(Settings(home=tmp_path, counterfactual_price_model="nobody-knows-this-model"))
    assert counterfactual_price(other, embedded) is None
