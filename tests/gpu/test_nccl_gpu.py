"""The nccl data plane's channel on real GPUs: SGLang's PyNcclCommunicator, two processes.

This test process is the receiver (rank 0, GPU 1): it hosts the pair's TCPStore through
``NcclPairBackend.host``. A spawned process is the sender (rank 1, GPU 0): it joins, gathers
K and V of chosen slots of a bf16 pool into contiguous [num_tokens, heads, dim] buffers
and sends them, E first. The receiver scatters them into its own slots, which must equal
the sender's rows exactly (zeros elsewhere). Then a recv that the sender never matches
must end at its deadline and the channel must close (ncclCommAbort) without hanging.
Skipped without two GPUs (CPU tests use gloo: tests/unit/test_nccl_channel.py).
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

pytestmark = pytest.mark.gpu

SECRET = b"gpu-nccl-test-secret-0123"
NUM_LAYERS, ROWS, HEADS, DIM, HIDDEN = 3, 65, 2, 16, 32
SRC_SLOTS = [7, 3, 40, 12]  # the sender's slots of a 4-token prefix
DST_SLOTS = [64, 1, 33, 5]  # the receiver's slots for the same tokens
LAYERS = (0, 2)  # reused layers
SENDER_GPU, RECEIVER_GPU = 0, 1


def sender_pool(layer: int, which: int, device) -> torch.Tensor:
    """[ROWS, heads, dim] bf16 of exact, distinct values (small ints are exact in bf16)."""
    values = torch.arange(ROWS * HEADS * DIM, dtype=torch.float32) % 251 + 1000 * which + 100 * layer
    return values.reshape(ROWS, HEADS, DIM).to(torch.bfloat16).to(device)


def e_rows(device) -> torch.Tensor:
    return (torch.arange(len(SRC_SLOTS) * HIDDEN, dtype=torch.float32) % 97).reshape(-1, HIDDEN).to(
        torch.bfloat16).to(device)  # [num_tokens, hidden]


def _sender(port: int) -> None:
    from sglang_droidspeak.sglang.nccl_channel import NcclPairBackend
    from sglang_droidspeak.transfer.planes.nccl.channel import wait_all

    torch.cuda.set_device(SENDER_GPU)
    device = torch.device("cuda", SENDER_GPU)
    channel = NcclPairBackend(SECRET, 60.0).join("gpu-chan", "127.0.0.1", port, 1, device)
    channel.begin_open()
    channel.wait_open(time.monotonic() + 120)
    src = torch.tensor(SRC_SLOTS, device=device)  # [num_tokens]
    ops = [channel.send(e_rows(device))]
    for layer in LAYERS:
        for which in (0, 1):
            ops.append(channel.send(sender_pool(layer, which, device)[src].contiguous()))  # [n, heads, dim]
    wait_all(ops, time.monotonic() + 60)
    time.sleep(5)  # stay alive while the receiver's unmatched recv times out
    channel.close()


def test_a_pynccl_pair_moves_a_kv_block_exactly_between_two_gpus():
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    pytest.importorskip("sglang.srt.distributed.device_communicators.pynccl")
    from sglang_droidspeak.sglang.nccl_channel import NcclPairBackend
    from sglang_droidspeak.transfer.planes.nccl.channel import ChannelError, wait_all

    torch.cuda.set_device(RECEIVER_GPU)
    device = torch.device("cuda", RECEIVER_GPU)
    channel = NcclPairBackend(SECRET, 60.0).host("gpu-chan", "127.0.0.1", device)
    process = multiprocessing.get_context("spawn").Process(target=_sender, args=(channel.store_port,))
    process.start()
    try:
        channel.wait_open(time.monotonic() + 120)
        k_cache = [torch.zeros(ROWS, HEADS, DIM, dtype=torch.bfloat16, device=device) for _ in range(NUM_LAYERS)]
        v_cache = [torch.zeros_like(k) for k in k_cache]
        dst = torch.tensor(DST_SLOTS, device=device)  # [num_tokens]
        e = torch.empty(len(SRC_SLOTS), HIDDEN, dtype=torch.bfloat16, device=device)
        wait_all([channel.recv(e)], time.monotonic() + 60)
        for layer in LAYERS:
            bufs = [torch.empty(len(DST_SLOTS), HEADS, DIM, dtype=torch.bfloat16, device=device) for _ in range(2)]
            wait_all([channel.recv(buf) for buf in bufs], time.monotonic() + 60)
            k_cache[layer][dst], v_cache[layer][dst] = bufs  # scatter into our slots
        assert torch.equal(e, e_rows(device))
        for layer in range(NUM_LAYERS):
            for which, cache in enumerate((k_cache, v_cache)):
                expected = torch.zeros(ROWS, HEADS, DIM, dtype=torch.bfloat16, device=device)
                if layer in LAYERS:
                    expected[dst] = sender_pool(layer, which, device)[torch.tensor(SRC_SLOTS, device=device)]
                assert torch.equal(cache[layer], expected), (layer, which)
        start = time.monotonic()
        with pytest.raises(ChannelError, match="not done by the deadline"):
            wait_all([channel.recv(torch.empty(8, device=device))], time.monotonic() + 0.5)
        channel.close()  # ncclCommAbort ends the unmatched recv
        torch.cuda.synchronize(device)
        assert time.monotonic() - start < 30
    finally:
        process.join(60)
    assert process.exitcode == 0
