"""The offline profiler: score candidate plans for a pair and write its profile YAML.

    droidspeak profile --sender tester --receiver libwriter --dataset lcc --granularity 1

Model arguments are Hugging Face directories, or names of the embedded micro family
(built on first use). Scores are kept in a JSONL work file, so a run that is stopped
resumes where it left off when started again with the same settings.
``--validate-examples N`` scores the chosen points again on N other examples and records
those qualities (profiler/validate.py; a second work file, ``...-validate-<hash>.jsonl``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from sglang_droidspeak import __version__
from sglang_droidspeak.config_cli import at_least, check_fields, one_of
from sglang_droidspeak.identity import check_compatible
from sglang_droidspeak.plan import LayerPlan, ModelRef, Profile, profile_filename, save_profile
from sglang_droidspeak.profiler.batched import BatchedPlanScorer
from sglang_droidspeak.profiler.evaluate import PairEvaluator
from sglang_droidspeak.profiler.loading import LoadedModel, default_work_dir, load_model, run_header
from sglang_droidspeak.profiler.search import (
    ScoredPlan, candidate_plans, contiguous_plans, pareto_frontier, sensitivity_drops,
)
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, System, cacheblend_system, plan_system
from sglang_droidspeak.profiler.validate import (
    Measured, checked_validation, profile_fields, task_example_sets, validate,
)
from sglang_droidspeak.tasks import TASKS
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
    # > 0: score the chosen points (frontier, full reuse, CacheBlend-style) and the receiver again
    # on this many other examples of the same task, split and seed, and record those qualities
    validate_examples: int = 0

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
    validation_scores: dict[str, float] = {}  # system key -> mean metric on the validation examples


def run_profile(config: ProfileConfig) -> ProfileRun:
    dtype = getattr(torch, config.dtype)
    sender = load_model(config.sender, config.device, dtype)
    receiver = load_model(config.receiver, config.device, dtype)
    return profile_models(config, sender, receiver)


def make_scorer(config: ProfileConfig, sender: LoadedModel, receiver: LoadedModel, examples: list):
    """``config``'s scorer of ``examples``: PairEvaluator (greedy answers) or the batched one."""
    max_new_tokens = config.max_new_tokens or None
    if config.generate:
        return PairEvaluator(sender.model, receiver.model, receiver.tokenizer, config.dataset, examples,
                             max_new_tokens=max_new_tokens)
    return BatchedPlanScorer(sender.model, receiver.model, receiver.tokenizer, config.dataset, examples,
                             batch_size=config.batch_size, max_new_tokens=max_new_tokens)


def profile_models(config: ProfileConfig, sender: LoadedModel, receiver: LoadedModel, corpus=None,
                   examples: list | None = None, validation_examples: list | None = None) -> ProfileRun:
    """``run_profile`` on models already loaded (``corpus``, ``examples`` and
    ``validation_examples``: reuse them when several pairs are profiled in one process, e.g.
    from validate.task_example_sets; None = load / build from ``config``)."""
    check_compatible(sender.fingerprint, receiver.fingerprint, sender.name, receiver.name)
    metric = config.metric or TASKS[config.dataset].primary_metric
    corpus = corpus if corpus is not None else load_corpus(config.corpus)
    if examples is None:
        examples, validation_examples = task_example_sets(config, receiver.tokenizer, corpus)
    validation_examples = checked_validation(examples, validation_examples, config.validate_examples)
    header = run_header(config, sender, receiver, corpus_identity=corpus_identity(config.corpus, corpus),
                        exclude=("out_dir", "work_dir", "plots", "progress", "metric", "batch_size",
                                 "cacheblend_budgets", "validate_examples"))
    score = _scoring(config, sender, receiver, metric, header)

    num_layers = receiver.model.num_layers
    plans = candidate_plans(num_layers, config.granularity)
    blends = [cacheblend_system(int(b)) for b in config.cacheblend_budgets.split(",") if b]
    means = score(examples, [RECEIVER, SENDER] + [plan_system(p) for p in plans] + blends)
    scores = {p: means[plan_system(p).key] for p in plans}
    on_grid = [LayerPlan.full_reuse(num_layers)] + contiguous_plans(num_layers, config.granularity)
    selected = Measured(len(examples), means[RECEIVER.key], pareto_frontier(ScoredPlan(p, scores[p]) for p in on_grid),
                        {b.key: means[b.key] for b in blends})
    validated, validation_scores = None, {}
    if validation_examples:
        validated, validation_scores = validate(selected, blends, len(validation_examples),
                                                lambda systems: score(validation_examples, systems, "-validate"))
    profile = Profile(
        sender=ModelRef(sender.name, sender.fingerprint), receiver=ModelRef(receiver.name, receiver.fingerprint),
        num_layers=num_layers, dataset=config.dataset, metric=metric, granularity=config.granularity,
        sensitivity=tuple(sensitivity_drops(scores, num_layers)), tool_version=__version__,
        **profile_fields(selected, validated, config.seed, num_layers),
    )
    path = save_profile(profile, Path(config.out_dir) / profile_filename(sender.name, receiver.name))
    plots: tuple[Path, ...] = ()
    if config.plots:
        from sglang_droidspeak.profiler.plots import write_profile_plots

        plots = write_profile_plots(profile, scores, path.with_suffix(""))
    return ProfileRun(profile, path, plots, scores, selected.systems, validation_scores)


def _scoring(config: ProfileConfig, sender: LoadedModel, receiver: LoadedModel, metric: str, header: dict):
    """score(examples, systems, part) -> mean ``metric`` by system key, kept in the work file of
    ``part`` ("": the selection examples, as before validation existed; "-validate")."""
    work_dir = config.work_dir or default_work_dir()
    stem = f"{sender.name}__{receiver.name}-{config.dataset}"

    def score(examples: list, systems: list[System], part: str = "") -> dict[str, float]:
        run = {**header, "validate_examples": config.validate_examples} if part else header
        store = ResultStore.for_run(work_dir, stem + part, run)
        make_scorer(config, sender, receiver, examples).run(systems, store, progress=config.progress)
        return {s.key: store.mean(s.key, metric) for s in systems}

    return score
