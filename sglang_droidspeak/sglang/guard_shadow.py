"""The shadow request of the live quality guard (quality_guard.py): which finished requests
can be checked, the /generate body that prefills one normally, the agreement read back from
its answer, and the server's own endpoint. Imports no SGLang.

    piece                      SGLang 0.5.17 behaviour it relies on
    guardable(req)             temperature 0 becomes top_k 1 (sampling/sampling_params.py)
    shadow_body(check)         logprob_start_len kept with return_logprob (managers/scheduler.py)
    teacher_forced_agreement   input_top_logprobs = [None] + one row per later input position
    ShadowEndpoint             ServerArgs.url(), api_key as Bearer, priority only with
                               --enable-priority-scheduling (else a request carrying one may abort)
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from sglang_droidspeak.sglang.request_plan import PLAN_FORCED_ATTR

RID_PREFIX = "droidspeak-guard-"


class ShadowError(ValueError):
    """A shadow answer that cannot be scored (wrong shape, missing logprobs)."""


@dataclass(frozen=True)
class ShadowCheck:
    """One reused request to check: who served it, with which plan, and its ids."""

    rid: str
    sender: str
    plan: str
    bound: float
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]


def shadow_body(check: ShadowCheck, priority: Optional[int] = None) -> dict:
    """The /generate JSON for ``check``: prompt + reused output, prefilled normally, top-1 at
    every output position (SGLang 0.5.17 semantics: managers/scheduler.py handle_generate_request
    keeps ``logprob_start_len``; logprob_result_processor.py returns ``input_top_logprobs`` for
    input positions ``logprob_start_len..`` with None first)."""
    body = {
        "rid": RID_PREFIX + uuid.uuid4().hex,
        "input_ids": list(check.prompt_ids) + list(check.output_ids),
        "sampling_params": {"max_new_tokens": 1, "temperature": 0.0,
                            "custom_params": {"droidspeak_plan": "off"}},
        "return_logprob": True,
        "logprob_start_len": len(check.prompt_ids) - 1,
        "top_logprobs_num": 1,
    }
    if priority is not None:
        body["priority"] = priority
    return body


def teacher_forced_agreement(output_ids: Sequence[int], answer: Mapping) -> float:
    """Share of ``output_ids`` equal to the full prefill's top-1 at their positions.

    ``answer`` is /generate's JSON for ``shadow_body``: ``meta_info.input_top_logprobs`` has one
    entry per input token from ``logprob_start_len`` = prompt_len - 1 on (len(output) + 1), the
    first None; entry k >= 1 is the distribution that predicted input token prompt_len - 1 + k,
    i.e. output token k - 1, as ``[[logprob, token_id, text], ...]``, best first.
    """
    meta = answer.get("meta_info") if isinstance(answer, Mapping) else None
    rows = meta.get("input_top_logprobs") if isinstance(meta, Mapping) else None
    if not isinstance(rows, list):
        raise ShadowError("the answer has no meta_info.input_top_logprobs")
    if len(rows) != len(output_ids) + 1:
        raise ShadowError(f"input_top_logprobs has {len(rows)} rows, expected {len(output_ids) + 1}")
    hits = 0
    for k, token in enumerate(output_ids, start=1):
        row = rows[k]
        try:
            top1 = row[0][1]
        except (TypeError, IndexError, KeyError):
            raise ShadowError(f"input_top_logprobs[{k}] is not a top-1 entry: {row!r}") from None
        if isinstance(top1, bool) or not isinstance(top1, int):
            raise ShadowError(f"input_top_logprobs[{k}]: token id {top1!r} is not an int")
        hits += top1 == token
    return hits / len(output_ids)


def guardable(req: Any, min_output_tokens: int) -> bool:
    """Whether a finished request can be checked by teacher forcing (see the module docstring)."""
    reason = getattr(req, "finished_reason", None)
    if reason is None or type(reason).__name__ == "FINISH_ABORT":
        return False
    if len(getattr(req, "output_ids", ()) or ()) < min_output_tokens or not getattr(req, "origin_input_ids", None):
        return False
    if getattr(req, PLAN_FORCED_ATTR, False):
        return False
    if any(getattr(req, name, None) is not None for name in ("lora_id", "custom_logit_processor",
                                                              "multimodal_inputs", "session")):
        return False
    sp = getattr(req, "sampling_params", None)
    if sp is None or getattr(sp, "top_k", None) != 1:  # temperature 0 becomes top_k 1 (sampling_params.py)
        return False
    plain = (getattr(sp, "frequency_penalty", 0.0) == 0.0 and getattr(sp, "presence_penalty", 0.0) == 0.0
             and getattr(sp, "repetition_penalty", 1.0) == 1.0 and getattr(sp, "min_new_tokens", 0) == 0
             and not getattr(sp, "logit_bias", None))
    grammar = any(getattr(sp, name, None) for name in ("json_schema", "regex", "ebnf", "structural_tag"))
    return plain and not grammar


# ---- the endpoint ----

@dataclass(frozen=True)
class ShadowEndpoint:
    """Where shadow requests go: this server's own HTTP API."""

    url: str  # base, e.g. http://127.0.0.1:30000
    headers: tuple[tuple[str, str], ...] = ()
    priority: Optional[int] = None  # sent only when the server schedules by priority
    ssl_context: Any = None

    @classmethod
    def from_server_args(cls, server_args: Any, url: Optional[str] = None) -> "ShadowEndpoint":
        """SGLang 0.5.17: ``ServerArgs.url()`` (loopback for 0.0.0.0, https with a certificate),
        ``api_key`` as a Bearer token, and the lowest priority: what the scheduler gives a request
        without one (``Scheduler._set_or_validate_priority``), only with --enable-priority-scheduling."""
        base = url or server_args.url()
        headers = (("Authorization", f"Bearer {server_args.api_key}"),) if getattr(server_args, "api_key", None) else ()
        priority = None
        if getattr(server_args, "enable_priority_scheduling", False):
            low_first = getattr(server_args, "schedule_low_priority_values_first", False)
            priority = sys.maxsize if low_first else -sys.maxsize - 1
        context = None
        if base.startswith("https://"):
            ca = getattr(server_args, "ssl_ca_certs", None)
            context = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
        return cls(base.rstrip("/"), headers, priority, context)

    def post(self, body: dict, timeout: float) -> dict:
        request = urllib.request.Request(self.url + "/generate", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **dict(self.headers)})
        with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context) as response:
            return json.loads(response.read())
