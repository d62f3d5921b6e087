"""Held-out code-completion tasks in the DroidSpeak framing: context + query -> answer.

Each example cuts a held-out stdlib file just before a target line (see code_tasks.py
for the exact token boundary). The prompt is the ``context_len + query_len`` tokens
before the cut: the *context* (the shared prefix the sender already prefilled) and the
*query* (the suffix the receiver runs itself, ending at the target line). The receiver
then generates the answer.

    task       target                               primary metric  also
    lcc        the next line (LongBench lcc-like)   edit_sim        -
    nextlines  the next 3 non-empty lines           rouge_l         token_f1

Targets are stripped lines joined by "\\n"; predictions are normalised the same way
before scoring. Selection is deterministic: files in a seeded order, one site per file
per round (a second round only when the split has fewer usable files than asked), the
site drawn by an RNG seeded with (seed, file). Both tasks share the candidate sites, so
with equal arguments nextlines' first target line is lcc's target.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterator

from sglang_droidspeak.family.corpus import CorpusSplit, split_corpus
from sglang_droidspeak.tasks import code_tasks
from sglang_droidspeak.tasks.metrics import METRICS


@dataclass(frozen=True)
class TaskSpec:
    """How a task is generated and scored. ``stop``: strings that end generation;
    ``num_lines``: the answer keeps this many non-empty lines."""

    name: str
    description: str
    primary_metric: str
    metrics: tuple[str, ...]
    max_new_tokens: int
    stop: tuple[str, ...]
    num_lines: int


@dataclass(frozen=True)
class TaskExample:
    """One prompt: feed ``context_ids + query_ids`` (never re-tokenize), score against
    ``target``. ``prefix_chars``: the prompt ends at ``source_text[:prefix_chars]``;
    ``target_line``: 1-based line number of the (first) target line.
    ``continuation_ids``: the whole-file tokens right after the prompt that cover the
    target lines (for teacher-forced scoring of the true answer)."""

    task: str
    source: str
    context_ids: tuple[int, ...]
    query_ids: tuple[int, ...]
    target: str
    target_line: int
    prefix_chars: int
    continuation_ids: tuple[int, ...] = ()

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.context_ids + self.query_ids

    @property
    def example_id(self) -> str:
        return f"{self.task}/{self.source}:{self.target_line}"


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("lcc", "complete the next line", "edit_sim", ("edit_sim",), 48, ("\n",), 1),
        TaskSpec("nextlines", "complete the next 3 non-empty lines", "rouge_l",
                 ("rouge_l", "token_f1"), 128, (), 3),
    )
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def build_task(
    name: str,
    tokenizer: Any,
    split: str = "lib_heldout",
    num_examples: int = 64,
    context_len: int = 768,
    query_len: int = 32,
    seed: int = 0,
    corpus: CorpusSplit | None = None,
) -> list[TaskExample]:
    """``num_examples`` examples of task ``name`` from ``split``; raises ValueError when
    the split cannot supply that many. The first n examples do not depend on
    ``num_examples`` (building 8 gives the first 8 of building 64)."""
    spec = get_task(name)
    if context_len < 1 or query_len < 1 or num_examples < 1:
        raise ValueError("context_len, query_len and num_examples must be >= 1")
    corpus = corpus or split_corpus()
    backend = code_tasks.as_backend(tokenizer)
    byte_lengths = code_tasks.token_byte_lengths(backend)
    window_len = context_len + query_len
    files = list(corpus.files(split))
    random.Random(seed).shuffle(files)
    scans = [code_tasks.scan_file(corpus.read(f), backend, byte_lengths, window_len) for f in files]
    streams = [
        _exact_sites(scanned, window_len, backend, random.Random(f"{seed}:{source}"))
        for source, scanned in zip(files, scans)
    ]
    num_sites = sum(len(scanned.sites) for scanned in scans)
    examples: list[TaskExample] = []
    while len(examples) < num_examples and num_sites >= num_examples:
        num_before = len(examples)
        for source, scanned, stream in zip(files, scans, streams):
            site = next(stream, None)
            if site is not None:
                examples.append(_make_example(spec, source, scanned, site, context_len, query_len))
            if len(examples) == num_examples:
                break
        if len(examples) == num_before:
            break
    if len(examples) < num_examples:
        raise ValueError(
            f"split {split!r} cannot supply {num_examples} {name} examples with "
            f"context_len={context_len}, query_len={query_len}: {len(files)} files, "
            f"{num_sites} candidate lines, {len(examples)} examples built"
        )
    return examples


def _exact_sites(
    scanned: code_tasks.ScannedFile, window_len: int, backend: Any, rng: random.Random
) -> Iterator[code_tasks.Site]:
    """The file's sites in a seeded random order, each moved to its exact cut (lazily)."""
    order = list(scanned.sites)
    rng.shuffle(order)
    exact = (code_tasks.exact_site(scanned, site, window_len, backend) for site in order)
    return (site for site in exact if site is not None)


