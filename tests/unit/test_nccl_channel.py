"""The pair channel on the CPU: ``GlooPairChannel`` (gloo over a real TCPStore and real
sockets) stands in for ``NcclPairChannel``, which needs two GPUs (tests/gpu/test_nccl_gpu.py).
Same interface, same rendezvous (rank 0 hosts the store, waits for ``joined``), same
bounded waits; the unique-id exchange of the NCCL channel is tested here on a HashStore.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time

import pytest
import torch
from cpu_sglang import require_cpu_sglang

from sglang_droidspeak.transfer.planes.nccl.channel import ChannelError, GlooPairChannel, host_store, join_store, wait_all

NUM_TOKENS, KV_HEADS, HEAD_DIM = 5, 2, 4


def block(seed: int, dtype=torch.float32) -> torch.Tensor:
    """A K/V block [num_tokens, kv_heads, head_dim] of exact, distinct values."""
    return (torch.arange(NUM_TOKENS * KV_HEADS * HEAD_DIM, dtype=torch.float32) * 0.5 + seed).reshape(
        NUM_TOKENS, KV_HEADS, HEAD_DIM).to(dtype)


def _sender_process(port: int) -> None:
    """Rank 1 in its own process: send K and V (float32, bfloat16), echo one block back."""
    channel = GlooPairChannel("proc-chan", 1, 10.0, "127.0.0.1", port)
    channel.begin_open()
    channel.wait_open(time.monotonic() + 20)
    wait_all([channel.send(block(1)), channel.send(block(2, torch.bfloat16))], time.monotonic() + 10)
    echo = torch.empty(NUM_TOKENS, KV_HEADS, HEAD_DIM)
    wait_all([channel.recv(echo)], time.monotonic() + 10)
    wait_all([channel.send(echo * 3)], time.monotonic() + 10)
    channel.close()


def open_pair(channel_id: str, timeout_s: float = 5.0):
    receiver = GlooPairChannel(channel_id, 0, timeout_s)
    sender = GlooPairChannel(channel_id, 1, timeout_s, "127.0.0.1", receiver.store_port)
    for end in (receiver, sender):
        end.begin_open()
    for end in (receiver, sender):
        end.wait_open(time.monotonic() + 10)
    return receiver, sender


def test_two_processes_move_exact_kv_blocks_both_ways():
    receiver = GlooPairChannel("proc-chan", 0, 10.0)  # hosts the store
    process = multiprocessing.get_context("spawn").Process(target=_sender_process, args=(receiver.store_port,))
    process.start()
    try:
        receiver.wait_open(time.monotonic() + 30)
        k, v = torch.empty(NUM_TOKENS, KV_HEADS, HEAD_DIM), torch.empty(NUM_TOKENS, KV_HEADS, HEAD_DIM,
                                                                         dtype=torch.bfloat16)
        wait_all([receiver.recv(k), receiver.recv(v)], time.monotonic() + 10)
        assert torch.equal(k, block(1)) and torch.equal(v, block(2, torch.bfloat16))
        back = torch.empty(NUM_TOKENS, KV_HEADS, HEAD_DIM)
        wait_all([receiver.send(block(7)), receiver.recv(back)], time.monotonic() + 10)
        assert torch.equal(back, block(7) * 3)
    finally:
        process.join(30)
        receiver.close()
    assert process.exitcode == 0


def test_two_threads_move_a_strided_gather_exactly():
    receiver, sender = open_pair("thread-chan")
    k_cache = torch.arange(12 * KV_HEADS * HEAD_DIM, dtype=torch.float32).reshape(12, KV_HEADS, HEAD_DIM)
    slots = torch.tensor([9, 2, 7, 3, 11])  # [num_tokens]
    buf = torch.empty(NUM_TOKENS, KV_HEADS, HEAD_DIM)
    wait_all([sender.send(k_cache[slots]), receiver.recv(buf)], time.monotonic() + 5)
    assert torch.equal(buf, k_cache[slots])
    for end in (receiver, sender):
        end.close()


def test_a_recv_that_is_never_matched_ends_at_its_deadline():
    receiver, sender = open_pair("silent-chan", timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(ChannelError, match="not done by the deadline"):
        wait_all([receiver.recv(torch.empty(3))], time.monotonic() + 0.3)
    assert time.monotonic() - start < 0.6
    for end in (receiver, sender):
        end.close()
    with pytest.raises(ChannelError, match="gloo op failed"):
        receiver.recv(torch.empty(3))  # a closed channel takes no more ops


def test_a_peer_that_never_joins_fails_the_open_within_the_store_timeout():
    receiver = GlooPairChannel("lonely-chan", 0, 0.5)
    start = time.monotonic()
    with pytest.raises(ChannelError, match="did not join within 0.5 s"):
        receiver.wait_open(time.monotonic() + 5)
    assert time.monotonic() - start < 3 and not receiver.is_open
    receiver.close()


def test_wait_open_is_bounded_by_the_callers_deadline_and_runs_idle():
    receiver, calls = GlooPairChannel("slow-chan", 0, 2.0), []
    with pytest.raises(ChannelError, match="not open by its deadline"):
        receiver.wait_open(time.monotonic() + 0.2, idle=lambda: calls.append(1))
    assert calls and receiver.error is None  # still opening: the caller decides
    threading.Thread(target=receiver.close).start()


def test_the_nccl_unique_id_crosses_the_store_as_authenticated_raw_bytes():
    require_cpu_sglang("sglang.srt.distributed.device_communicators.pynccl_wrapper", at_module_level=False)
    import torch.distributed as dist
    from sglang.srt.distributed.device_communicators.pynccl_wrapper import ncclUniqueId

    from sglang_droidspeak.sglang.nccl_channel import UNIQUE_ID_KEY, _PairGroup

    store = dist.HashStore()
    rank0 = _PairGroup(rank=0, world_size=2, store=store, secret=b"s" * 16, channel_id="c1")
    rank1 = _PairGroup(rank=1, world_size=2, store=store, secret=b"s" * 16, channel_id="c1")
    unique_id = ncclUniqueId()
    for i in range(128):
        unique_id.internal[i] = (i * 7) % 256 - 128
    rank0.broadcast_obj(unique_id, src=0)
    assert bytes(store.get(UNIQUE_ID_KEY))[:128] == bytes(unique_id.internal)  # raw, not a pickle
    assert bytes(rank1.broadcast_obj(None, src=0).internal) == bytes(unique_id.internal)
    other_channel = _PairGroup(rank=1, world_size=2, store=store, secret=b"s" * 16, channel_id="c2")
    with pytest.raises(RuntimeError, match="not authentic"):
        other_channel.broadcast_obj(None, src=0)


def _listen_addresses(port: int) -> list[str]:
    """Local addresses (hex, /proc/net/tcp{,6} format) of LISTEN sockets on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.append(local.rsplit(":", 1)[0])
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_the_pair_store_listens_on_its_host_only():
    store = host_store("127.0.0.1", timeout_s=5)
    assert _listen_addresses(store.port) == ["0100007F"]  # 127.0.0.1, not 0.0.0.0 / ::
    join_store("127.0.0.1", store.port, timeout_s=5).set("k", b"v")
    assert store.get("k") == b"v"
