"""The model and the servers of ``droidspeak bench-prefill`` (stdlib only; no SGLang import).

    LLAMA_31_8B        config.json of Llama-3.1-8B (shapes, RoPE llama3 scaling, bf16)
    write_model_dir    that config + a tokenizer copied from a small model dir
    start_servers      sender ``a`` then receiver ``b``: ``bench.servers.Server``,
                       ``--load-format dummy`` (random weights, identical in both: SGLang
                       seeds every parameter's generator with 1234); one pair per run
    flush, card        /flush_cache with retries; the nvidia-smi line
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sglang_droidspeak.bench.servers import ServerSpec, argv_of, start_in_waves

LLAMA_31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128009, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "use_cache": True, "vocab_size": 128256,
    "dtype": "bfloat16",
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}
MODEL_NOTE = ("Llama-3.1-8B shapes (32 layers, hidden 4096, 32 q / 8 kv heads, vocab 128256), bf16, "
              "--load-format dummy: random weights, the same in sender and receiver; latency only, no quality")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def write_model_dir(dest: Path, tokenizer_from: Path, max_len: int) -> Path:
    """``dest`` with config.json (LLAMA_31_8B) and the tokenizer files of ``tokenizer_from``
    (its model_max_length raised to the config's positions). FileNotFoundError names a
    missing tokenizer file; ValueError if ``max_len`` exceeds the model's positions."""
    if max_len > LLAMA_31_8B["max_position_embeddings"]:
        raise ValueError(f"--lengths: {max_len} tokens exceed max_position_embeddings "
                         f"{LLAMA_31_8B['max_position_embeddings']}")
    missing = [str(tokenizer_from / n) for n in TOKENIZER_FILES if not (tokenizer_from / n).is_file()]
    if missing:
        raise FileNotFoundError(f"--tokenizer-from: missing {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(LLAMA_31_8B, indent=1))
    shutil.copyfile(tokenizer_from / "tokenizer.json", dest / "tokenizer.json")
    tok_config = json.loads((tokenizer_from / "tokenizer_config.json").read_text())
    tok_config["model_max_length"] = LLAMA_31_8B["max_position_embeddings"]
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    return dest


def droidspeak_configs(zmq_base: int, fetch_timeout_s: float, data_plane: str = "zmq") -> tuple[dict, dict]:
    """(sender ``a``, receiver ``b``) plugin configs; b has no pair plan (requests force one).
    Requests also choose the import's pipelining and the link rate: ``a`` allows request
    rates (``allow_request_throttle``), so one pair runs every sweep config."""
    export, announce = f"tcp://127.0.0.1:{zmq_base}", f"tcp://127.0.0.1:{zmq_base + 1}"
    sender = {"model": "a", "export_bind": export, "announce_bind": announce, "data_plane": data_plane,
              "allow_request_throttle": True}
    receiver = {"model": "b", "min_foreign_tokens": 16, "fetch_timeout_s": fetch_timeout_s,
                "data_plane": data_plane, "peers": [{"model": "a", "fetch": export, "announce": announce}]}
    return sender, receiver


def server_args(args: Any, context_len: int) -> tuple[str, ...]:
    max_total = args.max_total_tokens or 2 * context_len + 2048
    return ("--dtype", "bfloat16", "--load-format", "dummy", "--mem-fraction-static", str(args.mem_fraction),
            "--max-total-tokens", str(max_total), "--context-length", str(context_len + 16),
            "--log-level", "info", *shlex.split(args.server_args))


def gpu_ids(gpus: str, data_plane: str) -> tuple[str, str] | None:
    """(sender, receiver) ``--base-gpu-id``s from ``--gpus 'S,R'``; nccl defaults to 0,1.
    None: SGLang's default (both on the first visible GPU)."""
    text = gpus or ("0,1" if data_plane == "nccl" else "")
    if not text:
        return None
    ids = tuple(x.strip() for x in text.split(","))
    if len(ids) != 2 or not all(x.isdigit() for x in ids):
        raise SystemExit(f"--gpus must be 'S,R' (two GPU ids), got {text!r}")
    if data_plane == "nccl" and ids[0] == ids[1]:
        raise SystemExit("--data-plane nccl needs the two servers on different GPUs (--gpus S,R with S != R)")
    return ids  # type: ignore[return-value]


def start_servers(args: Any, model_dir: Path, work: Path, context_len: int, result: dict) -> tuple:
    """Sender then receiver: together on two GPUs, else the receiver once the sender is
    healthy (``servers.startup_waves``). Records their argv and configs in ``result``. On failure stops what it started and raises."""
    sender_cfg, receiver_cfg = droidspeak_configs(args.zmq_base, args.fetch_timeout, args.data_plane)
    work.mkdir(parents=True, exist_ok=True)
    extra = server_args(args, context_len)
    gpus = gpu_ids(getattr(args, "gpus", ""), args.data_plane)
    sides = (("a", args.port_base, sender_cfg), ("b", args.port_base + 1, receiver_cfg))
    specs = [ServerSpec(name, port, cfg, extra, gpus[i] if gpus else None) for i, (name, port, cfg) in enumerate(sides)]
    started = start_in_waves(specs, str(model_dir), work, args.startup_timeout)
    result["server_args"] = argv_of(started)
    result["droidspeak_config"] = {"a": sender_cfg, "b": receiver_cfg}
    return tuple(started)


def flush(server: Any, tries: int = 50) -> None:
    """POST /flush_cache until accepted (SGLang answers 400 while requests still run)."""
    for _ in range(tries):
        try:
            req = urllib.request.Request(server.url + "/flush_cache", b"", method="POST")
            urllib.request.urlopen(req, timeout=60).read()
            return
        except urllib.error.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server {server.name}: /flush_cache refused {tries} times")


def metric_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "droidspeak" in line and not line.startswith("#")]


def card() -> str:
    """nvidia-smi's name, memory and driver line(s), or 'unknown (why)'."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown (nvidia-smi: {exc.__class__.__name__})"
    return done.stdout.strip() or f"unknown (nvidia-smi: {done.stderr.strip()[:200]})"
