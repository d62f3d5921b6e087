"""What served a request's foreign prefix, returned in the response's ``meta_info``.

SGLang 0.5.17 carries per-request extras back without a patch: ``Req.customized_info``
(a dict: key -> one value per output token) is sliced per streamed chunk by the
scheduler's ``_GenerationStreamAccumulator.accept`` (``values[sent : len(output_ids)]``),
pickled to the tokenizer manager, which accumulates each key and sets
``meta_info[key]`` to the list so far. A one-element list therefore reaches the response
once, with the first output token:

    meta_info key        value (a one-element list)     set when
    droidspeak_system    ["droidspeak" | "cacheblend"   the plan is chosen for a REMOTE hit,
                          | "full_prefill"]              a fallback, or a DERIVED hit adopted
    droidspeak_plan      ["[0, 4)" | "blend:0.25@1"     str(plan); "none" for a normal prefill
                          | "none"]
    droidspeak_reason    [policy reason | "static plan"  plan.policy's reason, plan_choice.STATIC,
                          | fallback reason | "derived"]  the fallback's reason, or DERIVED

A request that never had a foreign prefix carries none of these keys. Only /generate's
``meta_info`` shows them (the OpenAI-compatible routes drop unknown meta_info keys).
Imports no SGLang.
"""

from __future__ import annotations

from typing import Any, Optional

from sglang_droidspeak.plan.blend_plan import is_blend
from sglang_droidspeak.plan.system_points import CACHEBLEND, DROIDSPEAK, FULL_PREFILL, system_of

SYSTEM_KEY = "droidspeak_system"
PLAN_KEY = "droidspeak_plan"
REASON_KEY = "droidspeak_reason"
NO_PLAN = "none"
DERIVED = "derived"


def set_response_info(req: Any, system: str, plan: str, reason: str) -> None:
    """Put the three keys on ``req.customized_info`` (other keys there are kept)."""
    info = getattr(req, "customized_info", None)
    info = dict(info) if isinstance(info, dict) else {}
    info.update({SYSTEM_KEY: [system], PLAN_KEY: [plan], REASON_KEY: [reason]})
    req.customized_info = info


def record_choice(req: Any, plan: Optional[Any], reason: str) -> None:
    """The plan chosen for a REMOTE hit (None: a normal prefill)."""
    set_response_info(req, system_of(plan), NO_PLAN if plan is None else str(plan), reason)


def record_fallback(req: Any, reason: str) -> None:
    set_response_info(req, FULL_PREFILL, NO_PLAN, reason)


def record_derived(req: Any, plan_text: str) -> None:
    """A DERIVED prefix (imported earlier under ``plan_text``) adopted by ``req``."""
    set_response_info(req, CACHEBLEND if is_blend(plan_text) else DROIDSPEAK, plan_text, DERIVED)


def response_info(req: Any) -> dict[str, str]:
    """The keys as set on ``req`` (first values), for logs and tests."""
    info = getattr(req, "customized_info", None) or {}
    return {key: info[key][0] for key in (SYSTEM_KEY, PLAN_KEY, REASON_KEY) if info.get(key)}
