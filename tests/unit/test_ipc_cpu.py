"""The cuda_ipc data plane between two runtimes on the CPU: real SGLang pools, allocators and
radix trees, real ZMQ (tests/unit/two_servers.py), CUDA IPC replaced by ``CpuIpc``
(cpu_ipc.py), which stands in for it because CUDA IPC cannot run without a GPU.

The receiver must end with the same KV as on the ZMQ plane, with no K/V crossing the
socket; every failure must fall back (ZMQ for that peer, or a normal prefill) with the
slots freed and the pool accounting unchanged.
"""

from __future__ import annotations

import time

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402

from cpu_ipc import CpuIpc  # noqa: E402
from sglang_droidspeak.reference import ReferenceModel  # noqa: E402
from sglang_droidspeak.sglang.radix_cache import FELL_BACK_ATTR  # noqa: E402
from sglang_droidspeak.sglang.request_plan import parse_plan_choice  # noqa: E402
from two_servers import NUM_LAYERS, import_and_match, announce_and_wait, leak_free, request, tiny_llama, two_servers  # noqa: E402

CONTEXT = list(range(20, 52))  # 32 tokens
OTHER = [t + 40 for t in CONTEXT]
SUFFIX = [3, 4, 5]


@pytest.fixture
def ipc_pair(request):
    """Both sides on the cuda_ipc plane; ``request.param``: the sender's GPU UUID, data plane."""
    gpu, sender_plane = getattr(request, "param", ("GPU-cpu-stand-in", "cuda_ipc"))
    registry = {}
    backends = (CpuIpc(registry, gpu_uuid=gpu), CpuIpc(registry))
    with two_servers(tiny_llama(), tiny_llama(), data_planes=(sender_plane, "cuda_ipc"),
                     backends=backends) as (a, b):
        settle_early_offer(a, "cuda_ipc")
        a.sent = record_sent(a)
        yield a, b


def settle_early_offer(sender_side, plane: str, timeout_s: float = 10.0) -> None:
    """Wait until the sender took (or dropped) the offer the receiver sends when it starts.
    The sender's polling thread answers a fetch with the handler it read when its poll call
    began, and taking an offer can make that call long (a NIXL agent starts): a fetch
    arriving during it would bypass a ``record_sent`` installed meanwhile."""
    deadline = time.monotonic() + timeout_s
    sender = sender_side.runtime.planes.senders.get(plane)
    while time.monotonic() < deadline:
        if (sender is not None and (sender.offers or getattr(sender, "refused", None))) or sender_side.metrics.drops:
            time.sleep(0.05)  # the poll call that took it has returned
            return
        time.sleep(0.01)
    raise AssertionError(f"the receiver's early {plane} offer never reached the sender")


def record_sent(side):
    """(kind, what) of every message the sender answers with."""
    sent, export = [], side.runtime._export

    def recording(req):
        for msg in export(req):
            sent.append((msg.kind, getattr(msg, "what", "")))
            yield msg

    side.runtime._export = recording
    return sent


