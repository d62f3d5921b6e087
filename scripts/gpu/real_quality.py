"""The quality study on the real pairs: DroidSpeak groups vs token recompute vs the hybrid.

    python3 scripts/gpu/real_quality.py          # what scripts/gpu/real_quality.sh runs, after real_family
    mkdir -p /tmp/ds-real-q && ln -sfn $PWD/.cache/real/downloads $PWD/.cache/real/smollm2-135m-instruct /tmp/ds-real-q/
    DROIDSPEAK_REAL_DIR=/tmp/ds-real-q OUT=/tmp/out-q python3 scripts/gpu/real_quality.py --device cpu --rehearse \\
        --num-examples 2 --pairs 1 --context-len 64 --query-len 8 --budgets 2,4 --examples-per-chunk 2 --rows-per-batch 16
        # CPU rehearsal: 1-step fine-tunes + one profile via real_family.py first, then the study
        # (93 s from scratch on 2 shared CPU cores, the study itself 5 s; 20 s once the models exist;
        # 2026-12-06). Its models barely differ, so every row agrees: it checks the plumbing only.

Per ordered pair (real_family.py's order; none starts after ``--budget-s``, the rest are
listed as skipped), on ``--num-examples`` examples of the receiver's held-out domain
(seed 1; the profiles used seed 0), scored by the batched study (profiler/batched_study.py:
greedy answers + teacher-forced scores, the same numbers as PairEvaluator): the receiver's
full prefill, the sender alone, full reuse, DroidSpeak at every frontier point of the
pair's profile (<= ``--max-budget`` layers; or with ``--budgets`` the best single group of
each size among every plan the profiler scored: results/scores/<pair>.json), CacheBlend-style
token recompute at each of those budgets, and the hybrid (the profile's best group of
<= ``--hybrid-layers`` layers, then token recompute up to each larger budget); systems and
tables: profiler/study_report.py.

Writes $OUT/real-quality.json (per pair and task, per system: recompute fraction, layers
fetched from the sender, every metric's mean and 95% interval, paired comparisons at
equal budget; seconds, split into building prefixes and scoring rows; card, versions,
date, command, corpus hash) and $OUT/real-quality.results.tar.gz (per-example scores and
answers, JSONL), and prints a markdown table per pair.

Speed knobs (the H100 rate is not yet measured; estimate 10-25 s per pair at the defaults,
float32 with TF32 matmuls): each greedy decode is launch-bound (~48 steps of 30 HF layers),
so fewer, larger batches go faster: ``--dtype bfloat16 --examples-per-chunk 32
--rows-per-batch 1024`` halves the decode loops in about the same memory (~35 GB).
Memory at the defaults: ~20 GB for 512 cached rows + ~11 GB of chunk prefixes (float32).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "scripts" / "gpu"))  # real_family.py (pair order, held-out splits, rehearsal)

WORK = Path(os.environ.get("DROIDSPEAK_REAL_DIR", "/tmp/ds-real"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="weights and caches")
    p.add_argument("--no-tf32", action="store_true", help="full-precision float32 matmuls on the GPU")
    p.add_argument("--tasks", default="lcc", help="comma-separated: lcc, nextlines")
    p.add_argument("--num-examples", type=int, default=256)
    p.add_argument("--context-len", type=int, default=768)
    p.add_argument("--query-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=1, help="example draw (the profiles used 0)")
    p.add_argument("--max-budget", type=int, default=16, help="frontier points of at most this many layers (0 = all)")
    p.add_argument("--budgets", default="", help="instead of the frontier: the best single group of each of these "
                                                 "layer counts among all plans the profiler scored (e.g. 2,4,8)")
    p.add_argument("--hybrid-layers", type=int, default=4, help="the hybrid's group: best frontier group of <= N layers")
    p.add_argument("--examples-per-chunk", type=int, default=16, help="examples whose prefixes are built together")
    p.add_argument("--rows-per-batch", type=int, default=512, help="(system, example) rows per batched decode")
    p.add_argument("--pairs", type=int, default=0, help="only the first N pairs (0 = all)")
    p.add_argument("--profiles-dir", default="", help="default: $DROIDSPEAK_REAL_DIR/results/profiles (real_family's)")
    p.add_argument("--only", default="", help="comma-separated SENDER__RECEIVER pairs (default: every pair)")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no pair after this many seconds")
    p.add_argument("--rehearse", action="store_true", help="models missing: build them (and profiles) at tiny "
                                                            "settings with real_family.py first (CPU rehearsal)")
    return p


def failed_in_family_run() -> dict:
    """Variants real_family.py found failed in this machine's run (none when it kept them)."""
    path = WORK / "results" / "real-family.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    return {} if report.get("args", {}).get("keep_failed") else report.get("failed_variants", {})


