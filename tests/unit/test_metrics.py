"""Exact values of the answer metrics on hand-computed cases."""

from __future__ import annotations

import pytest

from sglang_droidspeak.tasks.metrics import (
    METRICS,
    edit_similarity,
    first_code_line,
    normalize_answer,
    rouge_l,
    token_f1,
)

EXACT = 1e-12


@pytest.mark.parametrize(
    "prediction, target, expected",
    [
        ("return x", "return x", 1.0),
        ("abc", "abd", 2 * 2 / 6),  # LCS "ab": 2 * 2 / (3 + 3)
        ("\n\n# note\nreturn y\nmore", "return x", 2 * 7 / 16),  # scores "return y"
        ("y = a // b\nz = 1", "z = 1", 1.0),  # the '//' line is skipped
        ("z = 1  # ok", "z = 1", 0.0),  # LongBench skips lines *containing* '#'
        ("```\nfoo", "foo", 1.0),
        ("  ab", "ab", 2 * 2 / 6),  # raw metric: indentation counts
        ("", "x", 0.0),
        ("x", "", 0.0),
        ("", "", 1.0),  # fuzzywuzzy and rapidfuzz agree: equal strings score 100
    ],
)
def test_edit_similarity(prediction: str, target: str, expected: float) -> None:
    assert edit_similarity(prediction, target) == pytest.approx(expected, abs=EXACT)


def test_first_code_line_is_empty_when_every_line_is_marked() -> None:
    assert first_code_line("# a\n`b`\nc // d") == ""
    assert first_code_line("\n\nfirst\nsecond") == "first"


@pytest.mark.parametrize(
    "prediction, target, expected",
    [
        ("x = a + b", "x = a + b", 1.0),
        ("x = a + b", "x = a - b", 0.8),  # LCS 4 of 5 tokens; the default tokenizer says 1.0
        ("foo(bar)", "foo(baz)", 0.75),  # foo ( bar ) vs foo ( baz ): LCS 3 of 4
        ("a b", "a b c d", 2 / 3),  # P = 1, R = 1/2
        ("b a", "a b", 0.5),  # LCS 1: order matters
        ("Foo", "foo", 0.0),  # case is kept
        ("", "x", 0.0),
        ("", "", 0.0),
    ],
)
def test_rouge_l(prediction: str, target: str, expected: float) -> None:
    assert rouge_l(prediction, target) == pytest.approx(expected, abs=EXACT)


def test_normalize_answer_drops_case_punctuation_articles() -> None:
    assert normalize_answer("The  Cat, an apple.") == "cat apple"
    assert normalize_answer("self.x = foo(a, b)") == "selfx fooa b"


@pytest.mark.parametrize(
    "prediction, target, expected",
    [
        ("The cat sat.", "a cat sat on mat", 2 / 3),  # "cat sat" vs "cat sat on mat"
        ("self.x = foo(a, b)", "self.x = foo(a, c)", 2 / 3),  # selfx fooa b|c
        ("x x x", "x", 0.5),  # P = 1/3, R = 1
        ("cat", "cat", 1.0),
        ("dog", "cat", 0.0),
        ("...", "x", 0.0),
        ("", "", 0.0),  # LongBench: no overlap -> 0 (SQuAD v2 would say 1)
    ],
)
def test_token_f1(prediction: str, target: str, expected: float) -> None:
    assert token_f1(prediction, target) == pytest.approx(expected, abs=EXACT)


def test_metric_registry() -> None:
    assert METRICS == {"edit_sim": edit_similarity, "rouge_l": rouge_l, "token_f1": token_f1}
    assert all(isinstance(METRICS[name]("a b", "a c"), float) for name in METRICS)


def test_pure_python_twins_agree_with_rapidfuzz_and_rouge_score() -> None:
    """The GPU machine lacks rapidfuzz and rouge-score: the fallbacks must give their numbers."""
    import random

    from sglang_droidspeak.tasks import metrics

    rng = random.Random(0)
    alphabet = "ab c(x)=_.\n"
    for _ in range(300):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))
        assert metrics._indel_ratio_py(a, b) == pytest.approx(metrics.fuzz.ratio(a, b) / 100, abs=EXACT)
        assert metrics._rouge_l_py(a, b) == pytest.approx(rouge_l(a, b), abs=EXACT)
    assert metrics.lcs_length("", "abc") == 0 and metrics.lcs_length("abcbdab", "bdcaba") == 4


def test_metrics_import_and_score_without_rapidfuzz_or_rouge_score() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['rapidfuzz'] = sys.modules['rouge_score'] = None\n"
            "from sglang_droidspeak.tasks import edit_similarity, rouge_l, build_task\n"
            "from sglang_droidspeak.tasks import metrics\n"
            "assert metrics.fuzz is None and metrics._ROUGE_L is None\n"
            "print(edit_similarity('abc', 'abd'), rouge_l('x = f(a)', 'x = f(b)'))")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [float(x) for x in done.stdout.split()] == pytest.approx([2 * 2 / 6, 5 / 6], abs=EXACT)
