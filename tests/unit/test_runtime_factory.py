"""build_runtime / build_droidspeak_cache on a TreeCacheBuildContext-shaped object (CPU).

The context's model runner is a stand-in (SGLang's ModelRunner needs a GPU) holding what
the factory reads of one: SGLang's own model class with an HF tiny model's weights, its
real KV pool, allocator and request pool, and a torch_native attention backend factory
(tests/unit/sglang_cpu_model.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402

from sglang_cpu_model import cpu_engine  # noqa: E402
from sglang_droidspeak.identity import fingerprint_model_dir  # noqa: E402
from sglang_droidspeak.reference.tiny import tiny_model  # noqa: E402
from sglang_droidspeak.sglang.plugin import build_droidspeak_cache  # noqa: E402
from sglang_droidspeak.sglang.settings import parse_settings  # noqa: E402


CHUNK = 16  # import_chunk_tokens: the warm-up runs chunks of this size (pool: 64 slots)


def make_ctx(tmp_path, tp_size=1, backend="torch_native"):
    hf = tiny_model("llama", seed=0, num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2, vocab_size=128)
    hf.config.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    side = cpu_engine(hf, pool_size=64, max_context_len=64, num_rows=2)
    runner = SimpleNamespace(model=side.model, token_to_kv_pool=side.kv_pool, req_to_token_pool=side.req_pool,
                             dtype=torch.float32, device="cpu", model_config=SimpleNamespace(hf_text_config=hf.config),
                             server_args=SimpleNamespace(attention_backend=backend, pp_size=1))
    runner._get_attention_backend = lambda init_new_workspace=False: TorchNativeAttnBackend(runner)
    params = CacheInitParams(False, side.req_pool, side.allocator, 1)
    return SimpleNamespace(params=params, tp_size=tp_size, tp_worker=SimpleNamespace(model_runner=runner), hf=hf,
                           server_args=SimpleNamespace(served_model_name="m"),
                           model_config=SimpleNamespace(model_path=str(tmp_path), hf_text_config=hf.config))


def sender_settings(**extra):
    return parse_settings({"export_bind": "tcp://127.0.0.1:*", "import_chunk_tokens": CHUNK, **extra})


def test_sender_runtime_gets_fingerprint_and_computes_e(tmp_path, monkeypatch):
    monkeypatch.setenv("DROIDSPEAK_SECRET", "x" * 16)
    ctx = make_ctx(tmp_path)
    cache = build_droidspeak_cache(ctx, sender_settings())
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
        allocator = ctx.params.token_to_kv_pool_allocator
        assert allocator.available_size() == 64 and ctx.params.req_to_token_pool.available_size() == 2  # freed
        pending = runtime.launch_e(tokens, (2,))  # what exports use: the scratch is held until take()
        assert allocator.available_size() == 64 - len(tokens) and ctx.params.req_to_token_pool.available_size() == 1
        assert pending.ready()  # no CUDA: no event to wait for
        torch.testing.assert_close(pending.take()[2], e[2])
        pending.abandon()  # a second release frees nothing twice
        assert allocator.available_size() == 64 and ctx.params.req_to_token_pool.available_size() == 2
    finally:
        cache.runtime.close()


def test_no_role_means_no_runtime(tmp_path):
    cache = build_droidspeak_cache(make_ctx(tmp_path), parse_settings({}))
    assert cache.runtime is None and cache.num_layers == 4


def test_unsupported_setup_runs_tree_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DROIDSPEAK_SECRET", "x" * 16)
    cache = build_droidspeak_cache(make_ctx(tmp_path, tp_size=2), sender_settings())
    assert cache.runtime is None and "tensor/pipeline parallelism 2/1" in caplog.text
    cache = build_droidspeak_cache(make_ctx(tmp_path, backend="fa3"), sender_settings())
    assert cache.runtime is None and "attention backend 'fa3'" in caplog.text


def test_roles_without_a_secret_refuse_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv("DROIDSPEAK_SECRET", raising=False)
    with pytest.raises(ValueError, match="DROIDSPEAK_SECRET"):
        build_droidspeak_cache(make_ctx(tmp_path), sender_settings())


def test_hooks_follow_the_roles():
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_droidspeak.sglang.plugin import HOOK_TARGETS, register_hooks

    try:
        HookRegistry.reset()
        assert register_hooks(parse_settings({})) == []
        receiver = parse_settings({"peers": [{"model": "a", "fetch": "tcp://h:1", "announce": "tcp://h:2"}]})
        assert register_hooks(receiver) == list(HOOK_TARGETS)
        assert register_hooks(parse_settings({"export_bind": "tcp://h:3"})) == list(HOOK_TARGETS)
        assert set(HookRegistry._hooks) == set(HOOK_TARGETS) and len(HOOK_TARGETS) == 3
    finally:
        HookRegistry.reset()


def test_the_engine_is_warmed_up_over_chunk_shapes_and_a_failure_only_logs(tmp_path, monkeypatch, caplog):
    from sglang_droidspeak.sglang.engine_forward import EngineForward
    monkeypatch.setenv("DROIDSPEAK_SECRET", "x" * 16)
    calls, real = [], EngineForward.run

    def spy(self, segments, rows, start, end, capture=()):
        calls.append(([(len(s.token_ids), s.prefix_len) for s in segments], start, end))
        return real(self, segments, rows, start, end, capture)

    monkeypatch.setattr(EngineForward, "run", spy)
    ctx = make_ctx(tmp_path)
    cache = build_droidspeak_cache(ctx, sender_settings())
    cache.runtime.close()
    # a first chunk and a later one (over a prefix), each from layer 0 and from an E at layer 1;
    # then one token recompute over every 4th position of a chunk (torch_native: the runs path,
    # its forward groups of one-token runs, each over its own prefix)
    assert calls[:4] == [([(CHUNK, 0)], 0, 1), ([(CHUNK, 0)], 1, 4), ([(CHUNK, CHUNK)], 0, 1), ([(CHUNK, CHUNK)], 1, 4)]
    runs = [segment for segments, start, end in calls[4:] for segment in segments]
    assert runs == [(1, p) for p in range(3, CHUNK, 4)] and all((s, e) == (0, 4) for _, s, e in calls[4:])
    assert ctx.params.token_to_kv_pool_allocator.available_size() == 64  # scratch slots freed

    def broken(self, *args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(EngineForward, "run", broken)
    with caplog.at_level("WARNING"):
        cache = build_droidspeak_cache(make_ctx(tmp_path), sender_settings())
    assert cache.runtime is not None and "warm-up failed" in caplog.text
    assert ctx.params.token_to_kv_pool_allocator.available_size() == 64
    cache.runtime.close()


def test_a_model_that_cannot_be_fingerprinted_runs_tree_only(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DROIDSPEAK_SECRET", "x" * 16)
    ctx = make_ctx(tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # KV is never shared without the tokenizer's identity
    cache = build_droidspeak_cache(ctx, sender_settings())
    assert cache.runtime is None and "cannot fingerprint the model" in caplog.text
