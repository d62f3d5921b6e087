"""``droidspeak check CONFIG...``: validate cluster configs and show who shares KV with whom.

    droidspeak check examples/*.yaml
    droidspeak check cluster.yaml --print-plan       # + every server's command/env/settings

Per file: one line per ordered model pair (sender -> receiver: compatible, profile, the plan
that ``slo.max_quality_drop`` picks), then the errors, the model directories not on this
machine, and the warnings (check_machine.py: GPU indices against this machine's GPUs, the
shared secret). Exit status 0 when no file has an error (a model directory that is only
missing here is not one: ``serve`` refuses until it exists), 1 otherwise (an unloadable
config included). With ``--print-plan`` (one file) stdout carries only the plan as JSON
and the report goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TextIO

from sglang_droidspeak.cli_errors import UsageError
from sglang_droidspeak.cluster import check_machine
from sglang_droidspeak.cluster.check import CheckReport, PairStatus, check_cluster
from sglang_droidspeak.cluster.config import ClusterConfig, ClusterConfigError, load_cluster_config
from sglang_droidspeak.cluster.layout import plan_cluster

EXAMPLE = "droidspeak check examples/*.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="+", help="cluster YAML file(s)")
    parser.add_argument("--print-plan", action="store_true",
                        help="print every server's command, env and settings as JSON on stdout (one config)")
    parser.add_argument("--no-fingerprints", action="store_true",
                        help="do not read the model directories (compatibility unknown)")


def run(args: argparse.Namespace) -> int:
    if args.print_plan and len(args.config) > 1:
        raise UsageError("--print-plan takes one config file")
    statuses = []
    for path in args.config:
        if len(args.config) > 1:
            print(f"== {path}", file=sys.stderr if args.print_plan else sys.stdout)
        statuses.append(check_one(path, args))
    return max(statuses)


def check_one(path: str, args: argparse.Namespace) -> int:
    out = sys.stderr if args.print_plan else sys.stdout
    try:
        config = load_cluster_config(path)
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=out)
        return 1
    report = with_machine_checks(config, check_cluster(config, load_fingerprints=not args.no_fingerprints))
    print_report(config, report, out)
    if args.print_plan:
        json.dump(plan_cluster(config, report).to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 1 if report.errors else 0


def with_machine_checks(config: ClusterConfig, report: CheckReport) -> CheckReport:
    """``report`` plus this machine's GPU errors/warnings and the shared-secret warning."""
    gpu_errors, gpu_warnings = check_machine.gpu_problems(config)
    warnings = report.warnings + tuple(gpu_warnings) + tuple(check_machine.secret_warning(config))
    return dataclasses.replace(report, errors=report.errors + tuple(gpu_errors), warnings=warnings)


def print_report(config: ClusterConfig, report: CheckReport, out: TextIO) -> None:
    name = config.name or "(unnamed)"
    print(f"cluster {name}: {len(config.models)} models, {config.num_replicas} servers, "
          f"router {config.router.host}:{config.router.port}", file=out)
    rows = [(f"{p.sender} -> {p.receiver}", _yes_no(p.compatible), p.profile, plan_text(p)) for p in report.pairs]
    header = ("pair", "compatible", "profile", f"plan (max_quality_drop {config.slo.max_quality_drop:g})")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3], file=out)
    for label, lines in (("error", report.errors), ("not here", report.missing_models), ("warning", report.warnings)):
        for line in lines:
            print(f"{label}: {line}", file=out)
    missing = f", {len(report.missing_models)} model dir(s) not here" if report.missing_models else ""
    print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s){missing}", file=out)


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
