"""The quality study, batched: PairEvaluator's per-example scores for many examples at once.

Per chunk of examples (same context and query lengths; examples are bucketed by them)
every system's prefix KV is built batched (batched_prefix.py). Rows = (system, example)
are stacked on the batch axis, ``rows_per_batch`` at a time, each batch on one model
(the ``sender`` row runs on the sender, every other row on the receiver), and each batch
runs three passes over one preallocated cache, reset to the prefix between passes:

    greedy answer    max_new_tokens steps, each row stops at its first stop token
                     (included, as ReferenceModel.generate); the task metric scores it
    agreement        teacher-forced top-1 agreement with the receiver's own greedy answer
    target_acc/_nll  teacher-forced on the file's true continuation

Teacher-forced rows are right-padded: under the causal mask a pad after a row's last
token changes none of its logits. Numbers equal PairEvaluator's up to float rounding
(tests/unit/test_batched_study.py), records go to a ResultStore the same way.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers.cache_utils import Cache

from sglang_droidspeak.profiler.batched_prefix import ChunkKV, chunk_prefixes
from sglang_droidspeak.profiler.evaluate import cacheblend_tokens, stop_token_ids
from sglang_droidspeak.profiler.store import Record, ResultStore
from sglang_droidspeak.profiler.systems import RECEIVER, SENDER, System
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.cache import PreallocatedLayer
from sglang_droidspeak.tasks import TASKS, TaskExample, decode_answer, score_prediction

Row = tuple[System, ChunkKV, int, int]  # (system, its chunk prefix, row j in the chunk, example index)


def stacked_cache(blocks: Sequence[tuple[ChunkKV, int, int]], capacity: int) -> Cache:
    """An HF cache whose rows are ``kv[l][.][lo:hi]`` of each (kv, lo, hi) block in order,
    with room for ``capacity`` tokens per row (PreallocatedLayer, batched)."""
    layers = []
    for layer in range(len(blocks[0][0])):
        k0, v0 = blocks[0][0][layer]  # [c, kv_heads, n, hd]
        rows, n = sum(hi - lo for _, lo, hi in blocks), k0.shape[2]
        k_buf, v_buf = k0.new_empty(rows, k0.shape[1], capacity, k0.shape[3]), v0.new_empty(rows, v0.shape[1], capacity, v0.shape[3])
        row = 0
        for kv, lo, hi in blocks:
            k_buf[row:row + hi - lo, :, :n], v_buf[row:row + hi - lo, :, :n] = kv[layer][0][lo:hi], kv[layer][1][lo:hi]
            row += hi - lo
        layers.append(PreallocatedLayer.from_buffers(k_buf, v_buf, n))
    return Cache(layers=layers)


def reset(cache: Cache, length: int) -> None:
    """Drop every token after the first ``length`` (the buffers are reused)."""
    for layer in cache.layers:
        layer.length = length
        layer._set_views()


def _hidden(model: ReferenceModel, cache: Cache, ids: Tensor, start: int) -> Tensor:
    """Final-norm hidden states of ids [B, t] at positions start.. over the cache: [B, t, hidden]."""
    positions = torch.arange(start, start + ids.shape[1], device=model.device).expand(ids.shape[0], -1)
    return model.model.model(input_ids=ids, position_ids=positions, past_key_values=cache,
                             use_cache=True).last_hidden_state


@torch.inference_mode()
def greedy(model: ReferenceModel, cache: Cache, query: Tensor, n: int, max_new_tokens: int,
           stop_ids: Iterable[int]) -> list[list[int]]:
    """Per row, ReferenceModel.generate's answer (query: [B, q], every row after its n-token prefix)."""
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=model.device)
    steps, done, ids, position = [], torch.zeros(query.shape[0], dtype=torch.bool, device=model.device), query, n
    while len(steps) < max_new_tokens and not bool(done.all()):
        hidden = _hidden(model, cache, ids, position)[:, -1]  # [B, hidden]
        position += ids.shape[1]
        token = model.parts.lm_head(hidden).float().argmax(-1)  # [B]
        steps.append(token)
        done |= torch.isin(token, stop)
        ids = token[:, None]
    answers, stop_set = [], set(stop.tolist())
    for row in (torch.stack(steps, 1).tolist() if steps else [[] for _ in range(query.shape[0])]):
        ends = [i for i, t in enumerate(row) if t in stop_set]
        answers.append(row[:ends[0] + 1] if ends else row)
    return answers


