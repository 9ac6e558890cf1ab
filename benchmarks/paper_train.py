"""Train and export the table's fine-tuned methods with the internalizer's own building blocks.

A thin adapter: `internalizer.job.internalize` works on a template mined from the gateway's log, while the
benchmark trains on dataset records directly, so this module wires the same steps (template compression,
MiniLM + FAISS retrieval, stage sequences, progressive LoRA training, merge + GGUF export + llama.cpp
check) around a list of records. Each method gets a fresh copy of the base weights: export merges the LoRA
into the weights it trained.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.paper_tasks import Record, Task
from gateway.templates.query_format import query_only_messages
from internalizer.base import BaseModel
from internalizer.compress import compress_text
from internalizer.config import InternalizeConfig
from internalizer.dataset import Example, prompt_ids
from internalizer.dataset import Record as TrainRecord
from internalizer.distill import Teacher, file_hash
from internalizer.export import export_model
from internalizer.heldout import context_length
from internalizer.packing import pack, row_tokens
from internalizer.plan import plan_stage
from internalizer.retrieve import ExampleRetriever
from internalizer.schedule import Stage, build_stages
from internalizer.stage_data import stage_sequences
from internalizer.train import lora_model, train_stages


@dataclass(frozen=True)
class TrainSpec:
    """One trained method: which stages it trains and what prompt it is served."""

    key: str
    stages: tuple[Stage, ...]
    serves: str  # "full" (instructions + 5 retrieved examples) or "query"


def full_prompt_spec(key: str = "ft_full", n_shots: int = 5) -> TrainSpec:
    """Plain fine-tuning on the full prompt (whole template + k retrieved examples), served the same."""
    return TrainSpec(key, (Stage(1, 1.0, n_shots),), "full")


def query_only_spec(key: str = "ft_query") -> TrainSpec:
    """Fine-tuning on the query alone, one stage: no template, no examples, no schedule."""
    return TrainSpec(key, (Stage(1, 0.0, 0),), "query")


def promptintern_spec(key: str, cfg: InternalizeConfig) -> TrainSpec:
    """PromptIntern: `cfg.stages` progressive stages (template r_t, examples k_t falling), then query-only."""
    stages = build_stages(cfg.stages, cfg.schedule, cfg.template_ratio_start, cfg.examples_start)
    return TrainSpec(key, tuple(stages), "query")


class OverBudget(RuntimeError):
    """Training would not finish in the time left; nothing was trained."""


EXPORT_SECONDS_GUESS = 120.0  # merge + Q8_0 GGUF + llama.cpp check of a 135M model on 2 busy cores


@dataclass
class TrainedModel:
    key: str
    gguf_path: Path
    stages: list[dict[str, Any]]
    train_seconds: float
    export_seconds: float
    n_train: int
    skipped_per_stage: list[int]
    verify_agreement: float
    adapter_path: Path | None = None  # the last stage's LoRA (a teacher for another method)
    distillation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gguf_path": str(self.gguf_path), "adapter_path": str(self.adapter_path)}


class Trainer:
    """Trains every method of one dataset from the same base weights, retriever and compressed templates."""

    def __init__(
        self,
        task: Task,
        base: BaseModel,
        train_records: Sequence[Record],
        work_dir: Path,
        example_pool: Sequence[Record] = (),
    ) -> None:
        self.task = task
        self.base = base
        self.work_dir = Path(work_dir)
        self._templates: dict[float, str] = {}
        self._retriever: ExampleRetriever | None = None
        self.records = list(train_records)
        self.example_pool = list(example_pool) or self.records  # where the retrieved examples come from
        self._trained: dict[str, TrainedModel] = {}
        self.tokens_per_s = 40.0  # a first guess (2 shared cores, 135M, LoRA); updated after each run

    def template(self, ratio: float) -> str:
        """The instructions kept at `ratio` by the base model's token surprisal (computed once per ratio)."""
        if ratio <= 0:
            return ""
        if ratio not in self._templates:
            compressed = compress_text(self.base.model, self.base.tokenizer, self.task.instructions, ratio)
            self._templates[ratio] = compressed.text
        return self._templates[ratio]

    def shots(self, records: Sequence[Record], k: int) -> list[list[Example]]:
        """k nearest examples of the pool for each record (never the record itself: same input)."""
        if k <= 0:
            return [[] for _ in records]
        if self._retriever is None:
            self._retriever = ExampleRetriever([Example(r.id, r.query, r.target) for r in self.example_pool])
        return self._retriever.top_k_batch([r.query for r in records], k)

    def train(
        self,
        spec: TrainSpec,
        cfg: InternalizeConfig,
        n_train: int,
        say: Callable[[str], None] = print,
        max_seconds: float = float("inf"),
        teacher_adapter: Path | None = None,
    ) -> TrainedModel:
        # Same stages, requests and hyperparameters -> the same model: reuse it (and its checkpoints on disk).
        # Distillation changes only the stages it distils: the others stay shared with plain training.
        plain = dataclasses.replace(cfg, stages=0, schedule="linear", distill_alpha=1.0)
        common = f"{n_train}|{plain.fingerprint()}"
        distil = ""
        if cfg.distills:
            adapter = file_hash(teacher_adapter) if teacher_adapter else ""
            distil = f"|{cfg.fingerprint()}|{adapter}"
        identity = f"{spec.stages}|{common}{distil}"
        run_name = f"{spec.key}-n{n_train}-{_short_hash(identity)}"
        if identity in self._trained:
            return self._trained[identity]
        records = self.records[:n_train]
        train_records = [TrainRecord(r.id, {"query": r.query}, r.target) for r in records]
        whole = Stage(1, 1.0, cfg.examples_start)  # what the teacher sees: the whole prompt
        k_max = max([stage.n_examples for stage in spec.stages] + [whole.n_examples if cfg.distills else 0])
        shots = self.shots(records, k_max)
        stage_data, skipped = [], []
        for stage in [*spec.stages, *([whole] if cfg.distills else [])]:
            sequences, fitting = stage_sequences(
                stage,
                train_records,
                self.template,
                shots,
                self.base.tokenizer,
                cfg.seq_len or context_length(self.base),
                cfg.shared_prefix,
            )
            stage_data.append(sequences)
            skipped.append(fitting.dropped)
        teacher_data = stage_data.pop() if cfg.distills else []
        skipped = skipped[: len(spec.stages)]
        # The served (query-only) stage trains final_stage_epochs, every other stage epochs_per_stage, so
        # the full-prompt method and PromptIntern's first stage are the same training and are shared.
        epochs = [cfg.final_stage_epochs if s.query_only else cfg.epochs_per_stage for s in spec.stages]
        run_dir = self.work_dir / "runs" / run_name
        teacher = None
        if cfg.distills:
            teacher = Teacher(
                cfg,
                run_dir,
                list(spec.stages),
                teacher_data,
                self.base.tokenizer,
                self.base.tokenizer.pad_token_id,
                self.base.name,
                adapter=teacher_adapter,
                say=lambda m: say(f"  {m}"),
            )
        prefixes = [
            self.work_dir
            / "stages"
            / _short_hash(
                f"{spec.stages[: i + 1]}|{epochs[: i + 1]}|{common}"
                + (distil if teacher is not None and spec.stages[i].index in teacher.distilled else "")
            )
            for i in range(len(spec.stages))
        ]
        reused = self._restore_stages(run_dir, prefixes)
        # Methods that differ only in alpha share one teacher pass (its manifest is checked on load).
        shared_teacher = None
        if teacher is not None:
            any_alpha = dataclasses.replace(cfg, stages=0, schedule="linear", distill_alpha=0.5).fingerprint()
            adapter = file_hash(teacher_adapter) if teacher_adapter else ""
            key = f"{teacher.source}|{adapter}|{any_alpha}|{n_train}|{spec.stages[:1]}"
            shared_teacher = self.work_dir / "teachers" / _short_hash(key)
            if shared_teacher.is_dir() and not teacher.folder.is_dir():
                shutil.copytree(shared_teacher, teacher.folder)
        planned = zip(spec.stages, stage_data, epochs, strict=True)
        tokens = sum(
            plan_stage(stage, sequences, len(sequences), stage_epochs, cfg, lambda rows: 0.0).tokens
            for stage, sequences, stage_epochs in list(planned)[reused:]
        )
        if teacher is not None and reused < len(spec.stages):  # its forward pass: about a third of a step
            tokens += sum(row.n_tokens for row in pack(teacher_data, row_tokens(teacher_data, cfg))) / 3
        estimate = tokens / self.tokens_per_s + EXPORT_SECONDS_GUESS
        if estimate > max_seconds:
            raise OverBudget(
                f"~{tokens:.0f} training tokens at {self.tokens_per_s:.0f} tok/s: ~{estimate / 60:.0f} min"
            )
        if reused:
            say(f"  reusing the first {reused} stage(s) from an earlier method with the same stages")
        model = lora_model(copy.deepcopy(self.base.model), cfg)
        started = time.perf_counter()
        results = train_stages(
            model,
            stage_data,
            cfg,
            run_dir,
            self.base.tokenizer.pad_token_id,
            progress=False,
            epochs=epochs,
            teacher=teacher,
        )
        self._save_stages(run_dir, prefixes)
        if shared_teacher is not None and teacher.folder.is_dir() and not shared_teacher.is_dir():
            shutil.copytree(teacher.folder, shared_teacher)
        train_seconds = time.perf_counter() - started
        trained_tokens = sum(r.train_tokens for r in results if not r.resumed)
        trained_seconds = sum(r.seconds for r in results if not r.resumed)
        if trained_tokens and trained_seconds:
            self.tokens_per_s = trained_tokens / trained_seconds
        say(f"  trained {spec.key} on {len(records)} requests in {train_seconds:.0f}s; exporting {cfg.quant}")
        verify = [
            prompt_ids(self.base.tokenizer, query_only_messages({"query": r.query})) for r in records[:2]
        ]
        started = time.perf_counter()
        exported = export_model(
            model,
            self.base,
            self.work_dir / "models",
            run_name,
            cfg.quant,
            verify,
            max_new_tokens=16,
            min_agreement=0.0,  # recorded, not gated: near-ties of a briefly trained model flip either way
        )
        self._trained[identity] = TrainedModel(
            key=spec.key,
            gguf_path=exported.gguf_path,
            stages=[asdict(r) | asdict(s) for r, s in zip(results, spec.stages, strict=True)],
            train_seconds=round(sum(r.seconds for r in results), 1),  # shared stages count in full
            export_seconds=round(time.perf_counter() - started, 1),
            n_train=len(records),
            skipped_per_stage=skipped,
            verify_agreement=exported.verification.agreement,
            adapter_path=run_dir / f"stage-{len(spec.stages)}" / "adapter_model.safetensors",
            distillation=None
            if teacher is None
            else {
                "teacher": teacher.source,
                "alpha": cfg.distill_alpha,
                "k": cfg.distill_topk,
                "temperature": cfg.distill_temperature,
                "teacher_passes": teacher.passes,
                "distilled_stages": sorted(teacher.distilled),
            },
        )
        return self._trained[identity]

    @staticmethod
    def _restore_stages(run_dir: Path, prefixes: list[Path]) -> int:
        """Copy finished stages of an identical stage prefix into `run_dir`; the number available."""
        reused = 0
        for index, prefix in enumerate(prefixes, start=1):
            target = run_dir / f"stage-{index}"
            if not (target / "state.json").is_file():
                if not (prefix / "state.json").is_file():
                    break
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(prefix, target)
            reused = index
        return reused

    @staticmethod
    def _save_stages(run_dir: Path, prefixes: list[Path]) -> None:
        for index, prefix in enumerate(prefixes, start=1):
            if not (prefix / "state.json").is_file():
                tmp = prefix.with_name(prefix.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(run_dir / f"stage-{index}", tmp)
                shutil.rmtree(prefix, ignore_errors=True)
                tmp.rename(prefix)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]
