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

Without rapidfuzz or rouge-score (the GPU machine's image has neither) the same formulas
run in pure Python (``_indel_ratio_py``, ``_rouge_l_py``; tests check they agree).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable

try:  # the GPU machine's image has neither package: the pure-Python twins below give the same numbers
    from rapidfuzz import fuzz
except ImportError:  # pragma: no cover - exercised by tests/unit/test_metrics.py with the import blocked
    fuzz = None
try:
    from rouge_score import rouge_scorer
    from rouge_score.tokenizers import Tokenizer as RougeTokenizer
except ImportError:  # pragma: no cover
    rouge_scorer, RougeTokenizer = None, object

_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
_LONGBENCH_SKIP_MARKERS = ("`", "#", "//")
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class CodeTokenizer(RougeTokenizer):
    """Identifiers/numbers (``\\w+``) and single punctuation characters, case kept."""

    def tokenize(self, text: str) -> list[str]:
        return _CODE_TOKEN.findall(text)


_ROUGE_L = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CodeTokenizer()) if rouge_scorer else None


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two sequences (O(len(a) * len(b)) time)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def indel_ratio(a: str, b: str) -> float:
    """rapidfuzz's ``fuzz.ratio / 100``: 2 * LCS / (len(a) + len(b)); ('', '') scores 1.0.
    rapidfuzz when installed, else the same formula in pure Python."""
    if fuzz is not None:
        return fuzz.ratio(a, b) / 100.0
    return _indel_ratio_py(a, b)


def _indel_ratio_py(a: str, b: str) -> float:
    return 1.0 if not a and not b else 2 * lcs_length(a, b) / (len(a) + len(b))


def _rouge_l_py(prediction: str, target: str) -> float:
    """rouge-score's ROUGE-L F-measure (``_score_lcs`` + ``scoring.fmeasure``) over CodeTokenizer tokens."""
    tokenizer = CodeTokenizer()
    pred, ref = tokenizer.tokenize(prediction), tokenizer.tokenize(target)
    if not pred or not ref:
        return 0.0
    lcs = lcs_length(ref, pred)
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def first_code_line(prediction: str) -> str:
    """LongBench's choice of the line to score: the first without '`', '#' or '//'."""
    for line in prediction.lstrip("\n").split("\n"):
        if not any(marker in line for marker in _LONGBENCH_SKIP_MARKERS):
            return line
    return ""


def edit_similarity(prediction: str, target: str) -> float:
    """LongBench ``code_sim_score``; ('', '') scores 1.0, as fuzzywuzzy's ratio does."""
    return indel_ratio(first_code_line(prediction), target)


def rouge_l(prediction: str, target: str) -> float:
    """ROUGE-L F-measure over `CodeTokenizer` tokens; 0.0 when either side is empty."""
    if _ROUGE_L is None:
        return _rouge_l_py(prediction, target)
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