@torch.inference_mode()
def teacher_forced(model: ReferenceModel, cache: Cache, query: Tensor, n: int,
                   targets: Sequence[Sequence[int]]) -> list[tuple[Tensor, Tensor]]:
    """Per row, (top-1 hits [m] bool, NLL [m] float32) of its target after the query, fed the
    true tokens (rows with an empty target get empty tensors)."""
    q, longest = query.shape[1], max(len(t) for t in targets)
    if longest == 0:
        return [(torch.zeros(0, dtype=torch.bool), torch.zeros(0)) for _ in targets]
    ids = torch.zeros(query.shape[0], q + longest - 1, dtype=torch.long)  # [B, q + longest - 1], right-padded
    for row, target in enumerate(targets):
        ids[row, q:q + len(target) - 1] = torch.tensor(list(target[:-1]), dtype=torch.long)
    ids = ids.to(model.device)
    ids[:, :q] = query
    hidden = _hidden(model, cache, ids, n)  # [B, q + longest - 1, hidden]
    rows = torch.tensor([r for r, t in enumerate(targets) for _ in t]).to(model.device)  # [sum m]
    cols = torch.tensor([q - 1 + i for t in targets for i in range(len(t))]).to(model.device)
    logits = model.parts.lm_head(hidden[rows, cols]).float()  # [sum m, vocab]
    truth = torch.tensor([x for t in targets for x in t], device=model.device)
    hits, nll = (logits.argmax(-1) == truth).cpu(), torch.nn.functional.cross_entropy(logits, truth, reduction="none").cpu()
    return list(zip(hits.split([len(t) for t in targets]), nll.split([len(t) for t in targets])))


