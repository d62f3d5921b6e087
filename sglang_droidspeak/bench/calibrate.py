"""Fit the online policy's prefill-latency model (plan/latency.py) to a bench-prefill result.

    python -m sglang_droidspeak.bench.calibrate docs/results/bench-prefill-DATE.json \
        [--out docs/results/latency-model-DATE.json]

The GPU numbers come from ``droidspeak bench-prefill`` (scripts/gpu/bench_prefill.sh):

    constant             from which rows                 how
    ms_per_layer_token   full prefill ("off")            least squares of median TTFT over
    ms_fixed                                             (context + suffix) * num_layers
    kv_bytes_per_layer_  the model config                2 * kv_heads * head_dim * 2 (bf16)
      token
    link_gbps            full reuse ("reuse")            bytes moved / (TTFT - fixed - suffix
                                                         compute), median over lengths

The reuse rows time today's whole import (host staging, HMAC, ZMQ, slot writes), so the
link is the effective one of that path, and ``pipelined`` is False. The fitted model then
predicts every measured DroidSpeak row; the relative errors are part of the output.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import NamedTuple, Optional

from sglang_droidspeak.bench import prefill_report as rep
from sglang_droidspeak.bench.prefill_outputs import first_config_samples
from sglang_droidspeak.cli_errors import UsageError, debug_requested, run_guarded
from sglang_droidspeak.plan.latency import PrefillLatencyModel
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.sglang.request_plan import parse_plan_choice
from sglang_droidspeak.yaml_io import load_json_file

DTYPE_BYTES = 2  # bf16


class Prediction(NamedTuple):
    length: int
    plan: str
    measured_ms: float
    predicted_ms: float
    rel_error: float


def layer_plan(plan: str, num_layers: int) -> LayerPlan | None:
    """The LayerPlan a bench row's ``plan`` string names (request_plan's grammar); None for
    the CacheBlend-style rows (``blend:R``), which the layer-latency model does not cover."""
    choice = parse_plan_choice(plan, num_layers)
    return choice if isinstance(choice, LayerPlan) else None


def fit(result: dict, lengths: Optional[set[int]] = None) -> tuple[PrefillLatencyModel, list[Prediction]]:
    """The latency model of one bench-prefill result and its predictions of the plan rows:
    the first config's samples only (a sweep's paced or serial rows would skew the link),
    at ``lengths`` (None: all)."""
    config, num_layers, suffix = result["model"], result["num_layers"], result["suffix_len"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    samples = [s for s in first_config_samples(result) if lengths is None or s["length"] in lengths]
    medians = rep.median_ttft(samples)
    full = sorted((length, ms) for (length, plan), ms in medians.items() if plan == rep.FULL)
    base = PrefillLatencyModel(1.0, 0.0, 2 * config["num_key_value_heads"] * head_dim * DTYPE_BYTES,
                               config["hidden_size"] * DTYPE_BYTES, 1.0, pipelined=False)
    model = base.fit([((length + suffix) * num_layers, ms) for length, ms in full])
    reuse = layer_plan("reuse", num_layers)
    gbps = []
    for (length, plan), ms in medians.items():
        if plan == "reuse":
            transfer_ms = ms - model.predict(reuse, length, suffix, num_layers).compute_ms - model.ms_fixed
            num_bytes = num_layers * model.kv_bytes_per_layer_token * length
            gbps.append(8 * num_bytes / (transfer_ms / 1e3) / 1e9 if transfer_ms > 0 else float("inf"))
    finite = [g for g in gbps if g != float("inf")]
    model = PrefillLatencyModel(**{**model.to_dict(), "link_gbps": statistics.median(finite) if finite else 1e3})
    predictions = []
    for (length, plan), ms in sorted(medians.items()):
        chosen = layer_plan(plan, num_layers) if plan != rep.FULL else None
        if chosen is not None:
            predicted = model.predict(chosen, length, suffix, num_layers).total_ms
            predictions.append(Prediction(length, plan, ms, predicted, (predicted - ms) / ms))
    return model, predictions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="a bench-prefill result JSON")
    parser.add_argument("--out", type=Path, default=None, help="write the model and predictions here (JSON)")
    parser.add_argument("--lengths", default="", help="fit to these context lengths only, e.g. 4096,16384 "
                        "(the model is linear in tokens; attention makes long contexts superlinear)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    args = parser.parse_args(argv)
    return run_guarded(lambda: _calibrate(args), parser, args.debug or debug_requested(argv))


def _calibrate(args: argparse.Namespace) -> int:
    result = load_json_file(args.result)
    try:
        lengths = {int(x) for x in args.lengths.split(",")} if args.lengths else None
    except ValueError:
        raise UsageError(f"--lengths: expected integers separated by commas, got {args.lengths[:60]!r}") from None
    model, predictions = fit(result, lengths)
    print(f"latency_model (for DROIDSPEAK_CONFIG / cluster slo): {json.dumps(model.to_dict())}")
    print(f"{'length':>7} {'plan':>6} {'measured ms':>12} {'predicted ms':>13} {'error':>7}")
    for p in predictions:
        print(f"{p.length:>7} {p.plan:>6} {p.measured_ms:>12.1f} {p.predicted_ms:>13.1f} {p.rel_error:>+7.1%}")
    if args.out:
        args.out.write_text(json.dumps({"source": str(args.result), "lengths": args.lengths or "all",
                                        "card": result.get("card"),
                                        "date": result.get("date"), "latency_model": model.to_dict(),
                                        "predictions": [p._asdict() for p in predictions]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
