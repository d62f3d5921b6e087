"""A MetaGPT-like multi-agent workload for ``droidspeak bench-throughput`` (pure, seeded).

A *session* is one shared context (a repository: random token ids, 4K-16K tokens by
default, drawn log-uniformly so short contexts are commoner, as in LongBench) read by a
*pipeline* of agents in order, e.g. ``coder>tester`` (a pair) or ``coder>tester>reviewer``
(a chain); each agent is one model. An agent's request is the shared context followed by
its own instruction suffix (``min_suffix_len``..``max_suffix_len`` tokens) and asks for
``max_new_tokens`` tokens with ``ignore_eos``. Sessions start as a Poisson process at
``qps`` sessions per second; within a session the next agent is sent when the previous
agent's response has finished (the load driver does that), as agents hand work on.

    mix = parse_mix("coder>tester:1,coder>tester>reviewer:1")
    sessions = make_sessions(WorkloadSpec(mix=mix, ...), qps=1.0, num_sessions=16, seed=0)
    ids = session_token_ids(sessions[0], seed=0, salt="off@1.0")  # per-agent input_ids

The structure (arrivals, lengths, pipelines, suffix lengths) depends only on ``seed``; the
token ids also on ``salt``, so each (system, QPS) run reads fresh contexts of the same
shapes and no run is served from another run's cache.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

VOCAB_LOW, VOCAB_HIGH = 3, 2048  # ids stay inside the small tokenizer's vocabulary


@dataclass(frozen=True)
class Pipeline:
    agents: tuple[str, ...]  # model names, in the order they read the context
    weight: float


@dataclass(frozen=True)
class WorkloadSpec:
    mix: tuple[Pipeline, ...]
    min_context_len: int = 4096
    max_context_len: int = 16384
    min_suffix_len: int = 32
    max_suffix_len: int = 128
    max_new_tokens: int = 64


@dataclass(frozen=True)
class Session:
    session_id: int
    arrival_s: float  # since the start of the run
    context_len: int
    agents: tuple[str, ...]
    suffix_lens: tuple[int, ...]  # one per agent
    max_new_tokens: int


def parse_mix(text: str) -> tuple[Pipeline, ...]:
    """``"coder>tester:1,coder>tester>reviewer:2"`` (weight optional, default 1);
    ValueError naming the bad entry."""
    pipelines = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        chain, _, weight = entry.partition(":")
        agents = tuple(a.strip() for a in chain.split(">"))
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = -1.0
        if not all(agents) or value <= 0 or not math.isfinite(value):
            raise ValueError(f"--mix entry {entry!r}: expected 'model>model[>...][:weight]', weight > 0")
        pipelines.append(Pipeline(agents, value))
    if not pipelines:
        raise ValueError("--mix: at least one pipeline is needed")
    return tuple(pipelines)


def check_spec(spec: WorkloadSpec) -> None:
    if not 1 <= spec.min_context_len <= spec.max_context_len:
        raise ValueError("context lengths: need 1 <= min_context_len <= max_context_len")
    if not 1 <= spec.min_suffix_len <= spec.max_suffix_len:
        raise ValueError("suffix lengths: need 1 <= min_suffix_len <= max_suffix_len")
    if spec.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")


def log_uniform_int(rng: random.Random, low: int, high: int) -> int:
    """An integer in [low, high], log-uniform (more short contexts than long ones)."""
    value = math.exp(rng.uniform(math.log(low), math.log(high + 1)))
    return min(high, max(low, int(value)))


def make_sessions(spec: WorkloadSpec, qps: float, num_sessions: int, seed: int) -> list[Session]:
    """``num_sessions`` sessions with Poisson arrivals at ``qps`` (the first at its own
    exponential gap, not at 0). Every draw comes from ``random.Random(seed)`` in a fixed order."""
    check_spec(spec)
    if qps <= 0 or num_sessions < 1:
        raise ValueError("qps must be > 0 and num_sessions >= 1")
    rng, clock, sessions = random.Random(seed), 0.0, []
    weights = [p.weight for p in spec.mix]
    for session_id in range(num_sessions):
        clock += rng.expovariate(qps)
        pipeline = rng.choices(spec.mix, weights)[0]
        context_len = log_uniform_int(rng, spec.min_context_len, spec.max_context_len)
        suffix_lens = tuple(rng.randint(spec.min_suffix_len, spec.max_suffix_len) for _ in pipeline.agents)
        sessions.append(Session(session_id, clock, context_len, pipeline.agents, suffix_lens, spec.max_new_tokens))
    return sessions


def session_token_ids(session: Session, seed: int, salt: str) -> list[list[int]]:
    """Per agent: the shared context's ids + that agent's suffix ids (seeded by seed, salt, session)."""
    rng = random.Random(f"{seed}:{salt}:{session.session_id}")
    context = [rng.randrange(VOCAB_LOW, VOCAB_HIGH) for _ in range(session.context_len)]
    return [context + [rng.randrange(VOCAB_LOW, VOCAB_HIGH) for _ in range(n)] for n in session.suffix_lens]


def models_of(mix: tuple[Pipeline, ...]) -> list[str]:
    """Every model in the mix, in first-seen order (the first is the sender in --launch)."""
    return list(dict.fromkeys(a for p in mix for a in p.agents))
