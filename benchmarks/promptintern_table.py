"""Side-by-side benchmark of PromptIntern against the paper's baselines, on real NL-to-code data.

Usage (from the repository root):

    .venv/bin/python -m benchmarks.promptintern_table --dataset nl2bash --config cpu
    .venv/bin/python -m benchmarks.promptintern_table --dataset all --config full     # a GPU machine
    .venv/bin/python -m benchmarks.promptintern_table --dataset nl2bash --config smoke  # harness check

For each dataset it trains and evaluates, on SmolLM2-135M-Instruct and the same train/dev split:
the base model with the full prompt (instructions + 5 examples retrieved by MiniLM + FAISS), with that
prompt compressed by token surprisal to 50% and 25%, and with 5 fixed examples whose prefix llama.cpp
reuses from its KV cache; the model fine-tuned on the full prompt; fine-tuned on the query alone in one
stage; and PromptIntern (progressive template compression and example absorption, served the query
alone). Every local method runs on the same Q8_0 GGUF quantization in llama.cpp, with n_threads = the
cores given to this process and the same generation cap. Then the ablations (schedule, number of
stages, training requests), each a PromptIntern model served the query alone.

Writes benchmarks/results/<dataset>.json (every figure), <dataset>.md (the table) and <dataset>_*.png
(plots) after every finished method, so a run cut short leaves a file marked `"partial": true`.
Configurations: `smoke` (minutes), `cpu` (a subset and a short schedule; under 60 minutes per dataset on
a 2-core machine, enforced by a time budget that skips, and records, whatever would not fit), `full` (all
dev requests, the paper's sizes; meant for a GPU machine, where training runs on CUDA and llama.cpp on
the CPU cores). The configuration that ran is printed and stored in the results.
Trained models and checkpoints go under --work-dir (default ~/.cache/promptintern-bench); a re-run
resumes from the finished stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.environment import apply_defaults  # noqa: E402

apply_defaults()  # offline, and llama.cpp's threads sleep while they wait (120 s -> 19 s per request here)

from benchmarks import paper_prompts as prompts  # noqa: E402
from benchmarks.paper_cost import load_price_model  # noqa: E402
from benchmarks.paper_llama import LlamaRunner, Measurement, cpu_threads  # noqa: E402
from benchmarks.paper_results import Results, add_upstream_costs, check_targets  # noqa: E402
from benchmarks.paper_tasks import TASKS, Record, Task  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class RunConfig:
    name: str
    n_pool: int  # training records loaded: the example pool and the training requests (a seeded subset)
    n_train: int  # training requests of the main trained methods
    n_dev: int  # dev requests scored for the main table
    n_dev_ablation: int  # dev requests scored for each ablation point
    max_tokens: int  # generation cap, the same for every method
    budget_min: float  # the run skips (and records) what would not finish in this many minutes
    # Training (InternalizeConfig fields): the same for every trained method.
    train: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = ()
    stage_counts: tuple[int, ...] = ()  # total stages T, the last one query-only (T=1 is one-stage FT)
    train_sizes: tuple[int, ...] = ()
    # Progressive stages of the schedule ablation: with 1 every schedule keeps the whole template.
    schedule_stages: int = 3


CONFIGS: dict[str, RunConfig] = {
    "smoke": RunConfig(
        "smoke", n_pool=100, n_train=6, n_dev=2, n_dev_ablation=2, max_tokens=12, budget_min=30,
        train={"stages": 1, "epochs_per_stage": 1.0, "final_stage_epochs": 1.0, "batch_size": 2},
        schedules=("exponential",), stage_counts=(1, 2), train_sizes=(6,),
    ),
    # 100 training requests, 32 dev, the job's default batches and packing: PromptIntern's full-prompt stage
    # (1 epoch) is shared with the full-prompt method; the budget skips what won't fit.
    "cpu": RunConfig(
        "cpu", n_pool=2000, n_train=100, n_dev=32, n_dev_ablation=32, max_tokens=32, budget_min=57,
        train={"stages": 1, "epochs_per_stage": 1.0, "final_stage_epochs": 3.0, "lr": 2e-3},
        schedules=("linear", "exponential", "inverse-exponential"), stage_counts=(1, 2, 3, 4),
        train_sizes=(100, 300, 1000), schedule_stages=2,
    ),
    "full": RunConfig(
        "full", n_pool=0, n_train=1000, n_dev=0, n_dev_ablation=200, max_tokens=64, budget_min=600,
        train={"stages": 3, "epochs_per_stage": 1.0, "final_stage_epochs": 3.0},
        schedules=("linear", "exponential", "inverse-exponential"), stage_counts=(1, 2, 3, 4),
        train_sizes=(100, 300, 1000),
    ),
}  # fmt: skip
# Shared by every trained method: start PromptIntern where full-prompt fine-tuning is (whole template,
# 5 examples). Every local method, the base model included, runs on the same Q8_0 quantization: a merged
# model re-quantized to 4 bits loses its fine-tuning (see the README), and Q8_0 evaluates prompts faster.
# Prompt distillation of the "+ distillation" rows (and the centre of its ablations): the teacher is the
# full-prompt fine-tune, its top-64 at every answer token, half cross-entropy, half KL.
DISTILL = {
    "distill_alpha": 0.5,
    "distill_topk": 64,
    "distill_temperature": 1.0,
    "distill_teacher": "finetune",
}
DISTILL_ALPHAS = (0.0, 0.5, 1.0)
DISTILL_TOPKS = (1, 16, 64)
DISTILL_TEACHERS = ("base", "finetune")
TRAIN_DEFAULTS = {
    "template_ratio_start": 1.0,
    "examples_start": 5,
    "lr": 1e-3,
    "quant": "q8_0",
    "warmup_steps": 2,
}


class Budget:
    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + 60 * minutes

    def left_s(self) -> float:
        return self.deadline - time.monotonic()


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_records(task: Task, rc: RunConfig) -> tuple[list[Record], list[Record]]:
    pool = task.load("train", limit=rc.n_pool, seed=0)
    dev = task.load("dev", limit=rc.n_dev, seed=0)
    return pool, dev


def measured_entry(
    task: Task, records: list[Record], run: Measurement, price_per_hour_cost
) -> dict[str, Any]:
    perf = run.summary()
    return {
        "metrics": task.evaluate(run.replies, records),
        "perf": perf,
        "cost_per_1k_local": price_per_hour_cost(perf["throughput_rps"]),
        "samples": [
            {"query": r.query, "target": r.target, "reply": reply}
            for r, reply in list(zip(records, run.replies, strict=True))[:5]
        ],
    }


def run_dataset(
    task: Task, rc: RunConfig, out_dir: Path, work_dir: Path, args: argparse.Namespace
) -> Results:
    from benchmarks.paper_train import (
        OverBudget,
        Trainer,
        full_prompt_spec,
        promptintern_spec,
        query_only_spec,
    )
    from gateway.upstream.base_model import smollm2_gguf_path
    from internalizer.base import load_base
    from internalizer.config import load_config

    budget = Budget(rc.budget_min)
    prices = load_price_model(args.upstream_model, args.local_price_per_hour)
    pool, dev = load_records(task, rc)
    train_records = pool[: max([rc.n_train, *rc.train_sizes])]
    threads = cpu_threads()
    train_cfg = load_config(overrides={**TRAIN_DEFAULTS, **rc.train, "threads": threads})
    base = load_base(smollm2_gguf_path())
    base_gguf = _base_in_quant(base, work_dir, train_cfg.quant)
    want = _wanted(args.methods)
    results = Results(
        out_dir,
        task.name,
        {
            "config": rc.name,
            "config_values": dataclasses.asdict(rc),
            "train_config": train_cfg.to_dict(),
            "n_dev": len(dev),
            "n_train": rc.n_train,
            "n_pool": len(pool),
            "n_threads": threads,
            "max_tokens": rc.max_tokens,
            "quant": train_cfg.quant.upper(),
            "base_model": base_gguf.name,
            "metric_names": list(task.score(["x"], ["x"]).keys()),
            "primary_metric": task.primary_metric,
            "price_model": prices.to_dict() | {"notes": "see benchmarks/paper_cost.py"},
            "command": " ".join(sys.argv),
            "distill": DISTILL,
        },
        stem=task.name + args.suffix,
    )
    say(
        f"config {rc.name}: {task.name}, {len(dev)} dev / {len(pool)} pool / {rc.n_train} train; "
        f"{threads} threads"
    )

    results.data["machine"]["training_device"] = str(next(base.model.parameters()).device)
    trainer = Trainer(task, base, train_records, work_dir / task.name, example_pool=pool)
    say("retrieving 5 examples per dev request (MiniLM + FAISS over the training pool)")
    dev_shots = _dev_shots(pool, dev)
    full = [prompts.full_messages(task, shots, r.query) for r, shots in zip(dev, dev_shots, strict=True)]
    fixed = prompts.fixed_shots(pool)
    fixed_full = [prompts.full_messages(task, fixed, r.query) for r in dev]
    query_only = [prompts.query_messages(r.query) for r in dev]
    cost = prices.local_per_1k
    n_ctx = 2048

    # 1. Untrained methods, on the base GGUF.
    runner = LlamaRunner(base_gguf, n_ctx=n_ctx, n_threads=threads)
    if want("base_full"):
        say("base model, full prompt (no prefix reuse)")
        results.add_method("base_full", measured_entry(task, dev, runner.measure(full, rc.max_tokens), cost))
    if want("base_full_cached"):
        say("base model, fixed examples, prefix KV cache reused")
        entry = measured_entry(task, dev, runner.measure(fixed_full, rc.max_tokens, reuse_prefix=True), cost)
        results.add_method("base_full_cached", entry)
    static_tokens = {
        "retrieved": len(runner.llm.tokenize(task.instructions.encode(), add_bos=False)),
        "fixed": len(runner.llm.tokenize(prompts.context_text(task, fixed).encode(), add_bos=False)),
    }
    if want("base_compressed_50") or want("base_compressed_25"):
        say("compressing instructions + examples by token surprisal (50% and 25%)")
        compressed = _compress_contexts(task, base, dev_shots, (0.5, 0.25))
        for ratio, (contexts, seconds) in compressed.items():
            messages = [prompts.compressed_messages(c, r.query) for c, r in zip(contexts, dev, strict=True)]
            entry = measured_entry(task, dev, runner.measure(messages, rc.max_tokens), cost)
            entry["compression_ms_per_request"] = 1000 * seconds / max(len(dev), 1)
            results.add_method(f"base_compressed_{int(ratio * 100)}", entry)
    if "base_full" in results.methods and "base_full_cached" in results.methods:
        add_upstream_costs(results, prices, static_tokens)
    runner.close()

    # 2. Trained methods (cheapest first), each exported to a Q8_0 GGUF and served by llama.cpp. The
    # full-prompt fine-tune is PromptIntern's first stage (shared) and the distilled methods' teacher; it is
    # evaluated last, on full prompts, the slowest evaluation.
    distill_cfg = dataclasses.replace(train_cfg, **DISTILL)
    specs = [
        (query_only_spec(), query_only, train_cfg),
        (promptintern_spec("promptintern", train_cfg), query_only, train_cfg),
        (promptintern_spec("promptintern_distill", distill_cfg), query_only, distill_cfg),
        (query_only_spec("ft_query_distill"), query_only, distill_cfg),
        (full_prompt_spec(), full, train_cfg),
    ]
    trained: dict[str, Any] = {}
    # Time to serve the dev set once with a full prompt: what evaluating a trained method may cost.
    p50_s = results.methods.get("base_full", {}).get("perf", {}).get("latency_p50_ms", 5000) / 1000
    eval_s = p50_s * (len(dev) + 1)
    for spec, requests, cfg in specs:
        if not want(spec.key):
            continue
        if budget.left_s() < 60:
            results.skip(spec.key, f"time budget of {rc.budget_min} min spent")
            continue
        say(f"training {spec.key}: stages {[(s.template_ratio, s.n_examples) for s in spec.stages]}")
        try:
            teacher = None
            if spec.key == "ft_query_distill":  # one stage: its teacher is the separate full-prompt fine-tune
                full_ft = trainer.train(
                    full_prompt_spec(), train_cfg, rc.n_train, say, budget.left_s() - eval_s
                )
                teacher = full_ft.adapter_path
            model = trainer.train(
                spec, cfg, rc.n_train, say, max_seconds=budget.left_s() - eval_s, teacher_adapter=teacher
            )
        except OverBudget as exc:
            results.skip(spec.key, f"time budget of {rc.budget_min} min: {exc}")
            continue
        except Exception as exc:  # one method failing must not lose the others
            results.skip(spec.key, f"{type(exc).__name__}: {exc}")
            continue
        trained[spec.key] = model
        runner = LlamaRunner(model.gguf_path, n_ctx=n_ctx, n_threads=threads)
        entry = measured_entry(task, dev, runner.measure(requests, rc.max_tokens), cost)
        runner.close()
        results.add_method(spec.key, entry | {"training": model.to_dict()})
    check_targets(results, task.primary_metric)

    # 3. Ablations: PromptIntern variants, query-only on a dev subset; the main runs are reused where equal.
    try:
        _run_ablations(
            results,
            task,
            rc,
            train_cfg,
            trainer,
            dev[: rc.n_dev_ablation],
            budget,
            n_ctx,
            threads,
            args.ablations.split(","),
        )
    except Exception as exc:  # the main table is already written; record why the ablations stopped
        results.skip("ablations", f"{type(exc).__name__}: {exc}")
    check_targets(results, task.primary_metric)
    results.save(final=True)
    return results


def _base_in_quant(base, work_dir: Path, quant: str) -> Path:
    """The base model re-written in the trained models' quantization (same metadata), written once."""
    from internalizer.export import write_gguf

    path = work_dir / f"base.{quant}.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        write_gguf(tmp, base.model, base, quant)
        tmp.rename(path)
    return path


