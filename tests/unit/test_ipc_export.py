"""The exporter's cuda_ipc path: exactly the requested slots are copied into the offered
pool, and every refusal (deadline, range, device, offer, shape) writes nothing.

CUDA IPC itself cannot run without a GPU: ``CpuIpc`` (cpu_ipc.py) stands in for it by
mapping offer ids to in-process tensors; the offer, checks and copy are the real code.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_droidspeak.sglang.exporter import export_messages
from sglang_droidspeak.transfer.fetch import PENDING
from sglang_droidspeak.transfer.planes.cuda_ipc.sender import IpcExporter
from sglang_droidspeak.transfer.planes.zmq.plane import ZmqSender
from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, LayerChunk
from cpu_ipc import CpuIpc

NUM_LAYERS, ROWS, HEADS, DIM = 3, 17, 2, 4
SRC_SLOTS = torch.tensor([4, 9, 2])  # where the sender's tree holds the 3-token prefix
DST_SLOTS = (15, 1, 7)


class TinyPool:
    """The two MHATokenToKVPool methods the exporter uses: one [ROWS, heads, dim] K and V per layer."""

    def __init__(self, fill):
        self.device = torch.device("cpu")
        n = ROWS * HEADS * DIM
        self.k = [fill(layer, n).view(ROWS, HEADS, -1) for layer in range(NUM_LAYERS)]
        self.v = [-fill(layer, n).view(ROWS, HEADS, -1) for layer in range(NUM_LAYERS)]

    def get_key_buffer(self, layer):
        return self.k[layer]

    def get_value_buffer(self, layer):
        return self.v[layer]


class Clock:
    def __init__(self, ms=1_000_000):
        self.ms = ms

    def __call__(self):
        return self.ms


@pytest.fixture
def sides():
    registry, clock = {}, Clock()
    sender = TinyPool(lambda layer, n: torch.arange(n, dtype=torch.float32) + 1000 * layer)
    receiver = TinyPool(lambda layer, n: torch.zeros(n))
    offer = CpuIpc(registry).share_pool("b", receiver, NUM_LAYERS)
    ipc = IpcExporter(CpuIpc(registry), sender, margin_s=0.25, clock_ms=clock)
    ipc.accept(offer)
    tree = SimpleNamespace(match_for_export=lambda ids, receiver_model: SimpleNamespace(
        match=SimpleNamespace(device_indices=SRC_SLOTS)))
    return SimpleNamespace(sender=sender, receiver=receiver, offer=offer, ipc=ipc, tree=tree, clock=clock)


def request(s, layers=(0, 2), e_layers=(), left_ms=1000, **changes):
    fields = dict(request_id="r1", sender_model="a", receiver_model="b", fingerprint="fp", token_ids=(5, 6, 7),
                  reused_layers=layers, e_layers=e_layers, deadline_ms=s.clock.ms + left_ms,
                  plane="cuda_ipc", session=s.offer.offer_id, dst_slots=DST_SLOTS)
    changes = {("session" if k == "offer_id" else k): v for k, v in changes.items()}
    return FetchRequest(**{**fields, **changes})


def answer(s, req, compute_e=None, ipc="default"):
    """The exporter's answer to ``req`` (a generator, as FetchServer drives it)."""
    compute_e = compute_e or (lambda ids, layers: {l: torch.full((len(ids), 8), float(l)) for l in layers})
    senders = {"zmq": ZmqSender(s.sender)}
    if ipc is not None:
        senders["cuda_ipc"] = s.ipc if ipc == "default" else ipc
    return export_messages(req, model="a", fingerprint="fp", tree=s.tree, compute_e=compute_e,
                           num_layers=NUM_LAYERS, senders=senders)


def export(s, req, compute_e=None, ipc="default"):
    return list(answer(s, req, compute_e, ipc))


def untouched(s):
    return all(b.count_nonzero() == 0 for b in s.receiver.k + s.receiver.v)


