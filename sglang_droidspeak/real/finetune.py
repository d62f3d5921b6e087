"""Run the real family's recipe (recipe.py): train, evaluate before/after per domain, save.

    run_recipe(RecipeConfig(device="cuda"))   # scripts/real_finetune.py is the command line

Writes into ``out_dir``: ``finetune.json`` (config, corpus hashes, base sha256, per variant
the training losses, seconds, held-out loss on every domain before and after, sha256 of
what it saved) and ``adapters/smollm2-<variant>.safetensors`` for LoRA variants (bfloat16,
what is evaluated is what is saved). Every variant's full weights go to ``models_dir`` as a
Hugging Face directory ``smollm2-<variant>`` (LoRA merged), ready for the profiler.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sglang_droidspeak.family import data
from sglang_droidspeak.family.evaluate import evaluate
from sglang_droidspeak.family.train import Schedule, TrainPhase, deterministic_torch, train_model
from sglang_droidspeak.real.corpus import DOMAINS, RealCorpus, load_real_corpus
from sglang_droidspeak.real.gguf_tokenizer import check_tokenizer
from sglang_droidspeak.real.lora import apply_lora, load_adapter, merge_lora, round_adapter, save_adapter
from sglang_droidspeak.real.pins import file_sha256
from sglang_droidspeak.real.recipe import VARIANTS, RecipeConfig, Variant

DOC_SEPARATOR = "<|endoftext|>"
EVAL_SEED = 0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def load_base(path: Path, device: str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def heldout_windows(corpus: RealCorpus, backend, eos: int, config: RecipeConfig) -> dict[str, torch.Tensor]:
    """Per domain: ``eval_windows`` windows [n, seq_len] spread over its whole held-out split."""
    out = {}
    for domain in DOMAINS:
        files = data.shuffled_files(corpus, f"{domain}_heldout", EVAL_SEED)
        stream = data.token_stream(corpus, files, backend, eos, num_tokens=1 << 62)
        out[domain] = data.spread_windows(stream.token_ids, config.seq_len, config.eval_windows)
    return out


def domain_losses(model: torch.nn.Module, windows: Mapping[str, torch.Tensor], config: RecipeConfig) -> dict:
    with _autocast(config):
        return {d: round(evaluate(model, w, config.eval_batch_size).loss, 5) for d, w in windows.items()}


@contextmanager
def _determinism(config: RecipeConfig):
    """CPU: fixed threads, deterministic algorithms (bitwise repeatable). CUDA: deterministic
    algorithms where torch has them (warn_only: an op without one warns, never stops a lease),
    and attention on SDPA's math kernel: with the default choice, cuDNN attention's backward
    (non-deterministic) made two runs of the recipe on one H100 differ (2026-12-06: adapters
    1fd6407e vs 3a6f2cbe, held-out losses equal to 1e-3)."""
    if config.device == "cpu":
        with deterministic_torch(torch.get_num_threads()):
            yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    old = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])


def _autocast(config: RecipeConfig):
    use = config.device == "cuda" and config.bf16
    return bf16_autocast("cuda") if use else nullcontext()


def bf16_autocast(device_type: str):
    """bfloat16 autocast WITHOUT its weight cache. The whole training loop runs inside one
    autocast region, and autocast keeps the low-precision copy of every leaf weight it
    casts until the region ends: with the cache on, every forward after the first ran on
    the step-0 weights while the optimizer moved the float32 ones (the full fine-tune of
    2026-12-06 on an H100: train loss flat at ~2.0, held-out lib loss 1.86 -> 6.51; the
    LoRA variants were spared because their factors are cast through views)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)