def _dev_shots(pool: list[Record], dev: list[Record]) -> list[list[Any]]:
    from internalizer.dataset import Example
    from internalizer.retrieve import ExampleRetriever

    retriever = ExampleRetriever([Example(r.id, r.query, r.target) for r in pool])
    return retriever.top_k_batch([r.query for r in dev], prompts.N_SHOTS)


def _compress_contexts(task: Task, base, dev_shots, ratios) -> dict[float, tuple[list[str], float]]:
    """Each context pruned to every ratio; the base model scores a context's tokens once for all ratios."""
    from internalizer import compress

    out: dict[float, tuple[list[str], float]] = {ratio: ([], 0.0) for ratio in ratios}
    for shots in dev_shots:
        text = prompts.context_text(task, shots)
        started = time.perf_counter()
        info, offsets = compress.token_self_information(base.model, base.tokenizer, text)
        units = compress.score_units(compress.split_units(text), info, offsets)
        scoring_s = time.perf_counter() - started
        for ratio in ratios:
            started = time.perf_counter()
            keep = compress.select_units(units, ratio)
            kept = "".join(text[u.start : u.end] for u, k in zip(units, keep, strict=True) if k)
            texts, seconds = out[ratio]
            texts.append(compress._tidy(kept))  # noqa: SLF001 (the same tidying compress_text applies)
            out[ratio] = (texts, seconds + scoring_s + time.perf_counter() - started)
    return out


