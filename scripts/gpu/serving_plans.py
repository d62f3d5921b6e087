"""What scripts/gpu/real_serving.py runs: the models' names, the receiver's plans (resolved
against its pair profile) and the lcc prompts (no servers)."""

from __future__ import annotations

import json
from pathlib import Path

import serving_latency

from sglang_droidspeak.bench.prefill_report import split_plans

# the receiver's own held-out domain, as scripts/gpu/real_family.py profiles it
HELDOUT = {"base": "lib_heldout", "lib-full": "lib_heldout", "test-lora": "test_heldout", "docs-lora": "docs_heldout"}
PREFIX = "smollm2-"
SENDER = "smollm2-base"
CONTROL = "smollm2-base-ctl"


def model_name(name: str) -> str:
    """'lib-full' or 'smollm2-lib-full' -> 'smollm2-lib-full' (ValueError for other names)."""
    short = name.removeprefix(PREFIX)
    if short not in HELDOUT or short == "base":
        raise ValueError(f"--receiver must be one of {[PREFIX + k for k in HELDOUT if k != 'base']}, got {name!r}")
    return PREFIX + short


split_list = split_plans  # ';' separated if there is one (plans with several groups), else ','


# ---------------------------------------------------------------- plans

def wire(plan) -> str:
    """A LayerPlan as its droidspeak_plan value: 'reuse' or 's:e,s:e'."""
    return ",".join(f"{g.start}:{g.end}" for g in plan.groups) if plan.groups else "reuse"


def best_point(profile, max_layers: int):
    """The frontier point of highest quality recomputing at most ``max_layers`` layers
    (ties: fewer layers), or None."""
    points = [p for p in profile.frontier if p.num_recomputed_layers <= max_layers]
    return max(points, key=lambda p: (p.quality, -p.num_recomputed_layers)) if points else None


def resolve_plans(text: str, num_layers: int, profile, best_max_layers: int, max_quality_drop: float) -> list[dict]:
    """Each of ``text``'s plans as {label, value (droidspeak_plan), note}; 'auto' stays 'auto'
    (the plugin chooses; its expected choice goes in the note); 'best' without a profile or a
    point is dropped with a note (value None). ValueError names a plan the plugin would refuse."""
    from sglang_droidspeak.sglang.request_plan import parse_plan_choice

    out, max_layers = [], best_max_layers or num_layers // 3
    for label in dict.fromkeys(split_list(text)):
        if label == "auto":
            point = profile.cheapest_within(max_quality_drop) if profile else None
            note = (f"plugin: cheapest frontier point within drop {max_quality_drop}: " +
                    (f"{wire(point.plan)} (quality {point.quality:.4f}, drop {point.quality_drop:.4f})" if point
                     else "none (it prefills normally, fallback no_plan)")) if profile else "no profile: no_plan"
            out.append({"label": label, "value": "auto", "note": note,
                        "expected": wire(point.plan) if point else None})
        elif label == "best":
            point = best_point(profile, max_layers) if profile else None
            if point is None:
                out.append({"label": label, "value": None, "note": "no profile" if profile is None else
                            f"no frontier point with <= {max_layers} layers"})
            else:
                out.append({"label": label, "value": wire(point.plan), "note": (
                    f"profile's best with <= {max_layers} layers: quality {point.quality:.4f} "
                    f"(receiver {profile.receiver_quality:.4f}, full reuse {profile.full_reuse_quality:.4f})")})
        elif label.startswith(("group:", "cacheblend:")):
            out.append(serving_latency.budget_plan(label, profile, num_layers, wire))
        else:
            try:
                choice = parse_plan_choice(label, num_layers)
            except ValueError as exc:
                raise ValueError(f"--plans: {exc}") from None
            if choice is None or choice == "off":
                raise ValueError(f"--plans: {label!r} is not a reuse plan (own prefill is always measured)")
            out.append({"label": label, "value": label, "note": ""})
    return out


# ---------------------------------------------------------------- profile and prompts

def build_prompts(tokenizer, split: str, args) -> list:
    """``--num-prompts`` + 1 lcc examples (the last one is the warm-up)."""
    from sglang_droidspeak.real.corpus import load_real_corpus
    from sglang_droidspeak.tasks import build_task

    return build_task("lcc", tokenizer, split=split, num_examples=args.num_prompts + 1, context_len=args.context_len,
                      query_len=args.query_len, seed=args.seed, corpus=load_real_corpus())


def load_tokenizer(args, receiver: str, models_dir: Path):
    from tokenizers import Tokenizer

    path = Path(args.tokenizer) if args.tokenizer else models_dir / receiver / "tokenizer.json"
    if not path.is_file() and args.dry_run and not args.tokenizer:
        from sglang_droidspeak.real.base import base_dir
        path = base_dir() / "tokenizer.json"  # every variant carries the base's tokenizer files
    return Tokenizer.from_file(str(path)), path


def load_pair_profile(profiles_dir: Path, receiver: str):
    from sglang_droidspeak.plan.profile_io import load_profile, profile_filename

    path = profiles_dir / profile_filename(SENDER, receiver)
    return (load_profile(path), path) if path.is_file() else (None, path)


def num_layers_of(models_dir: Path, receiver: str, profile) -> int:
    config = models_dir / receiver / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["num_hidden_layers"])
    if profile is not None:
        return profile.num_layers
    from sglang_droidspeak.real.base import base_dir
    return int(json.loads((base_dir() / "config.json").read_text())["num_hidden_layers"])


def prompt_record(examples: list, split: str, args, tok_path: Path) -> dict:
    return {"task": "lcc", "split": split, "num": len(examples), "context_len": args.context_len,
            "query_len": args.query_len, "new_tokens": args.new_tokens, "seed": args.seed, "tokenizer": str(tok_path),
            "files": len({e.source for e in examples}), "examples": [e.example_id for e in examples]}

