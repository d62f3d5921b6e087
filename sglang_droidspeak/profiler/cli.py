"""``droidspeak profile``: options come from ProfileConfig's fields and defaults."""

from __future__ import annotations

import argparse

from sglang_droidspeak.config_cli import add_dataclass_arguments, dataclass_from_args
from sglang_droidspeak.profiler.runner import ProfileConfig

HELP = {
    "sender": "sender model: HF directory or micro-family name (base, tester, libwriter)",
    "receiver": "receiver model: HF directory or micro-family name",
    "dataset": "task to score on (lcc, nextlines)",
    "split": "corpus split the examples come from",
    "granularity": "group bounds on multiples of this (1 or 2)",
    "metric": "metric the frontier is built on (target_acc, agreement, or a task metric; empty = the task's primary)",
    "work_dir": "where per-example scores are kept for resuming",
    "corpus": "stdlib (the micro family's) or django (the real family's pinned sdist)",
    "device": "where both models run (cuda for the real family's 30 layers)",
    "dtype": "model dtype (float32 keeps a same-weights pair exact)",
    "generate": "greedy answer per plan (task metrics); --no-generate: teacher-forced only, batched",
    "batch_size": "plans per batched extend (--no-generate)",
    "cacheblend_budgets": "also score CacheBlend-style token recompute at these layer budgets, e.g. 4,8,12",
    "validate_examples": "score the chosen points again on this many other examples and record those qualities "
                         "(0 = the selection examples' own)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, ProfileConfig, HELP)


def run(args: argparse.Namespace) -> int:
    from sglang_droidspeak.profiler.runner import run_profile

    result = run_profile(dataclass_from_args(ProfileConfig, args))
    profile = result.profile
    print(f"profile written: {result.path}")
    for plot in result.plots:
        print(f"plot written:    {plot}")
    if profile.validation is not None:
        v = profile.validation
        print(f"qualities on {v.examples} validation examples (seed {v.seed}, after the {v.offset} selection ones); "
              f"selected: the selection examples' score")
    print(f"receiver full prefill {profile.metric} = {profile.receiver_quality:.4f}, "
          f"full reuse = {profile.full_reuse_quality:.4f}")
    for key, quality in result.baselines.items():
        validated = result.validation_scores.get(key)
        print(f"{key} {profile.metric} = " + (f"{quality:.4f}" if validated is None
                                              else f"{validated:.4f} (selected: {quality:.4f})"))
    selected_column = f"{'selected':>10}" if profile.validation else ""
    print(f"{'groups':<16}{'layers':>7}{'quality':>10}{'drop':>9}{selected_column}")
    for p in profile.frontier:
        selected = "" if p.selection_quality is None else f"{p.selection_quality:>10.4f}"
        print(f"{str(p.plan):<16}{p.num_recomputed_layers:>7}{p.quality:>10.4f}{p.quality_drop:>9.4f}{selected}")
    return 0
