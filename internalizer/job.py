"""Internalize one template end to end: dataset, compression, retrieval, stages, export, evaluation, registry.

Each step is one function call into the module that owns it; this file only wires them together, times
them and writes the run summary (`summary.json` next to the config and the stage checkpoints). A failure
anywhere raises one of the package's errors with a one-line message; nothing is registered and the
template's active model is untouched unless every step before registration succeeded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from gateway.log.store import open_db
from gateway.settings import Settings
from gateway.templates.query_format import query_only_messages
from internalizer import registry
from internalizer.base import load_base, resolve_base_path
from internalizer.calibrate import summary as calibration_summary
from internalizer.config import InternalizeConfig
from internalizer.dataset import (
    DatasetError,
    Example,
    Record,
    TemplateData,
    load_for_job,
    load_queries,
    prompt_ids,
    render_stage_messages,
)
from internalizer.distill import Pending, Teacher
from internalizer.evaluate import gate_bar, gate_passes
from internalizer.export import export_model
from internalizer.heldout import context_length, estimate_finish_s, evaluate_model
from internalizer.packing import Sequence, pack, row_tokens
from internalizer.plan import apply_plan, make_plan, measure_step_cost, stage_epochs
from internalizer.retrieve import ExampleRetriever
from internalizer.schedule import Stage, build_stages
from internalizer.stage_data import Fitting, TemplateTexts, stage_sequences
from internalizer.train import completed_stage, lora_model, train_stages


@dataclass
class JobResult:
    template_id: str
    model_id: str | None
    status: str  # active | candidate | worker (a non-main process under accelerate launch)
    gguf_path: str | None
    eval_scores: dict[str, Any]
    stages: list[dict[str, Any]]
    timings_s: dict[str, float]
    run_dir: str
    gguf_size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)  # internalizer.plan.Plan, as planned before training
    fitting: list[dict[str, Any]] = field(default_factory=list)  # per stage: records shortened or left out
    minutes: dict[str, float] = field(default_factory=dict)  # planned and actual, the whole job
    distillation: dict[str, Any] = field(default_factory=dict)  # the teacher, when the job distils one


def run_dir_for(settings: Settings, data: TemplateData, cfg: InternalizeConfig, base_path: Path) -> Path:
    """Same template, base, config and training data -> same directory, so a re-run resumes."""
    key = "\n".join([str(base_path.resolve()), *sorted(f"{r.request_id}\t{r.target}" for r in data.train)])
    return (
        settings.runs_dir
        / data.template_id
        / f"{cfg.fingerprint()}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    )


def internalize(
    settings: Settings,
    template_id: str,
    cfg: InternalizeConfig,
    labels_path: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda message: None,
    queries_path: Path | None = None,
) -> JobResult:
    settings.ensure_home()
    cfg = cfg.for_template(template_id)  # per-template overrides (a stricter routing target...)
    db = open_db(settings.db_path)
    timings: dict[str, float] = {}
    started = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    # 1. Dataset: records, deterministic split.
    data = load_for_job(db, template_id, cfg, labels_path)
    queries = load_queries(queries_path) if queries_path else []
    if queries and not cfg.distills:
        raise DatasetError("--queries needs a teacher to answer them: set -o distill_alpha below 1")
    lap("dataset")

    # 2. Base model (GGUF or HF dir), checked before any slow work; the run dir depends on it.
    accelerator = Accelerator()  # one process here; one per GPU under `accelerate launch`
    base_path = resolve_base_path(settings, cfg.base_model)
    base = load_base(base_path, device=accelerator.device)
    run_dir = run_dir_for(settings, data, cfg, base_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    say(f"template {template_id}: {len(data.train)} train / {len(data.eval)} held-out; run dir {run_dir}")
    lap("load_base")

    # 3. Template compression, once per ratio the schedule uses (more on demand for records that are long).
    stages = build_stages(cfg.stages, cfg.schedule, cfg.template_ratio_start, cfg.examples_start)
    templates = TemplateTexts(base, data.static_text)
    for stage in stages:
        templates(stage.template_ratio)
    lap("compress")

    # 4. Retrieval: nearest examples for every training record (mined pool + the other training records).
    # The teacher sees the whole prompt: the whole template and examples_start shots.
    k_max = max([s.n_examples for s in stages] + [cfg.examples_start if cfg.distills else 0])
    pending = (data.unanswered + queries)[: cfg.distill_write_max] if cfg.distills else []
    shots: list[list[Example]] = [[] for _ in data.train]
    pending_shots: dict[str, list[Example]] = {r.request_id: [] for r in pending}
    if k_max:
        pool = data.examples + [Example(r.request_id, r.query, r.target) for r in data.train]
        retriever = ExampleRetriever(pool)
        shots = retriever.top_k_batch([r.query for r in data.train], k_max)
        if pending:
            found = retriever.top_k_batch([r.query for r in pending], k_max)
            pending_shots = {r.request_id: s for r, s in zip(pending, found, strict=True)}
    lap("retrieve")

    # 5. Stage data: each record fitted into the longest sequence allowed (the model's context by default).
    max_len = cfg.seq_len or context_length(base)
    stage_data, fitting = [], []
    for stage in stages:
        sequences, fitted = stage_sequences(
            stage, data.train, templates, shots, base.tokenizer, max_len, cfg.shared_prefix
        )
        if fitted.describe():
            say(fitted.describe())
        if not sequences:
            raise DatasetError(
                f"stage {stage.index}: no record fits in {max_len} tokens, not even its query alone"
            )
        stage_data.append(sequences)
        fitting.append(fitted.to_dict())
    lap("stage_data")

    # 5b. The distillation teacher: every record on the whole prompt, and the requests it will answer.
    teacher = None
    if cfg.distills:
        whole = Stage(1, 1.0, cfg.examples_start)
        teacher_data = stage_data[0] if stages[0] == whole else None
        if teacher_data is None:
            teacher_data, _ = stage_sequences(
                whole, data.train, templates, shots, base.tokenizer, max_len, cfg.shared_prefix
            )

        def student_sequences(stage_index: int, records: list[Record]) -> list[Sequence]:
            stage = stages[stage_index - 1]
            found = [pending_shots[r.request_id] for r in records]
            return stage_sequences(
                stage, records, templates, found, base.tokenizer, max_len, cfg.shared_prefix
            )[0]

        teacher = Teacher(
            cfg,
            run_dir,
            stages,
            teacher_data,
            base.tokenizer,
            base.tokenizer.pad_token_id,
            base.name,
            pending=[
                Pending(
                    r.request_id,
                    render_stage_messages(
                        templates(1.0), r.slots, pending_shots[r.request_id][: cfg.examples_start]
                    ),
                    r,
                )
                for r in pending
            ],
            student_sequences=student_sequences,
            say=say,
        )
        for note in teacher.notes:
            say(note)

    # 6. Plan: time a step of the first and last stages, estimate the rest, fit the budget, say it.
    model = lora_model(base.model, cfg)
    pad_id = base.tokenizer.pad_token_id
    epochs = stage_epochs(stages, cfg)
    done = {s.index for s in stages if completed_stage(run_dir, s.index) is not None}
    cost = measure_step_cost(model, stages, stage_data, cfg, pad_id, accelerator.device, done)
    finish_s = estimate_finish_s(base, data, cfg, stage_data[-1])
    teacher_s = 0.0
    if teacher is not None and not teacher.distilled <= done:
        # A no-gradient pass costs about a third of a training step (forward only).
        teacher_s = (
            sum(cost([row]) for row in pack(teacher.sequences, row_tokens(teacher.sequences, cfg))) / 3
        )
    plan = make_plan(
        stages,
        stage_data,
        epochs,
        cfg,
        cost,
        time.perf_counter() - started,
        finish_s,
        done,
        _saved(run_dir),
        teacher_s=teacher_s,
    )
    plan.save(run_dir / "plan.json")
    for line in plan.describe():
        say(line)
    lap("plan")

    # 7. Training (resumes from the last finished stage).
    results = train_stages(
        model,
        apply_plan(plan, stage_data, cfg.seed),
        cfg,
        run_dir,
        pad_id,
        progress=progress,
        accelerator=accelerator,
        epochs=epochs,
        teacher=teacher,
    )
    lap("train")
    if not accelerator.is_main_process:  # under `accelerate launch`, export and registration happen once
        return JobResult(template_id, None, "worker", None, {}, [], timings, str(run_dir))
    model = accelerator.unwrap_model(model)

    # 8. Export: merge, write, verify against torch, publish under the models folder.
    model_id = registry.new_model_id(template_id)
    verify_prompts = [
        prompt_ids(base.tokenizer, query_only_messages(r.slots)) for r in data.eval[: cfg.verify_samples]
    ]
    exported = export_model(
        model,
        base,
        settings.models_dir,
        model_id,
        cfg.quant,
        verify_prompts,
        cfg.max_new_tokens,
        cfg.verify_min_agreement,
        lora_adapter=cfg.export_lora_adapter,
    )
    lap("export")

    # 9. Evaluate and register; a failure here removes the published file (no row points at it yet).
    try:
        scores = evaluate_model(exported.gguf_path, base, data, cfg, say)
        scores["verification"] = {
            "agreement": exported.verification.agreement,
            "n": exported.verification.n,
            "near_ties": exported.verification.n_near_tie,
            "adapter_agreement": exported.verification.adapter_agreement,
        }
        lap("evaluate")
        calibration = scores.pop("calibration")
        registry.register(
            db,
            model_id=model_id,
            template_id=template_id,
            gguf_path=exported.gguf_path,
            sha256=exported.sha256,
            quant=exported.quant,
            base_model=str(base.source),
            config=cfg.to_dict(),
            stage_losses=[asdict(r) for r in results],
            eval_scores=scores,
            n_train_requests=len(data.train),
            calibration=calibration,
        )
    except BaseException:
        exported.gguf_path.unlink(missing_ok=True)
        if exported.adapter_path:
            exported.adapter_path.unlink(missing_ok=True)
        raise
    bar = gate_bar(scores, cfg.gate_metric, cfg.gate_threshold, cfg.gate_vs_full_prompt)
    passed = gate_passes(scores["internalized"], cfg.gate_metric, bar)
    status = "candidate"
    notes = [calibration_summary(calibration)]
    notes += [line for f in fitting if (line := Fitting(**f).describe())]
    if (passed or calibration["selective"]) and cfg.activate:  # the whole model, or its confident share
        registry.activate(db, model_id)
        status = "active"
    if not passed:
        ours = scores["internalized"][cfg.gate_metric]
        kept = "served selectively" if status == "active" else "kept as candidate"
        notes.append(f"gate: {cfg.gate_metric} {ours:.3f} < {bar:.3f}; {kept}")
    planned = {p.stage: p for p in plan.stages}
    result = JobResult(
        template_id=template_id,
        model_id=model_id,
        status=status,
        gguf_path=str(exported.gguf_path),
        eval_scores=scores,
        stages=[
            asdict(r) | asdict(s) | {"planned_s": planned[s.index].expected_s}
            for r, s in zip(results, stages, strict=True)
        ],
        timings_s=timings,
        run_dir=str(run_dir),
        gguf_size_bytes=exported.size_bytes,
        notes=notes,
        plan=plan.to_dict(),
        fitting=fitting,
        minutes={
            "planned": round(plan.total_s / 60, 2),
            "actual": round((time.perf_counter() - started) / 60, 2),
            "budget": cfg.budget_min,
        },
        distillation=_distillation_summary(teacher),
    )
    say(f"planned {result.minutes['planned']:.1f} min, took {result.minutes['actual']:.1f} min")
    (run_dir / "summary.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def _distillation_summary(teacher: Teacher | None) -> dict[str, Any]:
    if teacher is None:
        return {}
    manifest = teacher.cache.manifest if teacher.cache is not None else {}
    return {
        "teacher": teacher.source,
        "identity": manifest.get("teacher"),
        "alpha": teacher.cfg.distill_alpha,
        "k": manifest.get("k_used"),
        "temperature": teacher.cfg.distill_temperature,
        "distilled_stages": sorted(teacher.distilled),
        "teacher_passes": teacher.passes,
        "written_answers": len(teacher.written),
        "notes": teacher.notes,
    }


def _saved(run_dir: Path) -> dict[int, int] | None:
    """Records per stage of the plan an earlier, interrupted run of this job chose (a resume keeps them)."""
    path = run_dir / "plan.json"
    if not path.is_file() or completed_stage(run_dir, 1) is None:
        return None
    try:
        return {int(s["stage"]): int(s["records"]) for s in json.loads(path.read_text())["stages"]}
    except (ValueError, KeyError, TypeError):
        return None
