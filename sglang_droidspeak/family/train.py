"""Model construction and the training loop of the micro family (CPU, deterministic).

Determinism: weights are initialised under ``torch.manual_seed(seed)``, data order comes
from seeded generators (data.py), and the build runs under a fixed torch thread count
with deterministic algorithms on, so the same config gives bitwise-identical weights on
the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from sglang_droidspeak.family.config import FamilyConfig
from sglang_droidspeak.family.data import batches


@dataclass(frozen=True)
class TrainPhase:
    """``num_steps`` steps of ``batch_size`` windows drawn from ``windows`` [n, window_len]."""

    windows: torch.Tensor
    batch_size: int
    num_steps: int


@dataclass(frozen=True)
class Schedule:
    """AdamW with linear warmup, then cosine decay to ``min_lr_ratio * lr``."""

    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    min_lr_ratio: float = 0.1

    def lr_at(self, step: int, num_steps: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, num_steps - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


@dataclass(frozen=True)
class TrainResult:
    """Per-step training losses (nats/token) and the wall time of the loop."""

    losses: tuple[float, ...]
    seconds: float

    @property
    def num_steps(self) -> int:
        return len(self.losses)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps (at least one)."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


@contextmanager
def deterministic_torch(num_threads: int) -> Iterator[None]:
    """Fixed intra-op threads and deterministic algorithms; restored on exit."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)


def make_model(config: FamilyConfig, vocab_size: int, eos_id: int) -> LlamaForCausalLM:
    """A freshly initialised float32 Llama (GQA, RoPE) from the seed."""
    llama_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        dtype="float32",
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM._from_config(llama_config, attn_implementation="sdpa")


def lm_loss(model: LlamaForCausalLM, token_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy (nats) over ``token_ids`` [batch, seq_len]."""
    logits = model(input_ids=token_ids, use_cache=False).logits  # [batch, seq_len, vocab]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), token_ids[:, 1:].flatten())


def _optimizer(model: torch.nn.Module, schedule: Schedule) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": schedule.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.95), foreach=False)


def train_model(model: LlamaForCausalLM, phases: Sequence[TrainPhase], schedule: Schedule,
                seed: int, desc: str = "train", progress: bool = True) -> TrainResult:
    """Run the phases in order with one optimizer and one LR schedule across them."""
    num_steps = sum(phase.num_steps for phase in phases)
    device = next(model.parameters()).device
    optimizer = _optimizer(model, schedule)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    with tqdm(total=num_steps, desc=desc, disable=not progress, leave=False) as bar:
        for phase_index, phase in enumerate(phases):
            phase_batches = batches(phase.windows, phase.batch_size, phase.num_steps,
                                    seed=seed * 1000 + phase_index)
            for batch in phase_batches:
                for group in optimizer.param_groups:
                    group["lr"] = schedule.lr_at(len(losses), num_steps)
                loss = lm_loss(model, batch.to(device))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
                bar.update()
    model.eval()
    return TrainResult(tuple(losses), time.perf_counter() - start)
