"""Score systems over task examples for one sender -> receiver pair (reference engine).

Per example the sender prefills the context once (capturing E at every layer a system
needs); then each system builds the receiver's prefix KV, greedily answers the query,
and is scored with the task's metrics plus three teacher-forced ones, smoother than
the task metric on few examples and weak models:

    agreement    top-1 agreement with the receiver's own full-prefill answer (1.0 for it)
    target_acc   top-1 accuracy on the file's true continuation (higher is better)
    target_nll   mean NLL of that continuation, nats/token (lower is better)

Scores go to a ResultStore, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from sglang_droidspeak.profiler.store import Record, ResultStore
from sglang_droidspeak.profiler.systems import System
from sglang_droidspeak.reference import (
    PrefixKV, ReferenceModel, SenderCache, cacheblend_receiver_cache, cacheblend_tokens_for_cost, hybrid_receiver_cache,
    hybrid_tokens_for_cost, kv_projection_fraction,
)
from sglang_droidspeak.tasks import TASKS, TaskExample, decode_answer, score_prediction


class PairEvaluator:
    """Scores ``systems`` for receiver ``receiver`` reusing sender ``sender``'s context KV."""

    def __init__(self, sender: ReferenceModel, receiver: ReferenceModel, tokenizer: Any, task: str,
                 examples: Sequence[TaskExample], max_new_tokens: int | None = None):
        if sender.num_layers != receiver.num_layers:
            raise ValueError(f"layer counts differ: sender {sender.num_layers}, receiver {receiver.num_layers}")
        self.sender, self.receiver, self.tokenizer = sender, receiver, tokenizer
        self.spec, self.examples = TASKS[task], list(examples)
        self.num_layers = receiver.num_layers
        self.max_new_tokens = self.spec.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.stop_ids = stop_token_ids(tokenizer, self.spec)

    def run(self, systems: Iterable[System], store: ResultStore, progress: bool = True) -> None:
        systems = list(systems)
        e_layers = sorted({l for s in systems if s.plan is not None for l in s.plan.e_layers()})
        todo = [i for i in range(len(self.examples)) if any((s.key, i) not in store for s in systems)]
        bar = tqdm(total=len(todo) * len(systems), disable=not progress or not todo, desc="scoring", unit="run")
        for i in todo:
            example = self.examples[i]
            context = torch.tensor(example.context_ids)
            sender_cache = self.sender.prefill(context, e_layers=e_layers)
            receiver_kv = self.receiver.prefill(context).kv
            reference = self._generate(self.receiver, receiver_kv, example)  # the receiver's own answer
            for system in systems:
                if (system.key, i) not in store:
                    prefix = self.prefix_kv(system, context, sender_cache, receiver_kv)
                    store.add(self._score(system, i, example, prefix, reference))
                bar.update()
        bar.close()

    def _score(self, system: System, i: int, example: TaskExample, prefix: PrefixKV, reference: list[int]) -> Record:
        model = self.sender if system.kind == "sender" else self.receiver
        answer_ids = self._generate(model, prefix, example)
        answer = decode_answer(self.tokenizer, answer_ids, self.spec.name)
        metrics = score_prediction(self.spec.name, answer, example)
        metrics["agreement"] = _top1_match(model, prefix, example.query_ids, reference)
        metrics.update(_true_continuation_scores(model, prefix, example))
        return Record(system.key, i, metrics, answer)

    def prefix_kv(self, system: System, context: torch.Tensor, sender_cache: SenderCache,
                  receiver_kv: PrefixKV | None = None) -> PrefixKV:
        """The prefix KV ``system`` answers from (``receiver_kv``: the receiver's own, if known)."""
        return system_prefix_kv(self.receiver, system, context, sender_cache, receiver_kv)

    def _generate(self, model: ReferenceModel, prefix: PrefixKV, example: TaskExample) -> list[int]:
        query = torch.tensor(example.query_ids)
        return model.generate(prefix, query, self.max_new_tokens, stop_token_ids=self.stop_ids)