class BatchedStudy:
    """Scores ``receiver``, ``sender``, ``plan:*``, ``cacheblend:*`` and ``hybrid:*`` systems of a
    pair with PairEvaluator's metrics (task metrics on the greedy answer + teacher-forced).

    The ``sender`` rows (the only rows on the sender model) wait across chunks of a bucket
    until ``rows_per_batch`` of them fill a batch: a chunk's few would run a whole greedy
    decode at a small batch.
    """

    def __init__(self, sender: ReferenceModel, receiver: ReferenceModel, tokenizer: Any, task: str,
                 examples: Sequence[TaskExample], examples_per_chunk: int = 16, rows_per_batch: int = 64,
                 max_new_tokens: int | None = None):
        if sender.num_layers != receiver.num_layers:
            raise ValueError(f"layer counts differ: sender {sender.num_layers}, receiver {receiver.num_layers}")
        if examples_per_chunk < 1 or rows_per_batch < 1:
            raise ValueError(f"examples_per_chunk and rows_per_batch must be >= 1, got {examples_per_chunk}, "
                             f"{rows_per_batch}")
        self.sender, self.receiver, self.tokenizer, self.examples = sender, receiver, tokenizer, list(examples)
        self.spec, self.chunk, self.rows_per_batch = TASKS[task], examples_per_chunk, rows_per_batch
        self.max_new_tokens = self.spec.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer, self.spec)
        self.seconds = {"prefixes": 0.0, "rows": 0.0}  # where run's time went (device synchronised)

    def _lap(self, stage: str, began: float) -> float:
        if self.receiver.device.type == "cuda":
            torch.cuda.synchronize(self.receiver.device)
        now = time.perf_counter()
        self.seconds[stage] += now - began
        return now

    def run(self, systems: Iterable[System], store: ResultStore, progress: bool = True) -> None:
        systems = list(systems)
        buckets = defaultdict(list)  # (context_len, query_len) -> example indices still to score
        for i, example in enumerate(self.examples):
            if any((s.key, i) not in store for s in systems):
                buckets[len(example.context_ids), len(example.query_ids)].append(i)
        too_small = sorted({s.key for s in systems for n, _ in buckets if s.kind == "cacheblend"
                            and cacheblend_tokens(self.receiver, s.cacheblend_layers, n) is None})
        if too_small:
            raise ValueError(f"{', '.join(too_small)}: the budget does not cover CacheBlend's selection pass")
        wanted = {s.key for s in systems}
        rows_of = [RECEIVER] + [s for s in systems if s.kind not in ("receiver", "sender")]  # receiver answers first
        bar = tqdm(total=sum(map(len, buckets.values())), disable=not progress, desc="examples", unit="ex")
        for todo in buckets.values():
            answers: dict[int, list[int]] = {}  # example index -> the receiver's own answer
            pending: list[Row] = []  # sender rows waiting for a full batch
            for lo in range(0, len(todo), self.chunk):
                indices = todo[lo:lo + self.chunk]
                context = torch.tensor([self.examples[i].context_ids for i in indices], device=self.receiver.device)
                began = time.perf_counter()
                prefixes = chunk_prefixes(self.sender, self.receiver, context, rows_of)
                began = self._lap("prefixes", began)
                rows = [(s, prefixes[s.key], j, i) for s in rows_of for j, i in enumerate(indices)]
                for b in range(0, len(rows), self.rows_per_batch):
                    records = self._score_rows(self.receiver, rows[b:b + self.rows_per_batch], answers)
                    store.add_many(r for r in records if r.system in wanted)
                if "sender" in wanted:
                    pending += [(SENDER, prefixes["sender"], j, i) for j, i in enumerate(indices)]
                while len(pending) >= self.rows_per_batch or (pending and lo + self.chunk >= len(todo)):
                    store.add_many(self._score_rows(self.sender, pending[:self.rows_per_batch], answers))
                    pending = pending[self.rows_per_batch:]
                self._lap("rows", began)
                bar.update(len(indices))
        bar.close()

    def _score_rows(self, model: ReferenceModel, rows: list[Row], answers: dict[int, list[int]]) -> list[Record]:
        """Greedy answers and teacher-forced scores of ``rows`` on ``model`` (answers: the
        receiver's, by example index; filled from the receiver rows)."""
        merged: list[tuple[ChunkKV, int, int]] = []
        for _, kv, j, _ in rows:  # consecutive rows of one prefix tensor: one copy
            if merged and merged[-1][0] is kv and merged[-1][2] == j:
                merged[-1] = (kv, merged[-1][1], j + 1)
            else:
                merged.append((kv, j, j + 1))
        examples = [self.examples[i] for *_, i in rows]
        n = rows[0][1][0][0].shape[2]
        query = torch.tensor([e.query_ids for e in examples], device=model.device)  # [B, q]
        longest = max(len(e.continuation_ids) for e in examples)
        cache = stacked_cache(merged, n + query.shape[1] + max(self.max_new_tokens, longest))
        generated = greedy(model, cache, query, n, self.max_new_tokens, self.stop_ids)
        for (system, *_, i), ids in zip(rows, generated):
            if system.kind == "receiver":
                answers[i] = ids
        reset(cache, n)
        agreement = teacher_forced(model, cache, query, n, [answers[i] for *_, i in rows])
        reset(cache, n)
        truth = teacher_forced(model, cache, query, n, [e.continuation_ids for e in examples])
        records = []
        for (system, *_, i), example, ids, (hits, _), (acc, nll) in zip(rows, examples, generated, agreement, truth):
            answer = decode_answer(self.tokenizer, ids, self.spec.name)
            metrics = score_prediction(self.spec.name, answer, example)
            metrics["agreement"] = hits.float().mean().item() if hits.numel() else 1.0
            if acc.numel():
                metrics["target_acc"], metrics["target_nll"] = acc.float().mean().item(), nll.mean().item()
            records.append(Record(system.key, i, metrics, answer))
        return records
