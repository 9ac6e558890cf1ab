"""Internalization job cost: seconds per step and stage, training tokens/s, peak memory, GGUF size per quant.

Logs NL2Bash app traffic (long system prompt, 5 fixed few-shot turns, the query; the logged answer is the
reference command) into a fresh home, mines it, and runs `internalizer.job.internalize` on the template
with a config meant for a 2-core CPU (all stages, the progressive ones on a share of the requests).
Then merges the final adapter again and writes it at each quantization, with llama.cpp's agreement with
the merged torch model (greedy, held-out queries) next to the size.

Writes benchmarks/results/internalize.{json,md,png} (internalize_quick.* with --quick). `--long` runs the
long-template case instead (a Banking77 classifier prompt of ~900 tokens, benchmarks/internalize_long.py):
shared-prefix packing, full-prompt evaluation with the KV prefix kept, and the default job in a budget.
The NL2Bash SmolLM2 run was not run on the shared machine this was written on (training there ran at
20-28 tokens/s, several times slower than on an idle 2-core machine).
  .venv/bin/python benchmarks/internalize.py           # SmolLM2-135M, 300 requests (see above)
  .venv/bin/python benchmarks/internalize.py --quick   # the tiny test model, ~1 minute
  .venv/bin/python benchmarks/internalize.py -o stages=2 -o lr=5e-4
  .venv/bin/python benchmarks/internalize.py --long --requests 500 --budget-min 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.environment import apply_defaults  # noqa: E402

apply_defaults()

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

from demo.nl2bash_app import NL2BashApp, iter_requests, load_pairs  # noqa: E402
from gateway.log.store import open_db  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.templates.query_format import query_only_messages  # noqa: E402
from internalizer.base import load_base, resolve_base_path  # noqa: E402
from internalizer.config import load_config, parse_overrides  # noqa: E402
from internalizer.dataset import load_for_job, prompt_ids  # noqa: E402
from internalizer.export import verify  # noqa: E402
from internalizer.gguf_io import write_from_base, write_from_scratch  # noqa: E402
from internalizer.job import internalize  # noqa: E402
from internalizer.mine import mine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CPU_CONFIG = {
    "stages": 3,
    "template_ratio_start": 0.5,
    "examples_start": 3,
    "epochs_per_stage": 0.35,
    "final_stage_epochs": 2.0,
    "lr": 1e-3,
    "max_eval": 30,
    "min_eval": 20,
    "max_new_tokens": 32,
    "task_metric": "bash",
    "gate_threshold": 0.3,
}
QUICK_CONFIG = {
    **CPU_CONFIG,
    "stages": 1,
    "epochs_per_stage": 1.0,
    "quant": "f32",
    "min_eval": 4,
}


def log_traffic(db, n: int, short: bool) -> None:
    pool = [
        p
        for p in load_pairs("train")
        if len(p.nl) < (70 if short else 120) and len(p.cmd) < (35 if short else 80)
    ]
    system = "Translate the request into one bash command. Reply with the command only." if short else None
    app = NL2BashApp(
        pool[:400], n_shots=2 if short else 5, examples="fixed", layout="inline" if short else "turns"
    )
    if system:
        app.system_prompt = system
    rows = []
    for i, request in enumerate(iter_requests(app, pool[400 : 400 + n], n, seed=0)):
        rows.append(
            {
                "request_id": f"req-{i:06d}",
                "startTime": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
                "messages": json.dumps(request.messages),
                "params": "{}",
                "status": 200,
                "response": request.pair.cmd,
                "source": "import",
            }
        )
    db["requests"].insert_all(rows)


def quant_sizes(settings, result, cfg, quants: list[str]) -> list[dict]:
    """Re-merge the final stage's adapter and write it at each quant, with llama.cpp's greedy agreement."""
    base = load_base(resolve_base_path(settings, cfg.base_model))
    final_stage = Path(result.run_dir) / f"stage-{len(result.stages)}"
    merged = PeftModel.from_pretrained(base.model, final_stage).merge_and_unload().eval()
    data = load_for_job(open_db(settings.db_path), result.template_id, cfg)
    prompts = [prompt_ids(base.tokenizer, query_only_messages(r.slots)) for r in data.eval[:8]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            path = Path(tmp) / f"{quant}.gguf"
            started = time.perf_counter()
            if base.gguf_path is not None:
                write_from_base(path, merged.state_dict(), base.gguf_path, quant)
            else:
                write_from_scratch(path, merged.state_dict(), merged.config, base.tokenizer, quant)
            seconds = time.perf_counter() - started
            check = verify(path, merged, base.tokenizer, prompts, cfg.max_new_tokens)
            rows.append(
                {
                    "quant": quant,
                    "size_mb": round(path.stat().st_size / 2**20, 1),
                    "write_s": round(seconds, 1),
                    "greedy_agreement": round(check.agreement, 3),
                    "n": check.n,
                }
            )
            print(f"  {quant}: {rows[-1]}", flush=True)
    return rows


def write_results(payload: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    job = payload["job"]
    lines = [
        f"# Internalization job ({payload['base_model']}, {payload['requests']} requests)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']}; total wall time {payload['total_s']:.0f} s",
        "",
        "| stage | template ratio | shots | steps | seconds | train tokens | tokens/s | peak MB | loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in job["stages"]:
        lines.append(
            f"| {s['stage']} | {s['template_ratio']} | {s['n_examples']} | {s['steps']} | {s['seconds']} | "
            f"{s['train_tokens']} | {s['tokens_per_s']} | {s['peak_memory_mb']:.0f} | {s['mean_loss']:.3f} |"
        )
    lines += ["", "| step | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in job["timings_s"].items()]
    lines += ["", "| quant | GGUF MB | write s | llama.cpp = torch (greedy) |", "|---|---|---|---|"]
    lines += [
        f"| {q['quant']} | {q['size_mb']} | {q['write_s']} | {q['greedy_agreement']:.0%} of {q['n']} |"
        for q in payload["quants"]
    ]
    lines += [
        "",
        "| model (held-out, answers vs logged) | exact | chrF | bash template |",
        "|---|---|---|---|",
    ]
    for who, s in job["eval_scores"].items():
        if "chrf" in s:
            lines.append(
                f"| {who} | {s['exact']:.3f} | {s['chrf']:.3f} | {s.get('bash', float('nan')):.3f} |"
            )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps = list(job["timings_s"].items())
    ax.barh([k for k, _ in steps], [v for _, v in steps], color="#4c72b0")
    ax.set_xlabel("seconds")
    ax.set_title(f"internalize: {payload['requests']} requests, {payload['base_model']}")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="the tiny test model instead of SmolLM2")
    parser.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quants", default="f16,q8_0,q4_1")
    long = parser.add_argument_group("--long: the Banking77 long-template case, on the default config")
    long.add_argument("--long", action="store_true")
    long.add_argument(
        "--dataset", default="banking77", choices=["banking77", "nl2bash", "conala", "tldr"],
        help="the app's dataset (default banking77)",
    )  # fmt: skip
    long.add_argument("--budget-min", type=float, default=30.0, help="the job's budget (minutes)")
    long.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    long.add_argument("--eval-requests", type=int, default=50, help="held-out requests of the cache test")
    long.add_argument("--skip-packing", action="store_true")
    long.add_argument("--skip-job", action="store_true")
    long.add_argument("--name", default="", help="results file name (default internalize_long)")
    long.add_argument(
        "--keep-home", type=Path, default=None,
        help="run in this home and keep it (the log, the trained model) instead of a temporary one",
    )  # fmt: skip
    args = parser.parse_args()
    if args.long:
        from benchmarks.internalize_long import run

        args.argv = sys.argv[1:]
        run(args)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["PROMPTINTERN_HOME"] = str(home)
        if args.quick:
            from tests.support.tiny_model import build_tiny_gguf

            pairs = [(p.nl, p.cmd) for p in load_pairs("train") if len(p.nl) < 70 and len(p.cmd) < 35][:300]
            os.environ["PROMPTINTERN_BASE_MODEL"] = str(
                build_tiny_gguf(Path(tmp) / "tiny.gguf", pairs, steps=150)
            )
        settings = load_settings()
        settings.ensure_home()
        db = open_db(settings.db_path)
        log_traffic(db, args.requests, short=args.quick)
        (template, *_) = mine(db).templates
        cfg = load_config(
            None, {**(QUICK_CONFIG if args.quick else CPU_CONFIG), **parse_overrides(args.overrides)}
        )
        print(f"internalizing template {template['id'][:12]} ({template['n_requests']} requests)", flush=True)
        result = internalize(settings, template["id"], cfg, progress=True, say=print)
        print(json.dumps(result.eval_scores), flush=True)
        quants = quant_sizes(settings, result, cfg, args.quants.split(","))
        base_name = Path(resolve_base_path(settings, cfg.base_model)).name
    payload = {
        "command": " ".join(["python", "benchmarks/internalize.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}",
        "base_model": base_name,
        "requests": args.requests,
        "config": cfg.to_dict(),
        "job": asdict(result),
        "quants": quants,
        "total_s": round(time.perf_counter() - started, 1),
    }
    write_results(payload, "internalize_quick" if args.quick else "internalize")
    print(f"total {payload['total_s']:.0f} s; results in {RESULTS}/", flush=True)


if __name__ == "__main__":
    main()
