"""One short real internalization of SmolLM2-135M-Instruct on NL2Bash traffic (minutes on a 2-core CPU).

The app sends a long system prompt + 5 fixed few-shot turns + the query; the logged answers are the
reference commands. 120 requests (100 train, 20 held out); after two stages (template compressed to 15%
with one retrieved shot, then query only), the internalized model answering from the query alone must
beat the untrained base model answering from the query alone by a wide margin.
"""

from __future__ import annotations

import pytest

from demo.nl2bash_app import NL2BashApp, load_pairs
from gateway.log.store import open_db
from gateway.settings import load_settings
from internalizer.config import InternalizeConfig
from internalizer.job import internalize
from tests.internalizer.conftest import log_requests

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_smollm2_internalization_beats_the_base_model_query_only(home):
    from internalizer.mine import mine

    settings = load_settings()
    settings.ensure_home()
    pool = [p for p in load_pairs("train") if len(p.nl) < 90 and len(p.cmd) < 45]
    app = NL2BashApp(pool[:400], n_shots=5, examples="fixed", layout="turns")
    db = open_db(settings.db_path)
    log_requests(db, app, pool[400:520])
    (template,) = mine(db).templates
    cfg = InternalizeConfig(
        stages=1,
        template_ratio_start=0.15,
        examples_start=1,
        epochs_per_stage=0.1,
        final_stage_epochs=2.0,
        batch_size=8,  # records per step: more, smaller updates learn the answer format in fewer tokens
        lr=2e-3,
        eval_base_reference=False,  # the full-prompt reference costs minutes here; the benchmark runs it
        min_eval=20,
        max_eval=20,
        max_new_tokens=32,
        task_metric="bash",
        gate_metric="chrf",
        gate_threshold=0.2,
        verify_samples=4,
        threads=1,  # on a 2-core machine shared with other jobs, one thread trains ~2x faster than two
    )
    result = internalize(settings, template["id"], cfg, progress=False)
    print(
        result.eval_scores,
        result.timings_s,
        [(s["stage"], s["steps"], s["tokens_per_s"]) for s in result.stages],
    )
    tuned, base = result.eval_scores["internalized"], result.eval_scores["base_query_only"]
    # ~26 steps of 8 records teach the answer format (a bare command) and much of the content; exact
    # commands stay rare for a 135M model this early, so the bar is on chrF (0.12 -> 0.35 when measured).
    assert tuned["chrf"] >= max(2 * base["chrf"], base["chrf"] + 0.15)
    assert result.eval_scores["verification"]["agreement"] >= 0.75
    assert result.status == "active"
