"""Test helper: a FetchServer polled on a thread, as SGLang's scheduler-loop hook polls it."""

from __future__ import annotations

import threading

from sglang_droidspeak.transfer.fetch import FetchServer


class Serving:
    """``FetchServer(endpoint, secret)`` answering with ``handler`` until ``close()``."""

    def __init__(self, handler, secret: bytes, endpoint: str = "tcp://127.0.0.1:*"):
        self.server = FetchServer(endpoint, secret)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(handler,), daemon=True)
        self.thread.start()

    def _loop(self, handler):
        while not self.stop.is_set():
            self.server.poll(handler)
            self.stop.wait(0.002)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.server.close()
