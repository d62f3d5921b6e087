"""The plugin's ``req.customized_info`` reaches the response through SGLang 0.5.17's own
stream accumulator (no patch): the first chunk carries each key's value, later chunks an
empty list, so the tokenizer manager's accumulation (``extend`` per chunk, then
``meta_info[key] = accumulated``, _handle_batch_output) leaves a one-element list."""

from __future__ import annotations

from array import array

from cpu_sglang import require_cpu_sglang

require_cpu_sglang("sglang.srt.managers.scheduler_components.output_streamer")

from sglang.srt.disaggregation.utils import DisaggregationMode  # noqa: E402
from sglang.srt.managers.schedule_batch import Req  # noqa: E402
from sglang.srt.managers.scheduler_components.output_streamer import _GenerationStreamAccumulator  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: E402

from sglang_droidspeak.plan.blend_plan import BlendPlan  # noqa: E402
from sglang_droidspeak.sglang.response_info import PLAN_KEY, REASON_KEY, SYSTEM_KEY, record_choice  # noqa: E402


def _accumulator() -> _GenerationStreamAccumulator:
    return _GenerationStreamAccumulator(
        return_logprob=False, return_hidden_states=False, return_routed_experts=False, return_indexer_topk=False,
        spec_algorithm=SpeculativeAlgorithm.NONE, disaggregation_mode=DisaggregationMode.NULL,
        default_stream_interval=1, default_force_stream_interval=1, get_cached_tokens_details=lambda req: None)


def test_streamed_chunks_carry_the_choice_once():
    req = Req("r1", "", array("q", [1, 2, 3]), SamplingParams(max_new_tokens=4), stream=True)
    record_choice(req, BlendPlan(4, 0.5), "idle: most layers within SLO")
    chunks = []
    for _ in range(3):  # one output token per step, one chunk each
        req.output_ids.append(7)
        acc = _accumulator()
        acc.accept(req=req)
        chunks.append(acc.customized_info)
    assert chunks[0] == {SYSTEM_KEY: [["cacheblend"]], PLAN_KEY: [["blend:0.5@1"]],
                         REASON_KEY: [["idle: most layers within SLO"]]}
    assert chunks[1] == chunks[2] == {SYSTEM_KEY: [[]], PLAN_KEY: [[]], REASON_KEY: [[]]}
    accumulated = {key: [] for key in chunks[0]}  # the tokenizer manager's per-request lists
    for chunk in chunks:
        for key, per_request in chunk.items():
            accumulated[key].extend(per_request[0])
    assert accumulated == {SYSTEM_KEY: ["cacheblend"], PLAN_KEY: ["blend:0.5@1"],
                           REASON_KEY: ["idle: most layers within SLO"]}
