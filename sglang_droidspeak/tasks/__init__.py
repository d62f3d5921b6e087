"""Held-out evaluation sets (code completion on unseen stdlib files) and their metrics."""

from __future__ import annotations

from sglang_droidspeak.tasks.datasets import (
    TASKS,
    TaskExample,
    TaskSpec,
    build_task,
    decode_answer,
    get_task,
    score_prediction,
)
from sglang_droidspeak.tasks.metrics import METRICS, edit_similarity, rouge_l, token_f1

__all__ = [
    "METRICS",
    "TASKS",
    "TaskExample",
    "TaskSpec",
    "build_task",
    "decode_answer",
    "edit_similarity",
    "get_task",
    "rouge_l",
    "score_prediction",
    "token_f1",
]
