"""Where the host-staged ZMQ path spends its time, stage by stage, on this machine's CPU.

    python3 scripts/bench_wire.py [--num-chunks 32] [--block-tokens 4096]

The GPU benchmark (docs/BENCHMARKS.md) found the ZMQ path moving an 8B-shaped 16K-token
prefix (2.1 GB of K/V) in 3.8 s, 5x slower than SGLang prefilling it. This replays the
same frames (blocks of --block-tokens tokens of one layer's K or V: 8 KV heads x 128
dims, bf16, 8 MiB each) through each stage of the real code in one process, with a real
ZMQ PUSH/PULL pair over tcp://127.0.0.1, and prints GB/s per stage:

    stage            code                                     side
    to_bytes         LayerChunk.from_tensor (tensor -> bytes)  sender (after the GPU->CPU copy)
    encode           wire.encode (msgpack + HMAC-SHA256)       sender
    zmq              send_multipart / recv_multipart           both
    decode           wire.decode (checks + HMAC verify)        receiver
    to_tensor        LayerChunk.to_tensor (bytes -> tensor)     receiver (before the CPU->GPU copy)
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.frames import LayerChunk

SECRET = b"bench-wire-secret-0123456789"


def timed(stages: dict, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
    return out


def zmq_seconds(frames: list[list[bytes]]) -> float:
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    sender = threading.Thread(target=lambda: [push.send_multipart(f, copy=False) for f in frames])
    start = time.perf_counter()
    sender.start()
    for _ in frames:
        pull.recv_multipart(copy=False)
    sender.join()
    seconds = time.perf_counter() - start
    push.close(0)
    pull.close(0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-chunks", type=int, default=32)
    parser.add_argument("--block-tokens", type=int, default=4096)
    args = parser.parse_args()
    block = torch.randn(args.block_tokens, 8, 128).to(torch.bfloat16)  # [tokens, kv_heads, head_dim]
    stages: dict[str, float] = {}
    frames = []
    for i in range(args.num_chunks):
        chunk = timed(stages, "to_bytes", LayerChunk.from_tensor, "r", "k", i, 0, block)
        frames.append(timed(stages, "encode", wire.encode, chunk, SECRET))
    stages["zmq"] = zmq_seconds(frames)
    for f in frames:
        msg = timed(stages, "decode", wire.decode, f, SECRET)
        timed(stages, "to_tensor", msg.to_tensor)
    num_bytes = args.num_chunks * block.numel() * block.element_size()
    print(f"{num_bytes / 1e9:.2f} GB in {args.num_chunks} chunks")
    for name, seconds in stages.items():
        print(f"  {name:>10}: {seconds:7.3f} s  {num_bytes / seconds / 1e9:6.2f} GB/s")
    total = sum(stages.values())
    print(f"  {'serial sum':>10}: {total:7.3f} s  {num_bytes / total / 1e9:6.2f} GB/s")


if __name__ == "__main__":
    main()
