"""The teacher of prompt distillation: a model that sees the whole prompt, its outputs cached once per run.

The query-only student learns the prompted model's distribution, not only its top-1 answer (context
distillation). The teacher is the model after the first, full-template stage (the full-prompt fine-tune
the job trains anyway) or, selectable, the base model given the full prompt. Once its weights are ready,
one no-gradient pass over every training record's full prompt (template + retrieved shots + query),
packed behind the shared prefix like training, keeps at each answer token the K most likely tokens'
log-probabilities at temperature T and the log of the mass left outside them. They go to
`<run>/teacher/` (a safetensors file and a manifest naming the teacher, K, T and the data) and are reused
by a resumed run. Requests that have no usable answer get one: the teacher writes it greedily from the
full prompt (sequence-level distillation), and its top-K on that answer joins the cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from internalizer.config import InternalizeConfig
from internalizer.packing import IGNORE, Batch, Sequence, collate, pack, row_tokens
from internalizer.train import (
    Objective,
    TeacherTokens,
    answer_logits,
    attn_implementation,
    completed_stage,
)

TEACHER_DIR = "teacher"


@dataclass
class TeacherCache:
    """Every record's teacher top-K, one row per answer token; `spans` maps a record's key to its rows."""

    ids: torch.Tensor  # (tokens, K) int32
    logprobs: torch.Tensor  # (tokens, K) float32
    rest: torch.Tensor  # (tokens,) float32
    spans: dict[str, tuple[int, int]]  # key -> (first row, answer tokens)
    manifest: dict[str, Any]

    def tokens(self, batch: Batch) -> TeacherTokens:
        """The teacher's rows for a batch's answer tokens. A record without an entry, or whose answer has
        another length than the one the teacher saw, is marked absent (it trains on cross-entropy)."""
        counts = torch.bincount(batch.owner, minlength=len(batch.keys)).tolist()
        k = self.ids.shape[1]
        ids, logprobs, rest, present = [], [], [], []
        for key, n in zip(batch.keys, counts, strict=True):
            start, length = self.spans.get(key, (0, -1))
            if length == n:
                ids.append(self.ids[start : start + n].long())
                logprobs.append(self.logprobs[start : start + n])
                rest.append(self.rest[start : start + n])
                present.append(torch.ones(n, dtype=torch.bool))
            else:
                ids.append(torch.zeros((n, k), dtype=torch.long))
                logprobs.append(torch.zeros((n, k)))
                rest.append(torch.zeros(n))
                present.append(torch.zeros(n, dtype=torch.bool))
        return TeacherTokens(torch.cat(ids), torch.cat(logprobs), torch.cat(rest), torch.cat(present))

    def save(self, folder: Path) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(
            {"ids": self.ids, "logprobs": self.logprobs, "rest": self.rest}, str(tmp / "topk.safetensors")
        )
        manifest = self.manifest | {"spans": self.spans}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            for old in folder.iterdir():
                old.unlink()
            folder.rmdir()
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> TeacherCache | None:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            tensors = load_file(str(folder / "topk.safetensors"))
        except (OSError, ValueError):
            return None
        spans = {k: (int(a), int(b)) for k, (a, b) in manifest.pop("spans").items()}
        return cls(tensors["ids"], tensors["logprobs"], tensors["rest"], spans, manifest)


@torch.no_grad()
def teacher_topk(
    model: Any,
    sequences: list[Sequence],
    k: int,
    temperature: float,
    pad_id: int,
    device: torch.device,
    cfg: InternalizeConfig,
) -> TeacherCache:
    """One no-gradient pass of `model` over `sequences` (packed behind their shared prefix): at each
    answer token the top-k log-softmax(logits / T) and the log of the mass outside them."""
    attention = attn_implementation(model)
    was_training = model.training
    model.eval()
    k_used = 0
    per_key: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for row in pack(sequences, row_tokens(sequences, cfg)):
        batch = collate([row], pad_id, attention)
        logprobs = F.log_softmax(answer_logits(model, batch.to(device)).float() / temperature, dim=-1)
        k_used = min(k, logprobs.shape[-1] - 1)  # at least one token left for the rest's bucket
        top = logprobs.topk(k_used, dim=-1)
        rest = logprobs.scatter(1, top.indices, float("-inf")).logsumexp(-1)
        counts = torch.bincount(batch.owner, minlength=len(batch.keys)).tolist()
        start = 0
        for key, n in zip(batch.keys, counts, strict=True):
            per_key[key] = (
                top.indices[start : start + n].int().cpu(),
                top.values[start : start + n].cpu(),
                rest[start : start + n].cpu(),
            )
            start += n
    model.train(was_training)
    spans, first = {}, 0
    for seq in sequences:
        n = len(per_key[seq.key][0])
        spans[seq.key] = (first, n)
        first += n
    parts = [per_key[seq.key] for seq in sequences]
    empty = (torch.zeros((0, k_used), dtype=torch.int32), torch.zeros((0, k_used)), torch.zeros(0))
    ids, values, rest = (torch.cat([p[i] for p in parts]) if parts else empty[i] for i in range(3))
    return TeacherCache(ids.contiguous(), values.contiguous(), rest.contiguous(), spans, {"k": k_used})


def data_hash(sequences: list[Sequence]) -> str:
    """Names the teacher's inputs: a cache computed on other prompts or answers is not reused."""
    digest = hashlib.sha256()
    for seq in sorted(sequences, key=lambda s: s.key):
        digest.update(json.dumps([seq.key, seq.input_ids, seq.labels]).encode())
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class Pending:
    """A logged request, or a line of `--queries`, with no usable answer: the teacher writes one."""

    key: str
    teacher_messages: list[dict[str, str]]  # the whole prompt the teacher answers
    record: Any  # internalizer.dataset.Record, its target filled in once written


