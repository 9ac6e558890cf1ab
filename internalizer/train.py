"""Progressive LoRA training: one flat loop per stage, a checkpoint after each, resumable.

Sequences are packed into rows of `seq_len` tokens instead of padded: each packed row carries a
block-diagonal causal mask and restarted positions, so a sequence only ever attends to itself. The loss
is on answer tokens only (labels are -100 on prompts). Runs as is on the CPU, on one GPU, and under
`accelerate launch` on several (the Accelerator picks the device and wraps the model).
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm

from internalizer.config import InternalizeConfig


class TrainingError(RuntimeError):
    pass


@dataclass
class Sequence:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken


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


def pack(sequences: list[Sequence], seq_len: int, row_tokens: int = 0) -> list[list[Sequence]]:
    """First-fit decreasing bin packing of sequences into rows of at most `row_tokens` (default `seq_len`)
    tokens; a sequence longer than `row_tokens` but within `seq_len` gets a row of its own."""
    rows: list[list[Sequence]] = []
    room: list[int] = []
    for seq in sorted(sequences, key=lambda s: len(s.input_ids), reverse=True):
        if len(seq.input_ids) > seq_len:
            raise TrainingError(f"a sequence of {len(seq.input_ids)} tokens does not fit seq_len={seq_len}")
        if row_tokens and len(seq.input_ids) > row_tokens:
            rows.append([seq])
            room.append(0)
            continue
        for i, free in enumerate(room):
            if free >= len(seq.input_ids):
                rows[i].append(seq)
                room[i] -= len(seq.input_ids)
                break
        else:
            rows.append([seq])
            room.append((row_tokens or seq_len) - len(seq.input_ids))
    return rows


def collate(rows: list[list[Sequence]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows -> input_ids, labels, position_ids and a 4-D block-diagonal causal mask (True = attend)."""
    width = max(sum(len(s.input_ids) for s in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for s, seq in enumerate(row):
            end = start + len(seq.input_ids)
            ids[r, start:end] = torch.tensor(seq.input_ids)
            labels[r, start:end] = torch.tensor(seq.labels)
            positions[r, start:end] = torch.arange(end - start)
            segment[r, start:end] = s
            start = end
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    same = segment[:, :, None] == segment[:, None, :]
    mask = same & causal & (segment[:, :, None] >= 0)
    mask |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no all-masked row, no NaN
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask[:, None]}


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


def train_stages(
    model: Any,
    stage_data: list[list[Sequence]],
    cfg: InternalizeConfig,
    run_dir: Path,
    pad_id: int,
    progress: bool = True,
    accelerator: Accelerator | None = None,
    epochs: list[float] | None = None,
) -> list[StageResult]:
    """Train the LoRA `model` on each stage's sequences in turn; returns one result per stage.

    `epochs` gives each stage's epochs; by default the last stage gets `final_stage_epochs`, the others
    `epochs_per_stage`."""
    accelerator = accelerator or Accelerator()
    if cfg.threads and accelerator.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    model = accelerator.prepare(model)
    results: list[StageResult] = []
    for index, sequences in enumerate(stage_data, start=1):
        # Resume: a finished stage is loaded from its checkpoint, not trained again.
        done = completed_stage(run_dir, index)
        if done is not None:
            weights = load_file(str(_stage_dir(run_dir, index) / "adapter_model.safetensors"))
            set_peft_model_state_dict(accelerator.unwrap_model(model), weights)
            results.append(done)
            continue
        if not sequences:
            raise TrainingError(f"stage {index} has no training sequence that fits seq_len={cfg.seq_len}")

        # Data: pack, then shuffle the rows with a per-stage seed (a resumed run sees the same order).
        rows = pack(sequences, cfg.seq_len, cfg.pack_tokens)
        random.Random(cfg.seed * 1000 + index).shuffle(rows)
        if epochs is not None:
            stage_epochs = epochs[index - 1]
        else:
            stage_epochs = cfg.final_stage_epochs if index == len(stage_data) else cfg.epochs_per_stage
        steps = cfg.steps_per_stage or max(1, math.ceil(stage_epochs * len(rows) / cfg.batch_size))
        shard = accelerator.num_processes
        steps = math.ceil(steps / shard) * shard  # every process must run the same number of steps
        batches = [rows[(i * cfg.batch_size) % len(rows) :][: cfg.batch_size] for i in range(steps)]
        batches = [b if b else rows[: cfg.batch_size] for b in batches]

        # Optimizer: a fresh AdamW per stage, linear warm-up then constant.
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        warmup = max(1, min(cfg.warmup_steps, steps // 2))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s, w=warmup: min(1.0, (s + 1) / w))
        optimizer, scheduler = accelerator.prepare(optimizer, scheduler)

        # Loop: forward, check the loss, backward, clip, step.
        model.train()
        losses: list[float] = []
        tokens = 0
        started = time.perf_counter()
        bar = tqdm(
            total=steps,
            desc=f"stage {index}/{len(stage_data)}",
            disable=not progress or not accelerator.is_main_process,
        )
        for step, batch_rows in enumerate(batches):
            if step % shard != accelerator.process_index and shard > 1:
                continue  # each process takes every n-th batch; DDP averages the gradients
            batch = {k: v.to(accelerator.device) for k, v in collate(batch_rows, pad_id).items()}
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise TrainingError(f"stage {index} step {step + 1}: the loss is {loss.item()} (lower lr?)")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            tokens += int((batch["input_ids"] != pad_id).sum())
            bar.update(shard)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
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
        )
        # Checkpoint: adapter + state into a temp dir, renamed whole, so a kill never leaves half a stage.
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_stage(accelerator.unwrap_model(model), run_dir, result)
        accelerator.wait_for_everyone()
        results.append(result)
    return results


def save_stage(model: Any, run_dir: Path, result: StageResult) -> None:
    final = _stage_dir(run_dir, result.stage)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / "state.json").write_text(json.dumps(asdict(result) | {"resumed": False}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
