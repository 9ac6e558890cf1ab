"""The long-template case of the internalization benchmark: a Banking77 support app (a ~900-token prompt).

Logs the app's traffic (instructions, the 77 labels, 3 fixed examples, the customer's message; the logged
answer is the intent label) into a fresh home, mines it, and measures on SmolLM2-135M with the job's
default configuration:

1. Shared-prefix packing: training tokens per epoch of every stage with and without it, and seconds per
   stage: rows of each kind are timed (forward + backward, no update) and every step is costed from its
   rows, as the job's own plan does (a whole unpacked template stage would take hours here).
2. Evaluation as fast as serving: the base model answering held-out requests with the full prompt in
   llama.cpp, with the cache reset before every request vs its prefix kept.
3. The whole default job (`internalizer.job.internalize`) within `--budget-min`, with held-out accuracy
   (exact label match) of the query-only model against the base model given the full prompt.

`--dataset nl2bash|conala|tldr` builds the same kind of app on another dataset (its instructions, 3 fixed
examples, the user's request; the logged answer is the reference) and runs the same default job on it.

Writes benchmarks/results/internalize_long.{json,md} (internalize_<dataset>.* for another dataset), and
internalize_datasets.md, the default job on every dataset that has results. Run through
benchmarks/internalize.py:
  .venv/bin/python benchmarks/internalize.py --long --requests 500 --budget-min 30
  .venv/bin/python benchmarks/internalize.py --long --dataset nl2bash --requests 500 --budget-min 15 \
      --skip-packing --eval-requests 0
"""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.paper_prompts import fixed_shots, full_messages
from benchmarks.paper_tasks import TASKS
from gateway.log.store import open_db
from gateway.settings import load_settings
from internalizer.base import load_base, resolve_base_path
from internalizer.config import InternalizeConfig, load_config
from internalizer.dataset import Example, load_for_job
from internalizer.heldout import context_length, generate_answers, n_ctx_for
from internalizer.job import internalize
from internalizer.mine import mine
from internalizer.packing import step_rows
from internalizer.plan import PlanError, StepCost, plan_stage, stage_epochs
from internalizer.retrieve import ExampleRetriever
from internalizer.schedule import build_stages
from internalizer.stage_data import TemplateTexts, stage_sequences
from internalizer.train import lora_model, time_step

RESULTS = Path(__file__).resolve().parent / "results"
N_SHOTS = 3  # fixed examples in the app's prompt: ~900 SmolLM2 tokens in all


