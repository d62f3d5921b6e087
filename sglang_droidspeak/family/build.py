"""Build the micro family into a directory: tokenizer, base, two fine-tunes, family.json.

    out_dir/
      base/ tester/ libwriter/   Hugging Face dirs: config.json, model.safetensors
                                 (float32, tied embeddings), generation_config.json,
                                 tokenizer.json, tokenizer_config.json
      family.json                config, corpus sizes, steps/seconds, perplexities

The base trains on the ``base`` split; ``tester`` and ``libwriter`` are copies of the
base fine-tuned on ``test`` and ``lib``. Every model is evaluated on ``lib_heldout`` and
``test_heldout`` at ``seq_len``-token windows, and on its own training split: windows it
trained on and files it never read (the generalisation gap).
"""

from __future__ import annotations

import copy
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

from sglang_droidspeak.family import data
from sglang_droidspeak.family.config import (
    BASE, BUILD_FORMAT_VERSION, EVAL_SPLITS, MODEL_NAMES, TRAIN_SPLITS, FamilyConfig,
    python_version,
)
from sglang_droidspeak.family.corpus import CorpusSplit, split_corpus
from sglang_droidspeak.family.evaluate import evaluate
from sglang_droidspeak.family.manifest import write_manifest
from sglang_droidspeak.family.tokenizer import eos_id, save_hf_tokenizer, train_tokenizer
from sglang_droidspeak.family.train import (
    Schedule, TrainPhase, TrainResult, deterministic_torch, make_model, train_model,
)

EVAL_SEED = 0  # held-out windows do not depend on the family seed


@dataclass(frozen=True)
class Streams:
    """Token streams per corpus split (training and held-out splits), and ``unseen``:
    per training split, a stream of its files that training never reads."""

    by_split: dict[str, data.TokenStream]
    unseen: dict[str, data.TokenStream]

    def eval_windows(self, split: str, config: FamilyConfig,
                     unseen: bool = False) -> torch.Tensor:
        """``config.eval_windows`` windows of ``seq_len`` spread over the whole stream."""
        stream = (self.unseen if unseen else self.by_split)[split]
        return data.spread_windows(stream.token_ids, config.seq_len, config.eval_windows)


def _train_tokenizer(config: FamilyConfig, corpus: CorpusSplit) -> Tokenizer:
    files = data.shuffled_files(corpus, "base", config.seed, config.max_train_files)
    return train_tokenizer(data.sample_texts(corpus, files, config.tokenizer_train_chars),
                           config.vocab_size)


def _tokenize(config: FamilyConfig, corpus: CorpusSplit, tokenizer: Tokenizer) -> Streams:
    """Only as many tokens per split as its training steps (or evaluation) consume."""
    eos = eos_id(tokenizer)
    eval_tokens = max(config.eval_stream_tokens, config.seq_len)
    need = {BASE: config.base_steps, "test": config.finetune_steps,
            "lib": config.finetune_steps}
    streams, unseen = {}, {}
    for split, num_steps in need.items():
        files = data.shuffled_files(corpus, split, config.seed)
        streams[split] = data.token_stream(corpus, files[: config.max_train_files], tokenizer,
                                           eos, num_steps * config.tokens_per_step)
        unseen[split] = data.token_stream(corpus, files[streams[split].num_files:], tokenizer,
                                          eos, eval_tokens)
    for split in EVAL_SPLITS:
        files = data.shuffled_files(corpus, split, EVAL_SEED)
        streams[split] = data.token_stream(corpus, files, tokenizer, eos, eval_tokens)
    return Streams(streams, unseen)


def _phases(config: FamilyConfig, stream: data.TokenStream, num_steps: int,
            num_long_steps: int) -> list[TrainPhase]:
    """Short windows first, the last ``num_long_steps`` at ``seq_len``; disjoint tokens."""
    short_steps = num_steps - num_long_steps
    cut = stream.num_tokens * short_steps // max(1, num_steps)
    short_ids, long_ids = stream.token_ids[:cut], stream.token_ids[cut:]
    if short_ids.numel() < config.short_seq_len:
        short_ids = stream.token_ids
    if long_ids.numel() < config.seq_len:
        long_ids = stream.token_ids
    short_batch = config.tokens_per_step // config.short_seq_len
    return [
        TrainPhase(data.windows(short_ids, config.short_seq_len), short_batch, short_steps),
        TrainPhase(data.windows(long_ids, config.seq_len), config.batch_size, num_long_steps),
    ]


def _evaluate_all(config: FamilyConfig, models: dict[str, LlamaForCausalLM],
                  streams: Streams) -> dict[str, dict[str, float]]:
    """Per model: held-out perplexities, and on its own training split both tokens it
    trained on (``train_seen``) and files it never read (``train_unseen``)."""
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        split = TRAIN_SPLITS[name]
        windows = {held_out: streams.eval_windows(held_out, config) for held_out in EVAL_SPLITS}
        windows["train_seen"] = streams.eval_windows(split, config)
        windows["train_unseen"] = streams.eval_windows(split, config, unseen=True)
        results[name] = {key: evaluate(model, batch, config.batch_size).perplexity
                         for key, batch in windows.items()}
    return results