def test_copies_exactly_the_requested_slots_and_layers(sides):
    s = sides
    assert export(s, request(s)) == [FetchDone("r1", 0)]
    for layer in range(NUM_LAYERS):
        for got, src in ((s.receiver.k[layer], s.sender.k[layer]), (s.receiver.v[layer], s.sender.v[layer])):
            expected = torch.zeros_like(got)
            if layer in (0, 2):
                expected[list(DST_SLOTS)] = src[SRC_SLOTS]
            assert torch.equal(got, expected), layer
    assert s.receiver.k[2][1, 0].tolist() == [2000 + 9 * 8 + j for j in range(4)]  # token 1: src slot 9


def test_e_layers_still_stream_before_the_copy(sides):
    s = sides
    msgs = export(s, request(s, layers=(0,), e_layers=(1, 2)))
    assert [type(m) for m in msgs] == [LayerChunk, LayerChunk, FetchDone] and msgs[-1].num_chunks == 2
    assert [(m.what, m.layer) for m in msgs[:2]] == [("e", 1), ("e", 2)]
    assert torch.equal(s.receiver.k[0][list(DST_SLOTS)], s.sender.k[0][SRC_SLOTS])


def single_error(s, req, **kwargs):
    msgs = export(s, req, **kwargs)
    assert len(msgs) == 1 and isinstance(msgs[0], FetchError), msgs
    assert untouched(s)
    return msgs[0]


@pytest.mark.parametrize("left_ms, code", [(250, "deadline"), (0, "deadline"), (3_600_001, "bad_request")])
def test_refuses_past_or_absurd_deadlines(sides, left_ms, code):
    assert single_error(sides, request(sides, left_ms=left_ms)).code == code
    assert single_error(sides, request(sides, left_ms=-5000)).code == "deadline"


def test_deadline_passing_during_e_computation_refuses_the_copy(sides):
    s = sides

    def slow_e(ids, layers):
        s.clock.ms += 900  # the E computation takes 0.9 s of the 1 s
        return {l: torch.zeros(len(ids), 8) for l in layers}

    msgs = export(s, request(s, e_layers=(1,)), compute_e=slow_e)
    assert isinstance(msgs[-1], FetchError) and msgs[-1].code == "deadline" and untouched(s)


class SlowE:
    """A PendingE stand-in: not ready for the first ``polls`` checks; counts ``take``s."""

    def __init__(self, polls):
        self.polls, self.taken = polls, 0

    def ready(self):
        self.polls -= 1
        return self.polls < 0

    def take(self):
        self.taken += 1
        return {1: torch.full((3, 8), 1.0)}


def test_an_answer_parks_while_e_computes_then_exports_and_frees_the_scratch_once(sides):
    s, slow = sides, SlowE(polls=2)
    msgs = export(s, request(s, e_layers=(1,)), compute_e=lambda ids, layers: slow)
    assert msgs[:2] == [PENDING, PENDING] and PENDING not in msgs[2:]
    assert isinstance(msgs[-1], FetchDone) and slow.taken == 1
    e = [m for m in msgs[2:] if getattr(m, "what", None) == "e"]
    assert len(e) == 1 and e[0].to_tensor().tolist() == [[1.0] * 8] * 3


def test_a_parked_answer_closed_early_still_frees_the_scratch(sides):
    s, slow = sides, SlowE(polls=100)
    parked = answer(s, request(s, e_layers=(1,)), compute_e=lambda ids, layers: slow)
    assert next(parked) is PENDING
    parked.close()
    assert slow.taken == 1 and untouched(s)


def test_a_prefix_evicted_while_e_computes_is_refused_after_it(sides):
    s, slow = sides, SlowE(polls=1)
    parked = answer(s, request(s, e_layers=(1,)), compute_e=lambda ids, layers: slow)
    assert next(parked) is PENDING
    s.tree.match_for_export = lambda tokens, receiver: None  # evicted between two ticks
    rest = list(parked)
    assert [m.code for m in rest] == ["evicted"] and slow.taken == 1 and untouched(s)