class Teacher:
    """Decides when the teacher's weights are ready, computes (or reloads) its cache, and gives each
    distilled stage its objective and the sequences of the answers the teacher wrote."""

    def __init__(
        self,
        cfg: InternalizeConfig,
        run_dir: Path,
        stages: list[Any],  # internalizer.schedule.Stage
        sequences: list[Sequence],  # every training record on the whole prompt (the teacher's input)
        tokenizer: Any,
        pad_id: int,
        base_name: str,
        adapter: Path | None = None,  # the teacher's own LoRA weights (e.g. a separate full-prompt fine-tune)
        pending: list[Pending] | None = None,
        student_sequences: Callable[[int, list[Any]], list[Sequence]] | None = None,
        say: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.cfg = cfg
        self.folder = run_dir / TEACHER_DIR
        self.run_dir = run_dir
        self.stages = stages
        self.sequences = sequences
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.adapter = adapter
        self.pending = pending or []
        self.student_sequences = student_sequences
        self.say = say
        self.notes: list[str] = []
        first_has_template = bool(stages) and not stages[0].query_only
        if adapter is not None:
            self.source, self.ready_after = "adapter", 0
        elif cfg.distill_teacher == "finetune" and first_has_template:
            self.source, self.ready_after = "finetune", 1
        else:
            if cfg.distill_teacher == "finetune":
                self.notes.append("no full-template stage to fine-tune: the teacher is the base model")
            self.source, self.ready_after = "base", 0
        self.base_name = base_name
        # Stages that see less than the whole prompt learn from the teacher; a first stage with the
        # template sees what the teacher sees.
        self.distilled = {s.index for s in stages if s.index > 1 or not first_has_template}
        self.cache: TeacherCache | None = None
        self.written: list[Any] = []  # records whose answer the teacher wrote
        self.passes = 0  # teacher passes computed in this process (a resume computes none)

    # ---- called by train_stages -----------------------------------------------------------------------

    def objective(self, stage: int) -> Objective | None:
        if stage not in self.distilled or self.cache is None:
            return None
        return Objective(self.cfg.distill_alpha, self.cfg.distill_temperature, self.cache)

    def extra_sequences(self, stage: int) -> list[Sequence]:
        """Sequences of the answers the teacher wrote, in the stage's format (distilled stages only)."""
        if stage not in self.distilled or not self.written or self.student_sequences is None:
            return []
        return self.student_sequences(stage, [item.record for item in self.written])

    def after_stage(self, stage: int, model: Any, device: torch.device) -> None:
        """Stage `stage` is trained or loaded (0: before training): compute or load the cache when the
        teacher's weights are ready and a distilled stage is still to train."""
        if not self.cfg.distills or stage != self.ready_after or self.cache is not None:
            return  # alpha = 1 is plain training: no teacher pass
        if all(completed_stage(self.run_dir, s) is not None for s in self.distilled):
            return
        with self._weights(model):
            identity = self._identity()
            self._write_answers(model, device, identity)
            sequences = self.sequences + self._teacher_sequences()
            wanted = {
                "teacher": identity,
                "k": self.cfg.distill_topk,
                "temperature": self.cfg.distill_temperature,
                "data": data_hash(sequences),
            }
            cached = TeacherCache.load(self.folder)
            if cached is not None and {k: cached.manifest.get(k) for k in wanted} == wanted:
                self.cache = cached
                self.say(f"teacher ({self.source}): reusing its cached top-{cached.ids.shape[1]}")
                return
            self.say(f"teacher ({self.source}): top-{self.cfg.distill_topk} of {len(sequences)} records")
            cache = teacher_topk(
                model,
                sequences,
                self.cfg.distill_topk,
                self.cfg.distill_temperature,
                self.pad_id,
                device,
                self.cfg,
            )
            cache.manifest = wanted | {
                "k_used": cache.manifest["k"],
                "source": self.source,
                "records": len(sequences),
                "written_answers": len(self.written),
                "answer_tokens": int(cache.ids.shape[0]),
            }
            cache.save(self.folder)
            self.cache = cache
            self.passes += 1

    # ---- helpers --------------------------------------------------------------------------------------

    def _identity(self) -> str:
        if self.source == "base":
            return f"base:{self.base_name}"
        if self.source == "adapter":
            return f"adapter:{file_hash(self.adapter)}"
        return f"stage-1:{file_hash(self.run_dir / 'stage-1' / 'adapter_model.safetensors')}"

    @contextmanager
    def _weights(self, model: Any) -> Iterator[None]:
        """The teacher's weights on `model` for the duration: the adapter off (base), another adapter
        swapped in, or the weights as they are (after the full-template stage)."""
        if self.source == "base" and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield
        elif self.source == "adapter":
            saved = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
            set_peft_model_state_dict(model, load_file(str(self.adapter)))
            try:
                yield
            finally:
                set_peft_model_state_dict(model, saved)
        else:
            yield

    def _write_answers(self, model: Any, device: torch.device, identity: str) -> None:
        """Greedy answers of the teacher to the pending requests, kept in the run dir for a resume."""
        if not self.pending:
            return
        from internalizer.base import end_of_turn_id
        from internalizer.dataset import prompt_ids
        from internalizer.export import torch_greedy

        path = self.folder.with_name(TEACHER_DIR + "-answers.jsonl")
        saved: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                item = json.loads(line)
                if item.get("teacher") == identity:
                    saved[item["key"]] = item["answer"]
        stop = end_of_turn_id(self.tokenizer)
        todo = [p for p in self.pending if p.key not in saved]
        if todo:
            self.say(f"teacher ({self.source}): writing answers to {len(todo)} requests without one")
        was_training = model.training
        model.eval()
        with path.open("a") as out:
            for item in todo:
                ids = prompt_ids(self.tokenizer, item.teacher_messages)
                answer = torch_greedy(model, ids, self.cfg.max_new_tokens, stop)
                saved[item.key] = self.tokenizer.decode(answer, skip_special_tokens=True).strip()
                out.write(
                    json.dumps({"key": item.key, "teacher": identity, "answer": saved[item.key]}) + "\n"
                )
        model.train(was_training)
        self.written = []
        for item in self.pending:
            if saved.get(item.key):
                item.record.target = saved[item.key]
                self.written.append(item)

    def _teacher_sequences(self) -> list[Sequence]:
        """The teacher's own inputs for the answers it wrote: the whole prompt, then that answer."""
        from internalizer.base import end_of_turn_id
        from internalizer.dataset import encode_pair

        end_of_turn = self.tokenizer.convert_ids_to_tokens(end_of_turn_id(self.tokenizer))
        out = []
        for item in self.written:
            ids, labels = encode_pair(self.tokenizer, item.teacher_messages, item.record.target, end_of_turn)
            if any(label != IGNORE for label in labels):
                out.append(Sequence(ids, labels, key=item.key))
        return out