def import_and_check(a, b, tokens, plan):
    cache = announce_and_wait(a, b, tokens)
    req = request(tokens + SUFFIX, plan)
    match = import_and_match(b, req)
    assert len(match.device_indices) == len(tokens) and b.metrics.fallbacks == []
    layer_plan = parse_plan_choice(plan, NUM_LAYERS)
    expected = ReferenceModel(b.model).build_receiver_cache(cache, layer_plan, torch.tensor(tokens))
    for layer in range(NUM_LAYERS):
        torch.testing.assert_close(b.pool.get_key_buffer(layer)[match.device_indices],
                                   expected.k[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.pool.get_value_buffer(layer)[match.device_indices],
                                   expected.v[layer].transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert leak_free(a) and leak_free(b)
    return layer_plan


@pytest.mark.parametrize("plan", ["reuse", "2:3", "0:1,3:4", "0:4"])
def test_same_weights_receiver_gets_the_reference_kv_without_kv_frames(ipc_pair, plan):
    a, b = ipc_pair
    layer_plan = import_and_check(a, b, CONTEXT, plan)
    assert a.sent == [("fetch_done", "")]  # K/V and E went through the (stand-in) IPC copy: no frames
    assert b.metrics.hits == [("remote", len(CONTEXT), layer_plan.num_recomputed_layers)]
    row_bytes = b.pool.get_key_buffer(0)[0].numel() * 4  # fp32 K or V row
    e_bytes = len(layer_plan.e_layers()) * len(CONTEXT) * b.runtime.parts.hidden_size * 4
    assert b.metrics.bytes["in"] == 2 * len(layer_plan.reused_layers()) * len(CONTEXT) * row_bytes + e_bytes
    # the sender counts what it copied into our pool and staging area (stand-in fp32)
    assert a.metrics.bytes["out"] >= b.metrics.bytes["in"]
    assert a.runtime.planes.senders["cuda_ipc"].num_bytes_out == \
        2 * len(layer_plan.reused_layers()) * len(CONTEXT) * row_bytes + e_bytes
    import_and_check(a, b, OTHER, plan)
    assert b.runtime.planes.receiver.backend.num_shared == 1 and a.runtime.planes.senders["cuda_ipc"].backend.num_opened == 1


def test_e_outgrowing_the_staging_area_makes_a_larger_offer_and_beyond_the_cap_goes_as_chunks(monkeypatch):
    """The receiver starts with a 16-row staging area (here; 8192 in production): a 32-token
    E needs a new, larger offer (the sender opens it once more); two E layers need 64 rows;
    past MAX_E_ROWS the area stays as it is and E comes as chunks. Every import is exact."""
    from sglang_droidspeak.transfer.planes.cuda_ipc import receiver as ipc_receiver

    monkeypatch.setattr(ipc_receiver, "E_ROWS", 16)
    registry = {}
    with two_servers(tiny_llama(), tiny_llama(), data_planes=("cuda_ipc", "cuda_ipc"),
                     backends=(CpuIpc(registry), CpuIpc(registry))) as (a, b):
        settle_early_offer(a, "cuda_ipc")
        a.sent = record_sent(a)
        fetcher, sender = b.runtime.planes.receiver, a.runtime.planes.senders["cuda_ipc"]
        assert fetcher.offer.e_rows == 16
        import_and_check(a, b, CONTEXT, "2:3")
        assert fetcher.offer.e_rows == 32 and fetcher.backend.num_shared == 2 and sender.backend.num_opened == 2
        assert list(sender.offers) == list(sender._opened) == [fetcher.offer.offer_id]  # the old one let go
        import_and_check(a, b, OTHER, "1:2,3:4")  # E_1 and E_3: 64 rows
        assert fetcher.offer.e_rows == 64 and a.sent == [("fetch_done", "")] * 2
        monkeypatch.setattr(ipc_receiver, "MAX_E_ROWS", 64)
        third = list(range(92, 128)) + list(range(0, 20)) + list(range(100, 108))  # 64 tokens, two E layers: 128 rows
        import_and_check(a, b, third, "1:2,3:4")
        assert fetcher.offer.e_rows == 64 and fetcher.backend.num_shared == 3
        assert a.sent[2:] == [("layer_chunk", "e")] * 2 + [("fetch_done", "")]


def test_a_sender_that_forgot_the_offer_gets_it_again(ipc_pair):
    a, b = ipc_pair
    import_and_check(a, b, CONTEXT, "reuse")
    a.runtime.planes.senders["cuda_ipc"].offers.clear()  # e.g. the sender restarted
    import_and_check(a, b, OTHER, "reuse")
    assert [k for k, _ in a.sent] == ["fetch_done", "fetch_error", "fetch_done"]


@pytest.mark.parametrize("ipc_pair", [("GPU-other", "cuda_ipc"), ("GPU-cpu-stand-in", "zmq")], indirect=True)
def test_another_gpu_or_a_zmq_sender_falls_back_to_zmq_for_that_peer(ipc_pair):
    a, b = ipc_pair
    import_and_check(a, b, CONTEXT, "reuse")
    assert a.sent[0] == ("fetch_error", "") and ("layer_chunk", "k") in a.sent
    assert b.runtime.planes.receiver.zmq_peers == {a.runtime.export_server.endpoint}
    import_and_check(a, b, OTHER, "reuse")
    assert [k for k, _ in a.sent].count("fetch_error") == 1  # no second IPC attempt


def test_a_pool_that_cannot_be_shared_uses_zmq():
    registry = {}
    receiver_ipc = CpuIpc(registry)
    receiver_ipc.fail_share = True  # from the start: the runtime's early offer already fails
    with two_servers(tiny_llama(), tiny_llama(), data_planes=("cuda_ipc", "cuda_ipc"),
                     backends=(CpuIpc(registry, gpu_uuid="GPU-cpu-stand-in"), receiver_ipc)) as (a, b):
        a.sent = record_sent(a)
        import_and_check(a, b, CONTEXT, "reuse")
        assert ("layer_chunk", "k") in a.sent and b.runtime.planes.receiver.unavailable


def test_the_receiver_offers_its_pool_at_start_and_the_sender_maps_it_before_any_import(ipc_pair):
    a, b = ipc_pair
    sender, receiver = a.runtime.planes.senders["cuda_ipc"], b.runtime.planes.receiver
    deadline = time.monotonic() + 10
    while not sender.offers and time.monotonic() < deadline:  # the offer crosses the fetch socket
        a.runtime.answer_fetches()
        time.sleep(0.01)
    assert list(sender.offers) == [receiver.offer.offer_id] and sender.backend.num_opened == 1
    assert receiver.offered == {a.runtime.export_server.endpoint}
    import_and_check(a, b, CONTEXT, "reuse")
    assert a.sent == [("fetch_done", "")]  # no no_offer round, no second offer, no second open
    assert sender.backend.num_opened == 1 and receiver.backend.num_shared == 1


def fallback_case(a, b, reason, tokens=CONTEXT):
    """The request prefills normally; every slot the import took is free again."""
    before = [b.pool.get_key_buffer(layer).clone() for layer in range(NUM_LAYERS)]
    req = request(tokens + SUFFIX, "reuse")
    available = b.allocator.available_size()
    match = import_and_match(b, req)
    assert len(match.device_indices) == 0 and req.extra_key is None
    assert getattr(req, FELL_BACK_ATTR) is True and b.metrics.fallbacks[-1] == reason
    assert b.allocator.available_size() == available and leak_free(b) and leak_free(a)
    return before


def test_a_sender_too_close_to_the_deadline_refuses_and_nothing_is_written(ipc_pair):
    a, b = ipc_pair
    announce_and_wait(a, b, CONTEXT)
    a.runtime.planes.senders["cuda_ipc"].margin_ms = 5000  # more than the receiver's whole 1 s timeout
    before = fallback_case(a, b, "deadline")
    assert all(torch.equal(before[l], b.pool.get_key_buffer(l)) for l in range(NUM_LAYERS))


def test_an_offer_smaller_than_the_pool_is_refused_before_any_write(ipc_pair):
    a, b = ipc_pair
    announce_and_wait(a, b, CONTEXT)
    b.runtime.planes.receiver.backend.rows = 4  # the stand-in offers 4 rows; the allocator hands out more
    b.runtime.planes.receiver.offer, b.runtime.planes.receiver.offered = None, set()  # offer again, smaller
    before = fallback_case(a, b, "bad_request")
    assert all(torch.equal(before[l], b.pool.get_key_buffer(l)) for l in range(NUM_LAYERS))


def test_a_silent_sender_times_out_and_the_slots_are_freed(ipc_pair):
    a, b = ipc_pair
    announce_and_wait(a, b, CONTEXT)
    a.runtime.export_server.poll = lambda handler, max_requests=16, on_control=None: 0
    fallback_case(a, b, "timeout")


def test_an_evicted_prefix_falls_back(ipc_pair):
    a, b = ipc_pair
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    announce_and_wait(a, b, CONTEXT)
    a.runtime.withdraw = lambda tokens, base: None
    a.tree.evict(EvictParams(num_tokens=10_000))
    fallback_case(a, b, "evicted")
