"""Test helper: SGLang 0.5.17's own model classes and torch_native attention, on the CPU.

What runs for real: SGLang's model class (LlamaForCausalLM, Qwen2/Qwen3ForCausalLM, ...)
with the weights of an HF tiny model loaded through its own ``load_weights``, its layer
code (norms, rotary, MLP, RadixAttention), SGLang's MHATokenToKVPool, ReqToTokenPool and
TorchNativeAttnBackend (the attention backend SGLang ships for devices without its CUDA
kernels), driven by ``EngineForward`` exactly as on the GPU.

What is adjusted, because SGLang's CPU engine needs sgl_kernel's CPU build (which no
registry ships) and this machine has no GPU: SGLang is initialised once per process with
a gloo world of one rank, and the rotary module is told it runs on a CPU so that it uses
its pure-torch path (``_is_cpu``); every other op already falls back to its native torch
path here. Import this module only after ``prepare_cpu_sglang()`` (tests/conftest.py).
"""

from __future__ import annotations

import socket
import tempfile
from types import SimpleNamespace

import torch
from transformers import LlamaConfig

import sglang.srt.layers.rotary_embedding.base as rotary_base
from sglang.srt.distributed import parallel_state
from sglang.srt.layers.dp_attention import initialize_dp_attention
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

from sglang_droidspeak.sglang.engine_forward import EngineForward

_STATE: dict = {}


def init_sglang_cpu() -> None:
    """One SGLang 'server' per test process: global server args, a 1-rank gloo world."""
    if _STATE.get("ready"):
        return
    rotary_base._is_cpu = True  # the pure-torch rotary path (see the module docstring)
    model_dir = tempfile.mkdtemp(prefix="sglang-cpu-model-")  # ServerArgs reads a local config, no hub
    LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                vocab_size=128, architectures=["LlamaForCausalLM"]).save_pretrained(model_dir)
    server_args = ServerArgs(model_path=model_dir, device="cpu", attention_backend="torch_native")
    set_global_server_args_for_scheduler(server_args)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parallel_state.init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                                distributed_init_method=f"tcp://127.0.0.1:{port}")
    parallel_state.initialize_model_parallel(1)
    model_config = SimpleNamespace(hf_config=SimpleNamespace(), hidden_size=64, dtype=torch.float32)
    initialize_dp_attention(server_args, model_config)  # attention DP off: size 1
    _STATE["ready"] = True


def sglang_model_class(hf_model):
    import importlib

    arch = hf_model.config.architectures[0] if hf_model.config.architectures else type(hf_model).__name__
    module = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
              "MistralForCausalLM": "mistral", "Gemma2ForCausalLM": "gemma2"}[arch]
    return getattr(importlib.import_module(f"sglang.srt.models.{module}"), arch)


def sglang_model_from_hf(hf_model):
    """SGLang's class for ``hf_model``'s architecture, holding the same weights (fp32, eval)."""
    init_sglang_cpu()
    config = hf_model.config
    if not config.architectures:
        config.architectures = [type(hf_model).__name__]
    model = sglang_model_class(hf_model)(config)
    model.load_weights(iter(hf_model.state_dict().items()))
    return model.eval()


def kv_geometry(config) -> tuple[int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_key_value_heads, head_dim


class CpuEngine(SimpleNamespace):
    """A model's pools, allocator, request pool and EngineForward (torch_native attention)."""


def cpu_engine(hf_model, pool_size: int = 384, max_context_len: int = 256, num_rows: int = 8) -> CpuEngine:
    model = sglang_model_from_hf(hf_model)
    config = hf_model.config
    num_kv_heads, head_dim = kv_geometry(config)
    kv_pool = MHATokenToKVPool(size=pool_size, page_size=1, dtype=torch.float32, head_num=num_kv_heads,
                               head_dim=head_dim, layer_num=config.num_hidden_layers, device="cpu",
                               enable_memory_saver=False)
    allocator = TokenToKVPoolAllocator(pool_size, torch.float32, "cpu", kv_pool, need_sort=False)
    req_pool = ReqToTokenPool(size=num_rows, max_context_len=max_context_len, device="cpu",
                              enable_memory_saver=False)
    runner = SimpleNamespace(device="cpu", req_to_token_pool=req_pool, token_to_kv_pool=kv_pool)
    engine = EngineForward(model, TorchNativeAttnBackend(runner), req_pool.req_to_token, config.num_hidden_layers,
                           config.hidden_size, torch.float32, "cpu")
    return CpuEngine(model=model, kv_pool=kv_pool, allocator=allocator, req_pool=req_pool, engine=engine,
                     num_layers=config.num_hidden_layers)
