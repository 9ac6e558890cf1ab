"""Progressive LoRA training: one flat loop per stage, a checkpoint after each, resumable.

A step trains on `batch_size` records, packed into rows that carry the stage's shared prefix once
(internalizer/packing.py), so the loss is the one of training the records one by one while a long
template costs its length once per row. A step's rows go through the model one at a time (gradients add up),
so memory follows the widest row, and a row wider than `checkpoint_tokens` recomputes its activations in
the backward pass instead of keeping them. The loss is on answer tokens only, and logits are computed
only at the positions that predict one (`answer_logits`, `training_loss`: the one place a per-token loss
term is defined). A stage may also distil a teacher that saw the whole prompt: its cached top-K
log-probabilities at each answer token (`TeacherTokens`) add a KL term to the cross-entropy. Runs as is on
the CPU, on one GPU, and under `accelerate launch` on several.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm

from internalizer.config import InternalizeConfig
from internalizer.packing import Batch, Row, Sequence, collate, step_rows


class TrainingError(RuntimeError):
    pass


@dataclass
class TeacherTokens:
    """A teacher's distribution at each answer token of a batch (in the batch's target order): its K most
    likely tokens, their log-probabilities and the log of the mass left outside them, at temperature T."""

    ids: torch.Tensor  # (answer tokens, K) long
    logprobs: torch.Tensor  # (answer tokens, K) float
    rest: torch.Tensor  # (answer tokens,) float
    present: torch.Tensor  # (answer tokens,) bool: False where the record has no teacher entry

    def to(self, device: torch.device) -> TeacherTokens:
        return TeacherTokens(*(t.to(device) for t in (self.ids, self.logprobs, self.rest, self.present)))


@dataclass
class Objective:
    """What a stage's answer tokens are trained on: cross-entropy alone (alpha = 1, no teacher), or
    alpha * cross-entropy + (1 - alpha) * T^2 * KL(teacher || student)."""

    alpha: float = 1.0
    temperature: float = 1.0
    teacher: Any = None  # gives a batch its TeacherTokens: `teacher.tokens(batch)` (internalizer.distill)

    @property
    def distils(self) -> bool:
        return self.teacher is not None and self.alpha < 1.0


def answer_logits(model: Any, batch: Batch) -> torch.Tensor:
    """(answer tokens, vocabulary) logits: the language-model head runs only where an answer is predicted."""
    return model(**batch.inputs, logits_to_keep=batch.keep).logits


def training_loss(
    logits: torch.Tensor, batch: Batch, objective: Objective | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's loss (mean over answer tokens) and each answer token's loss: its cross-entropy, mixed
    with the KL to the teacher where the objective distils one and the record has a teacher entry.
    T^2 keeps the KL's gradients on the cross-entropy's scale whatever the temperature (Hinton et al.)."""
    per_token = F.cross_entropy(logits.float(), batch.targets, reduction="none")
    if objective is not None and objective.distils and batch.teacher is not None:
        kl = distillation_kl(logits, batch.teacher, objective.temperature)
        a, t = objective.alpha, objective.temperature
        per_token = torch.where(batch.teacher.present, a * per_token + (1 - a) * t * t * kl, per_token)
    return per_token.mean(), per_token