def _save_model(model: LlamaForCausalLM, tokenizer: Tokenizer, config: FamilyConfig,
                out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)
    save_hf_tokenizer(tokenizer, config.max_position_embeddings, out_dir)


@dataclass(frozen=True)
class TrainedModels:
    """The family's models (same order as MODEL_NAMES) and how each one trained."""

    models: dict[str, LlamaForCausalLM]
    results: dict[str, TrainResult]


def _train_models(config: FamilyConfig, tokenizer: Tokenizer, streams: Streams,
                  progress: bool) -> TrainedModels:
    """The base from the seed, then each fine-tune from a copy of the base."""
    base = make_model(config, tokenizer.get_vocab_size(), eos_id(tokenizer))
    base_schedule = Schedule(config.lr, config.warmup_steps, config.weight_decay,
                             config.grad_clip)
    results = {BASE: train_model(
        base, _phases(config, streams.by_split[BASE], config.base_steps,
                      config.base_long_steps),
        base_schedule, seed=config.seed, desc=BASE, progress=progress)}
    models = {BASE: base}
    finetune_schedule = Schedule(config.finetune_lr,
                                 min(config.warmup_steps, config.finetune_steps // 10 + 1),
                                 config.weight_decay, config.grad_clip)
    for offset, name in enumerate(MODEL_NAMES[1:], start=1):
        models[name] = copy.deepcopy(base)
        phases = _phases(config, streams.by_split[TRAIN_SPLITS[name]],
                         config.finetune_steps, config.finetune_long_steps)
        results[name] = train_model(models[name], phases, finetune_schedule,
                                    seed=config.seed + offset, desc=name, progress=progress)
    return TrainedModels(models, results)


def build_family(config: FamilyConfig, out_dir: Path, progress: bool = True) -> dict:
    """Build every model of the family into ``out_dir`` (created); return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = _Clock(report=progress)
    with deterministic_torch(config.num_threads):
        corpus = split_corpus()
        tokenizer = _train_tokenizer(config, corpus)
        clock.lap("tokenizer")
        streams = _tokenize(config, corpus, tokenizer)
        clock.lap("tokenize")
        trained = _train_models(config, tokenizer, streams, progress)
        clock.lap("train")
        perplexity = _evaluate_all(config, trained.models, streams)
        clock.lap("eval")
    for name, model in trained.models.items():
        _save_model(model, tokenizer, config, out_dir / name)
    clock.lap("save")
    manifest = _manifest(config, tokenizer, corpus, streams, trained, perplexity)
    manifest["seconds"] = clock.seconds()
    write_manifest(out_dir, manifest)
    return manifest


class _Clock:
    """Wall seconds per build stage, and in total; with ``report``, one stderr line per stage."""

    def __init__(self, report: bool = False) -> None:
        self._start = self._last = time.perf_counter()
        self._laps: dict[str, float] = {}
        self._report = report

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self._laps[stage], self._last = now - self._last, now
        if self._report:
            print(f"family: {stage} done in {self._laps[stage]:.0f} s ({now - self._start:.0f} s so far)",
                  file=sys.stderr, flush=True)

    def seconds(self) -> dict[str, float]:
        total = time.perf_counter() - self._start
        return {k: round(v, 2) for k, v in {**self._laps, "total": total}.items()}


def _manifest(config: FamilyConfig, tokenizer: Tokenizer, corpus: CorpusSplit,
              streams: Streams, trained: TrainedModels,
              perplexity: dict[str, dict[str, float]]) -> dict:
    vocab_size = tokenizer.get_vocab_size()
    return {
        "format_version": BUILD_FORMAT_VERSION,
        "config": config.to_dict(),
        "seed": config.seed,
        "python_version": python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "names": list(MODEL_NAMES),
        "vocab_size": vocab_size,
        "num_params": sum(p.numel() for p in trained.models[BASE].parameters()),
        "tokenizer_sha256": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
        "corpus": _corpus_sizes(corpus, streams),
        "models": {name: {"parent": None if name == BASE else BASE,
                          "train_split": TRAIN_SPLITS[name],
                          "steps": result.num_steps,
                          "train_seconds": round(result.seconds, 2),
                          "final_train_loss": round(result.final_loss, 4)}
                   for name, result in trained.results.items()},
        "eval": {"seq_len": config.seq_len, "windows": config.eval_windows,
                 "windows_are": "evenly spread over each stream (up to eval_stream_tokens "
                                "tokens of the split's files in a fixed shuffled order)",
                 "train_seen": "windows of the model's own training stream",
                 "train_unseen": "windows of other files of its training split"},
        "perplexity": {**perplexity, "uniform": vocab_size},
    }


def _corpus_sizes(corpus: CorpusSplit, streams: Streams) -> dict[str, dict[str, int]]:
    """Per split: its files and bytes, and the files tokenized and their tokens."""
    return {split: {"files": len(corpus.files(split)),
                    "bytes": sum((corpus.root / f).stat().st_size for f in corpus.files(split)),
                    "files_used": stream.num_files, "tokens_used": stream.num_tokens}
            for split, stream in streams.by_split.items()}