def rehearse(args) -> None:
    """Tiny fine-tunes and profiles, as real_family.py's CPU rehearsal makes them."""
    import real_family

    real_family.main(["--device", args.device, "--max-steps", "1", "--seq-len", "64", "--batch-size", "2",
                      "--eval-windows", "2", "--num-examples", "1", "--context-len", str(args.context_len),
                      "--query-len", str(args.query_len), "--pairs", str(args.pairs), "--cacheblend-budgets", "",
                      "--keep-failed"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ["DROIDSPEAK_REAL_DIR"] = str(WORK)
    out, results = Path(os.environ.get("OUT", "/tmp/out")), WORK / "results"
    start = time.perf_counter()
    lap = lambda: round(time.perf_counter() - start, 1)  # noqa: E731
    from real_family import HELDOUT, ordered_pairs, select_pairs

    from sglang_droidspeak.real.recipe import VARIANTS

    names = ["smollm2-base"] + [f"smollm2-{v}" for v in VARIANTS if v not in failed_in_family_run()]
    if args.rehearse and not all((WORK / "models" / n).is_dir() for n in names):
        rehearse(args)
    import torch
    import transformers

    from sglang_droidspeak.real.corpus import load_real_corpus

    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not args.no_tf32
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "args": vars(args), "machine": {"device": args.device, "torch": torch.__version__,
                                              "transformers": transformers.__version__,
                                              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
              "pairs": {}, "skipped_pairs": [], "failed_pairs": {}, "seconds": {}}
    corpus = load_real_corpus()
    report["corpus"] = corpus.describe()
    from sglang_droidspeak.profiler.loading import load_model

    # --only: e.g. the LoRA pairs on a CPU, where no full fine-tune exists (in the order given)
    pairs = select_pairs(ordered_pairs(names)[: args.pairs or None], args.only)
    needed = sorted({n for pair in pairs for n in pair})
    models = {n: load_model(str(WORK / "models" / n), args.device, getattr(torch, args.dtype)) for n in needed}
    report["seconds"]["load"] = lap()
    examples: dict = {}
    for sender, receiver in pairs:
        key = f"{sender}__{receiver}"
        if lap() > args.budget_s:
            report["skipped_pairs"].append(key)
            continue
        try:
            for task in args.tasks.split(","):
                result = study_pair(args, models[sender], models[receiver], task, HELDOUT[receiver.removeprefix("smollm2-")], corpus,
                                    examples, results)
                report["pairs"].setdefault(key, {})[task] = result
                print(result.pop("markdown"), flush=True)
        except NoProfile as exc:  # real_family did not reach this pair (its --budget-s): not a failure
            report.setdefault("unprofiled_pairs", {})[key] = str(exc)
            print(f"{key}: skipped, {exc}", flush=True)
        except Exception as exc:  # one failing pair must not cost the others
            report["failed_pairs"][key] = f"{type(exc).__name__}: {exc}"
            print(f"{key}: FAILED {report['failed_pairs'][key]}", flush=True)
            traceback.print_exc()
        write_outputs(report, out)
    report["seconds"]["total"] = lap()
    if report["skipped_pairs"]:
        print(f"skipped (past --budget-s {args.budget_s:g} s): {', '.join(report['skipped_pairs'])}")
    write_outputs(report, out)
    print(f"written: {out / 'real-quality.json'}, {out / 'real-quality.results.tar.gz'} ({lap()} s in all)")
    return 1 if report["failed_pairs"] else 0


class NoProfile(FileNotFoundError):
    """The pair has no profile (so no frontier to study)."""


def study_pair(args, sender, receiver, task: str, split: str, corpus, examples: dict, results: Path) -> dict:
    """One pair and task: its systems scored, summarised, and a markdown table."""
    from sglang_droidspeak.plan import ModelRef, find_profile
    from sglang_droidspeak.profiler.batched_study import BatchedStudy
    from sglang_droidspeak.profiler.store import ResultStore
    from sglang_droidspeak.profiler.study_report import (
        best_groups, equal_budget, frontier_points, markdown, study_systems, system_rows,
    )
    from sglang_droidspeak.tasks import TASKS, build_task

    began = time.perf_counter()
    profiles_dir = Path(args.profiles_dir) if args.profiles_dir else results / "profiles"
    profile = find_profile(profiles_dir, ModelRef(sender.name, sender.fingerprint),
                           ModelRef(receiver.name, receiver.fingerprint))
    if profile is None:
        raise NoProfile(f"no profile for {sender.name} -> {receiver.name} in {profiles_dir}")
    if (task, split) not in examples:
        examples[task, split] = build_task(task, receiver.tokenizer, split=split, num_examples=args.num_examples,
                                           context_len=args.context_len, query_len=args.query_len, seed=args.seed,
                                           corpus=corpus)
    if args.budgets:
        scores = json.loads((results / "scores" / f"{sender.name}__{receiver.name}.json").read_text())
        points = best_groups(scores, profile.num_layers, [int(k) for k in args.budgets.split(",")])
    else:
        points = frontier_points(profile)
    systems = study_systems(points, receiver.model, args.context_len, args.max_budget, args.hybrid_layers)
    header = {"task": task, "split": split, "num_examples": args.num_examples, "context_len": args.context_len,
              "query_len": args.query_len, "seed": args.seed, "dtype": args.dtype, "tf32": not args.no_tf32,
              "sender_weights": sender.weights_digest, "receiver_weights": receiver.weights_digest,
              "profile_created": profile.created}
    store = ResultStore.for_run(WORK / "quality-work", f"{sender.name}__{receiver.name}-{task}", header)
    study = BatchedStudy(sender.model, receiver.model, receiver.tokenizer, task, examples[task, split],
                         examples_per_chunk=args.examples_per_chunk, rows_per_batch=args.rows_per_batch)
    study.run(systems, store, progress=False)
    metrics = [*TASKS[task].metrics, "agreement", "target_acc", "target_nll"]
    result = {"task": task, "split": split, "num_examples": len(examples[task, split]),
              "seconds": round(time.perf_counter() - began, 1), "num_rows": len(systems) * args.num_examples,
              "seconds_by_stage": {k: round(v, 1) for k, v in study.seconds.items()},
              "profile": {"metric": profile.metric, "created": profile.created},
              "systems": system_rows(store, systems, metrics, receiver.model, args.context_len),
              "equal_budget": equal_budget(store, systems, ["agreement", "target_nll", TASKS[task].primary_metric])}
    result["markdown"] = markdown(f"{sender.name} -> {receiver.name}", result, metrics)
    return result


def write_outputs(report: dict, out: Path) -> None:
    """$OUT/real-quality.json and $OUT/real-quality.results.tar.gz as they stand (rewritten after each pair)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "real-quality.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    work = WORK / "quality-work"
    if work.is_dir():
        with tarfile.open(out / "real-quality.results.tar.gz", "w:gz") as archive:
            archive.add(work, arcname="real-quality")


if __name__ == "__main__":
    sys.exit(main())
