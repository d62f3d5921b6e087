"""``droidspeak demo``: the main job, on CPU, on the real family (SmolLM2-135M-Instruct).

    droidspeak demo                                              # real: base -> test-lora
    droidspeak demo --sender tester --receiver libwriter --corpus stdlib --split lib_heldout \
        --context-len 1024 --num-examples 16                     # the micro family

Model A (the sender, the pinned SmolLM2 base) prefills one long shared context from a
held-out Django file; model B (the receiver, a fine-tune: its committed LoRA adapter is
merged on first use) then needs the same context and answers a code-completion query
after it: its own full prefill, full reuse of A's KV, DroidSpeak with the plan chosen
from A -> B's committed profile, and a CacheBlend-style baseline at the same compute.
It prints each system's answer to the first context side by side with B's own, then
prefill time, recomputed layer-tokens and quality averaged over a few more examples.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch

from sglang_droidspeak.config_cli import add_dataclass_arguments, at_least, check_fields, dataclass_from_args, one_of
from sglang_droidspeak.plan import ModelRef, Profile, ProfileError, find_profile
from sglang_droidspeak.profiler.evaluate import PairEvaluator, cacheblend_tokens
from sglang_droidspeak.profiler.loading import LoadedModel, default_work_dir, load_model, run_header
from sglang_droidspeak.profiler.store import ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, System, cacheblend_system, plan_system
from sglang_droidspeak.tasks import TASKS, build_task, decode_answer
from sglang_droidspeak.tasks.corpora import CORPORA, ALL_SPLITS, load_corpus, split_problem


@dataclass(frozen=True)
class DemoConfig:
    """Rules (config_cli): ints and floats >= 0 and finite unless their metadata says more."""

    sender: str = "smollm2-base"
    receiver: str = "smollm2-test-lora"
    profiles_dir: str = "profiles"
    dataset: str = field(default="lcc", metadata=one_of(*TASKS))
    corpus: str = field(default="django", metadata=one_of(*CORPORA))
    split: str = field(default="test_heldout", metadata=one_of(*ALL_SPLITS))
    context_len: int = field(default=512, metadata=at_least(1))
    query_len: int = field(default=32, metadata=at_least(1))
    num_examples: int = field(default=6, metadata=at_least(1))
    seed: int = 1  # profiles are made on seed 0: the demo's examples are not the profiled ones
    max_quality_drop: float = 0.06  # in the profile's metric (agreement for both families)
    timing_repeats: int = field(default=2, metadata=at_least(1))

    def __post_init__(self) -> None:
        check_fields(self)
        if split_problem(self.corpus, self.split):
            raise ValueError(split_problem(self.corpus, self.split))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, DemoConfig, {"max_quality_drop": "largest allowed drop when choosing the plan"})


def load_or_build_profile(config: DemoConfig, sender: LoadedModel, receiver: LoadedModel) -> tuple[Profile, str]:
    refs = ModelRef(sender.name, sender.fingerprint), ModelRef(receiver.name, receiver.fingerprint)
    try:
        profile = find_profile(config.profiles_dir, *refs)
        if profile is not None:
            return profile, f"loaded from {config.profiles_dir}/"
        why = "no committed profile for this pair"
    except ProfileError as e:
        why = f"committed profile unusable ({e})"
    from sglang_droidspeak.profiler.runner import ProfileConfig, run_profile

    out_dir = default_work_dir() / "demo-profiles"
    quick = ProfileConfig(sender.name if sender.name == config.sender else str(sender.path),
                          receiver.name if receiver.name == config.receiver else str(receiver.path),
                          dataset=config.dataset, corpus=config.corpus, split=config.split, num_examples=8, granularity=2,
                          out_dir=str(out_dir), plots=False)
    return run_profile(quick).profile, f"built a quick profile in {out_dir} ({why})"


def choose_system(profile: Profile, max_quality_drop: float) -> System:
    point = profile.cheapest_within(max_quality_drop) or profile.frontier[-1]
    return plan_system(point.plan)


def _timed_prefix(evaluator: PairEvaluator, system: System, context: torch.Tensor, sender_cache, repeats: int):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        evaluator.prefix_kv(system, context, sender_cache)
        best = min(best, time.perf_counter() - start)
    return best


def run(args: argparse.Namespace) -> int:
    config = dataclass_from_args(DemoConfig, args)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sender, receiver = load_model(config.sender), load_model(config.receiver)
    profile, source = load_or_build_profile(config, sender, receiver)
    chosen = choose_system(profile, config.max_quality_drop)
    num_layers = receiver.model.num_layers
    budget = chosen.plan.num_recomputed_layers
    systems = [RECEIVER, plan_system(chosen.plan.full_reuse(num_layers)), chosen]
    if 0 < budget < num_layers and cacheblend_tokens(receiver.model, budget, config.context_len) is not None:
        systems.append(cacheblend_system(budget))
    systems.append(SENDER)
    examples = build_task(config.dataset, receiver.tokenizer, split=config.split, num_examples=config.num_examples,
                          context_len=config.context_len, query_len=config.query_len, seed=config.seed,
                          corpus=load_corpus(config.corpus))
    evaluator = PairEvaluator(sender.model, receiver.model, receiver.tokenizer, config.dataset, examples)

    print(f"models: A={sender.name} -> B={receiver.name} ({num_layers} layers); profile {source}")
    print(f"plan: recompute {chosen.plan} ({budget}/{num_layers} layers), the cheapest within "
          f"{config.max_quality_drop} {profile.metric} of B's own prefill on the profile set")
    context = torch.tensor(examples[0].context_ids)
    start = time.perf_counter()
    sender_cache = sender.model.prefill(context, e_layers=chosen.plan.e_layers())
    print(f"A prefilled the shared context ({len(context)} tokens) in {1e3 * (time.perf_counter() - start):.1f} ms\n")

    store = ResultStore.for_run(default_work_dir(), "demo", run_header(config, sender, receiver))
    evaluator.run(systems, store, progress=True)
    print(_answers(evaluator, systems, store))
    print(_table(config, evaluator, systems, store, context, sender_cache, num_layers))
    return 0


def _label(system: System) -> str:
    names = {"receiver": "B full prefill", "sender": "A alone (no B)"}
    label = names.get(system.kind, system.key.replace("plan:reuse-all", "full reuse").replace("plan:", "DroidSpeak "))
    return label.replace("cacheblend:", "CacheBlend-style, k=")


def _answers(evaluator: PairEvaluator, systems: list[System], store: ResultStore, width: int = 72) -> str:
    """The first context's query tail and every system's answer, one line each."""
    example = evaluator.examples[0]
    tail = [line for line in evaluator.tokenizer.decode(list(example.query_ids)).splitlines() if line.strip()] or [""]
    show = lambda text: repr(text[:width])  # noqa: E731
    rows = [f"first context: {example.source}, the query ends with {show(tail[-1])}",
            f"  {'true next line':<26}{show(example.target)}"]
    rows += [f"  {_label(s):<26}{show(store.get(s.key, 0).answer)}" for s in systems]
    return "\n".join(rows) + "\n"


def _table(config, evaluator, systems, store, context, sender_cache, num_layers) -> str:
    """First context: prefill time, compute, same answer as B; then means over all examples."""
    reference = store.get("receiver", 0).answer
    rows = [f"{'':<26}{'-- first context (' + str(len(context)) + ' tokens) --':^35}"
            f"{'-- mean over ' + str(len(evaluator.examples)) + ' examples --':^36}",
            f"{'system':<26}{'prefill ms':>11}{'recomputed':>12}{'answer==B':>11}"
            f"{'agreement':>12}{'target_acc':>12}{'edit_sim':>10}"]
    for s in systems:
        ms = 1e3 * _timed_prefix(evaluator, s, context, sender_cache, config.timing_repeats) if s.kind != "sender" else 0.0
        label = _label(s)
        same = store.get(s.key, 0).answer == reference
        rows.append(f"{label:<26}{ms:>11.1f}{s.recompute_fraction(num_layers):>11.0%} {str(same):>11}"
                    f"{store.mean(s.key, 'agreement'):>12.3f}{store.mean(s.key, 'target_acc'):>12.3f}"
                    f"{store.mean(s.key, 'edit_sim'):>10.3f}")
    return "\n".join(rows)
