"""LoRA for HF Llama-style models, small enough to commit, merged into plain weights to serve.

    spec = LoraSpec(rank=8, alpha=16, targets=("q_proj", "v_proj"))
    apply_lora(model, spec, seed=0)     # freezes the model, wraps the targeted nn.Linear modules
    ... train ...
    state = lora_state_dict(model)      # {"<module>.lora_a": [r, in], "<module>.lora_b": [out, r]}
    merge_lora(model)                   # W <- W + (alpha / r) * B @ A; plain nn.Linear again

A LoRA variant of the real family is the base plus its committed adapter file
(save_adapter / load_adapter: safetensors in bfloat16, the spec in its metadata). No
peft: it would bring accelerate to the GPU machine, which has no registry; this is the
same arithmetic (A Kaiming-uniform, B zero, scale alpha / rank).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_DTYPE = torch.bfloat16
ADAPTER_METADATA_KEY = "droidspeak_lora"


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise ValueError(f"rank: must be >= 1, got {self.rank}")
        if not self.alpha > 0 or not math.isfinite(self.alpha):
            raise ValueError(f"alpha: must be a finite number > 0, got {self.alpha}")
        unknown = [t for t in self.targets if t not in LLAMA_LINEARS]
        if not self.targets or unknown:
            raise ValueError(f"targets: must be a non-empty subset of {LLAMA_LINEARS}, got {self.targets}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """``base(x) + scale * (x @ A^T) @ B^T``; the base stays frozen."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, scale
        a = torch.empty(rank, base.in_features)  # [r, in]
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and peft
        a.uniform_(-bound, bound, generator=generator)
        self.lora_a = nn.Parameter(a.to(base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))  # [out, r]

    def forward(self, x: Tensor) -> Tensor:  # x: [..., in] -> [..., out]
        return self.base(x) + (x @ self.lora_a.to(x.dtype).T @ self.lora_b.to(x.dtype).T) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b.float() @ self.lora_a.float()).to(self.base.weight.dtype) * self.scale
        return self.base


def _targets(model: nn.Module, spec: LoraSpec) -> list[tuple[str, nn.Linear]]:
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in spec.targets and ".layers." in f".{n}"]
    if not found:
        raise ValueError(f"no nn.Linear named {spec.targets} inside the model's layers")
    return sorted(found)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, spec: LoraSpec, seed: int) -> list[str]:
    """Freeze ``model`` and wrap its targeted linears (A drawn in sorted name order); the names."""
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    names = []
    for name, linear in _targets(model, spec):
        _set_module(model, name, LoRALinear(linear, spec.rank, spec.scale, generator))
        names.append(name)
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    out = {}
    for name, module in lora_modules(model).items():
        out[f"{name}.lora_a"], out[f"{name}.lora_b"] = module.lora_a.detach(), module.lora_b.detach()
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    for name, module in lora_modules(model).items():
        _set_module(model, name, module.merged())
    return model


def round_adapter(model: nn.Module) -> None:
    """Round every A and B to the stored dtype in place (what is evaluated is what is committed)."""
    with torch.no_grad():
        for module in lora_modules(model).values():
            for p in (module.lora_a, module.lora_b):
                p.copy_(p.to(ADAPTER_DTYPE).to(p.dtype))


def save_adapter(model: nn.Module, spec: LoraSpec, path: Path, **info: str) -> Path:
    tensors = {k: v.to("cpu", ADAPTER_DTYPE).contiguous() for k, v in lora_state_dict(model).items()}
    # one metadata key: safetensors writes its metadata map in no fixed order, so two keys
    # would make equal adapters differ in bytes from run to run
    record = {"lora_spec": {"rank": spec.rank, "alpha": spec.alpha, "targets": list(spec.targets)}, **info}
    save_file(tensors, str(path), metadata={ADAPTER_METADATA_KEY: json.dumps(record, sort_keys=True)})
    return Path(path)


def load_adapter(model: nn.Module, path: Path) -> nn.Module:
    """``model`` with the adapter at ``path`` merged into its weights (plain linears, eval-ready)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        spec = LoraSpec(**json.loads(f.metadata()[ADAPTER_METADATA_KEY])["lora_spec"])
    tensors = load_file(str(path))
    apply_lora(model, spec, seed=0)
    modules = lora_modules(model)
    if set(tensors) != {f"{n}.{p}" for n in modules for p in ("lora_a", "lora_b")}:
        raise ValueError(f"{path}: adapter tensors do not match the model's {spec.targets} modules")
    with torch.no_grad():
        for name, module in modules.items():
            module.lora_a.copy_(tensors[f"{name}.lora_a"])
            module.lora_b.copy_(tensors[f"{name}.lora_b"])
    merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
