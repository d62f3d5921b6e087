"""Build the micro family into a directory: tokenizer, base, two fine-tunes, family.json.

    out_dir/
      base/ tester/ libwriter/   Hugging Face dirs: config.json, model.safetensors
                                 (float32, tied embeddings), generation_config.json,
                                 tokenizer.json, tokenizer_config.json
      family.json                config, corpus sizes, steps/seconds, perplexities

The base trains on the ``base`` split; ``tester`` and ``libwriter`` are copies of the
base fine-tuned on ``test`` and ``lib``. Every model is evaluated on ``lib_heldout`` and
``test_heldout`` at ``seq_len``-token windows, and on windows of its own training data
(the train-vs-held-out gap).
"""

from __future__ import annotations

import copy
import hashlib
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
    Schedule, TrainPhase, deterministic_torch, make_model, train_model,
)

EVAL_SEED = 0  # held-out windows do not depend on the family seed


@dataclass(frozen=True)
class Streams:
    """Token streams per corpus split (training splits and the held-out splits)."""

    by_split: dict[str, data.TokenStream]

    def windows(self, split: str, window_len: int) -> torch.Tensor:
        return data.windows(self.by_split[split].token_ids, window_len)


def _train_tokenizer(config: FamilyConfig, corpus: CorpusSplit) -> Tokenizer:
    files = data.shuffled_files(corpus, "base", config.seed, config.max_train_files)
    return train_tokenizer(data.sample_texts(corpus, files, config.tokenizer_train_chars),
                           config.vocab_size)


def _tokenize(config: FamilyConfig, corpus: CorpusSplit, tokenizer: Tokenizer) -> Streams:
    """Only as many tokens per split as its training steps (or evaluation) consume."""
    eos = eos_id(tokenizer)
    need = {BASE: config.base_steps, "test": config.finetune_steps,
            "lib": config.finetune_steps}
    streams = {}
    for split, num_steps in need.items():
        files = data.shuffled_files(corpus, split, config.seed, config.max_train_files)
        streams[split] = data.token_stream(corpus, files, tokenizer, eos,
                                           num_steps * config.tokens_per_step)
    for split in EVAL_SPLITS:
        files = data.shuffled_files(corpus, split, EVAL_SEED)
        streams[split] = data.token_stream(corpus, files, tokenizer, eos,
                                           config.eval_windows * config.seq_len + 1)
    return Streams(streams)


def _base_phases(config: FamilyConfig, stream: data.TokenStream) -> list[TrainPhase]:
    """Short windows first, the last ``base_long_steps`` at ``seq_len``; disjoint tokens."""
    short_steps = config.base_steps - config.base_long_steps
    cut = stream.num_tokens * short_steps // max(1, config.base_steps)
    short_ids, long_ids = stream.token_ids[:cut], stream.token_ids[cut:]
    if short_ids.numel() < config.short_seq_len:
        short_ids = stream.token_ids
    if long_ids.numel() < config.seq_len:
        long_ids = stream.token_ids
    short_batch = config.tokens_per_step // config.short_seq_len
    return [
        TrainPhase(data.windows(short_ids, config.short_seq_len), short_batch, short_steps),
        TrainPhase(data.windows(long_ids, config.seq_len), config.batch_size,
                   config.base_long_steps),
    ]


def _evaluate_all(config: FamilyConfig, models: dict[str, LlamaForCausalLM],
                  streams: Streams) -> dict[str, dict[str, float]]:
    """Held-out perplexity of every model, plus its loss on its own training windows."""
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        row = {}
        for split in EVAL_SPLITS:
            row[split] = evaluate(model, streams.windows(split, config.seq_len),
                                  config.batch_size).perplexity
        own = streams.windows(TRAIN_SPLITS[name], config.seq_len)[: config.eval_windows]
        row["train_windows"] = evaluate(model, own, config.batch_size).perplexity
        results[name] = row
    return results


def _save_model(model: LlamaForCausalLM, tokenizer: Tokenizer, config: FamilyConfig,
                out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)
    save_hf_tokenizer(tokenizer, config.max_position_embeddings, out_dir)


def build_family(config: FamilyConfig, out_dir: Path, progress: bool = True) -> dict:
    """Build every model of the family into ``out_dir`` (created); return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with deterministic_torch(config.num_threads):
        corpus = split_corpus()
        tokenizer = _train_tokenizer(config, corpus)
        seconds["tokenizer"] = time.perf_counter() - start
        streams = _tokenize(config, corpus, tokenizer)
        seconds["tokenize"] = time.perf_counter() - start - seconds["tokenizer"]
        vocab_size = tokenizer.get_vocab_size()
        base = make_model(config, vocab_size, eos_id(tokenizer))
        train = {BASE: train_model(
            base, _base_phases(config, streams.by_split[BASE]),
            Schedule(config.lr, config.warmup_steps, config.weight_decay, config.grad_clip),
            seed=config.seed, desc=BASE, progress=progress)}
        models = {BASE: base}
        finetune = Schedule(config.finetune_lr, min(config.warmup_steps,
                                                    config.finetune_steps // 10 + 1),
                            config.weight_decay, config.grad_clip)
        for offset, name in enumerate(MODEL_NAMES[1:], start=1):
            models[name] = copy.deepcopy(base)
            phase = TrainPhase(streams.windows(TRAIN_SPLITS[name], config.seq_len),
                               config.batch_size, config.finetune_steps)
            train[name] = train_model(models[name], [phase], finetune,
                                      seed=config.seed + offset, desc=name, progress=progress)
        eval_start = time.perf_counter()
        perplexity = _evaluate_all(config, models, streams)
        seconds["eval"] = time.perf_counter() - eval_start
    for name, model in models.items():
        _save_model(model, tokenizer, config, out_dir / name)
    seconds["total"] = time.perf_counter() - start
    manifest = {
        "format_version": BUILD_FORMAT_VERSION,
        "config": config.to_dict(),
        "seed": config.seed,
        "python_version": python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "names": list(MODEL_NAMES),
        "vocab_size": vocab_size,
        "num_params": sum(p.numel() for p in base.parameters()),
        "tokenizer_sha256": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
        "corpus": _corpus_sizes(corpus, streams),
        "models": {name: {"parent": None if name == BASE else BASE,
                          "train_split": TRAIN_SPLITS[name],
                          "steps": result.num_steps,
                          "train_seconds": round(result.seconds, 2),
                          "final_train_loss": round(result.final_loss, 4)}
                   for name, result in train.items()},
        "eval": {"seq_len": config.seq_len, "windows": config.eval_windows},
        "perplexity": {**perplexity, "uniform": vocab_size},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    write_manifest(out_dir, manifest)
    return manifest


def _corpus_sizes(corpus: CorpusSplit, streams: Streams) -> dict[str, dict[str, int]]:
    """Per split: files in the split, files tokenized and their tokens."""
    return {split: {"files": len(corpus.files(split)), "files_used": stream.num_files,
                    "tokens_used": stream.num_tokens}
            for split, stream in streams.by_split.items()}
