"""Selective routing benchmark: serve locally only the answers the local model is sure of.

For Banking77 (a classifier app: ~900-token prompt with the 77 intents) and NL2Bash (a shell-command app),
a query-only model is fine-tuned on a few hundred requests with the internalizer's own training and
export (benchmarks/paper_train.py: one query-only LoRA stage on SmolLM2-135M-Instruct, Q8_0 GGUF). The
exported model answers two disjoint slices of the dev split in llama.cpp with its token log-probabilities
(internalizer/calibrate.py, as the gate does): a calibration slice, where the gate picks the threshold
(gateway/routing/selective.py), and a test slice, where the choice is judged. The upstream is stood in
for by the dataset's labels (agreement with "the upstream's answer" = agreement with the reference),
measured with the gate's own metric: exact match for Banking77, bash command-template match for NL2Bash.

Reported per dataset: the AUROC of each confidence signal (mean / min / sum token log-probability) for
telling agreeing answers from the others; the coverage / agreement curves; and for targets 0.8 / 0.9 /
0.95: coverage, agreement of the routed answers, escalation rate and dollars per 1,000 requests against
the upstream with provider prompt caching (gpt-4o-mini prices from litellm's map, the static prefix read
from the cache on every request; local compute at $0.10 per machine-hour, the time each answer took),
beside all-or-nothing routing (the whole model serves every request if its overall agreement's lower
bound reaches the target, else nothing does). Also: how often three threshold rules over-promise on
synthetic held-out sets (the lowest threshold that passes; a fixed sequence over every threshold; the
gate's fixed sequence at checkpoints).

Writes benchmarks/results/selective.{json,md,png} and prints the command (the figures are computed from
the recorded answers by benchmarks/selective_analysis.py). Trained models are cached under --work-dir, so
a re-run skips training. `--model GGUF` scores a model trained elsewhere instead (the internalization
job's export; results in selective_model.*).
  .venv/bin/python -m benchmarks.selective               # cpu config, ~25 minutes on 2 cores
  .venv/bin/python -m benchmarks.selective --config quick  # harness check, minutes
  .venv/bin/python -m benchmarks.selective --dataset banking77 --model JOB.gguf --n-cal 600 --n-test 600
  .venv/bin/python -m benchmarks.selective --dataset banking77 --model JOB.gguf \
      --cal-unlogged 1000 --n-cal 1500  # calibrate on train requests the job never logged
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmarks.internalize_long import unlogged_requests  # noqa: E402
from benchmarks.paper_cost import PriceModel, load_price_model  # noqa: E402
from benchmarks.paper_tasks import TASKS, Record  # noqa: E402
from benchmarks.paper_train import OverBudget, Trainer, query_only_spec  # noqa: E402
from benchmarks.selective_analysis import TARGETS, analyse, check_target, choose_signal  # noqa: E402
from benchmarks.selective_report import write_markdown, write_plot  # noqa: E402
from benchmarks.selective_rules import LEVEL, threshold_rules  # noqa: E402
from gateway.local.confidence import SIGNALS, confidence  # noqa: E402
from gateway.templates.query_format import query_only_messages  # noqa: E402
from internalizer.calibrate import ScoredAnswer, generate_scored, item_agreement  # noqa: E402
from internalizer.config import InternalizeConfig  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
N_FIXED_EXAMPLES = 5


@dataclass(frozen=True)
class DatasetConfig:
    n_train: int
    epochs: float
    n_cal: int
    n_test: int
    max_tokens: int
    metric: str  # the gate's agreement metric for this app


CONFIGS: dict[str, dict[str, DatasetConfig]] = {
    "cpu": {
        "banking77": DatasetConfig(
            n_train=240, epochs=3.0, n_cal=200, n_test=200, max_tokens=16, metric="exact"
        ),
        "nl2bash": DatasetConfig(n_train=60, epochs=3.0, n_cal=60, n_test=60, max_tokens=24, metric="bash"),
    },
    # For a GPU machine (training on CUDA; llama.cpp on the CPU cores): the sizes a real template has.
    "full": {
        "banking77": DatasetConfig(
            n_train=3000, epochs=3.0, n_cal=400, n_test=500, max_tokens=16, metric="exact"
        ),
        "nl2bash": DatasetConfig(
            n_train=3000, epochs=3.0, n_cal=200, n_test=300, max_tokens=32, metric="bash"
        ),
    },
    "quick": {
        "banking77": DatasetConfig(
            n_train=24, epochs=1.0, n_cal=30, n_test=30, max_tokens=16, metric="exact"
        ),
        "nl2bash": DatasetConfig(n_train=16, epochs=1.0, n_cal=20, n_test=20, max_tokens=24, metric="bash"),
    },
}


# ---- data: the apps' requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    name: str
    instructions: str
    train: list[Record]
    dev: list[Record]

    def full_messages(self, query: str) -> list[dict[str, str]]:
        """The app's request as the upstream gets it: instructions, fixed examples as turns, the query."""
        messages = [{"role": "system", "content": self.instructions}]
        for example in self.train[-N_FIXED_EXAMPLES:]:  # never among the training requests used (the head)
            messages += [
                {"role": "user", "content": example.query},
                {"role": "assistant", "content": example.target},
            ]
        return messages + [{"role": "user", "content": query}]


