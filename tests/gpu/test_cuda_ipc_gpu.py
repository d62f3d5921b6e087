"""The cuda_ipc data plane on a real GPU: two processes, one device.

A receiver process (a script run with ``sys.executable``) owns a small bf16 K/V pool,
shares it with ``CudaIpc.share_pool`` and prints the signed ``IpcPoolOffer`` frame. This
test process is the sender: it decodes the frame, opens the buffers through the real
``IpcExporter`` (``rebuild_cuda_tensor`` / cudaIpcOpenMemHandle), copies chosen slots of
chosen layers into the receiver's slots and releases the mapping; the receiver then dumps
its pool and its E staging area, which must equal the expected rows exactly (zeros elsewhere). Skipped without
CUDA (tests/conftest.py): CI has no GPU.
"""

from __future__ import annotations

import gc
import inspect
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sglang_droidspeak.transfer.planes.cuda_ipc.sender import IpcExporter
from sglang_droidspeak.transfer import FetchRequest, wire
from sglang_droidspeak.transfer.planes.cuda_ipc.backend import CudaIpc, device_uuid, now_ms
from sglang_droidspeak.transfer.planes.cuda_ipc.frames import IpcPoolOffer

REPO = Path(__file__).resolve().parents[2]
SECRET = b"gpu-ipc-test-secret-0123"
NUM_LAYERS, ROWS, HEADS, DIM = 3, 65, 2, 16  # ROWS = 64 slots + 1 page
SRC_SLOTS = [7, 3, 40, 12]  # the sender's slots of a 4-token prefix
DST_SLOTS = [64, 1, 33, 5]  # the receiver's slots for the same tokens
LAYERS = (0, 2)  # reused layers; layer 1 (recomputed) must stay untouched
E_ROWS, HIDDEN = 8, 32  # the receiver's E staging area; E_1 of the 4 tokens lands in rows [0, 4)


class Pool:
    """The two MHATokenToKVPool methods the plane uses; one K and V [ROWS, heads, dim] per layer."""

    def __init__(self, fill):
        self.device = torch.device("cuda")
        self.k = [fill(layer, 0) for layer in range(NUM_LAYERS)]
        self.v = [fill(layer, 1) for layer in range(NUM_LAYERS)]

    def get_key_buffer(self, layer):
        return self.k[layer]

    def get_value_buffer(self, layer):
        return self.v[layer]


RECEIVER = textwrap.dedent(f"""
    import sys
    import torch
    from sglang_droidspeak.transfer import wire
    from sglang_droidspeak.transfer.planes.cuda_ipc.backend import CudaIpc
    NUM_LAYERS = {NUM_LAYERS}
""") + inspect.getsource(Pool) + textwrap.dedent(f"""
    pool = Pool(lambda layer, what: torch.zeros({ROWS}, {HEADS}, {DIM}, dtype=torch.bfloat16, device="cuda"))
    stage = torch.zeros({E_ROWS}, {HIDDEN}, dtype=torch.bfloat16, device="cuda")
    offer = CudaIpc.share_pool("receiver", pool, {NUM_LAYERS}, stage)
    print(wire.encode(offer, {SECRET!r})[0].hex(), flush=True)
    sys.stdin.readline()  # the sender has copied, synchronized and released the mapping
    torch.cuda.synchronize()
    with open(sys.argv[1], "wb") as out:
        for layer in range({NUM_LAYERS}):
            for buffer in (pool.k[layer], pool.v[layer]):
                out.write(buffer.float().cpu().numpy().tobytes())
        out.write(stage.float().cpu().numpy().tobytes())
    print("dumped", flush=True)
""")


def read_line(proc, timeout_s):
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"the receiver process printed nothing in {timeout_s} s"
    return proc.stdout.readline().strip()


def sender_fill(layer, what):
    generator = torch.Generator().manual_seed(10 * layer + what)
    return torch.randn(ROWS, HEADS, DIM, generator=generator).to("cuda", torch.bfloat16)


@pytest.mark.gpu
def test_sender_copies_slots_into_another_processes_pool(tmp_path):
    dump = tmp_path / "receiver_pool.bin"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(dump)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        offer = wire.decode([bytes.fromhex(read_line(proc, 180))], SECRET)
        assert isinstance(offer, IpcPoolOffer) and offer.dtype == "bfloat16"
        assert offer.device_uuid == device_uuid("cuda") != "" and offer.k_shape == (ROWS, HEADS, DIM)
        assert offer.e_shape == (E_ROWS, HIDDEN)
        sender = Pool(sender_fill)
        exporter = IpcExporter(CudaIpc(), sender)
        exporter.accept(offer)
        request = FetchRequest("r1", "sender", "receiver", "fp", (11, 12, 13, 14), LAYERS, (1,),
                               now_ms() + 30_000, plane="cuda_ipc", session=offer.offer_id, dst_slots=tuple(DST_SLOTS))
        bad = FetchRequest("r2", "sender", "receiver", "fp", (11,), LAYERS, (), now_ms() + 30_000,
                           plane="cuda_ipc", session=offer.offer_id, dst_slots=(ROWS,))
        assert exporter.refusal(bad).code == "bad_request"  # after opening: never out of range
        assert exporter.refusal(request) is None
        e = {1: torch.randn(len(SRC_SLOTS), HIDDEN, generator=torch.Generator().manual_seed(7)).to("cuda", torch.bfloat16)}
        assert exporter._stage_fits(request, e)
        assert exporter.copy(request, torch.tensor(SRC_SLOTS, device="cuda"), e) is None
        del exporter
        gc.collect()
        torch.cuda.synchronize()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert read_line(proc, 60) == "dumped"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    raw = torch.frombuffer(bytearray(dump.read_bytes()), dtype=torch.float32)
    got, stage = raw[:-E_ROWS * HIDDEN].view(NUM_LAYERS, 2, ROWS, HEADS, DIM), raw[-E_ROWS * HIDDEN:].view(E_ROWS, HIDDEN)
    expected_stage = torch.zeros_like(stage)
    expected_stage[:len(SRC_SLOTS)] = e[1].float().cpu()
    assert torch.equal(stage, expected_stage)
    expected = torch.zeros_like(got)
    for layer in LAYERS:
        for what, buffer in enumerate((sender.k[layer], sender.v[layer])):
            expected[layer, what, DST_SLOTS] = buffer[SRC_SLOTS].float().cpu()
    assert torch.equal(got, expected)
    assert expected.count_nonzero() > 0
