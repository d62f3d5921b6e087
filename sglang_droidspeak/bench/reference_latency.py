"""``droidspeak bench-reference``: receiver prefill latency per system on the micro family (CPU).

    droidspeak bench-reference --sender tester --receiver libwriter --context-len 768,2016 \\
        --query-len 32 --repeats 20 --warmup 2 [--out docs/results/reference-latency-PAIR-DATE.json]

For one sender -> receiver pair of the micro family (or HF directories), times on CPU the
receiver's side of each system of the quality study with the reference engine's own code
paths (reference_timing: full prefill "off", full reuse "reuse", DroidSpeak "0:k" for k in
1..L-1, CacheBlend-style "blend:R" at R = k/L for every k whose budget covers its selection
pass). Per context length: the same seeded token ids for every system, ``--warmup``
discarded rounds, ``--repeats`` timed rounds, ``torch.set_num_threads(--threads)`` (0: torch's
default) for all. Writes the bench-prefill result format (date, card, command, model,
num_layers, plans, samples with length / plan / ttft_ms / repeat, rows), so
``droidspeak quality-latency --bench OUT.json --length 768`` reads it, plus OUT.md (table).
Each context length + query must fit the receiver's max_position_embeddings.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from sglang_droidspeak.bench import prefill_report as rep
from sglang_droidspeak.bench.reference_timing import measure_length
from sglang_droidspeak.config_cli import add_dataclass_arguments, dataclass_from_args
from sglang_droidspeak.profiler.loading import LoadedModel, load_model

ENGINE = "reference"


@dataclass(frozen=True)
class ReferenceLatencyConfig:
    sender: str = "tester"
    receiver: str = "libwriter"
    context_len: str = "768"  # comma-separated context lengths (the quality study's: 768)
    query_len: int = 32
    repeats: int = 5
    warmup: int = 2
    # torch.set_num_threads for every system; 0 = torch's default. 1: a tiny model on a shared
    # CPU, where a thread team stalls on a busy neighbour's core (as tests/conftest.py)
    threads: int = 1
    seed: int = 0
    out: str = ""  # "" = docs/results/reference-latency-<sender>__<receiver>-<date>.json


HELP = {"context_len": "context lengths, comma-separated", "threads": "torch threads (0: torch's default)",
        "out": "result JSON; OUT.md beside it"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, ReferenceLatencyConfig, HELP)


def context_lengths(config: ReferenceLatencyConfig, max_positions: int) -> list[int]:
    """The lengths asked for; ValueError if one is not positive or, with the query, exceeds
    the receiver's ``max_positions``."""
    lengths = [int(x) for x in config.context_len.split(",") if x.strip()]
    too_long = [n for n in lengths if n + config.query_len > max_positions]
    if not lengths or min(lengths) <= 0 or too_long:
        raise ValueError(f"context lengths {config.context_len!r}: each must be > 0 and, with the {config.query_len}"
                         f"-token query, within max_position_embeddings {max_positions} "
                         f"(at most {max_positions - config.query_len}); too long: {too_long}")
    return lengths


def command_line(config: ReferenceLatencyConfig) -> str:
    words = [f"--{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(config).items() if v != ""]
    return "droidspeak bench-reference " + shlex.join(words)


def card(threads: int) -> str:
    return (f"CPU {platform.machine()} ({os.cpu_count()} cores, shared), {threads} threads, "
            f"torch {torch.__version__}")


def model_note(sender: LoadedModel, receiver: LoadedModel) -> str:
    c = receiver.model.config
    return (f"{receiver.name} (weights {receiver.weights_digest}; {c.num_hidden_layers} layers, hidden "
            f"{c.hidden_size}, {c.num_attention_heads} q / {c.num_key_value_heads} kv heads, vocab {c.vocab_size}, "
            f"{receiver.model.dtype}) reusing {sender.name}'s KV (weights {sender.weights_digest}); "
            f"HF transformers on the CPU reference engine, the code paths the quality study scores")


def ttft_note(query_len: int) -> str:
    return (f"receiver-side CPU wall time: the system's prefix KV (profiler.evaluate.system_prefix_kv) then "
            f"ReferenceModel.generate(prefix, {query_len}-token query, 1); the sender's prefill is made before "
            f"the timer")


def measure(sender: LoadedModel, receiver: LoadedModel, config: ReferenceLatencyConfig) -> dict:
    """The result dict (bench-prefill format, plus engine, pair and timing fields)."""
    s, r = sender.model, receiver.model
    if s.num_layers != r.num_layers:
        raise ValueError(f"layer counts differ: sender {s.num_layers}, receiver {r.num_layers}")
    lengths = context_lengths(config, r.config.max_position_embeddings)
    threads = config.threads or torch.get_num_threads()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = [measure_length(s, r, n, config.query_len, config.repeats, config.warmup, config.seed)
                for n in lengths]
    finally:
        torch.set_num_threads(old_threads)
    samples = [x for run_ in runs for x in run_.samples]
    plans = list(dict.fromkeys(p for run_ in runs for p in run_.plans))
    skipped = [x for run_ in runs for x in run_.skipped]
    rows = rep.table_rows(rep.median_ttft(samples), plans, r.num_layers)
    return {"date": dt.date.today().isoformat(), "card": card(threads), "command": command_line(config),
            "engine": ENGINE, "model": r.config.to_dict(), "model_note": model_note(sender, receiver),
            "sender": sender.name, "receiver": receiver.name, "sender_weights": sender.weights_digest,
            "receiver_weights": receiver.weights_digest, "num_layers": r.num_layers, "plans": plans,
            "lengths": lengths, "query_len": config.query_len, "suffix_len": config.query_len,
            "repeats": config.repeats, "warmup": config.warmup, "threads": threads, "seed": config.seed,
            "ttft_note": ttft_note(config.query_len), "skipped": skipped, "samples": samples,
            "rows": rep.rows_to_json(rows)}


def markdown(result: dict) -> str:
    rows = rep.table_rows(rep.median_ttft(result["samples"]), result["plans"], result["num_layers"])
    head = [f"# bench-reference {result['date']}: {result['sender']} -> {result['receiver']}", "",
            f"- card: {result['card']}", f"- model: {result['model_note']}", f"- command: `{result['command']}`",
            f"- TTFT: {result['ttft_note']}; median of {result['repeats']} rounds after {result['warmup']} "
            "warm-up rounds, systems interleaved", "- skipped: " + ("; ".join(result["skipped"]) or "none"), "", ""]
    return "\n".join(head) + rep.markdown_table(rows)


def default_out(config: ReferenceLatencyConfig, sender: str, receiver: str) -> Path:
    if config.out:
        return Path(config.out)
    return Path("docs") / "results" / f"reference-latency-{sender}__{receiver}-{dt.date.today().isoformat()}.json"


def run(args: argparse.Namespace) -> int:
    config = dataclass_from_args(ReferenceLatencyConfig, args)
    sender, receiver = load_model(config.sender), load_model(config.receiver)
    try:
        result = measure(sender, receiver, config)
    except ValueError as exc:
        raise SystemExit(f"bench-reference: {exc}") from None
    out = default_out(config, sender.name, receiver.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown(result))
    print(md.read_text())
    print(f"{out}\n{md}")
    return 0
