"""Command line of the router: parse ``NAME=URL`` pairs, build the app, serve it."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields

from sglang_droidspeak.router.replicas import PickConfig
from sglang_droidspeak.router.settings import RouterSettings


def parse_pairs(values: Sequence[str], flag: str) -> dict[str, list[str]]:
    """``["a=u1", "a=u2", "b=u3"]`` -> ``{"a": ["u1", "u2"], "b": ["u3"]}``.

    Raises ValueError naming ``flag`` and the bad value when a pair lacks ``=``, has an
    empty side, or a URL is not http(s)://.
    """
    pairs: dict[str, list[str]] = {}
    for value in values:
        key, sep, url = value.partition("=")
        key, url = key.strip(), url.strip()
        if not sep or not key or not url:
            raise ValueError(f"{flag} {value!r}: expected KEY=URL")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{flag} {value!r}: URL must start with http:// or https://")
        pairs.setdefault(key, []).append(url.rstrip("/"))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_droidspeak.router", description="Model-aware router for SGLang servers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m sglang_droidspeak.router --model tester=http://127.0.0.1:30001 "
               "--model libwriter=http://127.0.0.1:30002 --port 8000")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=URL",
                        help="a replica of model NAME at URL (repeat for more replicas/models)")
    parser.add_argument("--peer", action="append", default=[], metavar="RECEIVER_URL=SENDER_URL",
                        help="the replica at RECEIVER_URL can reuse KV of the one at SENDER_URL "
                             "(DroidSpeak, another model); repeatable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--balance-abs", type=int, default=PickConfig.balance_abs,
                        help="leave the prefix winner when it has this many more in flight")
    for f in fields(RouterSettings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=int if f.type in ("int", int) else float,
                            default=f.default, help=f"(default: {f.default})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the router until interrupted.

        python -m sglang_droidspeak.router --model coder-a=http://127.0.0.1:30001 \\
            --model coder-b=http://127.0.0.1:30002 --model coder-b=http://127.0.0.1:30003 \\
            --peer http://127.0.0.1:30002=http://127.0.0.1:30001 --host 0.0.0.0 --port 30000
    """
    from aiohttp import web

    from sglang_droidspeak.router.proxy import build_app

    parser = build_parser()
    args = parser.parse_args(argv)
    from sglang_droidspeak.config_cli import check_listen_address  # issue 19: exit 2 with the usage
    check_listen_address(parser, args.host, args.port)
    try:
        routes = parse_pairs(args.model, "--model")
        if not routes:
            raise ValueError("--model: at least one NAME=URL is needed")
        peers = parse_pairs(args.peer, "--peer")
        config = PickConfig(balance_abs=args.balance_abs)
        settings = RouterSettings(**{f.name: getattr(args, f.name) for f in fields(RouterSettings)})
        app = build_app(routes, peers, config, settings)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(app, host=args.host, port=args.port, access_log=None, handler_cancellation=True)
    return 0