def train_variant(model: torch.nn.Module, variant: Variant, corpus: RealCorpus, backend, eos: int,
                  config: RecipeConfig, seed: int, progress: bool) -> dict:
    steps = config.steps(variant)
    files = data.shuffled_files(corpus, variant.domain, seed)
    stream = data.token_stream(corpus, files, backend, eos, steps * config.batch_size * config.seq_len)
    phase = TrainPhase(data.windows(stream.token_ids, config.seq_len), config.batch_size, steps)
    schedule = Schedule(variant.lr, min(variant.warmup_steps, max(1, steps // 10)), weight_decay=0.0, grad_clip=1.0)
    with _autocast(config):
        result = train_model(model, [phase], schedule, seed=seed, desc=variant.name, progress=progress)
    return {"steps": steps, "train_tokens": stream.num_tokens, "train_files": stream.num_files,
            "seconds": round(result.seconds, 2), "first_loss": round(result.losses[0], 5),
            "final_loss": round(result.final_loss, 5),
            "losses_every_10": [round(x, 4) for x in result.losses[::10]]}


def save_variant(model: torch.nn.Module, base_path: Path, out: Path) -> str:
    """The variant as a HF directory: config and tokenizer files of the base, float32 weights
    in sorted order (a tied lm_head not repeated), so equal weights give equal bytes; their sha256."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    tensors = {k: state[k].detach().to("cpu", torch.float32).contiguous() for k in sorted(state)}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", *TOKENIZER_FILES):
        if (base_path / name).is_file():
            shutil.copy(base_path / name, out / name)
    return file_sha256(out / "model.safetensors")


def run_recipe(config: RecipeConfig, corpus: RealCorpus | None = None, base_path: Path | None = None,
               variants: Mapping[str, Variant] = VARIANTS, progress: bool = True) -> dict:
    if config.device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    if base_path is None:
        from sglang_droidspeak.real.base import ensure_base

        base_path = Path(config.base) if config.base else ensure_base()
    corpus = corpus or load_real_corpus()
    out_dir, models_dir = Path(config.out_dir), Path(config.models_dir or Path(config.out_dir) / "models")
    (out_dir / "adapters").mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    check_tokenizer(tokenizer)
    backend, eos = tokenizer.backend_tokenizer, tokenizer.convert_tokens_to_ids(DOC_SEPARATOR)
    report = {"date": dt.date.today().isoformat(), "command": " ".join(sys.argv), "config": dataclasses.asdict(config),
              "machine": _machine(config.device), "corpus": corpus.describe(),
              "base": {"path": str(base_path), "weights_sha256": file_sha256(base_path / "model.safetensors")},
              "variants": {}}
    with _determinism(config):
        windows = heldout_windows(corpus, backend, eos, config)
        base = load_base(base_path, config.device)
        report["base"]["heldout_loss"] = domain_losses(base, windows, config)
        del base
        for index, name in enumerate(config.variant_names, start=1):
            variant, seed = variants[name], config.seed * 1000 + index
            record = {"domain": variant.domain, "method": variant.method, "lr": variant.lr,
                      "lora": dataclasses.asdict(variant.lora) if variant.lora else None}
            committed = committed_adapter(config, name) if variant.lora is not None else None
            if committed is not None:
                model = load_adapter(load_base(base_path, config.device), committed)
                record.update(from_adapter=str(committed), steps=0, seconds=0.0, adapter_sha256=file_sha256(committed),
                              adapter_bytes=committed.stat().st_size)
            else:
                model = load_base(base_path, config.device)
                if variant.lora is not None:
                    apply_lora(model, variant.lora, seed=seed)
                record.update(train_variant(model, variant, corpus, backend, eos, config, seed, progress))
                if variant.lora is not None:
                    round_adapter(model)
                    adapter = save_adapter(model, variant.lora, out_dir / "adapters" / f"smollm2-{name}.safetensors",
                                           variant=name, base_weights_sha256=report["base"]["weights_sha256"])
                    record["adapter_sha256"], record["adapter_bytes"] = file_sha256(adapter), adapter.stat().st_size
                    merge_lora(model)
            record["heldout_loss"] = domain_losses(model, windows, config)
            record["weights_sha256"] = save_variant(model, base_path, models_dir / f"smollm2-{name}")
            report["variants"][name] = record
            del model
    (out_dir / "finetune.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def committed_adapter(config: RecipeConfig, name: str) -> Path | None:
    """``config.adapters_dir``'s adapter of variant ``name`` when there is one (else None: train it)."""
    if not config.adapters_dir:
        return None
    path = Path(config.adapters_dir) / f"smollm2-{name}.safetensors"
    return path if path.is_file() else None


def _machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def failed_variants(report: dict) -> dict[str, str]:
    """Variants that did not learn their domain: own held-out loss not below the base's, or a
    held-out loss that is not finite. A failed variant is a bug or a bad recipe, never a model
    to profile (the 2026-12-06 lib-full: lib 1.86 -> 6.51)."""
    base, failed = report["base"]["heldout_loss"], {}
    for name, v in report["variants"].items():
        losses, domain = v["heldout_loss"], v["domain"]
        if not all(math.isfinite(x) for x in losses.values()):
            failed[name] = f"held-out loss not finite: {losses}"
        elif losses[domain] >= base[domain]:
            failed[name] = f"own domain {domain}: held-out loss {losses[domain]:.4f} >= the base's {base[domain]:.4f}"
    return failed


def loss_table(report: dict) -> str:
    """Held-out loss (nats/token) per domain: the base, then each variant (own domain marked *)."""
    header = f"{'model':<12}" + "".join(f"{d:>10}" for d in DOMAINS) + f"{'steps':>7}{'train s':>9}"
    lines = [header, "-" * len(header), f"{'base':<12}" + "".join(
        f"{report['base']['heldout_loss'][d]:>10.4f}" for d in DOMAINS)]
    for name, v in report["variants"].items():
        cells = "".join(f"{v['heldout_loss'][d]:>9.4f}{'*' if d == v['domain'] else ' '}" for d in DOMAINS)
        lines.append(f"{name:<12}{cells}{v['steps']:>7}{v['seconds']:>9.1f}")
    return "\n".join(lines)
