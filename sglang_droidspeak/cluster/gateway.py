"""SGLang Model Gateway (PyPI ``sglang-router``, pinned 0.3.2) as the cluster's front door.

What 0.3.2 does (checked on this machine, docs/ROUTER.md): several models behind one
address need ``--enable-igw``; in that mode ``--worker-urls`` is ignored, so every server
is registered after start with ``POST /workers {"url", "model_id"}`` and the gateway
routes by the body's "model" with one policy per model. IGW mode loads the o200k_base
vocabulary at start (gateway_vocab.py). Its state: ``GET /workers`` (model_id,
is_healthy, load per worker); Prometheus metrics on a port of their own.

``gateway_argv`` maps the cluster's router settings onto its flags: total_timeout_s ->
``--request-timeout-secs``, health_check_interval_s / _timeout_s -> its active health
checks (one failed probe marks a worker unhealthy, one good probe brings it back, as in
our router), max_body_bytes -> ``--max-payload-size``. It has no connect, first-byte or
idle timeout. Imports no SGLang and no aiohttp.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.error
import urllib.request
from typing import Callable, Optional, Sequence

from sglang_droidspeak.router.settings import RouterSettings


def _secs(value: float) -> str:
    return str(max(1, math.ceil(value)))


def gateway_argv(python: str, host: str, port: int, metrics_port: int, settings: RouterSettings,
                 policy: str = "cache_aware") -> list[str]:
    """The gateway's command line (IGW mode; workers are registered afterwards)."""
    return [python, "-m", "sglang_router.launch_router", "--enable-igw", "--host", host, "--port", str(port),
            "--policy", policy, "--prometheus-host", host, "--prometheus-port", str(metrics_port),
            "--request-timeout-secs", _secs(settings.total_timeout_s),
            "--health-check-interval-secs", _secs(settings.health_check_interval_s),
            "--health-check-timeout-secs", _secs(settings.health_check_timeout_s),
            "--health-failure-threshold", "1", "--health-success-threshold", "1",
            "--max-payload-size", str(settings.max_body_bytes), "--log-level", "info"]


def _request(url: str, body: Optional[dict] = None, timeout_s: float = 5.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def http_status(url: str, timeout_s: float = 5.0) -> int:
    """GET ``url``'s HTTP status; 0 when nothing answered in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def list_workers(url: str, timeout_s: float = 5.0) -> list[dict]:
    """``GET /workers``: one dict per worker (url, model_id, is_healthy, load, ...)."""
    return _request(url.rstrip("/") + "/workers", timeout_s=timeout_s)["workers"]


def register_workers(url: str, workers: Sequence[tuple[str, str]], timeout_s: float = 60.0,
                     alive: Callable[[], bool] = lambda: True, poll_s: float = 0.2) -> None:
    """POST every (model_id, worker URL) to the gateway at ``url`` (retrying while it starts),
    then wait until ``GET /workers`` shows each registered and healthy. Raises RuntimeError
    naming what is missing after ``timeout_s``, or when ``alive()`` turns false."""
    base, deadline = url.rstrip("/"), time.monotonic() + timeout_s
    pending, problem = list(workers), "not started"
    while time.monotonic() < deadline and alive():
        try:
            while pending:
                model, worker = pending[0]
                _request(base + "/workers", {"url": worker, "model_id": model})
                pending.pop(0)
            healthy = {(w["model_id"], w["url"]) for w in list_workers(base) if w.get("is_healthy")}
            missing = [f"{m}={u}" for m, u in workers if (m, u) not in healthy]
            if not missing:
                return
            problem = "not registered and healthy yet: " + ", ".join(missing)
        except (OSError, ValueError, KeyError) as exc:  # urllib's errors are OSErrors
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(poll_s)
    state = "exited" if not alive() else f"not ready after {timeout_s:g} s"
    raise RuntimeError(f"gateway at {base} {state}: {problem}")


def start_gateway(argv: Sequence[str], log_path, env: dict) -> subprocess.Popen:
    """Start the gateway in its own session, output to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(list(argv), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
