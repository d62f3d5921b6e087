"""Stage what the SGLang GPU checks need, on the CPU machine, before a device call.

    python3 scripts/gpu/prepare.py

Writes (git-ignored, carried to the GPU machine with `.cache/gpu-models`):
- `.cache/gpu-models/<name>/`: the micro-family models with weights rounded to bf16
  (the carried tree must stay under 64 MiB next to the 55 MB SGLang bundle; servers
  serve them in bf16; the reference numbers below use the same rounded weights in fp32);
- `.cache/gpu-models/quality.json`: held-out lcc examples (context, query, continuation
  ids), the plan the profile picks at --max-quality-drop, and the reference engine's
  scores for the same bf16-rounded weights in fp32: top-1 agreement with the receiver's
  own prefill and top-1 accuracy on the true continuation, per system; and the same
  scores with the reference engine run in bf16 (``reference_bf16``), which is closer to
  SGLang's bf16 arithmetic (the GPU check compares against both).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from sglang_droidspeak.plan.profile_io import load_profile, profile_filename
from sglang_droidspeak.profiler.loading import resolve_model_path
from sglang_droidspeak.reference import ReferenceModel
from sglang_droidspeak.tasks import build_task

MODELS = ("tester", "libwriter")
OUT_DIR = Path(".cache/gpu-models")


def stage_model(name: str, out_dir: Path) -> Path:
    from safetensors.torch import load_file, save_file

    src, dst = resolve_model_path(name), out_dir / name
    dst.mkdir(parents=True, exist_ok=True)
    for file in src.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, dst / file.name)
    weights = load_file(src / "model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, dst / "model.safetensors")
    return dst


def load_reference(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return ReferenceModel(model), AutoTokenizer.from_pretrained(path)


def reference_scores(sender, receiver, systems: dict, ex, cont: list[int]) -> dict[str, dict[str, float]]:
    """Per system (receiver, full_reuse, plan): top-1 agreement with the receiver's own
    prefill and accuracy on the true continuation, on one example."""
    context = torch.tensor(ex.context_ids)
    sender_cache = sender.prefill(context, e_layers=systems["plan"].e_layers())
    own = continuation_predictions(receiver, receiver.prefill(context).kv, ex.query_ids, cont)
    scores = {"receiver": score(own, own, cont)}
    for key, plan in systems.items():
        pred = continuation_predictions(receiver, receiver.build_receiver_cache(sender_cache, plan, context),
                                        ex.query_ids, cont)
        scores[key] = score(pred, own, cont)
    return scores


def continuation_predictions(model: ReferenceModel, prefix, query_ids, cont_ids) -> list[int]:
    """Greedy top-1 at each continuation position, teacher-forced (as SGLang's input_top_logprobs)."""
    logits = model.extend(prefix, torch.tensor([*query_ids, *cont_ids[:-1]])).logits[-len(cont_ids):]
    return logits.argmax(-1).tolist()


def score(pred: list[int], reference: list[int], truth: list[int]) -> dict[str, float]:
    n = len(truth)
    return {"agreement": sum(a == b for a, b in zip(pred, reference)) / n,
            "target_acc": sum(a == b for a, b in zip(pred, truth)) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sender", default="tester")
    parser.add_argument("--receiver", default="libwriter")
    parser.add_argument("--num-examples", type=int, default=16)
    parser.add_argument("--context-len", type=int, default=768)
    parser.add_argument("--max-cont", type=int, default=48)
    parser.add_argument("--max-quality-drop", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = {name: stage_model(name, OUT_DIR) for name in (args.sender, args.receiver)}
    engines = {dtype: (load_reference(paths[args.sender], dtype)[0], load_reference(paths[args.receiver], dtype))
               for dtype in (torch.float32, torch.bfloat16)}
    tokenizer = engines[torch.float32][1][1]
    profile = load_profile(Path("profiles") / profile_filename(args.sender, args.receiver))
    plan = profile.cheapest_within(args.max_quality_drop).plan
    systems = {"full_reuse": plan.full_reuse(plan.num_layers), "plan": plan}
    examples = build_task("lcc", tokenizer, split="lib_heldout", num_examples=args.num_examples,
                          context_len=args.context_len, query_len=32, seed=args.seed)
    rows = []
    for ex in examples:
        cont = list(ex.continuation_ids[: args.max_cont])
        row = {"context_ids": list(ex.context_ids), "query_ids": list(ex.query_ids), "continuation_ids": cont}
        for key, dtype in (("reference", torch.float32), ("reference_bf16", torch.bfloat16)):
            sender, (receiver, _) = engines[dtype]
            row[key] = reference_scores(sender, receiver, systems, ex, cont)
        rows.append(row)
    out = {"sender": args.sender, "receiver": args.receiver, "plan": plan.to_list(), "plan_str": str(plan),
           "max_quality_drop": args.max_quality_drop, "examples": rows}
    (OUT_DIR / "quality.json").write_text(json.dumps(out))
    for key in ("reference", "reference_bf16"):
        means = {k: round(sum(r[key][k]["agreement"] for r in rows) / len(rows), 4) for k in rows[0][key]}
        print(f"{key}: agreement {means}")
    print(f"staged {list(paths)} (bf16 weights) and {len(rows)} examples; plan {plan}")


if __name__ == "__main__":
    main()