def distillation_kl(logits: torch.Tensor, teacher: TeacherTokens, temperature: float) -> torch.Tensor:
    """KL(teacher || student) per answer token over the teacher's top-K tokens plus one bucket for the
    rest of the vocabulary. The student's log-softmax is over the whole vocabulary, so the KL is zero only
    where the student gives each top-K token and the rest together the teacher's probabilities: a
    proper divergence, zero for the teacher itself, that also pushes mass out of the tail."""
    student = F.log_softmax(logits.float() / temperature, dim=-1)
    ids = teacher.ids.clamp(min=0)
    log_q = torch.cat(
        [student.gather(1, ids), student.scatter(1, ids, float("-inf")).logsumexp(-1, keepdim=True)], 1
    )
    log_p = torch.cat([teacher.logprobs, teacher.rest[:, None]], 1).float()
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def attn_implementation(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def lora_model(base_model: Any, cfg: InternalizeConfig) -> Any:
    torch.manual_seed(cfg.seed)  # LoRA's A matrices are drawn at random
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    base_model.config._attn_implementation = "sdpa"  # a boolean 4-D mask means "attend" under SDPA
    return get_peft_model(base_model, lora)


# ---- the loop ---------------------------------------------------------------------------------------


@dataclass
class StageResult:
    stage: int
    steps: int
    mean_loss: float
    final_loss: float
    train_tokens: int
    seconds: float
    tokens_per_s: float
    peak_memory_mb: float
    resumed: bool = False
    n_records: int = 0
    distilled: bool = False  # trained on the teacher's top-K as well as the answers


def _stage_dir(run_dir: Path, stage: int) -> Path:
    return run_dir / f"stage-{stage}"


def completed_stage(run_dir: Path, stage: int) -> StageResult | None:
    """The stage's result when its checkpoint was fully written (state.json is written last)."""
    state = _stage_dir(run_dir, stage) / "state.json"
    if not state.is_file():
        return None
    return StageResult(**{**json.loads(state.read_text()), "resumed": True})


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Checkpointing:
    """Turns activation checkpointing on for wide rows only: it saves memory at the price of recomputing
    the forward pass, worth it only where activations would be large."""

    def __init__(self, model: Any, above_tokens: int) -> None:
        self.model = model
        self.above = above_tokens
        self.on = False

    def set_for(self, row: Row) -> None:
        wanted = bool(self.above) and row.n_tokens > self.above
        if wanted == self.on:
            return
        causal_lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        kwargs = {"use_reentrant": False}  # no input needs grad (LoRA): the reentrant variant would need one
        if hasattr(causal_lm, "activation_checkpointing_enable"):  # transformers >= 5.x
            if wanted:
                causal_lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                causal_lm.activation_checkpointing_disable()
        elif wanted:
            causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            causal_lm.gradient_checkpointing_disable()
        self.on = wanted


def backward_step(
    model: Any,
    rows: list[Row],
    pad_id: int,
    device: torch.device,
    checkpointing: Checkpointing,
    backward: Any = None,
    objective: Objective | None = None,
) -> tuple[float, int]:
    """Forward and backward, row by row, of one step: gradients of the mean loss over all its answer
    tokens (each row's mean weighted by its share of them). Returns (that loss, tokens)."""
    attention = attn_implementation(checkpointing.model)
    batches = [collate([row], pad_id, attention) for row in rows]
    n_answer = sum(len(b.targets) for b in batches)
    total, tokens = 0.0, 0
    for row, batch in zip(rows, batches, strict=True):
        checkpointing.set_for(row)
        if objective is not None and objective.distils:
            batch.teacher = objective.teacher.tokens(batch)
        batch = batch.to(device)
        loss, _ = training_loss(answer_logits(model, batch), batch, objective)
        if not torch.isfinite(loss):
            return float(loss.item()), tokens
        share = loss * (len(batch.targets) / n_answer)
        (backward or torch.autograd.backward)(share)
        total += share.item()
        tokens += batch.n_tokens
    return total, tokens


def time_step(
    model: Any, rows: list[Row], pad_id: int, device: torch.device, cfg: InternalizeConfig
) -> float:
    """Seconds of one step's forward and backward passes; weights and gradients are left as they were."""
    checkpointing = Checkpointing(model, cfg.checkpoint_tokens)
    model.train()
    started = time.perf_counter()
    backward_step(model, rows, pad_id, device, checkpointing)
    seconds = time.perf_counter() - started
    checkpointing.set_for(Row(()))
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds


def train_stages(
    model: Any,
    stage_data: list[list[Sequence]],
    cfg: InternalizeConfig,
    run_dir: Path,
    pad_id: int,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    epochs: list[float] | None = None,
    teacher: Any = None,
) -> list[StageResult]:
    """Train the LoRA `model` on each stage's sequences in turn; returns one result per stage.

    `epochs` gives each stage's epochs; by default the last stage gets `final_stage_epochs`, the others
    `epochs_per_stage`. `teacher` (internalizer.distill.Teacher) is told when each stage is ready (it
    caches its outputs once its model is) and gives each stage its objective and any sequences it wrote."""
    accelerator = accelerator or Accelerator()
    if cfg.threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    checkpointing = Checkpointing(model, cfg.checkpoint_tokens)
    model = accelerator.prepare(model)
    results: list[StageResult] = []
    if teacher is not None:
        teacher.after_stage(0, accelerator.unwrap_model(model), accelerator.device)
    for index, sequences in enumerate(stage_data, start=1):
        # Resume: a finished stage is loaded from its checkpoint, not trained again.
        done = completed_stage(run_dir, index)
        if done is not None:
            weights = load_file(str(_stage_dir(run_dir, index) / "adapter_model.safetensors"))
            set_peft_model_state_dict(accelerator.unwrap_model(model), weights)
            results.append(done)
            if teacher is not None:
                teacher.after_stage(index, accelerator.unwrap_model(model), accelerator.device)
            continue
        objective = teacher.objective(index) if teacher is not None else None
        if teacher is not None:
            sequences = sequences + teacher.extra_sequences(index)
        if not sequences:
            raise TrainingError(f"stage {index} has no training sequence")

        # Data: each step's records packed into rows behind their shared prefix (a fixed, seeded order).
        if epochs is not None:
            stage_epochs = epochs[index - 1]
        else:
            stage_epochs = cfg.final_stage_epochs if index == len(stage_data) else cfg.epochs_per_stage
        batches = step_rows(sequences, cfg, index, stage_epochs)
        shard = accelerator.num_processes
        batches += batches[: -len(batches) % shard]  # every process must run the same number of steps
        steps = len(batches)

        # Optimizer: a fresh AdamW per stage, linear warm-up then constant.
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        warmup = max(1, min(cfg.warmup_steps, steps // 2))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s, w=warmup: min(1.0, (s + 1) / w))
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)

        # Loop: forward and backward row by row (logits at answer positions only), check, clip, step.
        model.train()
        losses: list[float] = []
        tokens = 0
        started = time.perf_counter()
        bar = tqdm(
            total=steps,
            desc=f"stage {index}/{len(stage_data)}",
            disable=not progress or not accelerator.is_main_process,
        )
        for step, rows in enumerate(batches):
            if step % shard != accelerator.process_index and shard > 1:
                continue  # each process takes every n-th batch; DDP averages the gradients
            loss, step_tokens = backward_step(
                model, rows, pad_id, accelerator.device, checkpointing, accelerator.backward, objective
            )
            if not math.isfinite(loss):
                raise TrainingError(f"stage {index} step {step + 1}: the loss is {loss} (lower lr?)")
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss)
            tokens += step_tokens
            bar.update(shard)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        checkpointing.set_for(Row(()))
        model.eval()
        seconds = time.perf_counter() - started
        result = StageResult(
            stage=index,
            steps=steps,
            mean_loss=sum(losses) / max(len(losses), 1),
            final_loss=losses[-1] if losses else math.nan,
            train_tokens=tokens * shard,
            seconds=round(seconds, 2),
            tokens_per_s=round(tokens * shard / max(seconds, 1e-9), 1),
            peak_memory_mb=round(_peak_memory_mb(accelerator.device), 1),
            n_records=len(sequences),
            distilled=objective is not None and objective.distils,
        )
        # Checkpoint: adapter + state into a temp dir, renamed whole, so a kill never leaves half a stage.
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_stage(accelerator.unwrap_model(model), run_dir, result)
        accelerator.wait_for_everyone()
        results.append(result)
        if teacher is not None:
            teacher.after_stage(index, accelerator.unwrap_model(model), accelerator.device)
    return results


def save_stage(model: Any, run_dir: Path, result: StageResult) -> None:
    final = _stage_dir(run_dir, result.stage)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "state.json").write_text(json.dumps(asdict(result) | {"resumed": False}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