def system_prefix_kv(receiver: ReferenceModel, system: System, context: torch.Tensor, sender_cache: SenderCache,
                     receiver_kv: PrefixKV | None = None) -> PrefixKV:
    """The prefix KV ``system`` answers from: what the quality study scores and
    ``droidspeak bench-reference`` times (``receiver_kv``: the receiver's own, if known)."""
    if system.kind == "sender":
        return sender_cache.kv
    if system.kind == "receiver":
        return receiver_kv if receiver_kv is not None else receiver.prefill(context).kv
    if system.kind == "plan":
        return receiver.build_receiver_cache(sender_cache, system.plan, context)
    if system.kind == "hybrid":
        group = system.plan.groups[0]
        num_tokens = hybrid_tokens(receiver, system, len(context))
        return hybrid_receiver_cache(receiver, sender_cache, context, group.start, group.end, num_tokens)
    num_tokens = cacheblend_tokens(receiver, system.cacheblend_layers, len(context))
    if num_tokens is None:
        raise ValueError(f"{system.key}: the budget does not cover CacheBlend's selection pass")
    return cacheblend_receiver_cache(receiver, sender_cache, context, num_tokens, keep_selection_kv=True)


def _teacher_forced_logits(model: ReferenceModel, prefix: PrefixKV, query_ids: Sequence[int],
                           tokens: Sequence[int]) -> torch.Tensor:
    """Logits predicting each of ``tokens`` after prefix + query, fed the true tokens: [m, vocab]."""
    return model.extend(prefix, torch.tensor([*query_ids, *tokens[:-1]])).logits[-len(tokens):]


def _top1_match(model: ReferenceModel, prefix: PrefixKV, query_ids: Sequence[int], answer: Sequence[int]) -> float:
    """Share of ``answer`` tokens that are the model's greedy choice, teacher-forced."""
    if not answer:
        return 1.0
    logits = _teacher_forced_logits(model, prefix, query_ids, answer)
    return (logits.argmax(-1) == torch.tensor(answer)).float().mean().item()


def _true_continuation_scores(model: ReferenceModel, prefix: PrefixKV, example: TaskExample) -> dict[str, float]:
    """Teacher-forced top-1 accuracy and mean NLL (nats/token) of the file's true continuation."""
    truth = example.continuation_ids
    if not truth:
        return {}
    logits = _teacher_forced_logits(model, prefix, example.query_ids, truth)
    target = torch.tensor(truth)
    nll = torch.nn.functional.cross_entropy(logits.float(), target).item()
    return {"target_acc": (logits.argmax(-1) == target).float().mean().item(), "target_nll": nll}


def stop_token_ids(tokenizer: Any, spec: Any) -> tuple[int, ...]:
    """Token ids after which the answer is complete: eos, plus newline tokens for 1-line tasks."""
    ids = {tokenizer.eos_token_id} if getattr(tokenizer, "eos_token_id", None) is not None else set()
    if spec.num_lines == 1:
        ids |= {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
    return tuple(sorted(ids))


def cacheblend_tokens(receiver: ReferenceModel, num_layers_budget: int, context_len: int) -> int | None:
    """Tokens CacheBlend (its own vLLM mode: selection layers kept) may recompute for the
    compute of ``num_layers_budget`` full layers, its selection pass included; None when
    even the selection pass does not fit the budget."""
    return cacheblend_tokens_for_cost(num_layers_budget * context_len, receiver.num_layers, context_len,
                                      keep_selection_kv=True, kv_fraction=kv_projection_fraction(receiver.config))


def hybrid_tokens(receiver: ReferenceModel, system, context_len: int) -> int:
    """Tokens a ``hybrid:*`` system recomputes after its group for its extra layer budget."""
    return hybrid_tokens_for_cost(system.cacheblend_layers * context_len, receiver.num_layers, context_len,
                                  system.plan.groups[0].end, kv_fraction=kv_projection_fraction(receiver.config))
