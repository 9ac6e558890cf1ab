"""The internalization job's configuration: one small dataclass, from YAML plus `key=value` overrides.

The config is saved next to the checkpoints of every run (`config.yaml`), so a run can be resumed or
reproduced from its directory alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCHEDULES = ("linear", "exponential", "inverse-exponential")
TEACHERS = ("finetune", "base")
QUANTS = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


class ConfigError(ValueError):
    pass


@dataclass
class InternalizeConfig:
    # Base model: a llama-architecture GGUF file or a local Hugging Face directory; None = the settings' one.
    base_model: str | None = None
    # Progressive stages before the final query-only stage (the PromptIntern schedule).
    stages: int = 3
    schedule: str = "linear"
    template_ratio_start: float = 1.0  # r at stage 1; falls to 0 on the schedule
    examples_start: int = 3  # k at stage 1; falls to 0 on the schedule
    # Training.
    epochs_per_stage: float = 1.0
    final_stage_epochs: float = 2.0  # the query-only stage is what gets served: train it longer
    steps_per_stage: int = 0  # > 0 overrides the epochs (tests, benchmarks)
    batch_size: int = 16  # records per optimizer step (packed into as few rows as fit)
    # Longest training sequence; 0 = the base model's context. A longer record loses shots first, then is
    # trained on a more compressed template (the run summary counts both).
    seq_len: int = 0
    pack_tokens: int = 0  # tokens per packed row; 0 = a step's records behind one prefix, up to 4,096
    # Rows wider than this recompute their activations in the backward pass (memory over speed); 0 = never.
    checkpoint_tokens: int = 2048
    # Pack the template text every record of a stage begins with once per row, not once per record. Off
    # trains the same records and loss on whole sequences (for comparisons).
    shared_prefix: bool = True
    # Minutes the whole job may take (0 = no limit): template stages then train on fewer records; the
    # final query-only stage always trains on every record.
    budget_min: float = 0.0
    # Distillation of the prompt: the stages after the first template stage (those that see less of the
    # prompt) train on alpha * cross-entropy + (1 - alpha) * KL(teacher's top-K || student), the teacher
    # seeing the whole prompt. alpha = 1 is plain cross-entropy on the answers (no teacher pass).
    distill_alpha: float = 1.0
    distill_topk: int = 64  # teacher log-probabilities kept per answer token (plus the rest's mass)
    distill_temperature: float = 1.0
    # finetune = the model after the first (full-template) stage; base = the base model, full prompt.
    distill_teacher: str = "finetune"
    # Requests without a usable answer (logged ones, and `--queries`) the teacher answers greedily, at most.
    distill_write_max: int = 256
    lr: float = 1e-3
    warmup_steps: int = 5
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # Data.
    min_requests: int = 20  # a template with fewer logged requests is not internalized
    eval_fraction: float = 0.1
    min_eval: int = 2
    max_eval: int = 50
    max_train: int = 0  # 0 = every training request
    # Export.
    quant: str = "q8_0"
    export_lora_adapter: bool = False  # also write the LoRA alone as a llama.cpp adapter GGUF
    verify_samples: int = 4
    verify_min_agreement: float = 0.75  # share of greedy outputs llama.cpp must reproduce exactly
    # Evaluation gate.
    max_new_tokens: int = 64
    gate_metric: str = "chrf"  # exact | chrf | a task metric name
    gate_threshold: float = 0.5
    # Also require the query-only model to score at least what the base model scores with the full prompt
    # (the quality traffic gets today): a floor (gate_threshold) and a no-regression rule together.
    gate_vs_full_prompt: bool = False
    task_metric: str | None = None  # e.g. "bash": command-template match
    eval_base_reference: bool = True  # also score the base model with the full logged prompt (slower)
    activate: bool = True  # activate when the gate passes
    # Selective routing (internalizer/calibrate.py): serve only the answers confident enough that the
    # routed ones agree with upstream at least `route_target` of the time (one-sided bound at
    # `route_level` on the held-out requests). The model is activated (gate passed or not) when that
    # threshold routes at least `route_min_coverage` of the held-out requests.
    route_target: float = 0.9
    route_metric: str = "exact"  # exact | chrf | a task metric name (e.g. bash)
    route_signal: str = "sum"  # sum | mean | min token log-probability (gateway/local/confidence.py)
    route_level: float = 0.95
    route_min_coverage: float = 0.1
    # Per-template overrides of any key above, by template id (or a prefix of it), e.g. a stricter target
    # for one app: {"3fa2c1d0": {"route_target": 0.95}}. Applied by `for_template`.
    per_template: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.quant not in QUANTS:
            raise ConfigError(f"quant must be one of {', '.join(QUANTS)}, not {self.quant!r}")
        if self.stages < 0:
            raise ConfigError("stages must be >= 0")
        if not 0.0 <= self.template_ratio_start <= 1.0:
            raise ConfigError("template_ratio_start must be within [0, 1]")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError("eval_fraction must be within (0, 1)")
        if (self.seq_len and self.seq_len < 16) or self.seq_len < 0 or self.batch_size < 1:
            raise ConfigError("seq_len must be 0 (the model's context) or >= 16, and batch_size >= 1")
        if self.pack_tokens < 0 or self.checkpoint_tokens < 0:
            raise ConfigError("pack_tokens and checkpoint_tokens must be >= 0 (0 = automatic / never)")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ConfigError("distill_alpha must be within [0, 1] (1 = no distillation)")
        if self.distill_topk < 1 or self.distill_temperature <= 0:
            raise ConfigError("distill_topk must be >= 1 and distill_temperature > 0")
        if self.distill_teacher not in TEACHERS:
            raise ConfigError(
                f"distill_teacher must be one of {', '.join(TEACHERS)}, not {self.distill_teacher!r}"
            )
        if self.budget_min < 0:
            raise ConfigError("budget_min must be >= 0 (0 = no limit)")
        if not 0.0 < self.route_target <= 1.0 or not 0.5 <= self.route_level < 1.0:
            raise ConfigError("route_target must be within (0, 1] and route_level within [0.5, 1)")
        if self.route_signal not in ("mean", "min", "sum"):
            raise ConfigError(f"route_signal must be mean, min or sum, not {self.route_signal!r}")

    @property
    def distills(self) -> bool:
        return self.distill_alpha < 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_template(self, template_id: str) -> InternalizeConfig:
        """This config with the overrides `per_template` lists for `template_id` (by id or id prefix)."""
        overrides: dict[str, Any] = {}
        for key, values in self.per_template.items():
            if template_id.startswith(str(key)):
                overrides.update(values or {})
        if not overrides:
            return self
        known = {f.name for f in dataclasses.fields(self)} - {"per_template"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"per_template {template_id}: unknown config key(s): {', '.join(unknown)}")
        typed = {key: _coerce(key, value, getattr(self, key)) for key, value in overrides.items()}
        return dataclasses.replace(self, **typed)

    def fingerprint(self) -> str:
        """Short hash of everything that changes the trained weights (names a run directory)."""
        keys = (
            "base_model stages schedule template_ratio_start examples_start epochs_per_stage "
            "final_stage_epochs steps_per_stage batch_size seq_len pack_tokens lr warmup_steps lora_r "
            "lora_alpha lora_dropout lora_targets "
            "seed eval_fraction min_eval max_eval max_train budget_min"
        ).split()
        if self.distills:  # without distillation, run directories stay those of plain training
            keys += [
                "distill_alpha",
                "distill_topk",
                "distill_temperature",
                "distill_teacher",
                "distill_write_max",
            ]
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are read as YAML (so `3`, `0.5`, `true`, `[a, b]` work)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override must look like key=value, not {pair!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value != "" else None
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> InternalizeConfig:
    """The defaults, then a YAML file, then overrides; unknown keys and wrong types are errors."""
    values: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        values.update(loaded)
    values.update(overrides or {})
    known = {f.name: f for f in dataclasses.fields(InternalizeConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    defaults = InternalizeConfig()
    typed = {key: _coerce(key, value, getattr(defaults, key)) for key, value in values.items()}
    return InternalizeConfig(**typed)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Match the default's type: YAML reads `1` for a float field, or a string for an optional one."""
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, list):
            return [str(v) for v in (value.split(",") if isinstance(value, str) else value)]
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {key}: cannot read {value!r} as {type(default).__name__}") from exc
