"""Held-out loss and perplexity of a family model over fixed token windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


@dataclass(frozen=True)
class EvalResult:
    """Mean next-token loss (nats) over ``num_tokens`` predicted tokens."""

    loss: float
    num_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@torch.no_grad()
def evaluate(model: PreTrainedModel, windows: torch.Tensor, batch_size: int) -> EvalResult:
    """Loss over ``windows`` [num_windows, window_len]; each window is its own context."""
    model.eval()
    total_nll, num_tokens = 0.0, 0
    device = next(model.parameters()).device
    for batch in windows.to(device).split(batch_size):  # [<=batch_size, window_len]
        logits = model(input_ids=batch, use_cache=False).logits  # [b, window_len, vocab]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(),
                              reduction="sum")
        total_nll += nll.item()
        num_tokens += batch[:, 1:].numel()
    return EvalResult(total_nll / num_tokens, num_tokens)
