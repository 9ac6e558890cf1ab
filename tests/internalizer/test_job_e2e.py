"""The whole path on the tiny model: mine -> dataset -> compress -> retrieve -> 2 stages -> merge -> GGUF ->
llama.cpp -> evaluate -> register + activate."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.log.store import open_db
from internalizer.job import internalize
from tests.internalizer.conftest import fast_config


def test_internalize_tiny_template_end_to_end(tiny_env):
    settings, template_id = tiny_env
    started = time.perf_counter()
    result = internalize(settings, template_id, fast_config(), progress=False)
    elapsed = time.perf_counter() - started

    assert result.status == "active"
    gguf = Path(result.gguf_path)
    assert gguf.is_file() and gguf.parent == settings.models_dir
    assert not list(settings.models_dir.glob(".*.tmp"))
    assert [s["stage"] for s in result.stages] == [1, 2]
    assert result.stages[0]["n_examples"] == 2 and result.stages[1]["n_examples"] == 0
    assert result.eval_scores["verification"]["agreement"] == 1.0
    internalized = result.eval_scores["internalized"]
    assert set(internalized) >= {"exact", "chrf", "bash", "n"} and internalized["n"] == 4
    assert "base_full_prompt" in result.eval_scores and "base_query_only" in result.eval_scores

    db = open_db(settings.db_path)
    row = db["models"].get(result.model_id)
    assert row["status"] == "active" and row["gguf_path"] == str(gguf)
    assert len(json.loads(row["stage_losses"])) == 2
    route = db["routes"].get(template_id)
    assert route["model_id"] == result.model_id and route["mode"] == "active"
    # The gate's calibration is stored with the model: 4 held-out requests promise nothing, so the model
    # (activated by the whole-model gate) answers every request: no confidence threshold on its route.
    calibration = json.loads(row["calibration"])
    assert (
        calibration["n"] == 4
        and len(calibration["curve"]) >= 1
        and set(calibration["auroc"]) == {"mean", "min", "sum"}
    )
    assert calibration["route_threshold"] is None and route["threshold"] is None
    assert any(note.startswith("calibration:") for note in result.notes)
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["model_id"] == result.model_id
    assert summary["minutes"]["planned"] > 0 and summary["minutes"]["actual"] > 0
    assert [s["stage"] for s in summary["plan"]["stages"]] == [1, 2]
    assert (Path(result.run_dir) / "plan.json").is_file()
    assert (Path(result.run_dir) / "config.yaml").is_file()
    assert elapsed < 60, f"the tiny end-to-end job took {elapsed:.1f} s"