def app_requests(dataset: str, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """The app's fixed examples and, shuffled, the train records it may log (the job logs the first n)."""
    pool = TASKS[dataset].load("train")
    shots = fixed_shots(pool, seed=seed, k=N_SHOTS)
    used = {s.input for s in shots}
    queries = [r for r in pool if r.query not in used]
    random.Random(seed).shuffle(queries)
    return shots, queries


def unlogged_requests(dataset: str, n_logged: int, seed: int = 0) -> list[Any]:
    """The train records a job over `n_logged` requests of this app never saw: fresh calibration data."""
    return app_requests(dataset, seed)[1][n_logged:]


def log_app(db: Any, dataset: str, n: int, seed: int = 0) -> dict[str, Any]:
    """n requests of the dataset's app (instructions, fixed examples, the user's message; the logged answer
    is the reference), drawn from the train slice; returns the app's description."""
    task = TASKS[dataset]
    shots, queries = app_requests(dataset, seed)
    rows = []
    for i, record in enumerate(queries[:n]):
        rows.append(
            {
                "request_id": f"req-{i:06d}",
                "startTime": f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
                "messages": json.dumps(full_messages(task, shots, record.query)),
                "params": "{}",
                "status": 200,
                "response": record.target,
                "source": "import",
            }
        )
    db["requests"].insert_all(rows)
    return {"dataset": dataset, "n_requests": len(rows), "shots": [asdict(s) for s in shots]}


def packing_comparison(settings: Any, template_id: str, cfg: InternalizeConfig, say: Any) -> dict[str, Any]:
    """Tokens per epoch and seconds per stage of the default stages, with and without the shared prefix."""
    db = open_db(settings.db_path)
    data = load_for_job(db, template_id, cfg)
    base = load_base(resolve_base_path(settings, cfg.base_model))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stages = build_stages(cfg.stages, cfg.schedule, cfg.template_ratio_start, cfg.examples_start)
    templates = TemplateTexts(base, data.static_text)
    pool = data.examples + [Example(r.request_id, r.query, r.target) for r in data.train]
    shots = ExampleRetriever(pool).top_k_batch([r.query for r in data.train], cfg.examples_start)
    max_len = cfg.seq_len or context_length(base)
    by_mode = {}
    for shared in (True, False):
        by_mode[shared] = [
            stage_sequences(stage, data.train, templates, shots, base.tokenizer, max_len, shared)[0]
            for stage in stages
        ]
    model = lora_model(base.model, cfg)
    pad_id = base.tokenizer.pad_token_id
    device = next(model.parameters()).device

    def first_row(sequences: list, stage_index: int) -> Any:
        return step_rows(sequences, cfg, stage_index, 1.0)[0][:1]

    # Timed rows: the first row of stage 1 with and without the prefix, and one of the query-only stage.
    query_row = first_row(by_mode[True][-1], stages[-1].index)
    time_step(model, query_row, pad_id, device, cfg)  # warm-up: the first pass pays for allocations
    timed = {"query_only": (query_row[0].n_tokens, time_step(model, query_row, pad_id, device, cfg))}
    for shared, name in ((True, "stage1_shared_prefix"), (False, "stage1_whole_sequences")):
        row = first_row(by_mode[shared][0], stages[0].index)
        say(f"timing a {row[0].n_tokens}-token row ({name})")
        timed[name] = (row[0].n_tokens, time_step(model, row, pad_id, device, cfg))
    say(f"timed rows (tokens, seconds): {timed}")
    epochs = stage_epochs(stages, cfg)
    table = []
    for shared, name in ((True, "stage1_shared_prefix"), (False, "stage1_whole_sequences")):
        cost = StepCost([timed[name], timed["query_only"]])
        for stage, sequences, stage_epochs_ in zip(stages, by_mode[shared], epochs, strict=True):
            planned = plan_stage(stage, sequences, len(sequences), stage_epochs_, cfg, cost)
            table.append(
                {
                    "shared_prefix": shared,
                    "stage": stage.index,
                    "template_ratio": stage.template_ratio,
                    "n_examples": stage.n_examples,
                    "records": planned.records,
                    "steps": planned.steps,
                    "rows": sum(len(rows) for rows in step_rows(sequences, cfg, stage.index, stage_epochs_)),
                    "tokens_per_epoch": round(planned.tokens / stage_epochs_),
                    "seconds": planned.expected_s,
                    "prefix_tokens": max(s.prefix_len for s in sequences),
                    "longest": max(len(s) for s in sequences),
                }
            )
    rows = {k: {"tokens": v[0], "seconds": round(v[1], 2)} for k, v in timed.items()}
    return {"timed_rows": rows, "stages": table}


def eval_reuse(settings: Any, template_id: str, cfg: InternalizeConfig, n: int, say: Any) -> dict[str, Any]:
    """Seconds for the base model to answer n held-out requests with the full prompt: reset vs prefix kept."""
    data = load_for_job(open_db(settings.db_path), template_id, cfg)
    base = load_base(resolve_base_path(settings, cfg.base_model))
    conversations = [r.messages for r in data.eval[:n]]
    n_ctx = n_ctx_for(conversations, base.tokenizer, cfg, context_length(base))
    out: dict[str, Any] = {"n": len(conversations)}
    answers = {}
    for reuse in (False, True):
        started = time.perf_counter()
        answers[reuse] = generate_answers(base.gguf_path, conversations, cfg.max_new_tokens, n_ctx, reuse)
        out["prefix_kept_s" if reuse else "reset_s"] = round(time.perf_counter() - started, 1)
        say(f"full-prompt evaluation, {'prefix kept' if reuse else 'cache reset'}: {out}")
    out["speedup"] = round(out["reset_s"] / max(out["prefix_kept_s"], 1e-9), 2)
    out["same_answers"] = sum(a == b for a, b in zip(answers[False], answers[True], strict=True))
    return out


def run(args: Any) -> None:
    if args.keep_home is not None and args.keep_home.exists():
        raise SystemExit(f"--keep-home {args.keep_home}: already exists (the run logs into a fresh home)")
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "name": args.name
        or ("internalize_long" if args.dataset == "banking77" else f"internalize_{args.dataset}"),
        "command": "python benchmarks/internalize.py " + " ".join(args.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average at start {os.getloadavg()[0]:.1f}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PROMPTINTERN_HOME"] = str(args.keep_home or Path(tmp) / "home")
        settings = load_settings()
        settings.ensure_home()
        db = open_db(settings.db_path)
        payload["app"] = log_app(db, args.dataset, args.requests)
        (template, *_) = mine(db).templates
        payload["template"] = {"id": template["id"], "n_requests": template["n_requests"]}
        overrides = {"budget_min": args.budget_min, "threads": args.threads}
        cfg = load_config(None, overrides | dict(o.split("=", 1) for o in args.overrides))
        payload["config"] = cfg.to_dict()
        payload["base_model"] = resolve_base_path(settings, cfg.base_model).name
        print(f"template {template['id']} ({template['n_requests']} requests)", flush=True)
        if not args.skip_packing:
            payload["packing"] = packing_comparison(settings, template["id"], cfg, print)
            _write(payload)
        if args.eval_requests:
            payload["evaluation_cache"] = eval_reuse(settings, template["id"], cfg, args.eval_requests, print)
            _write(payload)
        if not args.skip_job:
            job_started = time.perf_counter()
            try:
                result = internalize(settings, template["id"], cfg, progress=True, say=print)
                payload["job"] = asdict(result)
            except PlanError as exc:
                payload["job"] = {"error": str(exc)}
            payload["job_s"] = round(time.perf_counter() - job_started, 1)
    payload["total_s"] = round(time.perf_counter() - started, 1)
    _write(payload)
    print(f"total {payload['total_s']:.0f} s; results in {RESULTS}/{payload['name']}.*", flush=True)


def _write(payload: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = payload["name"]
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1, default=str))
    (RESULTS / f"{name}.md").write_text(render(payload))
    (RESULTS / "internalize_datasets.md").write_text(render_datasets(RESULTS))


DATASET_FILES = {
    "banking77": "internalize_long",
    "nl2bash": "internalize_nl2bash",
    "conala": "internalize_conala",
    "tldr": "internalize_tldr",
}


def render_datasets(results: Path) -> str:
    """One row per dataset: the default job's plan, time and held-out scores, from each results file."""
    lines = [
        "# The default internalization job on every dataset",
        "",
        "Same default config for every dataset (only the budget is given); each app's prompt is its",
        "instructions, 3 fixed examples and the user's message; held-out requests scored against the",
        "logged answer (exact = the whole answer, chrF = character n-gram F-score, 0-1).",
        "",
        "| dataset | requests | tokens per full-prompt record | budget min | planned min | took min | "
        "stages (records) | internalized exact | chrF | base, query only: exact | chrF | "
        "base, full prompt: exact | chrF | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands = []
    for dataset, stem in DATASET_FILES.items():
        path = results / f"{stem}.json"
        if not path.exists():
            continue
        payload = json.loads(path.read_text())
        job = payload.get("job") or {}
        if "eval_scores" not in job:
            continue
        scores, minutes = job["eval_scores"], job["minutes"]
        first = (job.get("plan") or {}).get("stages", [{}])[0]
        per_record = round(first["tokens_unpacked"] / first["records"]) if first.get("records") else "-"
        stages = ", ".join(f"{s['template_ratio']:.0%}:{s['n_records']}" for s in job["stages"])

        def pair(who: str, scores: dict = scores) -> str:
            s = scores.get(who)
            return f"{s['exact']:.1%} | {s['chrf']:.3f}" if s else "- | -"

        n = scores.get("internalized", {}).get("n", 0)
        lines.append(
            f"| {dataset} | {payload['app']['n_requests']} | {per_record} | {minutes.get('budget')} | "
            f"{minutes['planned']} | {minutes['actual']} | {stages} | {pair('internalized')} | "
            f"{pair('base_query_only')} | {pair('base_full_prompt')} | {n:.0f} |"
        )
        commands.append(f"- {dataset}: `{payload['command']}` ({payload['machine']})")
    return "\n".join([*lines, "", "Made by:", "", *commands]) + "\n"


def render(payload: dict[str, Any]) -> str:
    lines = [
        f"# Internalization job, long template ({payload['app'].get('dataset', 'banking77')}, "
        f"{payload['app']['n_requests']} logged requests)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']}",
        "",
    ]
    packing = payload.get("packing")
    if packing:
        lines += [
            f"## Shared-prefix packing (default stages, {payload['base_model']})",
            "",
            "Seconds per stage are costed from timed rows (tokens, seconds): "
            + ", ".join(f"{k} {v['tokens']} tok {v['seconds']} s" for k, v in packing["timed_rows"].items()),
            "",
            "| stage | template | shots | records | steps | tokens/epoch shared | tokens/epoch whole | "
            "fewer tokens | s shared | s whole |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        shared = [s for s in packing["stages"] if s["shared_prefix"]]
        whole = [s for s in packing["stages"] if not s["shared_prefix"]]
        for a, b in zip(shared, whole, strict=True):
            lines.append(
                f"| {a['stage']} | {a['template_ratio']:.0%} | {a['n_examples']} | {a['records']} | "
                f"{a['steps']} | {a['tokens_per_epoch']:,} | {b['tokens_per_epoch']:,} | "
                f"{b['tokens_per_epoch'] / max(a['tokens_per_epoch'], 1):.1f}x | {a['seconds']:.0f} | "
                f"{b['seconds']:.0f} |"
            )
        lines.append("")
    cache = payload.get("evaluation_cache")
    if cache:
        lines += [
            "## Full-prompt evaluation in llama.cpp (base model, held-out requests)",
            "",
            "| requests | cache reset per request | prefix kept | speed-up | same answers |",
            "|---|---|---|---|---|",
            f"| {cache['n']} | {cache['reset_s']} s | {cache['prefix_kept_s']} s | {cache['speedup']}x | "
            f"{cache['same_answers']}/{cache['n']} |",
            "",
        ]
    job = payload.get("job")
    if job and "error" in job:
        lines += ["## Default job", "", f"Stopped before training: `{job['error']}`", ""]
    elif job:
        scores = job["eval_scores"]
        lines += [
            f"## Default job (budget {job['minutes'].get('budget')} min)",
            "",
            f"Planned {job['minutes']['planned']} min, took {job['minutes']['actual']} min; "
            f"status {job['status']}.",
            "",
            "| stage | template | shots | records | steps | train tokens | planned s | actual s | loss |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in job["stages"]:
            lines.append(
                f"| {s['stage']} | {s['template_ratio']:.0%} | {s['n_examples']} | {s['n_records']} | "
                f"{s['steps']} | {s['train_tokens']:,} | {s['planned_s']:.0f} | {s['seconds']:.0f} | "
                f"{s['mean_loss']:.3f} |"
            )
        lines += ["", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in job["timings_s"].items()]
        lines += ["", "| held-out (exact label = accuracy) | accuracy | chrF | n |", "|---|---|---|---|"]
        for who in ("internalized", "base_query_only", "base_full_prompt"):
            if who in scores:
                s = scores[who]
                lines.append(f"| {who} | {s['exact']:.1%} | {s['chrf']:.3f} | {s['n']:.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"
