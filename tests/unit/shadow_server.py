"""Test helper: a local HTTP server standing in for SGLang's /generate, for the quality guard.

SGLang cannot serve on a CPU machine, so this answers the guard's shadow requests the way
SGLang 0.5.17's /generate does for ``return_logprob`` + ``logprob_start_len`` +
``top_logprobs_num: 1`` (meta_info.input_top_logprobs: one row per input token from
``logprob_start_len`` on, the first None, then ``[[logprob, token_id, null]]``), with a top-1
that we choose: ``honest`` repeats every reused output token, ``lying`` disagrees on every
second one (agreement exactly 0.5 for an even number of output tokens).
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ShadowServer:
    def __init__(self, mode: str = "honest", status: int = 200):
        self.mode, self.status = mode, status
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                owner.headers.append(dict(self.headers))
                if owner.status != 200 or self.path != "/generate":
                    self.send_response(owner.status if self.path == "/generate" else 404)
                    self.end_headers()
                    return
                data = json.dumps(owner.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, body: dict) -> dict:
        ids, start = body["input_ids"], body["logprob_start_len"]
        rows = [None]
        for position in range(start + 1, len(ids)):  # row k predicts input token start + k
            token = ids[position]
            if self.mode == "lying" and (position - start) % 2 == 1:
                token += 1
            rows.append([[-0.1, token, None]])
        return {"text": "", "output_ids": [0],
                "meta_info": {"id": body.get("rid"), "input_top_logprobs": rows, "prompt_tokens": len(ids)}}


@contextlib.contextmanager
def shadow_server(mode: str = "honest", status: int = 200):
    server = ShadowServer(mode, status)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
