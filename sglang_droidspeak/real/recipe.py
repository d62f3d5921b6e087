"""The real family's fine-tunes of SmolLM2-135M-Instruct: what each variant is, exactly.

    variant     domain  method  strength
    lib-full    lib     full    every weight, 200 steps at 3e-5: the heavy one
    test-lora   test    LoRA    rank 8 on q/v/o, 200 steps at 1e-3
    docs-lora   docs    LoRA    rank 4 on q/v, 150 steps at 1e-3: the light one

Every step sees ``batch_size`` windows of ``seq_len`` tokens (16 x 512 = 8192) drawn from
the domain's training split (corpus.py) by seeded permutations; one AdamW with linear
warm-up and cosine decay (family/train.py). The same RecipeConfig and device kind give
the same weights (seeded, deterministic algorithms); results record every sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sglang_droidspeak.config_cli import at_least, check_fields, one_of
from sglang_droidspeak.real.corpus import DOMAINS
from sglang_droidspeak.real.lora import LoraSpec


@dataclass(frozen=True)
class Variant:
    name: str
    domain: str
    method: str  # "full" or "lora"
    steps: int
    lr: float
    lora: LoraSpec | None = None
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain: must be one of {DOMAINS}, got {self.domain!r}")
        if self.method not in ("full", "lora") or (self.method == "lora") != (self.lora is not None):
            raise ValueError(f"method: 'lora' needs a LoraSpec and 'full' none, got {self.method!r} / {self.lora}")
        if self.steps < 1 or not self.lr > 0:
            raise ValueError(f"steps/lr: must be >= 1 and > 0, got {self.steps} / {self.lr}")


VARIANTS = {v.name: v for v in (
    Variant("lib-full", "lib", "full", steps=200, lr=3e-5),
    Variant("test-lora", "test", "lora", steps=200, lr=1e-3,
            lora=LoraSpec(rank=8, alpha=16.0, targets=("q_proj", "v_proj", "o_proj"))),
    Variant("docs-lora", "docs", "lora", steps=150, lr=1e-3,
            lora=LoraSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))),
)}


@dataclass(frozen=True)
class RecipeConfig:
    """How to run the recipe. ``max_steps`` > 0 caps every variant's steps (smoke runs)."""

    variants: str = ",".join(VARIANTS)
    device: str = field(default="cpu", metadata=one_of("cpu", "cuda"))
    seq_len: int = field(default=512, metadata=at_least(2))
    batch_size: int = field(default=16, metadata=at_least(1))
    eval_windows: int = field(default=32, metadata=at_least(1))
    eval_batch_size: int = field(default=8, metadata=at_least(1))
    max_steps: int = 0
    seed: int = 0
    bf16: bool = True  # autocast to bfloat16 on cuda (weights and optimizer stay float32)
    base: str = ""  # "" = the converted pinned base (real/base.py)
    out_dir: str = "out/real-family"  # results JSON and LoRA adapters (small)
    models_dir: str = ""  # "" = <out_dir>/models: every variant as a HF directory (540 MB each)
    # "" = train every variant; a folder (e.g. the repo's adapters/): a LoRA variant whose
    # smollm2-<name>.safetensors is there is loaded from it instead of trained, so a rerun
    # rebuilds the committed adapters' models exactly (and profiles pairs of those)
    adapters_dir: str = ""

    def __post_init__(self) -> None:
        check_fields(self)
        unknown = [v for v in self.variant_names if v not in VARIANTS]
        if unknown or not self.variant_names:
            raise ValueError(f"variants: unknown {unknown or '(none given)'}; known {tuple(VARIANTS)}")

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v for v in self.variants.split(",") if v)

    def steps(self, variant: Variant) -> int:
        return min(variant.steps, self.max_steps) if self.max_steps else variant.steps
