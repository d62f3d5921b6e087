"""``droidspeak quality``: the quality study for one pair, on examples the profile never saw.

    droidspeak quality --sender tester --receiver libwriter --dataset lcc

Rows: the receiver's full prefill, the sender alone, full reuse, DroidSpeak at every
frontier point of the committed profile, and a CacheBlend-style baseline at each of
those compute budgets (equal recompute fraction), each metric with its 95% interval. The
real family: ``--corpus django --split test_heldout`` with model directories
(``python -m sglang_droidspeak.real.variants NAME`` builds a LoRA variant on a CPU). Writes ``docs/results/quality-<pair>-<dataset>.json`` (raw),
``docs/quality-<pair>-<dataset>.md`` (table) and ``docs/quality-<pair>-<dataset>.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
from dataclasses import dataclass, field

import torch
from pathlib import Path

from sglang_droidspeak.config_cli import add_dataclass_arguments, check_fields, dataclass_from_args, one_of
from sglang_droidspeak.plan import ModelRef, find_profile
from sglang_droidspeak.profiler.evaluate import PairEvaluator, cacheblend_tokens
from sglang_droidspeak.profiler.loading import default_work_dir, load_model, run_header
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, System, cacheblend_system, plan_system
from sglang_droidspeak.tasks import TASKS, build_task
from sglang_droidspeak.tasks.corpora import CORPORA, corpus_identity, load_corpus, split_problem


@dataclass(frozen=True)
class QualityConfig:
    sender: str = "tester"
    receiver: str = "libwriter"
    dataset: str = "lcc"
    split: str = "lib_heldout"
    num_examples: int = 32
    context_len: int = 768
    query_len: int = 32
    seed: int = 1
    profiles_dir: str = "profiles"
    docs_dir: str = "docs"
    corpus: str = field(default="stdlib", metadata=one_of(*CORPORA))
    device: str = field(default="cpu", metadata=one_of("cpu", "cuda"))
    dtype: str = field(default="float32", metadata=one_of("float32", "bfloat16"))

    def __post_init__(self) -> None:
        check_fields(self)
        if split_problem(self.corpus, self.split):
            raise ValueError(split_problem(self.corpus, self.split))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, QualityConfig)


def study_systems(profile, receiver: ReferenceModel, context_len: int) -> list[System]:
    """Reference rows, DroidSpeak's frontier, and CacheBlend at each budget it fits in."""
    systems = [RECEIVER, SENDER] + [plan_system(p.plan) for p in profile.frontier]
    budgets = sorted({p.num_recomputed_layers for p in profile.frontier} - {0, receiver.num_layers})
    return systems + [cacheblend_system(k) for k in budgets if cacheblend_tokens(receiver, k, context_len) is not None]


def run(args: argparse.Namespace) -> int:
    config = dataclass_from_args(QualityConfig, args)
    dtype = getattr(torch, config.dtype)
    sender, receiver = load_model(config.sender, config.device, dtype), load_model(config.receiver, config.device, dtype)
    profile = find_profile(config.profiles_dir, ModelRef(sender.name, sender.fingerprint),
                           ModelRef(receiver.name, receiver.fingerprint))
    if profile is None:
        raise SystemExit(f"no profile for {sender.name} -> {receiver.name} in {config.profiles_dir}; "
                         f"run droidspeak profile first")
    num_layers = receiver.model.num_layers
    corpus = load_corpus(config.corpus)
    examples = build_task(config.dataset, receiver.tokenizer, split=config.split, num_examples=config.num_examples,
                          context_len=config.context_len, query_len=config.query_len, seed=config.seed, corpus=corpus)
    systems = study_systems(profile, receiver.model, config.context_len)
    header = run_header(config, sender, receiver, profile_created=profile.created,
                        corpus_identity=corpus_identity(config.corpus, corpus))
    stem = f"quality-{sender.name}__{receiver.name}-{config.dataset}"
    store = ResultStore.for_run(default_work_dir(), stem, header)
    PairEvaluator(sender.model, receiver.model, receiver.tokenizer, config.dataset, examples).run(systems, store)

    metrics = [*TASKS[config.dataset].metrics, "agreement", "target_acc", "target_nll"]
    rows = [{"system": s.key, "recompute_fraction": s.recompute_fraction(num_layers),
             **{m: store.mean(s.key, m) for m in metrics},
             "ci95": {m: ci95_half_width([r.metrics[m] for r in store.records(s.key)]) for m in metrics}}
            for s in systems]
    result = {"config": header, "num_examples": len(examples), "profile_metric": profile.metric,
              "date": dt.date.today().isoformat(), "machine": f"CPU {platform.machine()}, {platform.python_version()}",
              "command": "droidspeak quality " + " ".join(sys.argv[2:]), "rows": rows}
    docs = Path(config.docs_dir)
    (docs / "results").mkdir(parents=True, exist_ok=True)
    (docs / "results" / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (docs / f"{stem}.md").write_text(markdown_table(result, metrics))
    from sglang_droidspeak.profiler.plots import plot_quality_vs_compute

    plot_quality_vs_compute(rows, [profile.metric, "target_nll", TASKS[config.dataset].primary_metric],
                            f"{sender.name} -> {receiver.name}", docs / f"{stem}.png")
    print(markdown_table(result, metrics))
    return 0


def ci95_half_width(values: list[float]) -> float:
    """Half-width of the normal-approximation 95% interval of the mean (0 for fewer than 2 values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return 1.96 * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


LABELS = {"receiver": "receiver full prefill", "sender": "sender alone", "plan:reuse-all": "full reuse"}


def markdown_table(result: dict, metrics: list[str]) -> str:
    lines = [f"Examples: {result['num_examples']} ({result['config']['dataset']}, {result['config']['split']}, "
             f"seed {result['config']['seed']}); {result['machine']}; {result['date']}; `{result['command']}`", "",
             "| system | recompute | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for row in result["rows"]:
        label = LABELS.get(row["system"], row["system"].replace("plan:", "DroidSpeak ").replace(
            "cacheblend:", "CacheBlend-style, budget of k layers = "))
        ci = row.get("ci95", {})
        values = " | ".join(f"{row[m]:.3f}" + (f" ± {ci[m]:.3f}" if m in ci else "") for m in metrics)
        lines.append(f"| {label} | {row['recompute_fraction']:.0%} | {values} |")
    return "\n".join(lines) + "\n"
