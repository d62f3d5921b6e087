"""``droidspeak quality-latency``: quality against prefill latency, DroidSpeak vs CacheBlend-style.

    droidspeak quality-latency --quality docs/results/quality-tester__libwriter-lcc.json \\
        --bench docs/results/bench-prefill-DATE.json [--length 16384] [--out docs/quality-latency-NAME]

writes OUT.md, OUT.png and OUT.json (default OUT: docs/quality-latency-<sender>__<receiver>-<length>-<bench
date>). Quality: one ``droidspeak quality`` result (micro family, 8 layers, CPU reference engine).
Latency: the median TTFT at ``--length`` relative to full prefill, from one ``droidspeak
bench-prefill`` result (e.g. Llama-3.1-8B shapes, 32 layers, GPU) or one ``droidspeak
bench-reference`` result (the micro pair itself on the CPU reference engine, the code paths the
quality study scores; then --length 768, the quality study's context). Either way the two are
joined by compute budget (quality_latency_map: DroidSpeak [0, k) of 8 layers <-> "0:m" with
m/L = k/8 for the bench's L, CacheBlend-style at budget f <-> "blend:f", full reuse <->
"reuse", receiver <-> "off"; budgets between measured ones
interpolated linearly and marked, budgets outside them left out). Then each DroidSpeak point
against CacheBlend-style's quality at the same TTFT (quality_latency_compare) and the verdict on
the target "strictly better at equal latency" for agreement and target_nll. Outputs:
quality_latency_report. Imports no SGLang or torch; matplotlib only for the plot.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from sglang_droidspeak.bench import quality_latency_compare as compare
from sglang_droidspeak.bench import quality_latency_map as qmap
from sglang_droidspeak.bench.quality_latency_report import Study, write_outputs
from sglang_droidspeak.config_cli import at_least, number_type
from sglang_droidspeak.yaml_io import load_json_file

VERDICT_METRICS = ("agreement", "target_nll")
BENCH_META_KEYS = ("date", "card", "command", "model_note", "num_layers", "repeats", "configs",
                   "engine", "sender", "receiver", "sender_weights", "receiver_weights", "ttft_note")
OUT_SUFFIXES = (".json", ".md", ".png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--quality", required=True, help="a `droidspeak quality` result JSON (docs/results/quality-*.json)")
    a("--bench", required=True, help="a `droidspeak bench-prefill` result JSON (docs/results/bench-prefill-*.json)")
    a("--length", type=number_type(int, at_least(1)), default=16384,
      help="the bench's context length whose TTFTs are used")
    a("--out", default=None, help="output stem: OUT.md, OUT.png, OUT.json "
      "(default docs/quality-latency-<sender>__<receiver>-<length>-<bench date>)")


def build_study(quality: dict, bench: dict, length: int, command: str, quality_file: str,
                bench_file: str) -> Study:
    """Everything the outputs show; ValueError if the bench has no full prefill at ``length``."""
    curves = qmap.bench_curves(bench, length)
    points, left_out = qmap.map_rows(quality["rows"], curves)
    comparisons, not_compared = compare.equal_latency(points)
    has_cacheblend = any(p.kind == qmap.CACHEBLEND for p in points)
    return Study(command=command, quality_file=quality_file, bench_file=bench_file,
                 quality_meta={k: v for k, v in quality.items() if k != "rows"},
                 bench_meta={k: bench[k] for k in BENCH_META_KEYS if k in bench},
                 length=length, full_ms=curves.full_ms, points=points, left_out=left_out,
                 ignored_plans=curves.ignored, comparisons=comparisons, not_compared=not_compared,
                 verdicts=[compare.verdict(comparisons, m, has_cacheblend) for m in VERDICT_METRICS])


def default_out(quality: dict, bench: dict, length: int) -> Path:
    cfg = quality.get("config", {})
    pair = f"{cfg.get('sender', 'sender')}__{cfg.get('receiver', 'receiver')}"
    return Path("docs") / f"quality-latency-{pair}-{length}-{bench.get('date', 'undated')}"


def out_stem(text: str) -> Path:
    """``--out`` without a trailing .json/.md/.png (so OUT.json is not OUT.json.json)."""
    path = Path(text)
    return path.with_suffix("") if path.suffix in OUT_SUFFIXES else path


def command_line(args: argparse.Namespace) -> str:
    words = [f"--{k}={v}" for k, v in vars(args).items() if k in ("quality", "bench", "length", "out")
             and v is not None]
    return "droidspeak quality-latency " + shlex.join(words)


def run(args: argparse.Namespace) -> int:
    quality, bench = load_json_file(args.quality), load_json_file(args.bench)  # FileLoadError: one line
    try:
        study = build_study(quality, bench, args.length, command_line(args), args.quality, args.bench)
    except ValueError as exc:
        raise SystemExit(f"quality-latency: {exc}") from None
    out = out_stem(args.out) if args.out else default_out(quality, bench, args.length)
    paths = write_outputs(study, out)
    print(paths[-2].read_text())
    print("\n".join(str(p) for p in paths))
    return 0
