"""The prompt of a request as text, for prefix affinity (nothing is tokenized)."""

from __future__ import annotations

from typing import Any


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts, a prompt list or token ids
        return "\x1f".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return _text_of(value.get("text", ""))
    return "" if value is None else str(value)


def prompt_hint(payload: dict, limit: int) -> str:
    """The request's prompt as text (about ``limit`` characters are enough): chat
    messages as role + content, else "prompt" (completions), "text", "input_ids" or "input" (embeddings)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts, size = [], 0
        for m in messages:
            piece = f"\x1e{m.get('role', '')}\x1d{_text_of(m.get('content'))}" if isinstance(m, dict) else ""
            parts.append(piece)
            size += len(piece)
            if size >= limit:
                break
        return "".join(parts)[:limit]
    for key in ("prompt", "text", "input_ids", "input"):
        if key in payload:
            return _text_of(payload[key])[:limit]
    return ""
