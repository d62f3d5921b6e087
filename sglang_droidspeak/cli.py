"""The ``droidspeak`` command. Subcommands import their module lazily.

    droidspeak demo                 the main job: one shared context, model A then model B
    droidspeak profile ...          offline profiler -> profiles/<sender>__<receiver>.yaml
    droidspeak family [--...]       build (or show) the embedded micro model family
    droidspeak quality ...          the quality study table and plot (docs/)
    droidspeak check CONFIG         check a cluster config; --print-plan: server commands
    droidspeak serve CONFIG         start a cluster's servers and its router (Ctrl-C stops all)
    droidspeak status [--url URL]   per-replica health, load and cache metrics from the router
    droidspeak bench-prefill [--...] receiver TTFT vs context length per system (GPU, SGLang)
    droidspeak bench-throughput [--...]  multi-agent TTFT/TBT/E2E vs QPS per system, max QPS at SLO
    droidspeak bench-reference [--...]   receiver prefill latency per system on the micro family (CPU)
    droidspeak quality-latency --quality Q.json --bench B.json  quality at equal prefill latency (docs/)
    (``droidspeak bench prefill`` and ``droidspeak bench throughput`` are the same commands)
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with add_arguments(parser) and run(args) -> int, help)
SUBCOMMANDS = {
    "demo": ("sglang_droidspeak.demo", "CPU demo on the embedded micro family"),
    "profile": ("sglang_droidspeak.profiler.cli", "profile a sender -> receiver pair"),
    "family": ("sglang_droidspeak.family.cli", "build or show the micro model family"),
    "quality": ("sglang_droidspeak.profiler.quality_study", "quality study: table and plot"),
    "check": ("sglang_droidspeak.cluster.cli", "check a cluster config (models, pairs, profiles, GPUs)"),
    "serve": ("sglang_droidspeak.cluster.launcher", "start a cluster's servers and its router"),
    "status": ("sglang_droidspeak.cluster.status", "replica health and cache metrics from the router"),
    "bench-prefill": ("sglang_droidspeak.bench.prefill", "TTFT vs context length: full prefill, reuse, plans"),
    "bench-throughput": ("sglang_droidspeak.bench.throughput", "multi-agent latency vs QPS and max QPS at a TTFT SLO"),
    "bench-reference": ("sglang_droidspeak.bench.reference_latency",
                        "receiver prefill latency per system on the micro family (CPU reference engine)"),
    "quality-latency": ("sglang_droidspeak.bench.quality_latency",
                        "quality (micro, CPU) against prefill latency (a bench-prefill or bench-reference "
                        "result): DroidSpeak vs CacheBlend"),
}
BENCH_WORDS = ("prefill", "throughput")  # `droidspeak bench X` == `droidspeak bench-X`


def normalize_argv(argv: list[str]) -> list[str]:
    """``bench X ...`` -> ``bench-X ...`` for X in BENCH_WORDS; anything else unchanged."""
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCH_WORDS:
        return [f"bench-{argv[1]}", *argv[2:]]
    return list(argv)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` (default ``sys.argv[1:]``) gets
    its module imported and its arguments (several import torch: seconds each)."""
    words = normalize_argv(sys.argv[1:] if argv is None else argv)
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="droidspeak", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = normalize_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser(words).parse_args(words)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
