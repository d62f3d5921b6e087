"""Teacher-forced scores of every candidate plan of a pair, batched: profiles on a GPU in minutes.

The same three metrics as PairEvaluator's teacher-forced ones (agreement with the
receiver's own greedy answer, target_acc, target_nll), without a greedy answer per plan.
Two things make it fast, neither changes a score:

- **Shared recompute.** Recomputing [s, e) from E_s gives layer l (s <= l < e) the same
  K/V whatever e is (layer l sees only layers s..l-1). So per example the receiver runs
  its layers s..L-1 once per distinct start s, and every plan takes its groups' K/V from
  those runs: sum over s of (L - s) layer passes instead of one pass per plan and layer.
- **Batched extends.** ``batch_size`` plans' prefix caches are stacked on the batch axis
  and the query + answer (or + true continuation) runs once for all of them.

scripts/gpu/real_profiles.py profiles the real family with it (``--no-generate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import DynamicCache

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler.evaluate import cacheblend_tokens, stop_token_ids, system_prefix_kv
from sglang_droidspeak.profiler.store import Record, ResultStore
from sglang_droidspeak.profiler.systems import System
from sglang_droidspeak.reference import PrefixKV, ReferenceModel, SenderCache
from sglang_droidspeak.tasks import TASKS, TaskExample

TEACHER_FORCED_METRICS = ("agreement", "target_acc", "target_nll")


def shared_recompute(receiver: ReferenceModel, sender: SenderCache, context: Tensor,
                     starts: Iterable[int]) -> dict[int, dict[int, tuple[Tensor, Tensor]]]:
    """start s -> {layer l >= s: (k, v)} of the receiver's layers run from E_s (s = 0: own embeddings)."""
    runs = {}
    for s in sorted(set(starts)):
        hidden = receiver.embed(context) if s == 0 else sender.e[s]  # [n, hidden_size]
        run = receiver.run_layers(hidden, s, receiver.num_layers)
        runs[s] = {l: (run.k[l], run.v[l]) for l in run.k}
    return runs


def composed_prefix(sender: SenderCache, plan: LayerPlan, runs: dict[int, dict[int, tuple[Tensor, Tensor]]]) -> PrefixKV:
    """The receiver's prefix KV under ``plan`` (equal to ReferenceModel.build_receiver_cache)."""
    return sender.kv.with_layers({l: runs[g.start][l] for g in plan.groups for l in range(g.start, g.end)})


@torch.inference_mode()
def batched_teacher_forced(model: ReferenceModel, prefixes: Sequence[PrefixKV], query: Sequence[int],
                           tokens: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per prefix, (top-1 hits [B, m] bool, NLL [B, m] float32) of ``tokens`` after query, teacher-forced."""
    batch, n, m = len(prefixes), prefixes[0].seq_len, len(tokens)
    layers = [(torch.stack([p.k[l] for p in prefixes]), torch.stack([p.v[l] for p in prefixes]))  # [B, kv, n, d]
              for l in range(prefixes[0].num_layers)]
    cache = DynamicCache(ddp_cache_data=layers)
    ids = torch.tensor([*query, *tokens[:-1]], device=model.device)  # [q + m - 1]
    positions = torch.arange(n, n + ids.numel(), device=model.device)
    out = model.model(input_ids=ids.expand(batch, -1), position_ids=positions.expand(batch, -1),
                      past_key_values=cache, use_cache=True, logits_to_keep=m)
    logits = out.logits.float()  # [B, m, vocab]
    target = torch.tensor(tokens, device=model.device).expand(batch, -1)  # [B, m]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [B, m]
    return logits.argmax(-1) == target, nll


class BatchedPlanScorer:
    """Scores ``plan:*``, ``cacheblend:*``, ``receiver`` and ``sender`` systems of one pair,
    teacher-forced only (CacheBlend's prefixes are built one by one, then batched like plans)."""

    def __init__(self, sender: ReferenceModel, receiver: ReferenceModel, tokenizer: Any, task: str,
                 examples: Sequence[TaskExample], batch_size: int = 32, max_new_tokens: int | None = None):
        if sender.num_layers != receiver.num_layers:
            raise ValueError(f"layer counts differ: sender {sender.num_layers}, receiver {receiver.num_layers}")
        self.sender, self.receiver, self.examples = sender, receiver, list(examples)
        self.spec, self.batch_size = TASKS[task], batch_size
        self.max_new_tokens = self.spec.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer, self.spec)

    def run(self, systems: Iterable[System], store: ResultStore, progress: bool = True) -> None:
        systems = list(systems)
        context_len = len(self.examples[0].context_ids) if self.examples else 0
        too_small = [s.key for s in systems if s.kind == "cacheblend"
                     and cacheblend_tokens(self.receiver, s.cacheblend_layers, context_len) is None]
        if too_small:
            raise ValueError(f"{', '.join(too_small)}: the budget does not cover CacheBlend's selection pass")
        starts = sorted({g.start for s in systems if s.plan is not None for g in s.plan.groups})
        todo = [i for i in range(len(self.examples)) if any((s.key, i) not in store for s in systems)]
        for i in tqdm(todo, disable=not progress, desc="examples", unit="ex"):
            store.add_many(self._score_example(i, [s for s in systems if (s.key, i) not in store], starts))

    def _score_example(self, i: int, systems: list[System], starts: list[int]) -> list[Record]:
        example = self.examples[i]
        context = torch.tensor(example.context_ids)
        sender_cache = self.sender.prefill(context, e_layers=[s for s in starts if s > 0])
        receiver_kv = self.receiver.prefill(context).kv
        reference = self.receiver.generate(receiver_kv, torch.tensor(example.query_ids), self.max_new_tokens,
                                           stop_token_ids=self.stop_ids)
        records = []
        own = {"receiver": (self.receiver, receiver_kv), "sender": (self.sender, sender_cache.kv)}
        for system in systems:
            if system.kind in own:
                model, prefix = own[system.kind]
                records.append(Record(system.key, i, self._metrics(model, [prefix], example, reference)[0], ""))
        plans = [s for s in systems if s.kind in ("plan", "cacheblend")]
        runs = shared_recompute(self.receiver, sender_cache, context, starts)
        for chunk in range(0, len(plans), self.batch_size):
            batch = plans[chunk:chunk + self.batch_size]
            prefixes = [composed_prefix(sender_cache, s.plan, runs) if s.kind == "plan"
                        else system_prefix_kv(self.receiver, s, context, sender_cache) for s in batch]
            for system, metrics in zip(batch, self._metrics(self.receiver, prefixes, example, reference)):
                records.append(Record(system.key, i, metrics, ""))
        return records

    def _metrics(self, model: ReferenceModel, prefixes: list[PrefixKV], example: TaskExample,
                 reference: list[int]) -> list[dict[str, float]]:
        out = [{} for _ in prefixes]
        if reference:
            hits, _ = batched_teacher_forced(model, prefixes, example.query_ids, reference)
            for row, value in zip(out, hits.float().mean(-1).tolist()):
                row["agreement"] = value
        else:
            for row in out:
                row["agreement"] = 1.0
        if example.continuation_ids:
            hits, nll = batched_teacher_forced(model, prefixes, example.query_ids, example.continuation_ids)
            for row, acc, loss in zip(out, hits.float().mean(-1).tolist(), nll.mean(-1).tolist()):
                row["target_acc"], row["target_nll"] = acc, loss
        return out
