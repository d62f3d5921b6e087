"""The real family on one GPU: convert the base, fine-tune, evaluate, profile every ordered pair.

    python3 scripts/gpu/real_family.py                      # what scripts/gpu/real_family.sh runs
    python3 scripts/gpu/real_family.py --device cpu --max-steps 1 --seq-len 64 --batch-size 2 \\
        --eval-windows 2 --num-examples 1 --context-len 64 --query-len 8 --pairs 2 --keep-failed   # CPU rehearsal

Stages, each timed: the pinned SmolLM2-135M-Instruct converted (real/base.py; its weights'
sha256 against the pin); the tokenizer checked under this machine's transformers; the
recipe (real/recipe.py: lib-full, test-lora, docs-lora; held-out loss per domain before
and after; a variant whose own held-out loss did not fall is failed, named, and not profiled); profiles for the ordered pairs of {base, fine-tunes} (12 for 4 models) with
the batched teacher-forced scorer (profiler/batched.py), each on the receiver's own held-out
domain (the base: lib), with CacheBlend-style token recompute scored at a few layer budgets
beside the best group of as many layers (equal compute). Pairs go base -> each, each -> base, then the rest; past
``--budget-s`` the remaining pairs are skipped and listed (a rerun resumes from the work files).
``--validate-examples N`` (0 = off) scores each profile's chosen points again on N other examples
and records those qualities (profiler/validate.py): the next lease's ``--num-examples 32 --validate-examples 64``.

Writes $OUT/real-family.json (everything, with card, date, versions, corpus hash) and
$OUT/real-family.results.tar.gz (finetune.json, adapters/*.safetensors, profiles/*.yaml + plots,
per-pair scores of every plan), and prints the loss table and one line per profile.
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

WORK = Path(os.environ.get("DROIDSPEAK_REAL_DIR", "/tmp/ds-real"))
HELDOUT = {"base": "lib_heldout", "lib-full": "lib_heldout", "test-lora": "test_heldout", "docs-lora": "docs_heldout"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--max-steps", type=int, default=0, help="cap every variant's steps (0 = the recipe's)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--num-examples", type=int, default=32)
    p.add_argument("--validate-examples", type=int, default=0,
                   help="score the chosen points again on this many other examples (0 = off; ProfileConfig)")
    p.add_argument("--context-len", type=int, default=768)
    p.add_argument("--query-len", type=int, default=32)
    p.add_argument("--granularity", type=int, default=2, choices=(1, 2))
    p.add_argument("--plan-batch", type=int, default=64, help="plans per batched extend")
    p.add_argument("--cacheblend-budgets", default="4,8,12", help="CacheBlend-style rows at these layer budgets")
    p.add_argument("--pairs", type=int, default=0, help="profile only the first N pairs (0 = all)")
    p.add_argument("--adapters-dir", default="", help="LoRA variants whose adapter is in this folder (e.g. "
                   "adapters, the committed ones) are loaded from it instead of trained (default: train all)")
    p.add_argument("--only", default="", help="comma-separated SENDER__RECEIVER pairs to profile (default: every "
                   "pair; e.g. the ones a lease's --budget-s skipped)")
    p.add_argument("--keep-failed", action="store_true",
                   help="profile variants that did not learn their domain too (1-step CPU rehearsals)")
    p.add_argument("--budget-s", type=float, default=480.0, help="start no pair after this many seconds")
    return p


def ordered_pairs(names: list[str]) -> list[tuple[str, str]]:
    base, tuned = names[0], names[1:]
    pairs = [(base, t) for t in tuned] + [(t, base) for t in tuned]
    return pairs + [(a, b) for a in tuned for b in tuned if a != b]


def select_pairs(pairs: list[tuple[str, str]], only: str) -> list[tuple[str, str]]:
    """``pairs`` restricted to the comma-separated SENDER__RECEIVER keys of ``only`` ("" = all);
    a key that names no pair of this family is an error (a typo must not profile nothing)."""
    wanted = [k.strip() for k in only.split(",") if k.strip()]
    known = {f"{s}__{r}": (s, r) for s, r in pairs}
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise SystemExit(f"--only: unknown pair(s) {unknown}; pairs: {sorted(known)}")
    return [known[k] for k in wanted] if wanted else pairs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ["DROIDSPEAK_REAL_DIR"] = str(WORK)
    out = Path(os.environ.get("OUT", "/tmp/out"))
    results = WORK / "results"
    start = time.perf_counter()
    lap = lambda: round(time.perf_counter() - start, 1)  # noqa: E731
    import torch
    import transformers
    from transformers import AutoTokenizer

    from sglang_droidspeak.real.base import ensure_base
    from sglang_droidspeak.real.corpus import load_real_corpus
    from sglang_droidspeak.real.finetune import failed_variants, loss_table, run_recipe
    from sglang_droidspeak.real.gguf_tokenizer import check_tokenizer
    from sglang_droidspeak.real.recipe import RecipeConfig

    report = {"date": dt.date.today().isoformat(), "command": " ".join(sys.argv), "args": vars(args),
              "machine": {"device": args.device, "torch": torch.__version__, "transformers": transformers.__version__,
                          "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}, "seconds": {}}
    base = ensure_base()
    report["conversion"] = json.loads((base / "conversion.json").read_text())
    check_tokenizer(AutoTokenizer.from_pretrained(base))  # raises: a wrong tokenizer stops the run here
    report["tokenizer_check"] = f"byte-level, eos <|im_end|> = 2, round trip ok under transformers {transformers.__version__}"
    corpus = load_real_corpus()
    report["corpus"] = corpus.describe()
    report["seconds"]["convert_and_load"] = lap()
    config = RecipeConfig(device=args.device, seq_len=args.seq_len, batch_size=args.batch_size,
                          eval_windows=args.eval_windows, max_steps=args.max_steps, base=str(base),
                          out_dir=str(results), models_dir=str(WORK / "models"), adapters_dir=args.adapters_dir)
    finetune = run_recipe(config, corpus=corpus, base_path=base, progress=False)
    report["finetune"] = finetune
    report["seconds"]["finetune"] = lap()
    print(loss_table(finetune), flush=True)
    report["failed_variants"] = failed_variants(finetune)
    for name, why in report["failed_variants"].items():
        print(f"{name}: FAILED, not profiled: {why}", flush=True)
    skip = () if args.keep_failed else report["failed_variants"]
    names = ["smollm2-base"] + [f"smollm2-{v}" for v in config.variant_names if v not in skip]
    link = WORK / "models" / "smollm2-base"
    if not link.exists():
        link.symlink_to(base, target_is_directory=True)
    report["profiles"], report["skipped_pairs"], report["failed_pairs"] = {}, [], {}
    write_outputs(report, results, out)  # the fine-tunes come back even if profiling fails
    profile_pairs(args, names, corpus, results, report, lap, lambda: write_outputs(report, results, out))
    report["seconds"]["total"] = lap()
    write_outputs(report, results, out)
    print(f"written: {out / 'real-family.json'}, {out / 'real-family.results.tar.gz'} ({lap()} s in all)")
    return 1 if report["failed_pairs"] else 0


def write_outputs(report: dict, results: Path, out: Path) -> None:
    """$OUT/real-family.json and $OUT/real-family.results.tar.gz as they stand (rewritten after each stage)."""
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    (results / "real-family.json").write_text(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real-family.json").write_text(text)
    with tarfile.open(out / "real-family.results.tar.gz", "w:gz") as archive:
        archive.add(results, arcname="real-family")


def equal_budget(run) -> dict[str, dict[str, float]]:
    """Per CacheBlend budget k: the best single group of k layers against token recompute at k."""
    out = {}
    for key, blend in run.baselines.items():
        k = int(key.split(":")[1])
        groups = [q for plan, q in run.scores.items() if len(plan.groups) == 1 and plan.num_recomputed_layers == k]
        out[str(k)] = {"droidspeak_group": round(max(groups), 4) if groups else float("nan"),
                       "cacheblend": round(blend, 4)}
    return out


def profile_config(args, sender: str, receiver: str, split: str, results: Path, plots: bool):
    """The ProfileConfig of one pair (batched teacher-forced agreement on the receiver's held-out split)."""
    from sglang_droidspeak.profiler.runner import ProfileConfig

    return ProfileConfig(sender=sender, receiver=receiver, dataset="lcc", corpus="django", split=split,
                         num_examples=args.num_examples, validate_examples=args.validate_examples,
                         context_len=args.context_len, query_len=args.query_len, granularity=args.granularity,
                         metric="agreement", generate=False, device=args.device, batch_size=args.plan_batch,
                         cacheblend_budgets=args.cacheblend_budgets, out_dir=str(results / "profiles"),
                         work_dir=str(WORK / "work"), plots=plots, progress=False)


def validation_report(run) -> dict:
    """A validated profile's selection-set numbers, beside its validated ones ({} when not validated)."""
    v = run.profile.validation
    if v is None:
        return {}
    return {"validation": {**v.to_dict(), "scores": {k: round(q, 4) for k, q in run.validation_scores.items()},
                           "selection_frontier": {pt.num_recomputed_layers: round(pt.selection_quality, 4)
                                                  for pt in run.profile.frontier}}}


def profile_pairs(args, names: list[str], corpus, results: Path, report: dict, lap, save) -> None:
    import torch

    from sglang_droidspeak.profiler.loading import load_model
    from sglang_droidspeak.profiler.runner import profile_models
    from sglang_droidspeak.profiler.validate import task_example_sets

    try:
        import matplotlib  # noqa: F401
        plots = True
    except ImportError:
        plots = False
    models = {n: load_model(str(WORK / "models" / n), args.device, torch.float32) for n in names}
    pairs = select_pairs(ordered_pairs(names)[: args.pairs or None], args.only)
    examples = {}
    for sender, receiver in pairs:
        key = f"{sender}__{receiver}"
        if lap() > args.budget_s:
            report["skipped_pairs"].append(key)
            continue
        split = HELDOUT[receiver.removeprefix("smollm2-")]
        config = profile_config(args, sender, receiver, split, results, plots)
        if split not in examples:  # (selection, validation); the tokenizer is the family's
            examples[split] = task_example_sets(config, models[receiver].tokenizer, corpus)
        began = time.perf_counter()
        try:
            run = profile_models(config, models[sender], models[receiver], corpus=corpus, examples=examples[split][0],
                                 validation_examples=examples[split][1])
        except Exception as exc:  # one failing pair must not cost the others (nor the fine-tunes)
            report["failed_pairs"][key] = f"{type(exc).__name__}: {exc}"
            print(f"{key}: FAILED {report['failed_pairs'][key]}", flush=True)
            traceback.print_exc()
            save()
            continue
        p = run.profile
        best = {pt.num_recomputed_layers: round(pt.quality, 4) for pt in p.frontier}
        report["profiles"][key] = {"split": split, "seconds": round(time.perf_counter() - began, 1),
                                   "receiver_quality": p.receiver_quality, "full_reuse_quality": p.full_reuse_quality,
                                   "frontier": best, "sensitivity": [round(x, 4) for x in p.sensitivity],
                                   "equal_budget": equal_budget(run), **validation_report(run)}
        (results / "scores").mkdir(parents=True, exist_ok=True)
        (results / "scores" / f"{key}.json").write_text(json.dumps({str(k): v for k, v in run.scores.items()}) + "\n")
        versus = "  ".join(f"k={k}: group {v['droidspeak_group']:.3f} / tokens {v['cacheblend']:.3f}"
                           for k, v in report["profiles"][key]["equal_budget"].items())
        on = f"  (validation set of {p.validation.examples})" if p.validation else ""
        print(f"{key:<38} {split:<13} full reuse {p.full_reuse_quality:.3f}  frontier {best}{on}  "
              f"({report['profiles'][key]['seconds']} s)\n    equal compute (agreement, selection set): {versus}",
              flush=True)
        save()


if __name__ == "__main__":
    sys.exit(main())
