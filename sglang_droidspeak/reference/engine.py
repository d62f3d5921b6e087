"""ReferenceModel: DroidSpeak on an HF transformers CausalLM (batch size 1, CPU or GPU).

    prefill                full prefill: KV of every layer + E at the layers asked for
    build_receiver_cache   sender KV for reused layers; each group [s, e) recomputed by THIS
                           model's layers s..e-1 from the sender's E_s (s == 0: own embeddings)
    extend / generate      the suffix through the whole HF model over a prefix cache

The layer loop (prefill, recompute) calls HF's own decoder layers with HF masks and a
DynamicCache; ``extend`` and ``generate`` run the stock HF forward over an HF Cache of the
prefix (cache.py: appends in place), so comparing the two checks the loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import Cache, DynamicCache, PreTrainedModel

from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError
from sglang_droidspeak.reference.cache import cache_to_prefix, preallocated_cache
from sglang_droidspeak.reference.kv import PrefixKV, ReferenceEngineError, SenderCache
from sglang_droidspeak.reference.parts import as_token_ids, model_parts, prefill_masks


class ExtendResult(NamedTuple):
    logits: Tensor  # [m, vocab_size] float32, logits[i] predicts the token after suffix[i]
    kv: PrefixKV  # prefix + suffix


class LayerRunResult(NamedTuple):
    k: dict[int, Tensor]  # layer -> [num_kv_heads, n, head_dim]
    v: dict[int, Tensor]
    e: dict[int, Tensor]  # layer -> [n, hidden_size], hidden state entering the layer
    hidden: Tensor  # [n, hidden_size], leaving the last layer run (before the final norm)


class ReferenceModel:
    """Wraps one HF CausalLM (switched to eval mode) as a DroidSpeak sender or receiver.

    Contract: token ids are 1-D [n]; caches live on the model's device in its dtype; a
    PrefixKV/SenderCache passed in is never modified; all calls run under inference_mode.
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model.eval()
        self.config = model.config
        self.parts = model_parts(model)
        self.num_layers = self.parts.num_layers
        weight = self.parts.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype

    # ---- layer loop -------------------------------------------------------------------

    @torch.inference_mode()
    def embed(self, input_ids) -> Tensor:
        """E_0 = embedding output, [n, hidden_size]."""
        return self.parts.embed_tokens(as_token_ids(input_ids, self.device, "input_ids"))

    @torch.inference_mode()
    def run_layers(self, hidden: Tensor, start: int, end: int, e_layers: Iterable[int] = ()) -> LayerRunResult:
        """Run decoder layers [start, end) over a whole context at positions 0..n-1.

        hidden: [n, hidden_size], the hidden state entering layer ``start``.
        """
        if not 0 <= start <= end <= self.num_layers:
            raise ReferenceEngineError(f"layer range [{start}, {end}) is outside [0, {self.num_layers}]")
        x = hidden.to(self.device, self.dtype)[None]  # [1, n, hidden_size]
        position_ids = torch.arange(x.shape[1], device=self.device)[None]  # [1, n]
        position_embeddings = self.parts.rotary_emb(x, position_ids)  # (cos, sin) [1, n, head_dim]
        windows = self.parts.sliding_windows
        masks = prefill_masks(self.config, x, position_ids, windows[start:end])
        cache = DynamicCache()
        capture = set(e_layers)
        k, v, e = {}, {}, {}
        for layer in range(start, end):
            if layer in capture:
                e[layer] = x[0]
            x = self.parts.layers[layer](
                x,
                attention_mask=masks[windows[layer]],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            k[layer], v[layer] = cache.layers[layer].keys[0], cache.layers[layer].values[0]
        return LayerRunResult(k, v, e, x[0])

    # ---- DroidSpeak -------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, input_ids, e_layers: Iterable[int] = ()) -> SenderCache:
        """Full prefill: KV of all layers, plus E_l for every l in ``e_layers``."""
        e_layers = tuple(e_layers)
        bad = [l for l in e_layers if not 0 <= l < self.num_layers]
        if bad:
            raise ReferenceEngineError(f"e_layers {bad} are outside [0, {self.num_layers})")
        run = self.run_layers(self.embed(input_ids), 0, self.num_layers, e_layers)
        kv = PrefixKV(tuple(run.k[l] for l in range(self.num_layers)), tuple(run.v[l] for l in range(self.num_layers)))
        return SenderCache(kv, run.e)

    @torch.inference_mode()
    def build_receiver_cache(self, sender: SenderCache, plan: LayerPlan, input_ids) -> PrefixKV:
        """The receiver's prefix cache under ``plan``: reused layers are the sender's tensors."""
        self._check_plan(plan)
        self.check_kv(sender.kv, "sender KV")
        input_ids = as_token_ids(input_ids, self.device, "input_ids")
        if input_ids.numel() != sender.seq_len:
            raise ReferenceEngineError(f"{input_ids.numel()} input_ids for a {sender.seq_len}-token sender cache")
        missing = [s for s in plan.e_layers() if s not in sender.e]
        if missing:
            raise ReferenceEngineError(
                f"plan {plan} recomputes from E at layers {missing}, but the sender cache holds E only for "
                f"{list(sender.e_layers)}; prefill the sender with e_layers including {missing}"
            )
        replacements = {}
        for group in plan.groups:
            hidden = self.embed(input_ids) if group.start == 0 else sender.e[group.start]
            if hidden.shape[-1] != self.config.hidden_size:
                raise ReferenceEngineError(f"E_{group.start} width {hidden.shape[-1]} != {self.config.hidden_size}")
            run = self.run_layers(hidden, group.start, group.end)
            replacements.update({l: (run.k[l], run.v[l]) for l in run.k})
        return sender.kv.with_layers(replacements)

    # ---- suffix -----------------------------------------------------------------------

    @torch.inference_mode()
    def extend(self, prefix: PrefixKV, suffix_ids) -> ExtendResult:
        """Run ``suffix_ids`` (m >= 1) at positions n..n+m-1 over ``prefix`` with the HF forward."""
        suffix_ids = as_token_ids(suffix_ids, self.device, "suffix_ids")
        cache = self._cache_of(prefix, suffix_ids.numel())
        logits = self._forward(cache, suffix_ids, prefix.seq_len, all_logits=True)
        return ExtendResult(logits, cache_to_prefix(cache))

    @torch.inference_mode()
    def generate(self, prefix: PrefixKV, suffix_ids, max_new_tokens: int, stop_token_ids=()) -> list[int]:
        """Greedy decoding after ``suffix_ids`` (m >= 1); a stop token ends it and is included."""
        suffix_ids = as_token_ids(suffix_ids, self.device, "suffix_ids")
        if max_new_tokens < 0:
            raise ReferenceEngineError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        stop = set(int(t) for t in stop_token_ids)
        cache = self._cache_of(prefix, suffix_ids.numel() + max_new_tokens)
        position = prefix.seq_len
        step_ids = suffix_ids
        tokens: list[int] = []
        while len(tokens) < max_new_tokens:
            logits = self._forward(cache, step_ids, position, all_logits=False)  # [1, vocab]
            position += step_ids.numel()
            token = int(logits[-1].argmax())
            tokens.append(token)
            if token in stop:
                break
            step_ids = torch.tensor([token], device=self.device)
        return tokens

    def _forward(self, cache: Cache, ids: Tensor, start: int, all_logits: bool) -> Tensor:
        position_ids = torch.arange(start, start + ids.numel(), device=self.device)[None]  # [1, m]
        out = self.model(
            input_ids=ids[None],
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
        )
        return out.logits[0].float()  # [m or 1, vocab_size]

    # ---- checks -----------------------------------------------------------------------

    def _cache_of(self, prefix: PrefixKV, num_new_tokens: int) -> Cache:
        self.check_kv(prefix, "prefix")
        return preallocated_cache(prefix, num_new_tokens)

    def _check_plan(self, plan: LayerPlan) -> None:
        if plan.num_layers != self.num_layers:
            raise PlanError(f"plan {plan} is for {plan.num_layers} layers; the model has {self.num_layers}")

    def check_kv(self, kv: PrefixKV, what: str) -> None:
        attn = self.parts.layers[0].self_attn
        expected = (self.num_layers, self.config.num_key_value_heads, attn.head_dim)
        if (kv.num_layers, kv.num_kv_heads, kv.head_dim) != expected:
            raise ReferenceEngineError(
                f"{what} has (layers, kv_heads, head_dim) = {(kv.num_layers, kv.num_kv_heads, kv.head_dim)}, "
                f"the model expects {expected}"
            )
        if (kv.dtype, kv.device) != (self.dtype, self.device):
            raise ReferenceEngineError(
                f"{what} is {kv.dtype} on {kv.device}; the model runs {self.dtype} on {self.device} (use .to())"
            )
