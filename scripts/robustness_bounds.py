"""Measure what the worst bad inputs cost: peak memory and time per input class.

    python3 scripts/robustness_bounds.py            # the table in docs/ROBUSTNESS.md

Each row builds the worst input of its class at the size cap, hands it to the loader or
the wire decoder the way a command or a server would, and reports the peak of Python
allocations (tracemalloc) and the wall time until the typed error (or the result). The
last row sends a many-part ZMQ message to a FetchServer-like ROUTER and reports the
process's resident memory growth: ZMQ_MAXMSGSIZE bounds each frame, not the number of
frames, and ZMQ buffers a whole multi-part message before handing it over.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import msgpack
import zmq

from sglang_droidspeak.text_files import MAX_CONFIG_BYTES, MAX_RESULT_BYTES
from sglang_droidspeak.transfer import wire
from sglang_droidspeak.yaml_io import MAX_NODES, FileLoadError, load_json_file, read_yaml_file

SECRET = b"s" * 32


def _yaml_cases() -> dict[str, str]:
    cap = MAX_CONFIG_BYTES
    return {
        "YAML: flow list of ints at the cap": "[" + "1," * (cap // 2 - 2) + "1]",
        f"YAML: block list, {MAX_NODES - 2} items": "- 1\n" * (MAX_NODES - 2),
        "YAML: one string at the cap": "a: " + "x" * (cap - 8),
        "YAML: mapping, 6500 keys (under the cap)": "".join(f"k{i}: 1\n" for i in range(6500)),
        "YAML: nesting 10000 deep": "[" * 10000,
        "YAML: alias bomb (billion laughs)": "a: &a [x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20)),
        "YAML: file one byte over the cap": "#" * (cap + 1),
    }


def _json_cases() -> dict[str, str]:
    cap = MAX_RESULT_BYTES
    return {"JSON result: list of empty objects at the cap": "[" + "{}," * (cap // 3 - 2) + "{}]"}


def _outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except (FileLoadError, wire.WireError) as exc:
        return f"{type(exc).__name__}: {str(exc).split(': ', 1)[-1][:60]}"
    return "loaded"


def measure(call: Callable[[], Any]) -> tuple[float, float, str]:
    """(peak MiB of Python allocations, seconds, outcome) of ``call()``; the time is taken
    on a second run without tracemalloc (which slows allocation-heavy code several-fold)."""
    tracemalloc.start()
    outcome = _outcome(call)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    start = time.perf_counter()
    _outcome(call)
    return peak, time.perf_counter() - start, outcome


def _header_bomb() -> list[bytes]:
    """An unsigned FetchRequest header of 1M token ids + 1M dst slots (under max_header_bytes)."""
    ids = list(range(2**31, 2**31 + (1 << 20)))
    header = {"v": 1, "kind": "fetch_request", "ts": 0, "nonce": b"n" * 16, "token_ids": ids, "dst_slots": ids,
              "payload_len": 0, "mac": b"m" * 32}
    return [msgpack.packb(header, use_bin_type=True)]


def _rss_mib() -> float:
    return int(Path(f"/proc/{os.getpid()}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def multipart_growth(parts: int = 40, part_mib: int = 20) -> float:
    """RSS growth (MiB) of a ROUTER with MAXMSGSIZE = max_header_bytes when a peer sends one
    message of ``parts`` frames of ``part_mib`` MiB each (every frame under the limit)."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.MAXMSGSIZE, wire.WireLimits().max_header_bytes)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    before = _rss_mib()
    sender = (f"import zmq,time\nd=zmq.Context().socket(zmq.DEALER)\nd.connect('tcp://127.0.0.1:{port}')\n"
              f"f=b'x'*({part_mib}<<20)\n[d.send(f,zmq.SNDMORE) for _ in range({parts})]\nd.send(b'.')\ntime.sleep(3)")
    peer = subprocess.Popen([sys.executable, "-c", sender])
    router.poll(10_000)
    grown = _rss_mib() - before
    peer.wait()
    router.close(0)
    return grown


def main() -> int:
    print(f"{'input':<48}{'peak MiB':>9}{'seconds':>9}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for readers, cases in ((read_yaml_file, _yaml_cases()), (load_json_file, _json_cases())):
            for name, text in cases.items():
                path = Path(tmp) / "input"
                path.write_text(text)
                peak, seconds, outcome = measure(lambda: readers(path))
                print(f"{name:<48}{peak:>9.1f}{seconds:>9.2f}  {outcome}")
    frames = _header_bomb()
    peak, seconds, outcome = measure(lambda: wire.decode(frames, SECRET))
    print(f"{'wire: unsigned 1M+1M-id header (%d MiB)' % (len(frames[0]) >> 20):<48}{peak:>9.1f}{seconds:>9.2f}  "
          f"{outcome}")
    print(f"{'ZMQ: one 40 x 20 MiB multi-part message':<48}{multipart_growth():>9.0f}{'':>9}  RSS growth before "
          "the application sees it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
