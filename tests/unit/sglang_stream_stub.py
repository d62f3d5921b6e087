"""A stand-in for SGLang's streaming ``/generate`` (SGLang cannot run on a CPU machine).

A real local HTTP server (stdlib ThreadingHTTPServer, HTTP/1.0: one response per
connection) that answers ``"stream": true`` requests the way SGLang 0.5.17 does:
``data: {json}`` lines (``output_ids`` cumulative, ``meta_info.completion_tokens``,
``cached_tokens``), then ``data: [DONE]``. Delays are controlled:

    first token after  TTFT_S[plan]  (DEFAULT_TTFT_S for plans not listed)
    each later token   TBT_S after the previous one

``cached_tokens`` is the longest common prefix with a prompt seen before: any model's
(cross-model reuse) unless the plan is "off" (then this server's model only). Failure
modes by the body's "model": "http500" -> HTTP 500; "errchunk" -> one token, then an
``{"error": ...}`` chunk; "dropper" -> one token, then the connection closes without
[DONE]. ``/flush_cache`` clears the prompts; ``/health`` answers 200.

    python tests/unit/sglang_stream_stub.py --port 30001   (what the fake launch_server runs)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TTFT_S = {"off": 0.25}
DEFAULT_TTFT_S = 0.02
TBT_S = 0.01
SEEN: list[tuple[str, list[int]]] = []  # (model, prompt); shared by every server in one process
LOCK = threading.Lock()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cached_tokens(model: str, ids: list[int], plan: str) -> int:
    with LOCK:
        prior = [p for m, p in SEEN if plan != "off" or m == model]
        SEEN.append((model, ids))
    return max((common_prefix(ids, p) for p in prior), default=0)


def chunk(num_tokens: int, cached: int, prompt_len: int) -> bytes:
    body = {"text": "x" * num_tokens, "output_ids": [7] * num_tokens, "meta_info": {
        "completion_tokens": num_tokens, "cached_tokens": cached, "prompt_tokens": prompt_len}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/flush_cache":
            with LOCK:
                SEEN.clear()
            return self.do_GET()
        model, params = body.get("model", ""), body["sampling_params"]
        if model == "http500":
            self.send_response(500)
            self.end_headers()
            return self.wfile.write(b"boom")
        plan = params.get("custom_params", {}).get("droidspeak_plan", "auto")
        self.stream(model, body["input_ids"], plan, params["max_new_tokens"])

    def stream(self, model: str, ids: list[int], plan: str, max_new_tokens: int) -> None:
        cached = cached_tokens(model, ids, plan)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(TTFT_S.get(plan, DEFAULT_TTFT_S))
        for n in range(1, max_new_tokens + 1):
            if n > 1:
                time.sleep(TBT_S)
            self.wfile.write(chunk(n, cached, len(ids)))
            self.wfile.flush()
            if model == "dropper":
                return
            if model == "errchunk":
                self.wfile.write(b'data: {"error": {"message": "bad", "code": 400}}\n\ndata: [DONE]\n\n')
                return
        self.wfile.write(b"data: [DONE]\n\n")


def serve_in_thread() -> ThreadingHTTPServer:
    """A stub on a free port, served from a daemon thread; call .shutdown() when done."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args, _ = parser.parse_known_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
