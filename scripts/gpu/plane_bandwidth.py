"""Fetch bandwidth of the data planes at 8B shapes: a sender and a receiver process on one
GPU, the receiver fetching every layer's K/V (a full-reuse plan) plus E of one layer.

    python3 scripts/gpu/plane_bandwidth.py [--planes nixl,cuda_ipc,zmq] [--tokens 16384]
        [--layers 32] [--kv-heads 8] [--head-dim 128] [--hidden 4096] [--repeats 5]
        [--device cuda] [--out DIR]

Per plane: the first fetch (offer, registration, connection) and the median of the next
``--repeats`` fetch times, K/V + E bytes, GB/s. The planes' own sender and receiver
objects (transfer/planes/), the real fetch socket and signed frames; no SGLang server.
A plane that cannot run here is reported with its error. On the CPU (``--device cpu``,
tiny sizes) it checks itself. Results: ``$OUT/plane-bandwidth.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from types import SimpleNamespace

import torch

SECRET = b"plane-bandwidth-secret-0123456789"


class Pool:
    """The KV pool methods the planes use: one [rows, heads, dim] K and V per layer."""

    def __init__(self, args, fill: float):
        shape = (args.tokens + 1, args.kv_heads, args.head_dim)  # slot 0 is SGLang's padding slot
        self.device = torch.device(args.device)
        self.k = [torch.full(shape, fill + l, dtype=torch.bfloat16, device=self.device) for l in range(args.layers)]
        self.v = [torch.full(shape, -fill - l, dtype=torch.bfloat16, device=self.device) for l in range(args.layers)]

    def get_key_buffer(self, layer):
        return self.k[layer]

    def get_value_buffer(self, layer):
        return self.v[layer]


def context(args, pool, model: str, client=None):
    """``model``: this side's name; the receiver's must be the FetchRequest's receiver_model
    (the cuda_ipc sender matches offers by it)."""
    from sglang_droidspeak.transfer.planes.base import PlaneContext

    return PlaneContext(model, pool, args.layers, args.hidden, torch.bfloat16, 60.0, SECRET, client)


def sender(args, plane: str, ready) -> None:
    from sglang_droidspeak.sglang.exporter import export_messages
    from sglang_droidspeak.sglang.planes import build_planes
    from sglang_droidspeak.transfer.fetch import FetchServer

    pool = Pool(args, 1.0)
    server = FetchServer("tcp://127.0.0.1:*", SECRET)
    planes = build_planes(SimpleNamespace(data_plane=plane), context(args, pool, "sender"), server, None)
    slots = torch.arange(1, args.tokens + 1)  # [n]
    tree = SimpleNamespace(match_for_export=lambda ids, model: SimpleNamespace(match=SimpleNamespace(
        device_indices=slots)))
    e = {l: torch.ones(args.tokens, args.hidden, dtype=torch.bfloat16, device=pool.device) for l in range(args.layers)}
    ready.put(server.endpoint)
    handler = lambda req: export_messages(req, model="sender", fingerprint="fp", tree=tree,  # noqa: E731
                                          compute_e=lambda ids, layers: e, num_layers=args.layers,
                                          senders=planes.senders)
    while True:
        server.poll(handler, on_control=planes.on_control)
        time.sleep(0.0005)


def measure(args, plane: str) -> dict:
    from sglang_droidspeak.plan.layer_plan import LayerPlan
    from sglang_droidspeak.sglang.import_receiver import _Receiver
    from sglang_droidspeak.sglang.importer import fetch_request
    from sglang_droidspeak.sglang.planes import build_planes
    from sglang_droidspeak.transfer.fetch_client import FetchClient

    ready = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=sender, args=(args, plane, ready), daemon=True)
    proc.start()
    try:
        endpoint = ready.get(timeout=120)
        pool, client = Pool(args, 0.0), FetchClient(SECRET)
        planes = build_planes(SimpleNamespace(data_plane=plane), context(args, pool, "receiver", client), None, client)
        parts = SimpleNamespace(kv_pool=pool, hidden_size=args.hidden, dtype=torch.bfloat16, device=pool.device)
        with_e = args.with_e and args.layers > 1  # E of layer 1 (recompute [1, 2)), else K/V only
        plan = LayerPlan(args.layers, ((1, 2),)) if with_e else LayerPlan.full_reuse(args.layers)
        slots = torch.arange(1, args.tokens + 1, device=pool.device)  # [n]
        times = []
        for _ in range(args.repeats + 1):
            sink = _Receiver(parts, plan, slots, plan.e_layers())
            request = fetch_request("sender", "receiver", "fp", range(args.tokens), plan.reused_layers(),
                                    plan.e_layers())
            began = time.perf_counter()
            planes.receiver.fetch(endpoint, request, sink, 60.0)
            if pool.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
            sink.check_complete()
        layer = plan.reused_layers()[-1]  # [n] rows of K filled with the sender's 1.0 + layer
        assert torch.equal(pool.k[layer][1:], torch.full_like(pool.k[layer][1:], 1.0 + layer)), "K/V differ"
        nbytes, receiver = sink.num_bytes, planes.receiver
        fell_back = bool(getattr(receiver, "unavailable", False) or endpoint in getattr(receiver, "zmq_peers", ()))
        planes.close()
        client.close()
        warm = statistics.median(times[1:])
        return {"plane": plane, "bytes": nbytes, "first_s": times[0], "median_s": warm,
                "gb_per_s": nbytes / warm / 1e9, "times_s": times, "fell_back_to_zmq": fell_back}
    except Exception as exc:  # noqa: BLE001 - one plane's failure is a result, not the end
        return {"plane": plane, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", default="nixl,cuda_ipc,zmq")
    for name, default in (("tokens", 16384), ("layers", 32), ("kv-heads", 8), ("head-dim", 128),
                          ("hidden", 4096), ("repeats", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--with-e", type=int, default=1, help="1: also E of one layer; 0: K/V of every layer only")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = parser.parse_args()
    results = [measure(args, plane) for plane in args.planes.split(",")]
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report = {"card": card, "date": time.strftime("%Y-%m-%d"), "args": vars(args), "results": results}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "plane-bandwidth.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"card {card}, {args.tokens} tokens, {args.layers} layers x {args.kv_heads} x {args.head_dim} bf16")
    for r in results:
        print(f"{r['plane']:>9}: " + (r["error"] if "error" in r else
                                     f"{r['gb_per_s']:.2f} GB/s ({r['bytes'] / 1e9:.2f} GB in {r['median_s'] * 1e3:.1f} ms; "
                                     f"first {r['first_s'] * 1e3:.0f} ms)" + (" FELL BACK TO ZMQ" if r["fell_back_to_zmq"] else "")))


if __name__ == "__main__":
    main()
