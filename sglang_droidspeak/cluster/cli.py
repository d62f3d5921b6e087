"""``droidspeak check CONFIG``: validate a cluster config and show who shares KV with whom.

    droidspeak check examples/cluster-one-gpu.yaml
    droidspeak check cluster.yaml --print-plan       # + every server's command/env/settings

Prints one line per ordered model pair (sender -> receiver: compatible, profile, the plan
that ``slo.max_quality_drop`` picks), then the errors and warnings. Exit status 0 when
there are no errors, 1 otherwise (an unloadable config included). With ``--print-plan``
stdout carries only the plan as JSON and the report goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from sglang_droidspeak.cluster.check import CheckReport, PairStatus, check_cluster
from sglang_droidspeak.cluster.config import ClusterConfig, ClusterConfigError, load_cluster_config
from sglang_droidspeak.cluster.layout import plan_cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="cluster YAML file")
    parser.add_argument("--print-plan", action="store_true",
                        help="print every server's command, env and settings as JSON on stdout")
    parser.add_argument("--no-fingerprints", action="store_true",
                        help="do not read the model directories (compatibility unknown)")


def run(args: argparse.Namespace) -> int:
    out = sys.stderr if args.print_plan else sys.stdout
    try:
        config = load_cluster_config(args.config)
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=out)
        return 1
    report = check_cluster(config, load_fingerprints=not args.no_fingerprints)
    print_report(config, report, out)
    if args.print_plan:
        json.dump(plan_cluster(config, report).to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0 if report.ok else 1


def print_report(config: ClusterConfig, report: CheckReport, out: TextIO) -> None:
    name = config.name or "(unnamed)"
    print(f"cluster {name}: {len(config.models)} models, {config.num_replicas} servers, "
          f"router {config.router.host}:{config.router.port}", file=out)
    rows = [(f"{p.sender} -> {p.receiver}", _yes_no(p.compatible), p.profile, plan_text(p)) for p in report.pairs]
    header = ("pair", "compatible", "profile", f"plan (max_quality_drop {config.slo.max_quality_drop:g})")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3], file=out)
    for line in report.errors:
        print(f"error: {line}", file=out)
    for line in report.warnings:
        print(f"warning: {line}", file=out)
    print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)", file=out)


def _yes_no(compatible: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[compatible]


def plan_text(pair: PairStatus) -> str:
    """The plan column: what a receiver does with a hit from this sender."""
    if pair.compatible is False:
        return "no sharing"
    if pair.plan is None:
        return "normal prefill"
    plan = pair.plan
    return f"reuse, recompute {plan} ({plan.num_recomputed_layers}/{plan.num_layers} layers)"