def test_a_copy_that_ends_late_is_reported(sides):
    s = sides
    original = s.sender.get_key_buffer
    s.sender.get_key_buffer = lambda layer: (setattr(s.clock, "ms", s.clock.ms + 600), original(layer))[1]
    msgs = export(s, request(s))
    assert msgs[-1].code == "deadline" and "late" in msgs[-1].message and s.ipc.num_late == 1


@pytest.mark.parametrize("dst", [(15, 1, ROWS), (15, 1, 1 << 40)])
def test_refuses_out_of_range_dst_slots(sides, dst):
    error = single_error(sides, request(sides, dst_slots=dst))
    assert error.code == "bad_request" and f"dst slot {dst[2]} out of range [0, {ROWS})" in error.message


def test_refuses_slots_past_a_smaller_offered_pool(sides):
    s = sides
    small = CpuIpc(s.ipc.backend.registry, rows=8).share_pool("b", s.receiver, NUM_LAYERS)
    s.ipc.accept(small)
    error = single_error(s, request(s, offer_id=small.offer_id))
    assert error.code == "bad_request" and "out of range [0, 8)" in error.message


def test_refuses_another_gpu(sides):
    s = sides
    s.ipc = IpcExporter(CpuIpc(s.ipc.backend.registry, gpu_uuid="GPU-other"), s.sender, clock_ms=s.clock)
    s.ipc.accept(s.offer)
    error = single_error(s, request(s))
    assert error.code == "ipc_unavailable" and "GPU-cpu-stand-in" in error.message


def test_unknown_stale_and_unopenable_offers(sides):
    s = sides
    assert single_error(s, request(s, offer_id="stale")).code == "no_offer"
    assert single_error(s, request(s, receiver_model="c")).code == "no_offer"  # not that receiver's offer
    s.ipc.max_offers = 2
    newer = [CpuIpc(s.ipc.backend.registry).share_pool("b", s.receiver, NUM_LAYERS) for _ in range(2)]
    s.ipc.accept(newer[0])  # a second replica of "b": both offers stay usable
    assert export(s, request(s)) == [FetchDone("r1", 0)]
    del s.ipc.backend.registry[newer[1].offer_id]  # the stand-in's cudaIpcOpenMemHandle fails
    s.ipc.accept(newer[1])  # a third: the least recently used (newer[0]) is dropped; its early open fails
    assert single_error_after_reset(s, request(s, offer_id=newer[0].offer_id)).code == "no_offer"
    assert single_error_after_reset(s, request(s, offer_id=newer[1].offer_id)).code == "ipc_unavailable"
    assert set(s.ipc.offers) == {s.offer.offer_id, newer[1].offer_id} and set(s.ipc._opened) == {s.offer.offer_id}


def single_error_after_reset(s, req):
    for buffer in s.receiver.k + s.receiver.v:
        buffer.zero_()
    return single_error(s, req)


def test_opens_each_offer_once_when_it_arrives(sides):
    s = sides
    assert s.ipc.backend.num_opened == 1 and s.offer.offer_id in s.ipc._opened  # at accept, before any fetch
    for _ in range(3):
        export(s, request(s))
    assert s.ipc.backend.num_opened == 1


def test_refuses_layers_and_shapes_that_do_not_fit(sides):
    s = sides
    s.ipc.accept(small := CpuIpc(s.ipc.backend.registry).share_pool("b", s.receiver, 2))
    assert "offer's range [0, 2)" in single_error(s, request(s, offer_id=small.offer_id)).message
    wide = TinyPool(lambda layer, n: torch.zeros(n, 2))  # [ROWS, heads, 2 * dim]
    s.ipc.accept(other := CpuIpc(s.ipc.backend.registry).share_pool("b", wide, NUM_LAYERS))
    assert "do not fit" in single_error(s, request(s, offer_id=other.offer_id)).message


def test_a_zmq_plane_sender_refuses_ipc_requests(sides):
    error = single_error(sides, request(sides), ipc=None)
    assert error.code == "ipc_unavailable" and "not on the cuda_ipc plane" in error.message
