from __future__ import annotations

import pytest

from internalizer.config import ConfigError, InternalizeConfig, load_config, parse_overrides


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("stages: 2\nlr: 1\nschedule: exponential\nlora_targets: [q_proj, v_proj]\n")
    cfg = load_config(path, parse_overrides(["lr=0.002", "export-lora-adapter=true", "task_metric=bash"]))
    assert cfg.stages == 2 and cfg.schedule == "exponential"
    assert cfg.lr == 0.002 and isinstance(cfg.lr, float)
    assert cfg.export_lora_adapter is True and cfg.task_metric == "bash"
    assert cfg.lora_targets == ["q_proj", "v_proj"]


def test_saved_config_loads_back_identical(tmp_path):
    cfg = InternalizeConfig(stages=5, seed=7, quant="f16")
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    assert InternalizeConfig(seed=8).fingerprint() != cfg.fingerprint()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stagez=3"], "unknown config key"),
        (["stages=three"], "cannot read"),
        (["schedule=cosine"], "schedule must be one of"),
        (["quant=q2_k"], "quant must be one of"),
        (["stages"], "key=value"),
    ],
)
def test_bad_config_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_overrides(overrides))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
