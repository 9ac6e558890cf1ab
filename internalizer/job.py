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
from internalizer.base import BaseModel, end_of_turn_id, load_base, resolve_base_path
from internalizer.calibrate import calibrate, generate_scored
from internalizer.calibrate import summary as calibration_summary
from internalizer.compress import compress_text
from internalizer.config import InternalizeConfig
from internalizer.dataset import (
    Example,
    Record,
    TemplateData,
    encode_pair,
    load_template_data,
    prompt_ids,
    render_stage_messages,
)
from internalizer.evaluate import gate_bar, gate_passes, score
from internalizer.export import export_model, open_llama
from internalizer.retrieve import ExampleRetriever
from internalizer.schedule import Stage, build_stages
from internalizer.train import Sequence, lora_model, train_stages


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


def run_dir_for(settings: Settings, data: TemplateData, cfg: InternalizeConfig, base_path: Path) -> Path:
    """Same template, base, config and training data -> same directory, so a re-run resumes."""
    key = "\n".join([str(base_path.resolve()), *sorted(f"{r.request_id}\t{r.target}" for r in data.train)])
    return (
        settings.runs_dir
        / data.template_id
        / f"{cfg.fingerprint()}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    )


def stage_sequences(
    stage: Stage,
    records: list[Record],
    template_text: str,
    shots: list[list[Example]],
    tokenizer: Any,
    seq_len: int,
) -> tuple[list[Sequence], int]:
    """Tokenized prompt+answer for each record; a record too long drops shots first, then is skipped."""
    end_of_turn = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    sequences, skipped = [], 0
    for record, examples in zip(records, shots, strict=True):
        for k in range(min(stage.n_examples, len(examples)), -1, -1):
            if stage.query_only:
                messages = query_only_messages(record.slots)
            else:
                messages = render_stage_messages(template_text, record.slots, examples[:k])
            ids, labels = encode_pair(tokenizer, messages, record.target, end_of_turn)
            if len(ids) <= seq_len:
                sequences.append(Sequence(ids, labels))
                break
        else:
            skipped += 1
    return sequences, skipped


def generate_answers(
    gguf_path: Path, conversations: list[list[dict[str, str]]], max_tokens: int
) -> list[str]:
    """Greedy answers of llama.cpp (the serving engine, with the GGUF's own chat template)."""
    if not conversations:
        return []
    llm = open_llama(gguf_path, n_ctx=4096)
    try:
        answers = []
        for messages in conversations:
            llm.reset()
            reply = llm.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=0.0, top_k=1
            )
            answers.append(reply["choices"][0]["message"]["content"] or "")
        return answers
    finally:
        llm.close()


def evaluate_model(
    gguf_path: Path, base: BaseModel, data: TemplateData, cfg: InternalizeConfig
) -> dict[str, Any]:
    """Held-out scores: the internalized model from the query alone; the base model as references."""
    references = [r.target for r in data.eval]
    query_only = [query_only_messages(r.slots) for r in data.eval]
    scored = generate_scored(gguf_path, query_only, cfg.max_new_tokens)  # answers + token logprobs
    scores: dict[str, Any] = {
        "internalized": score([a.text for a in scored], references, cfg.task_metric),
        "calibration": calibrate(
            scored,
            references,
            metric=cfg.route_metric,
            signal=cfg.route_signal,
            target=cfg.route_target,
            level=cfg.route_level,
            min_coverage=cfg.route_min_coverage,
        ),
    }
    if base.gguf_path is None:
        return scores  # the references run in llama.cpp, which needs the base as a GGUF
    answers = generate_answers(base.gguf_path, query_only, cfg.max_new_tokens)
    scores["base_query_only"] = score(answers, references, cfg.task_metric)
    full = [r.messages for r in data.eval if r.messages]
    if cfg.eval_base_reference and len(full) == len(data.eval):
        answers = generate_answers(base.gguf_path, full, cfg.max_new_tokens)
        scores["base_full_prompt"] = score(answers, references, cfg.task_metric)
    return scores


def internalize(
    settings: Settings,
    template_id: str,
    cfg: InternalizeConfig,
    labels_path: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = lambda message: None,
) -> JobResult:
    settings.ensure_home()
    cfg = cfg.for_template(template_id)  # per-template overrides (a stricter routing target...)
    db = open_db(settings.db_path)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    # 1. Dataset: records, deterministic split.
    data = load_template_data(
        db,
        template_id,
        min_requests=cfg.min_requests,
        eval_fraction=cfg.eval_fraction,
        min_eval=cfg.min_eval,
        max_eval=cfg.max_eval,
        max_train=cfg.max_train,
        labels_path=labels_path,
    )
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

    # 3. Template compression, once per ratio the schedule uses.
    stages = build_stages(cfg.stages, cfg.schedule, cfg.template_ratio_start, cfg.examples_start)
    texts: dict[float, str] = {}
    for stage in stages:
        if stage.template_ratio > 0 and stage.template_ratio not in texts:
            texts[stage.template_ratio] = compress_text(
                base.model, base.tokenizer, data.static_text, stage.template_ratio
            ).text
    lap("compress")

    # 4. Retrieval: nearest examples for every training record (mined pool + the other training records).
    k_max = max(s.n_examples for s in stages)
    shots: list[list[Example]] = [[] for _ in data.train]
    if k_max:
        pool = data.examples + [Example(r.request_id, r.query, r.target) for r in data.train]
        shots = ExampleRetriever(pool).top_k_batch([r.query for r in data.train], k_max)
    lap("retrieve")

    # 5. Stage data and training (resumes from the last finished stage).
    stage_data = []
    for stage in stages:
        template_text = texts.get(stage.template_ratio, "")
        sequences, skipped = stage_sequences(
            stage, data.train, template_text, shots, base.tokenizer, cfg.seq_len
        )
        if skipped:
            say(f"stage {stage.index}: {skipped} requests longer than seq_len={cfg.seq_len} were skipped")
        stage_data.append(sequences)
    model = lora_model(base.model, cfg)
    results = train_stages(
        model,
        stage_data,
        cfg,
        run_dir,
        base.tokenizer.pad_token_id,
        progress=progress,
        accelerator=accelerator,
    )
    lap("train")
    if not accelerator.is_main_process:  # under `accelerate launch`, export and registration happen once
        return JobResult(template_id, None, "worker", None, {}, [], timings, str(run_dir))
    model = accelerator.unwrap_model(model)

    # 6. Export: merge, write, verify against torch, publish under the models folder.
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

    # 7. Evaluate and register; a failure here removes the published file (no row points at it yet).
    try:
        scores = evaluate_model(exported.gguf_path, base, data, cfg)
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
    if (passed or calibration["selective"]) and cfg.activate:  # the whole model, or its confident share
        registry.activate(db, model_id)
        status = "active"
    if not passed:
        ours = scores["internalized"][cfg.gate_metric]
        kept = "served selectively" if status == "active" else "kept as candidate"
        notes.append(f"gate: {cfg.gate_metric} {ours:.3f} < {bar:.3f}; {kept}")
    result = JobResult(
        template_id=template_id,
        model_id=model_id,
        status=status,
        gguf_path=str(exported.gguf_path),
        eval_scores=scores,
        stages=[asdict(r) | asdict(s) for r, s in zip(results, stages, strict=True)],
        timings_s=timings,
        run_dir=str(run_dir),
        gguf_size_bytes=exported.size_bytes,
        notes=notes,
    )
    (run_dir / "summary.json").write_text(json.dumps(asdict(result), indent=1))
    return result
