"""The offline profiler: score candidate plans for a pair and write its profile YAML.

    droidspeak profile --sender tester --receiver libwriter --dataset lcc --granularity 1

Model arguments are Hugging Face directories, or names of the embedded micro family
(built on first use). Scores are kept in a JSONL work file, so a run that is stopped
resumes where it left off when started again with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from sglang_droidspeak import __version__
from sglang_droidspeak.config_cli import at_least, check_fields, one_of
from sglang_droidspeak.identity import check_compatible
from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ModelRef, Profile, profile_filename, save_profile
from sglang_droidspeak.plan.profile_systems import points_from_scores
from sglang_droidspeak.profiler.batched import BatchedPlanScorer
from sglang_droidspeak.profiler.evaluate import PairEvaluator
from sglang_droidspeak.profiler.loading import LoadedModel, default_work_dir, load_model, run_header
from sglang_droidspeak.profiler.search import (
    ScoredPlan, candidate_plans, contiguous_plans, pareto_frontier, sensitivity_drops,
)
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, cacheblend_system, plan_system
from sglang_droidspeak.tasks import TASKS, build_task
from sglang_droidspeak.tasks.corpora import ALL_SPLITS, CORPORA, corpus_identity, load_corpus, split_problem

FAST_METRICS = ("agreement", "target_acc")  # what the batched scorer's frontier can be built on


@dataclass(frozen=True)
class ProfileConfig:
    sender: str
    receiver: str
    dataset: str = field(default="lcc", metadata=one_of(*TASKS))
    split: str = field(default="lib_heldout", metadata=one_of(*ALL_SPLITS))
    corpus: str = field(default="stdlib", metadata=one_of(*CORPORA))
    num_examples: int = field(default=32, metadata=at_least(1))
    context_len: int = field(default=768, metadata=at_least(1))
    query_len: int = field(default=32, metadata=at_least(1))
    granularity: int = field(default=1, metadata=one_of(1, 2))
    # agreement: teacher-forced top-1 agreement with the receiver's own full-prefill answer,
    # i.e. how faithfully the plan reproduces the receiver. The micro family is too weak
    # for edit similarity or true-continuation accuracy to separate plans (docs/QUALITY.md).
    # "" = the task's primary metric.
    metric: str = "agreement"
    seed: int = 0
    max_new_tokens: int = 0  # 0 = the task's own limit
    out_dir: str = "profiles"
    work_dir: str = ""  # "" = ~/.cache/sglang_droidspeak/profiler
    plots: bool = True
    progress: bool = True
    device: str = field(default="cpu", metadata=one_of("cpu", "cuda"))
    dtype: str = field(default="float32", metadata=one_of("float32", "bfloat16"))
    # False: teacher-forced metrics only, every plan scored by the batched scorer (profiler/
    # batched.py; minutes on a GPU for 30 layers), no greedy answer per plan
    generate: bool = True
    batch_size: int = field(default=32, metadata=at_least(1))
    # comma-separated layer budgets k: also score CacheBlend-style token recompute at the
    # compute of k layers (ProfileRun.baselines), to compare with groups of k layers; the
    # profile records them under systems.cacheblend (served as blend:(k/L)@1)
    cacheblend_budgets: str = ""

    def __post_init__(self) -> None:
        check_fields(self)
        if any(not b.isdigit() or int(b) < 1 for b in self.cacheblend_budgets.split(",") if self.cacheblend_budgets):
            raise ValueError(f"cacheblend_budgets: must be comma-separated whole numbers >= 1, "
                             f"got {self.cacheblend_budgets!r}")
        if split_problem(self.corpus, self.split):
            raise ValueError(split_problem(self.corpus, self.split))
        if not self.generate and self.metric not in FAST_METRICS:
            raise ValueError(f"metric: without generation it must be one of {', '.join(FAST_METRICS)}, "
                             f"got {self.metric!r}")


class ProfileRun(NamedTuple):
    profile: Profile
    path: Path
    plots: tuple[Path, ...]
    scores: dict[LayerPlan, float]
    baselines: dict[str, float] = {}  # "cacheblend:<k>" -> mean metric (cacheblend_budgets)


def run_profile(config: ProfileConfig) -> ProfileRun:
    dtype = getattr(torch, config.dtype)
    sender = load_model(config.sender, config.device, dtype)
    receiver = load_model(config.receiver, config.device, dtype)
    return profile_models(config, sender, receiver)


def profile_models(config: ProfileConfig, sender: LoadedModel, receiver: LoadedModel, corpus=None,
                   examples: list | None = None) -> ProfileRun:
    """``run_profile`` on models already loaded (``corpus`` and ``examples``: reuse them when
    several pairs are profiled in one process; None = load / build from ``config``)."""
    check_compatible(sender.fingerprint, receiver.fingerprint, sender.name, receiver.name)
    spec = TASKS[config.dataset]
    metric = config.metric or spec.primary_metric
    corpus = corpus if corpus is not None else load_corpus(config.corpus)
    if examples is None:
        examples = build_task(config.dataset, receiver.tokenizer, split=config.split, num_examples=config.num_examples,
                              context_len=config.context_len, query_len=config.query_len, seed=config.seed,
                              corpus=corpus)
    header = run_header(config, sender, receiver, corpus_identity=corpus_identity(config.corpus, corpus),
                        exclude=("out_dir", "work_dir", "plots", "progress", "metric", "batch_size",
                                 "cacheblend_budgets"))
    work_dir = config.work_dir or default_work_dir()
    store = ResultStore.for_run(work_dir, f"{sender.name}__{receiver.name}-{config.dataset}", header)

    num_layers = receiver.model.num_layers
    plans = candidate_plans(num_layers, config.granularity)
    max_new_tokens = config.max_new_tokens or None
    if config.generate:
        evaluator = PairEvaluator(sender.model, receiver.model, receiver.tokenizer, config.dataset, examples,
                                  max_new_tokens=max_new_tokens)
    else:
        evaluator = BatchedPlanScorer(sender.model, receiver.model, receiver.tokenizer, config.dataset, examples,
                                      batch_size=config.batch_size, max_new_tokens=max_new_tokens)
    blends = [cacheblend_system(int(b)) for b in config.cacheblend_budgets.split(",") if b]
    evaluator.run([RECEIVER, SENDER] + [plan_system(p) for p in plans] + blends, store, progress=config.progress)

    scores = {p: store.mean(plan_system(p).key, metric) for p in plans}
    receiver_quality = store.mean(RECEIVER.key, metric)
    on_grid = [LayerPlan.full_reuse(num_layers)] + contiguous_plans(num_layers, config.granularity)
    frontier = pareto_frontier(ScoredPlan(p, scores[p]) for p in on_grid)
    baselines = {b.key: store.mean(b.key, metric) for b in blends}
    profile = Profile(
        sender=ModelRef(sender.name, sender.fingerprint), receiver=ModelRef(receiver.name, receiver.fingerprint),
        num_layers=num_layers, dataset=config.dataset, metric=metric, receiver_quality=receiver_quality,
        full_reuse_quality=scores[LayerPlan.full_reuse(num_layers)],
        frontier=tuple(FrontierPoint(s.plan, s.quality, receiver_quality - s.quality) for s in frontier),
        granularity=config.granularity, sensitivity=tuple(sensitivity_drops(scores, num_layers)),
        tool_version=__version__, systems=points_from_scores(baselines, receiver_quality, num_layers),
    )
    path = save_profile(profile, Path(config.out_dir) / profile_filename(sender.name, receiver.name))
    plots: tuple[Path, ...] = ()
    if config.plots:
        from sglang_droidspeak.profiler.plots import write_profile_plots

        plots = write_profile_plots(profile, scores, path.with_suffix(""))
    return ProfileRun(profile, path, plots, scores, baselines)