def load_app(name: str) -> App:
    task = TASKS[name]
    return App(name, task.instructions, task.load("train"), task.load("dev"))


def split(records: list[Record], n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    return rng.sample(records, min(n, len(records)))


# ---- per-dataset run ---------------------------------------------------------------------------------------


def train_model(
    app: App, cfg: DatasetConfig, work_dir: Path, budget_s: float, say
) -> tuple[Path, dict[str, Any], Any]:
    """The query-only model (trained, or reused from the work dir): GGUF path, training figures, tokenizer."""
    from gateway.upstream.base_model import smollm2_gguf_path
    from internalizer.base import load_base

    base = load_base(smollm2_gguf_path())
    train = split(app.train[:-N_FIXED_EXAMPLES], cfg.n_train, seed=0)
    trainer = Trainer(_task_shim(app), base, train, work_dir / app.name)
    train_cfg = InternalizeConfig(
        stages=0, final_stage_epochs=cfg.epochs, batch_size=4, seq_len=256, pack_tokens=64, lr=2e-3,
        warmup_steps=2, threads=os.cpu_count() or 2, quant="q8_0",
    )  # fmt: skip
    trained = trainer.train(query_only_spec(), train_cfg, len(train), say=say, max_seconds=budget_s)
    return trained.gguf_path, trained.to_dict(), base.tokenizer


class _task_shim:  # noqa: N801 (the Trainer reads `.instructions` only, for compression it does not do here)
    def __init__(self, app: App) -> None:
        self.instructions = app.instructions


def scored_slice(gguf: Path, records: list[Record], max_tokens: int) -> list[ScoredAnswer]:
    return generate_scored(gguf, [query_only_messages({"query": r.query}) for r in records], max_tokens)


def upstream_cost(
    app: App, records: list[Record], tokenizer: Any, prices: PriceModel
) -> tuple[list[float], int, float]:
    """Dollars per request at the upstream, the static prefix (instructions + examples) read from cache;
    the prefix's tokens and the mean full prompt's (SmolLM2's tokenizer, an estimate of the provider's)."""

    def count(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prefix = count(app.full_messages("")[:-1])
    costs, fulls = [], []
    for record in records:
        full = count(app.full_messages(record.query))
        fulls.append(full)
        output = len(tokenizer(record.target, add_special_tokens=False)["input_ids"]) + 1
        costs.append(prices.upstream_per_1k(full, output, cached_tokens=min(prefix, full)) / 1000)
    return costs, prefix, sum(fulls) / len(fulls)


def given_model(gguf: Path) -> tuple[Path, dict[str, Any], Any]:
    """A model trained elsewhere (the internalization job's export): its path and the base's tokenizer."""
    from gateway.upstream.base_model import smollm2_gguf_path
    from internalizer.base import load_base

    if not gguf.is_file():
        raise SystemExit(f"--model {gguf}: no such file")
    return (
        gguf,
        {"model": gguf.name, "train_seconds": None, "export_seconds": None},
        load_base(smollm2_gguf_path()).tokenizer,
    )


def run_dataset(
    name: str,
    cfg: DatasetConfig,
    work_dir: Path,
    budget_s: float,
    say,
    model: Path | None = None,
    calibration: list[Record] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the model, answer both slices (of dev, unless `calibration` gives that slice's
    records), record every answer: `analyse` does the rest."""
    started = time.perf_counter()
    app = load_app(name)
    if calibration is None:
        dev = split(app.dev, cfg.n_cal + cfg.n_test, seed=1)
        cal_records, test_records = dev[: cfg.n_cal], dev[cfg.n_cal :]
    else:  # calibrate on the given records, judge on the dev split
        cal_records, test_records = calibration[: cfg.n_cal], split(app.dev, cfg.n_test, seed=1)
        dev = cal_records + test_records
    say(f"{name}: {len(cal_records)} calibration + {len(test_records)} test requests")
    if model is None:
        gguf, trained, tokenizer = train_model(app, cfg, work_dir, budget_s, say)
    else:
        gguf, trained, tokenizer = given_model(model)
    prices = load_price_model("gpt-4o-mini", local_per_hour=0.10)
    up_costs, prefix_tokens, full_tokens = upstream_cost(app, dev, tokenizer, prices)
    say(f"{name}: answering {len(dev)} dev requests with token log-probabilities")
    answers = scored_slice(gguf, dev, cfg.max_tokens)
    items = [
        {
            "slice": "calibration" if index < len(cal_records) else "test",
            "query": record.query,
            "reference": record.target,
            "answer": answer.text,
            "agreement": item_agreement(cfg.metric, answer.text, record.target),
            "confidence": {signal: confidence(answer.token_logprobs, signal) for signal in SIGNALS},
            "tokens": len(answer.token_logprobs),
            "token_logprobs": [round(v, 5) for v in answer.token_logprobs],
            "step_s": [round(v, 5) for v in answer.step_seconds],
            "wall_s": answer.seconds,
            "cpu_s": answer.cpu_seconds,
            "upstream_usd": cost,
        }
        for index, (record, answer, cost) in enumerate(zip(dev, answers, up_costs, strict=True))
    ]
    return {
        "dataset": name,
        "config": cfg.__dict__,
        "trained": trained,
        "full_prompt_tokens_mean": full_tokens,
        "cached_prefix_tokens": prefix_tokens,
        "local_per_hour": prices.local_per_hour,
        "items": items,
        "seconds": round(time.perf_counter() - started, 1),
    }


# ---- outputs ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--dataset", choices=["banking77", "nl2bash", "all"], default="all")
    parser.add_argument(
        "--work-dir", type=Path, default=Path.home() / ".cache" / "promptintern-bench" / "selective"
    )
    parser.add_argument(
        "--budget-min", type=float, default=30.0, help="training that would not fit is skipped"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the markdown and plot from the JSON, run nothing"
    )
    parser.add_argument(
        "--model", type=Path, default=None,
        help="score this query-only GGUF (e.g. the internalization job's export) instead of training one; "
        "needs one --dataset; results go to selective_<config>_model.*",
    )  # fmt: skip
    parser.add_argument("--n-cal", type=int, default=None, help="override the calibration requests")
    parser.add_argument("--n-test", type=int, default=None, help="override the test requests")
    parser.add_argument(
        "--cal-unlogged", type=int, default=None, metavar="N_LOGGED",
        help="with --model: calibrate on the train records that benchmarks/internalize.py --long "
        "--requests N_LOGGED never logged (more held-out requests than dev holds); test on dev",
    )  # fmt: skip
    args = parser.parse_args()
    if args.model is not None and args.dataset == "all":
        parser.error("--model needs one --dataset")
    if args.cal_unlogged is not None and args.model is None:
        parser.error("--cal-unlogged needs --model (the job's export)")
    stem = "selective" if args.config == "cpu" else f"selective_{args.config}"
    stem += "_model" if args.model is not None else ""
    if args.report_only:
        write_outputs(json.loads((RESULTS_DIR / f"{stem}.json").read_text()), stem)
        return
    started = time.perf_counter()
    command = "python -m benchmarks.selective " + shlex.join(sys.argv[1:])
    print(command, flush=True)
    names = ["banking77", "nl2bash"] if args.dataset == "all" else [args.dataset]
    path = RESULTS_DIR / f"{stem}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    # A run of one dataset keeps the other's results from an earlier run of the same config.
    datasets = [
        ds
        for ds in previous.get("datasets", [])
        if previous.get("config") == args.config and ds["dataset"] not in names
    ]
    for name in names:
        left = args.budget_min * 60 - (time.perf_counter() - started)
        load_start = os.getloadavg()[0]
        try:
            cfg = CONFIGS[args.config][name]
            sizes = {"n_cal": args.n_cal, "n_test": args.n_test}
            cfg = dataclasses.replace(cfg, **{k: v for k, v in sizes.items() if v is not None})
            calibration = None
            if args.cal_unlogged is not None:
                calibration = unlogged_requests(name, args.cal_unlogged)
            result = run_dataset(name, cfg, args.work_dir, left, print, args.model, calibration)
        except OverBudget as exc:
            print(f"{name}: skipped, training would not fit the budget ({exc})", flush=True)
            continue
        result |= {"command": command, "load_average": [load_start, os.getloadavg()[0]]}
        datasets.append(result)
    datasets.sort(key=lambda ds: ["banking77", "nl2bash"].index(ds["dataset"]))
    results = {
        "config": args.config,
        "updated_utc": datetime.now(UTC).isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work",
        "level": LEVEL,
        "targets": TARGETS,
        "datasets": datasets,
        "threshold_rules": threshold_rules(),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))  # the answers first: `--report-only` can redo the rest
    write_outputs(results, stem)


def write_outputs(results: dict[str, Any], stem: str) -> None:
    """Signal choice, target check, then the JSON, the markdown table and the plot."""
    datasets = results["datasets"]
    for ds in datasets:
        ds |= analyse(ds)
    chosen, reason = choose_signal(datasets) if datasets else (SIGNALS[0], "no dataset ran")
    results |= {"chosen_signal": chosen, "signal_reason": reason}
    results["target_check"] = check_target(datasets, chosen)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, RESULTS_DIR / f"{stem}.md", LEVEL)
    if datasets:
        write_plot(results, RESULTS_DIR / f"{stem}.png")
    print((RESULTS_DIR / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
