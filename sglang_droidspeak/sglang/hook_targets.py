"""The SGLang code the plugin relies on, pinned by a hash of its source as reviewed for 0.5.17.

    python -m sglang_droidspeak.sglang.hook_targets      # prints each target: ok / changed / missing

SGLang 0.5.17 needs no patch (patches/README.md): the plugin attaches through its hook
registry and radix-cache registry, and drives the model through its own split-prefill
path. What a patch's "does it still apply" check would guard, this does: every function
below was read when the hooks were designed; if the installed SGLang's source of one of
them differs from the reviewed hash, its behaviour may have changed under us, and
tests/unit/test_hook_targets.py fails naming it. Re-read it, adjust, then update the hash.

    target                                         why the plugin depends on it
    Scheduler.process_input_requests               AFTER hook: fetches answered, imports started
    Scheduler.get_new_batch_prefill                AROUND hook: parked requests left out; it must
                                                   rebind waiting_queue to what it did not take
    Scheduler.is_fully_idle                        AROUND hook: not idle while an import or a parked export runs
    Req.init_next_round_input                      the import queue's scan calls it (HiCache does)
    LlamaForCausalLM.forward_split_prefill         layer slices, state in forward_batch (engine)
    RadixAttention.forward                         attention from the forward context's backend
    forward_context.forward_context                the engine's private backend for one forward
    ModelRunner._get_attention_backend             a second instance of the server's backend
    _GenerationStreamAccumulator.accept            req.customized_info (response_info.py) sliced
                                                   per chunk into meta_info (the tokenizer
                                                   manager, which needs uvloop, is not pinned)
    RadixCache.cache_finished_req                  overridden: the quality guard sees finished requests
    SchedulerLogprobResultProcessor.               the guard's teacher forcing: input_top_logprobs rows
      _process_input_top_logprobs                  from logprob_start_len on, None first
    Scheduler._set_or_validate_priority            the guard's low priority (only with priority scheduling)
    ServerArgs.url                                 the guard's own-server URL (loopback for 0.0.0.0)
    SamplingParams.__post_init__                   temperature 0 becomes top_k 1 (what "greedy" means)
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from typing import NamedTuple, Optional

REVIEWED = {  # "module:qualname" -> sha256 of inspect.getsource, first 16 hex digits (sglang 0.5.17)
    "sglang.srt.managers.scheduler:Scheduler.process_input_requests": "b28e433d094f0413",
    "sglang.srt.managers.scheduler:Scheduler.get_new_batch_prefill": "e6c7c21ed672ee15",
    "sglang.srt.managers.scheduler:Scheduler.is_fully_idle": "7a5ff7e945151772",
    "sglang.srt.managers.schedule_batch:Req.init_next_round_input": "202af99da8778d8d",
    "sglang.srt.models.llama:LlamaForCausalLM.forward_split_prefill": "4d9dcdd9166fbc5a",
    "sglang.srt.layers.radix_attention:RadixAttention.forward": "eac55d011907e247",
    "sglang.srt.model_executor.forward_context:forward_context": "b30bf420a7093942",
    "sglang.srt.model_executor.model_runner:ModelRunner._get_attention_backend": "4047f66415dae8c5",
    "sglang.srt.managers.scheduler_components.output_streamer:_GenerationStreamAccumulator.accept":
        "1f50943c70c2b1e4",
    "sglang.srt.mem_cache.radix_cache:RadixCache.cache_finished_req": "55a1780690fd3d23",
    "sglang.srt.managers.scheduler_components.logprob_result_processor:"
    "SchedulerLogprobResultProcessor._process_input_top_logprobs": "4dc752b749cb5fd6",
    "sglang.srt.managers.scheduler:Scheduler._set_or_validate_priority": "e206b5f52ca01b25",
    "sglang.srt.server_args:ServerArgs.url": "ad754d6f08871a21",
    "sglang.srt.sampling.sampling_params:SamplingParams.__post_init__": "7c9afee53121fb67",
}


class TargetState(NamedTuple):
    target: str
    state: str  # "ok" | "changed" | "missing"
    digest: Optional[str]


def source_digest(target: str) -> Optional[str]:
    """The hash of ``target``'s source in the installed SGLang (None: it does not exist)."""
    module_name, _, qualname = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        source = inspect.getsource(inspect.unwrap(obj))
    except (ImportError, AttributeError, OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def check() -> list[TargetState]:
    states = []
    for target, reviewed in REVIEWED.items():
        digest = source_digest(target)
        state = "missing" if digest is None else "ok" if digest == reviewed else "changed"
        states.append(TargetState(target, state, digest))
    return states


def main() -> int:
    states = check()
    for s in states:
        print(f"{s.state:8} {s.target}  ({s.digest})")
    return 0 if all(s.state == "ok" for s in states) else 1


if __name__ == "__main__":
    sys.exit(main())
