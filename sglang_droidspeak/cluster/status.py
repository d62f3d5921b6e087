"""``droidspeak status [--url URL]``: the front door's state as a table.

Our router answers GET /status itself. SGLang Model Gateway has no /status (404): then its
GET /workers gives the replicas (model_id, is_healthy, load as in_flight) and each
worker's /metrics is scraped from here, 2 s at most, all at once.

    droidspeak status --url http://127.0.0.1:8000
      model   replica                 healthy  in_flight  hit_rate  foreign_hits  tokens_reused  fallbacks  token_usage
      tester  http://127.0.0.1:30001  yes      0          0.25      5             128            2          0.5

One row per replica; ``-`` where a value is null (SGLang does not expose it, or the
replica's /metrics could not be scraped: then a ``<url>: metrics: <why>`` line follows
the table). ``--json`` prints the router's answer as it came. Exit status 0 when the
router answered, 1 otherwise. Imports no SGLang and no aiohttp.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, TextIO

from sglang_droidspeak.router.metrics_summary import summarize_metrics

COLUMNS = (("hit_rate", "cache_hit_rate"), ("foreign_hits", "droidspeak_foreign_hits"),
           ("tokens_reused", "droidspeak_tokens_reused"), ("fallbacks", "droidspeak_fallbacks"),
           ("token_usage", "token_usage"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the router's base URL")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="wait this long for the router")
    parser.add_argument("--json", action="store_true", help="print the router's JSON as it is")


def fetch_status(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET ``url``/status as JSON (or the gateway's state in that shape); raises OSError
    (urllib's errors included) or ValueError."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    return gateway_status(url, timeout_s)


def _scrape(worker: dict[str, Any]) -> dict[str, Any]:
    row = {"url": worker["url"], "healthy": worker.get("is_healthy"), "in_flight": worker.get("load"),
           "metrics": None, "metrics_error": None}
    try:
        with urllib.request.urlopen(worker["url"] + "/metrics", timeout=2.0) as response:
            row["metrics"] = summarize_metrics(response.read().decode(errors="replace"))
    except OSError as exc:
        row["metrics_error"] = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    return row


def gateway_status(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """SGLang Model Gateway's GET /workers + each worker's /metrics, as our /status."""
    with urllib.request.urlopen(url.rstrip("/") + "/workers", timeout=timeout_s) as response:
        workers = json.loads(response.read())["workers"]
    with ThreadPoolExecutor(max(1, len(workers))) as pool:
        rows = list(pool.map(_scrape, workers))
    models: dict[str, Any] = {}
    for worker, row in zip(workers, rows):
        models.setdefault(worker["model_id"], {"replicas": []})["replicas"].append(row)
    return {"front_door": "gateway", "models": models}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def status_rows(status: dict[str, Any]) -> tuple[list[tuple[str, ...]], list[str]]:
    """(table rows, header first; notes about replicas whose metrics are missing)."""
    rows = [("model", "replica", "healthy", "in_flight", *(title for title, _ in COLUMNS))]
    notes = []
    for model, entry in status.get("models", {}).items():
        for replica in entry.get("replicas", []):
            metrics: Optional[dict] = replica.get("metrics")
            values = [_cell((metrics or {}).get(key)) for _, key in COLUMNS]
            rows.append((model, replica["url"], _cell(replica.get("healthy")), _cell(replica.get("in_flight")),
                         *values))
            if metrics is None:
                notes.append(f"{replica['url']}: metrics: {replica.get('metrics_error') or 'not scraped'}")
    return rows, notes


def print_status(status: dict[str, Any], out: Optional[TextIO] = None) -> None:
    out = out or sys.stdout  # at call time: a default bound at import outlives a captured stdout
    rows, notes = status_rows(status)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    for note in notes:
        print(note, file=out)


def run(args: argparse.Namespace) -> int:
    try:
        status = fetch_status(args.url, args.timeout_s)
    except (OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"error: {args.url.rstrip('/')}/status: {reason}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_status(status)
    return 0
