"""The servers of ``droidspeak bench-throughput --launch`` (stdlib only; no SGLang import).

One ``--load-format dummy`` server per model of the mix (bench.prefill_model's
Llama-3.1-8B-shaped dir, identical random weights everywhere), all on one GPU by default:

    first model of the mix ("coder")   sender: export + announce binds
    every other model                  receiver: peers with the sender; with --auto-plan
                                       a pair plan, so the request plan "auto" means it

``--gpus 0`` puts every server on GPU 0; ``--gpus 0,1,1`` gives server i the i-th entry
(its ``--base-gpu-id``, as bench-prefill does; every server sees every GPU, because NCCL
cannot use CUDA IPC / NVLink between processes that CUDA_VISIBLE_DEVICES hides from each
other), e.g. the sender on one card and the receivers on the other. The
KV moves over ``--data-plane`` (every server's plugin setting ``data_plane``): ``zmq``
(host staging, any layout), ``cuda_ipc`` (all on one GPU: the sender copies K/V into the
receiver's pool) or ``nccl`` (the sender on another GPU than every receiver). Servers
start in waves of at most one per GPU, each wave healthy before the next, so that two
servers' memory profiling on one GPU cannot race (``servers.startup_waves``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sglang_droidspeak.bench import prefill_model as pm
from sglang_droidspeak.bench.servers import Server, ServerSpec, argv_of, start_in_waves


def plan_groups(plan: str) -> list[list[int]]:
    """``"0:4,8:12"`` -> [[0, 4], [8, 12]]; "reuse" -> []."""
    if plan == "reuse":
        return []
    return [[int(s), int(e)] for s, e in (g.split(":") for g in plan.split(","))]


def droidspeak_configs(models: list[str], zmq_base: int, fetch_timeout_s: float, auto_plan: str,
                       num_layers: int, data_plane: str = "zmq") -> dict[str, dict]:
    """model -> plugin config: ``models[0]`` the sender, the rest its receivers; all on ``data_plane``."""
    sender, receivers = models[0], models[1:]
    export, announce = f"tcp://127.0.0.1:{zmq_base}", f"tcp://127.0.0.1:{zmq_base + 1}"
    configs = {sender: {"model": sender, "export_bind": export, "announce_bind": announce, "data_plane": data_plane}}
    for name in receivers:
        configs[name] = {"model": name, "min_foreign_tokens": 16, "fetch_timeout_s": fetch_timeout_s,
                         "data_plane": data_plane, "peers": [{"model": sender, "fetch": export, "announce": announce}]}
        if auto_plan:
            configs[name]["plans"] = [{"sender": sender, "receiver": name, "num_layers": num_layers,
                                       "groups": plan_groups(auto_plan)}]
    return configs


def gpu_of(gpus: str, index: int, num_servers: int) -> str:
    """The GPU (``--base-gpu-id``) of server ``index``: one entry for all, or one per server."""
    entries = [g.strip() for g in gpus.split(",") if g.strip()]
    if len(entries) not in (1, num_servers):
        raise ValueError(f"--gpus {gpus!r}: give one GPU for all servers or one per server ({num_servers})")
    return entries[0] if len(entries) == 1 else entries[index]


def check_plane_gpus(data_plane: str, gpus: str, num_servers: int) -> None:
    """nccl needs the sender (server 0) on another GPU than every receiver; ValueError if not."""
    sender_gpu = gpu_of(gpus, 0, num_servers)
    if data_plane == "nccl" and any(gpu_of(gpus, i, num_servers) == sender_gpu for i in range(1, num_servers)):
        raise ValueError(f"--data-plane nccl needs the sender on another GPU than its receivers, got --gpus {gpus!r} "
                         "(e.g. --gpus 0,1,1)")


def start_servers(cfg: Any, models: list[str], model_dir: Path, work: Path, context_len: int,
                  result: dict) -> list[Server]:
    """Sender first, then each receiver; ports ``port_base + i``. Records argv, GPU and
    configs in ``result``. On failure stops what it started and raises."""
    check_plane_gpus(cfg.data_plane, cfg.gpus, len(models))
    configs = droidspeak_configs(models, cfg.zmq_base, cfg.fetch_timeout, cfg.auto_plan,
                                 pm.LLAMA_31_8B["num_hidden_layers"], cfg.data_plane)
    extra = pm.server_args(cfg, context_len)
    specs = [ServerSpec(name, cfg.port_base + index, configs[name], extra, gpu_of(cfg.gpus, index, len(models)))
             for index, name in enumerate(models)]
    started = start_in_waves(specs, str(model_dir), work, cfg.startup_timeout)
    result["server_args"] = argv_of(started)
    result["server_gpus"] = {name: gpu_of(cfg.gpus, i, len(models)) for i, name in enumerate(models)}
    result["droidspeak_config"] = configs
    return started
