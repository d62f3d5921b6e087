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
from sglang_droidspeak.profiler.systems import RECEIVER, System
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.reference.cache import PreallocatedLayer
from sglang_droidspeak.tasks import TASKS, TaskExample, decode_answer, score_prediction

Row = tuple[System, int]  # (system, example index within the chunk)


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
    ids = torch.zeros(query.shape[0], q + longest - 1, dtype=torch.long, device=model.device)  # right-padded
    ids[:, :q] = query
    for row, target in enumerate(targets):
        ids[row, q:q + len(target) - 1] = torch.tensor(list(target[:-1]), dtype=torch.long)
    hidden = _hidden(model, cache, ids, n)  # [B, q + longest - 1, hidden]
    rows = torch.tensor([r for r, t in enumerate(targets) for _ in t], device=model.device)
    cols = torch.tensor([q - 1 + i for t in targets for i in range(len(t))], device=model.device)
    logits = model.parts.lm_head(hidden[rows, cols]).float()  # [sum m, vocab]
    truth = torch.tensor([x for t in targets for x in t], device=model.device)
    hits, nll = (logits.argmax(-1) == truth).cpu(), torch.nn.functional.cross_entropy(logits, truth, reduction="none").cpu()
    return list(zip(hits.split([len(t) for t in targets]), nll.split([len(t) for t in targets])))


class BatchedStudy:
    """Scores ``receiver``, ``sender``, ``plan:*``, ``cacheblend:*`` and ``hybrid:*`` systems of a
    pair with PairEvaluator's metrics (task metrics on the greedy answer + teacher-forced)."""

    def __init__(self, sender: ReferenceModel, receiver: ReferenceModel, tokenizer: Any, task: str,
                 examples: Sequence[TaskExample], examples_per_chunk: int = 16, rows_per_batch: int = 64,
                 max_new_tokens: int | None = None):
        if sender.num_layers != receiver.num_layers:
            raise ValueError(f"layer counts differ: sender {sender.num_layers}, receiver {receiver.num_layers}")
        if examples_per_chunk < 1 or rows_per_batch < 1:
            raise ValueError(f"examples_per_chunk and rows_per_batch must be >= 1, got {examples_per_chunk}, {rows_per_batch}")
        self.sender, self.receiver, self.tokenizer, self.examples = sender, receiver, tokenizer, list(examples)
        self.spec, self.chunk, self.rows_per_batch = TASKS[task], examples_per_chunk, rows_per_batch
        self.max_new_tokens = self.spec.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer, self.spec)

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
        chunks = [todo[i:i + self.chunk] for todo in buckets.values() for i in range(0, len(todo), self.chunk)]
        for chunk in tqdm(chunks, disable=not progress, desc="chunks", unit="chunk"):
            store.add_many(self._score_chunk(chunk, systems))

    def _score_chunk(self, indices: list[int], systems: list[System]) -> list[Record]:
        examples = [self.examples[i] for i in indices]
        context = torch.tensor([e.context_ids for e in examples], device=self.receiver.device)  # [c, n]
        query = torch.tensor([e.query_ids for e in examples], device=self.receiver.device)  # [c, q]
        n = context.shape[1]
        rows_of = [RECEIVER] + [s for s in systems if s.kind != "receiver"]  # the receiver's answers come first
        prefixes = chunk_prefixes(self.sender, self.receiver, context, rows_of)
        rows: list[Row] = [(s, j) for s in rows_of for j in range(len(indices))]
        on_sender = [r for r in rows if r[0].kind == "sender"]
        on_receiver = [r for r in rows if r[0].kind != "sender"]
        answers: dict[tuple[str, int], list[int]] = {}
        records = []
        for model, group in ((self.receiver, on_receiver), (self.sender, on_sender)):
            for lo in range(0, len(group), self.rows_per_batch):
                records += self._score_rows(model, group[lo:lo + self.rows_per_batch], prefixes, query, n,
                                            examples, indices, answers)
        wanted = {s.key for s in systems}
        return [r for r in records if r.system in wanted]

    def _score_rows(self, model: ReferenceModel, rows: list[Row], prefixes: dict[str, ChunkKV], query: Tensor,
                    n: int, examples: list[TaskExample], indices: list[int],
                    answers: dict[tuple[str, int], list[int]]) -> list[Record]:
        blocks = [(prefixes[s.key], j, j + 1) for s, j in rows]
        merged = [blocks[0]]
        for block in blocks[1:]:  # consecutive rows of one system: one copy
            last = merged[-1]
            merged[-1:] = [(last[0], last[1], block[2])] if block[0] is last[0] and block[1] == last[2] \
                else [last, block]
        longest = max(len(e.continuation_ids) for e in examples)
        capacity = n + query.shape[1] + max(self.max_new_tokens, longest)
        cache = stacked_cache(merged, capacity)
        row_query = query[torch.tensor([j for _, j in rows], device=query.device)]  # [B, q]
        generated = greedy(model, cache, row_query, n, self.max_new_tokens, self.stop_ids)
        for (s, j), ids in zip(rows, generated):
            answers[s.key, j] = ids
        reset(cache, n)
        agreement = teacher_forced(model, cache, row_query, n, [answers["receiver", j] for _, j in rows])
        reset(cache, n)
        truth = teacher_forced(model, cache, row_query, n, [examples[j].continuation_ids for _, j in rows])
        records = []
        for (s, j), ids, (hits, _), (acc, nll) in zip(rows, generated, agreement, truth):
            answer = decode_answer(self.tokenizer, ids, self.spec.name)
            metrics = score_prediction(self.spec.name, answer, examples[j])
            metrics["agreement"] = hits.float().mean().item() if hits.numel() else 1.0
            if acc.numel():
                metrics["target_acc"], metrics["target_nll"] = acc.float().mean().item(), nll.mean().item()
            records.append(Record(s.key, indices[j], metrics, answer))
        return records
