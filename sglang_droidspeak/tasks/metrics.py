"""Answer metrics, each a function ``(prediction, target) -> float`` in [0, 1].

    edit_sim  LongBench's ``code_sim_score`` (lcc, repobench-p): the prediction's first
              line that contains none of '`', '#', '//' (after stripping leading
              newlines), scored by ``rapidfuzz.fuzz.ratio / 100`` against the target.
              LongBench skips lines that *contain* those markers anywhere, not only
              lines starting with them; we keep its rule. LongBench used fuzzywuzzy,
              whose ratio is rounded to an integer percent; rapidfuzz's is not rounded
              (and is the exact InDel similarity, 2 * LCS / total length).
    rouge_l   rouge-score's ROUGE-L F-measure with a code-aware tokenizer (below).
    token_f1  LongBench's / SQuAD's ``qa_f1_score``: lowercase, drop punctuation and
              English articles, split on whitespace, F1 of the token multisets.

Why ROUGE-L gets its own tokenizer: rouge-score's default lowercases and replaces every
non-alphanumeric character with a space, so ``a + b`` and ``a - b``, ``x[i]`` and
``x(i)``, ``Foo`` and ``foo`` all score 1.0. In code those are exactly the mistakes we
want to count, so `CodeTokenizer` keeps case and makes every punctuation character a
token of its own (identifiers and numbers stay whole).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable

from rapidfuzz import fuzz
from rouge_score import rouge_scorer
from rouge_score.tokenizers import Tokenizer as RougeTokenizer

_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
_LONGBENCH_SKIP_MARKERS = ("`", "#", "//")
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class CodeTokenizer(RougeTokenizer):
    """Identifiers/numbers (``\\w+``) and single punctuation characters, case kept."""

    def tokenize(self, text: str) -> list[str]:
        return _CODE_TOKEN.findall(text)


_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CodeTokenizer())


def first_code_line(prediction: str) -> str:
    """LongBench's choice of the line to score: the first without '`', '#' or '//'."""
    for line in prediction.lstrip("\n").split("\n"):
        if not any(marker in line for marker in _LONGBENCH_SKIP_MARKERS):
            return line
    return ""


def edit_similarity(prediction: str, target: str) -> float:
    """LongBench ``code_sim_score``; ('', '') scores 1.0, as fuzzywuzzy's ratio does."""
    return fuzz.ratio(first_code_line(prediction), target) / 100.0


def rouge_l(prediction: str, target: str) -> float:
    """ROUGE-L F-measure over `CodeTokenizer` tokens; 0.0 when either side is empty."""
    return float(_ROUGE_L.score(target, prediction)["rougeL"].fmeasure)


def normalize_answer(text: str) -> str:
    """SQuAD / LongBench normalisation: lower, drop punctuation and articles, squeeze."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, target: str) -> float:
    """LongBench ``qa_f1_score``; 0.0 when nothing overlaps (both empty included)."""
    pred_tokens = normalize_answer(prediction).split()
    target_tokens = normalize_answer(target).split()
    num_same = sum((Counter(pred_tokens) & Counter(target_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(target_tokens)
    return 2 * precision * recall / (precision + recall)


METRICS: dict[str, Callable[[str, str], float]] = {
    "edit_sim": edit_similarity,
    "rouge_l": rouge_l,
    "token_f1": token_f1,
}
