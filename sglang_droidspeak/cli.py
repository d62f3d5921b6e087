"""The ``droidspeak`` command. Subcommands import their module lazily.

    droidspeak demo                 the main job: one shared context, model A then model B
    droidspeak profile ...          offline profiler -> profiles/<sender>__<receiver>.yaml
    droidspeak family [--...]       build (or show) the embedded micro model family
    droidspeak quality ...          the quality study table and plot (docs/)
    droidspeak check CONFIG...      check cluster configs; --print-plan: server commands
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

from sglang_droidspeak.cli_errors import DEBUG_ENV, debug_requested, run_guarded

# subcommand -> (module with add_arguments(parser) and run(args) -> int, help, an example)
SUBCOMMANDS = {
    "demo": ("sglang_droidspeak.demo", "CPU demo on the embedded micro family", "droidspeak demo --num-examples 4"),
    "profile": ("sglang_droidspeak.profiler.cli", "profile a sender -> receiver pair",
                "droidspeak profile --sender tester --receiver libwriter --dataset lcc --granularity 1"),
    "family": ("sglang_droidspeak.family.cli", "build or show the micro model family", "droidspeak family"),
    "quality": ("sglang_droidspeak.profiler.quality_study", "quality study: table and plot",
                "droidspeak quality --sender tester --receiver libwriter"),
    "check": ("sglang_droidspeak.cluster.cli", "check cluster configs (models, pairs, profiles, GPUs)",
              "droidspeak check examples/*.yaml"),
    "serve": ("sglang_droidspeak.cluster.launcher", "start a cluster's servers and its router",
              "droidspeak serve examples/cluster-one-gpu.yaml"),
    "status": ("sglang_droidspeak.cluster.status", "replica health and cache metrics from the router",
               "droidspeak status --url http://127.0.0.1:8000"),
    "bench-prefill": ("sglang_droidspeak.bench.prefill", "TTFT vs context length: full prefill, reuse, plans",
                      "droidspeak bench-prefill"),
    "bench-throughput": ("sglang_droidspeak.bench.throughput", "multi-agent latency vs QPS and max QPS at a TTFT SLO",
                         "droidspeak bench-throughput --url http://127.0.0.1:8000"),
    "bench-reference": ("sglang_droidspeak.bench.reference_latency",
                        "receiver prefill latency per system on the micro family (CPU reference engine)",
                        "droidspeak bench-reference --sender tester --receiver libwriter"),
    "quality-latency": ("sglang_droidspeak.bench.quality_latency",
                        "quality (micro, CPU) against prefill latency (a bench-prefill or bench-reference "
                        "result): DroidSpeak vs CacheBlend",
                        "droidspeak quality-latency --quality Q.json --bench B.json --length 16384"),
}
BENCH_WORDS = ("prefill", "throughput")  # `droidspeak bench X` == `droidspeak bench-X`
DEBUG_HELP = f"show the traceback of an unexpected error (also: {DEBUG_ENV}=1)"


def normalize_argv(argv: list[str]) -> list[str]:
    """``bench X ...`` -> ``bench-X ...`` for X in BENCH_WORDS; anything else unchanged."""
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCH_WORDS:
        return [f"bench-{argv[1]}", *argv[2:]]
    return list(argv)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand named in ``argv`` (default ``sys.argv[1:]``) gets
    its module imported and its arguments (several import torch: seconds each).
    ``parser.subcommands`` maps each name to its own parser."""
    words = normalize_argv(sys.argv[1:] if argv is None else argv)
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="droidspeak", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parser.subcommands = {}
    for name, (module, help_text, example) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            importlib.import_module(module).add_arguments(sub_parser)
        sub_parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
        sub_parser.set_defaults(_module=module)
        parser.subcommands[name] = sub_parser
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; bad arguments exit 2 with that subcommand's usage, failures are one
    line and status 1 (cli_errors.py)."""
    words = normalize_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args, extra = parser.parse_known_args(words)
    command_parser = parser.subcommands[args.command]
    if extra:
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    module = importlib.import_module(args._module)
    return run_guarded(lambda: module.run(args), command_parser, args.debug or debug_requested(words))


if __name__ == "__main__":
    sys.exit(main())