def _make_example(
    spec: TaskSpec, source: str, scanned: code_tasks.ScannedFile, site: code_tasks.Site,
    context_len: int, query_len: int,
) -> TaskExample:
    end = site.num_prefix_tokens
    prefix = scanned.text.encode("utf-8")[: site.prefix_bytes].decode("utf-8")
    target_lines = code_tasks.next_nonempty_lines(scanned.text[len(prefix):], spec.num_lines)
    return TaskExample(
        task=spec.name,
        source=source,
        context_ids=scanned.ids[end - query_len - context_len : end - query_len],
        query_ids=scanned.ids[end - query_len : end],
        target="\n".join(target_lines),
        target_line=site.line_index + 1,
        prefix_chars=len(prefix),
        continuation_ids=_continuation(scanned, end, site.prefix_bytes, scanned.text[len(prefix):], spec.num_lines),
    )


def _continuation(scanned: code_tasks.ScannedFile, start: int, start_byte: int, rest: str, num_lines: int) -> tuple[int, ...]:
    """Tokens from ``start`` through the one that ends the ``num_lines``-th non-empty line of ``rest``."""
    seen, end_byte = 0, start_byte
    for line in rest.splitlines(keepends=True):
        end_byte += len(line.encode("utf-8"))
        seen += bool(line.strip())
        if seen == num_lines:
            break
    stop = bisect.bisect_left(scanned.byte_ends, end_byte, lo=start) + 1  # first token ending at/after it
    return scanned.ids[start:min(stop, len(scanned.ids))]


def normalize_lines(text: str) -> str:
    """Strip every line and drop the empty ones (how targets are written)."""
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())


def score_prediction(task_name: str, prediction: str, example: TaskExample) -> dict[str, float]:
    """Every metric of the task, on the normalised prediction against the target."""
    spec = get_task(task_name)
    if example.task != task_name:
        raise ValueError(f"{example.example_id} belongs to task {example.task!r}, not {task_name!r}")
    normalized = normalize_lines(prediction)
    return {metric: METRICS[metric](normalized, example.target) for metric in spec.metrics}


def decode_answer(tokenizer: Any, ids: Any, task: str | TaskSpec) -> str:
    """Generated ids -> answer text: cut at the first special token (<|endoftext|>),
    then at the first stop string, then after ``num_lines`` non-empty lines."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    backend = code_tasks.as_backend(tokenizer)
    specials = code_tasks.special_token_ids(backend)
    kept = list(itertools.takewhile(lambda i: i not in specials, (int(i) for i in ids)))
    text = backend.decode(kept, skip_special_tokens=False)
    for stop in spec.stop:
        text = text.split(stop, 1)[0]
    return _first_nonempty_lines(text, spec.num_lines)


def _first_nonempty_lines(text: str, num_lines: int) -> str:
    """``text`` up to the end of its ``num_lines``-th non-empty line (raw, unstripped)."""
    lines, num_nonempty = [], 0
    for line in text.split("\n"):
        lines.append(line)
        num_nonempty += bool(line.strip())
        if num_nonempty == num_lines:
            break
    return "\n".join(lines)