def _wanted(methods: str) -> Any:
    chosen = {m.strip() for m in methods.split(",") if m.strip()}
    return lambda key: "all" in chosen or key in chosen


def _run_ablations(results, task, rc, train_cfg, trainer, dev, budget, n_ctx, threads, kinds) -> None:
    from benchmarks.paper_train import OverBudget, promptintern_spec, query_only_spec

    requests = [prompts.query_messages(r.query) for r in dev]
    # Cheapest first: the points equal to a main run (stages 1 and 2, the main size) need no training, and
    # every PromptIntern variant reuses the shared full-prompt first stage; the costliest points come last.
    stage_points = [("stages", t, {"stages": t - 1}, rc.n_train) for t in rc.stage_counts]
    cheap = [p for p in stage_points if p[1] <= rc.schedule_stages + 1]
    # Distillation: one setting moved at a time from the main "+ distillation" row (which is reused).
    distill_points = [
        ("distill_alpha", a, {**DISTILL, "distill_alpha": a}, rc.n_train) for a in DISTILL_ALPHAS
    ]
    distill_points += [("distill_topk", k, {**DISTILL, "distill_topk": k}, rc.n_train) for k in DISTILL_TOPKS]
    distill_points += [
        ("distill_teacher", t, {**DISTILL, "distill_teacher": t}, rc.n_train) for t in DISTILL_TEACHERS
    ]
    points = cheap + distill_points
    points += [
        ("schedule", s, {"schedule": s, "stages": rc.schedule_stages}, rc.n_train) for s in rc.schedules
    ]
    points += [p for p in stage_points if p not in cheap]
    points += [("train_size", n, {}, n) for n in rc.train_sizes]
    points = [p for p in points if "all" in kinds or p[0] in kinds]
    for kind, value, overrides, n_train in points:
        if n_train > len(trainer.records):
            results.skip(f"ablation {kind}={value}", f"only {len(trainer.records)} training requests loaded")
            continue
        if budget.left_s() < 30:  # a reused model still needs its evaluation
            results.skip(f"ablation {kind}={value}", f"time budget of {rc.budget_min} min spent")
            continue
        cfg = dataclasses.replace(train_cfg, **overrides)
        spec = query_only_spec() if cfg.stages == 0 else promptintern_spec("promptintern", cfg)
        say(f"ablation {kind}={value}: {len(spec.stages)} stages, {n_train} requests")
        try:
            # A main run with the same stages and requests is reused, not trained again.
            model = trainer.train(spec, cfg, n_train, say, max_seconds=budget.left_s() - 60)
        except OverBudget as exc:
            results.skip(f"ablation {kind}={value}", f"time budget of {rc.budget_min} min: {exc}")
            continue
        except Exception as exc:
            results.skip(f"ablation {kind}={value}", f"{type(exc).__name__}: {exc}")
            continue
        runner = LlamaRunner(model.gguf_path, n_ctx=n_ctx, n_threads=threads)
        run = runner.measure(requests, rc.max_tokens)
        runner.close()
        entry = {
            "value": value,
            "n_train": n_train,
            "n_dev": len(dev),
            "metrics": task.evaluate(run.replies, dev),
            "train_seconds": model.train_seconds,
            "stages": [(s["template_ratio"], s["n_examples"]) for s in model.stages],
        }
        results.add_ablation(kind, entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=[*TASKS, "all"], default="nl2bash")
    parser.add_argument("--config", choices=list(CONFIGS), default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "promptintern-bench")
    parser.add_argument("--budget-min", type=float, default=None, help="override the config's time budget")
    parser.add_argument("--n-train", type=int, default=None, help="override the training requests")
    parser.add_argument(
        "--n-dev", type=int, default=None, help="override the dev requests (main and ablations)"
    )
    parser.add_argument(
        "--upstream-model", default="gpt-4o-mini", help="litellm cost-map name for API prices"
    )
    parser.add_argument("--local-price-per-hour", type=float, default=0.10, help="dollars per machine-hour")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--methods",
        default="all",
        help="comma-separated method keys to run (default: all), e.g. ft_full,ft_query",
    )
    parser.add_argument(
        "--ablations",
        default="all",
        help="comma-separated ablation kinds (schedule, stages, train_size, distill_alpha, distill_topk, "
        "distill_teacher), 'all' or 'none'",
    )
    parser.add_argument("--suffix", default="", help="results file names: <dataset><suffix>.json/.md/.png")
    args = parser.parse_args(argv)
    rc = CONFIGS[args.config]
    if args.budget_min is not None:
        rc = dataclasses.replace(rc, budget_min=args.budget_min)
    if args.n_train is not None:
        sizes = tuple(sorted({args.n_train, *rc.train_sizes}))
        rc = dataclasses.replace(rc, n_train=args.n_train, train_sizes=sizes)
    if args.n_dev is not None:
        rc = dataclasses.replace(rc, n_dev=args.n_dev, n_dev_ablation=args.n_dev)
    datasets = list(TASKS) if args.dataset == "all" else [args.dataset]
    say(f"running config '{rc.name}' on {', '.join(datasets)}: {rc}")
    for name in datasets:
        results = run_dataset(TASKS[name], rc, args.out, args.work_dir / rc.name, args)
        if not args.no_plots:
            from benchmarks.paper_plots import write_plots

            write_plots(results.data, args.out, results.json_path.stem)
        say(f"{name}: wrote {results.json_path} and {results.md_path} (config '{rc.name}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
