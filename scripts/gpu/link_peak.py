"""The links' own peaks, to set the data planes' achieved bandwidth against (issue 4).

    bash scripts/gpu/link_peak.sh            (device machine; two GPUs for the GPU-to-GPU rows)
    python3 scripts/gpu/link_peak.py --only zmq --size-mb 64    (here, CPU: the host path only)

    row                what moves                                         compare with
    cuda_p2p           tensor.copy_ from GPU 0 to GPU 1 (one process)      nccl plane
    nccl               torch.distributed NCCL send/recv, two processes     nccl plane
    d2h_pinned         GPU 0 to pinned host memory                         zmq plane (staging)
    h2d_pinned         pinned host memory to GPU 0                         zmq plane (staging)
    zmq_tcp_loopback   pyzmq PUSH -> PULL frames over tcp://127.0.0.1      zmq plane (the wire)

Each row: median GB/s (1e9 bytes/s) of --repeats timed transfers of --size-mb MiB after
two warm-ups. Results: $OUT/link-peak.json and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

MIB = 1 << 20


class PeakRow(NamedTuple):
    name: str
    size_bytes: int
    gbps_median: float
    gbps_all: list


def timed_rate(move: Callable[[], None], size_bytes: int, repeats: int, sync: Callable[[], None] = lambda: None):
    """GB/s of each of ``repeats`` calls of ``move`` (after 2 untimed)."""
    for _ in range(2):
        move()
    sync()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        move()
        sync()
        rates.append(size_bytes / (time.perf_counter() - start) / 1e9)
    return rates


def zmq_loopback(size_bytes: int, repeats: int) -> PeakRow:
    """PUSH -> PULL of one ``size_bytes`` frame per transfer over TCP loopback."""
    import zmq
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    payload = bytes(size_bytes)
    try:
        def move():
            sender = threading.Thread(target=push.send, args=(payload,), kwargs={"copy": False})
            sender.start()
            assert len(pull.recv(copy=False)) == size_bytes
            sender.join()
        rates = timed_rate(move, size_bytes, repeats)
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
    return PeakRow("zmq_tcp_loopback", size_bytes, statistics.median(rates), rates)


def cuda_rows(size_bytes: int, repeats: int) -> list[PeakRow]:
    import torch
    rows, n = [], size_bytes // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda:0")
    host = torch.empty(n, dtype=torch.bfloat16, pin_memory=True)
    pairs = [("d2h_pinned", host, src), ("h2d_pinned", src, host)]
    if torch.cuda.device_count() >= 2:
        pairs.insert(0, ("cuda_p2p", torch.empty(n, dtype=torch.bfloat16, device="cuda:1"), src))
    for name, dst, source in pairs:
        rates = timed_rate(lambda: dst.copy_(source, non_blocking=True), size_bytes, repeats,
                           sync=lambda: [torch.cuda.synchronize(d) for d in range(torch.cuda.device_count())])
        rows.append(PeakRow(name, size_bytes, statistics.median(rates), rates))
    return rows


def _nccl_rank(rank: int, port: int, size_bytes: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buf = torch.empty(size_bytes // 2, dtype=torch.bfloat16, device=f"cuda:{rank}")
    move = (lambda: dist.send(buf, 1)) if rank == 0 else (lambda: dist.recv(buf, 0))
    rates = timed_rate(lambda: (dist.barrier(), move()), size_bytes, repeats, sync=torch.cuda.synchronize)
    if rank == 1:
        Path(out).write_text(json.dumps(rates))
    dist.destroy_process_group()


def nccl_row(size_bytes: int, repeats: int, work: Path) -> PeakRow:
    """send/recv between two processes (GPU 0 -> GPU 1), timed on the receiver; each
    timed transfer includes a barrier, as a fetch includes its request."""
    import torch.multiprocessing as mp
    out = work / "nccl-rates.json"
    mp.spawn(_nccl_rank, args=(29517, size_bytes, repeats, str(out)), nprocs=2, join=True)
    rates = json.loads(out.read_text())
    return PeakRow("nccl", size_bytes, statistics.median(rates), rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", default="cuda,nccl,zmq", help="which groups: cuda, nccl, zmq")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    size, groups, rows, errors = args.size_mb * MIB, args.only.split(","), [], {}
    steps = {"cuda": lambda: cuda_rows(size, args.repeats), "nccl": lambda: [nccl_row(size, args.repeats, out)],
             "zmq": lambda: [zmq_loopback(size, args.repeats)]}
    for group in groups:
        try:  # one group failing (no second GPU, no NCCL) keeps the others
            rows += steps[group]()
        except Exception as exc:
            errors[group] = repr(exc)
    result = {"date": time.strftime("%Y-%m-%d"), "command": "python3 scripts/gpu/link_peak.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "size_mib": args.size_mb, "repeats": args.repeats,
        "rows": [r._asdict() for r in rows], "errors": errors}
    (out / "link-peak.json").write_text(json.dumps(result, indent=1))
    for r in rows:
        print(f"{r.name:>18}: {r.gbps_median:8.2f} GB/s  (min {min(r.gbps_all):.2f}, max {max(r.gbps_all):.2f})")
    for group, error in errors.items():
        print(f"{group:>18}: ERROR {error}")


if __name__ == "__main__":
    main()
