"""build_runtime / build_droidspeak_cache on a TreeCacheBuildContext-shaped object (CPU).

The context's model runner is a stand-in (SGLang's model runner needs a GPU): a class
named like SGLang's LlamaForCausalLM holding HF layers behind tests/unit/hf_as_sglang.py,
and SGLang's real KV pool and allocator.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool  # noqa: E402

from hf_as_sglang import sglang_shaped_layers  # noqa: E402
from sglang_droidspeak.identity import fingerprint_model_dir  # noqa: E402
from sglang_droidspeak.reference.tiny import tiny_model  # noqa: E402
from sglang_droidspeak.sglang.plugin import build_droidspeak_cache  # noqa: E402
from sglang_droidspeak.sglang.settings import parse_settings  # noqa: E402


class LlamaForCausalLM:  # the name SGLang's model class has; runtime_factory checks it
    def __init__(self, hf):
        self.model = SimpleNamespace(layers=sglang_shaped_layers(hf), embed_tokens=hf.model.embed_tokens)
        for layer in self.model.layers:
            layer.self_attn.attn.logit_cap = 0.0


def make_ctx(tmp_path, tp_size=1):
    hf = tiny_model("llama", seed=0, num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2, vocab_size=128)
    hf.config.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    pool = MHATokenToKVPool(size=32, page_size=1, dtype=torch.float32, head_num=2, head_dim=16, layer_num=4,
                            device="cpu", enable_memory_saver=False)
    allocator = TokenToKVPoolAllocator(32, torch.float32, "cpu", pool, need_sort=False)
    params = CacheInitParams(False, ReqToTokenPool(size=2, max_context_len=64, device="cpu",
                                                   enable_memory_saver=False), allocator, 1)
    runner = SimpleNamespace(model=LlamaForCausalLM(hf), token_to_kv_pool=pool, dtype=torch.float32)
    return SimpleNamespace(params=params, tp_size=tp_size, tp_worker=SimpleNamespace(model_runner=runner), hf=hf,
                           server_args=SimpleNamespace(served_model_name="m"),
                           model_config=SimpleNamespace(model_path=str(tmp_path), hf_text_config=hf.config))


def test_sender_runtime_gets_fingerprint_and_computes_e(tmp_path, monkeypatch):
    monkeypatch.setenv("DROIDSPEAK_SECRET", "x" * 16)
    ctx = make_ctx(tmp_path)
    cache = build_droidspeak_cache(ctx, parse_settings({"export_bind": "tcp://127.0.0.1:*"}))
    try:
        runtime = cache.runtime
        assert runtime.fingerprint == fingerprint_model_dir(tmp_path).digest and len(runtime.fingerprint) == 16
        assert cache.num_layers == 4 and runtime.tree is cache and runtime.export_server is not None
        tokens = list(range(3, 15))
        e = runtime.compute_e(tokens, (0, 2, 3))
        hf = ctx.model_config.hf_text_config  # E must be HF's hidden states entering those layers
        from sglang_droidspeak.reference import ReferenceModel
        model = ctx.tp_worker.model_runner.model
        assert set(e) == {0, 2, 3} and hf.num_hidden_layers == 4
        torch.testing.assert_close(e[0], model.model.embed_tokens(torch.tensor(tokens)))
        ref = ReferenceModel(ctx.hf).prefill(torch.tensor(tokens), e_layers=(2, 3))
        torch.testing.assert_close(e[2], ref.e[2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(e[3], ref.e[3], atol=1e-5, rtol=1e-5)
        assert torch.count_nonzero(ctx.tp_worker.model_runner.token_to_kv_pool.get_key_buffer(0)) == 0  # no writes
    finally:
        cache.runtime.close()


def test_no_role_means_no_runtime(tmp_path):
    cache = build_droidspeak_cache(make_ctx(tmp_path), parse_settings({}))
    assert cache.runtime is None and cache.num_layers == 4


def test_unsupported_setup_runs_tree_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DROIDSPEAK_SECRET", "x" * 16)
    settings = parse_settings({"export_bind": "tcp://127.0.0.1:*"})
    cache = build_droidspeak_cache(make_ctx(tmp_path, tp_size=2), settings)
    assert cache.runtime is None and "tensor parallelism 2" in caplog.text


def test_roles_without_a_secret_refuse_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv("DROIDSPEAK_SECRET", raising=False)
    with pytest.raises(ValueError, match="DROIDSPEAK_SECRET"):
        build_droidspeak_cache(make_ctx(tmp_path), parse_settings({"export_bind": "tcp://127.0.0.1:*"}))


def test_hooks_follow_the_roles():
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_droidspeak.sglang.plugin import TICK_TARGET, register_hooks

    try:
        HookRegistry.reset()
        assert register_hooks(parse_settings({})) == []
        receiver = parse_settings({"peers": [{"model": "a", "fetch": "tcp://h:1", "announce": "tcp://h:2"}]})
        assert register_hooks(receiver) == [TICK_TARGET]
        assert register_hooks(parse_settings({"export_bind": "tcp://h:3"})) == [TICK_TARGET]
        assert set(HookRegistry._hooks) == {TICK_TARGET}
    finally:
        HookRegistry.reset()


def test_the_recompute_path_is_warmed_up_once_and_a_failure_only_logs(tmp_path, monkeypatch, caplog):
    from sglang_droidspeak.sglang import runtime_factory
    from sglang_droidspeak.sglang.runtime import DroidSpeakRuntime
    monkeypatch.setenv("DROIDSPEAK_SECRET", "x" * 16)
    calls, real = [], DroidSpeakRuntime.compute_e

    def spy(self, token_ids, layers):
        calls.append((len(token_ids), layers))
        return real(self, token_ids, layers)

    monkeypatch.setattr(DroidSpeakRuntime, "compute_e", spy)
    ctx = make_ctx(tmp_path)
    cache = build_droidspeak_cache(ctx, parse_settings({"export_bind": "tcp://127.0.0.1:*"}))
    cache.runtime.close()
    assert calls == [(runtime_factory.WARMUP_TOKENS, (3,))]  # layers [0, 3) of 4, once
    assert torch.count_nonzero(ctx.tp_worker.model_runner.token_to_kv_pool.get_key_buffer(0)) == 0

    def broken(self, token_ids, layers):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(DroidSpeakRuntime, "compute_e", broken)
    with caplog.at_level("WARNING"):
        cache = build_droidspeak_cache(make_ctx(tmp_path), parse_settings({"export_bind": "tcp://127.0.0.1:*"}))
    assert cache.runtime is not None and "warm-up failed" in caplog.text
    cache.runtime.close()
