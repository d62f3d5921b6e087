"""What ``droidspeak check`` checks against the machine it runs on, not the config alone.

    check                       result
    model directory missing     a "not here" line: the config is valid, ``serve`` refuses
                                until the directory exists (the examples' models come from
                                ``python3 scripts/gpu/prepare.py``, see STAGED_BY)
    GPU index >= visible GPUs   an error, for replicas whose host is this machine
                                (addresses.is_local_host); other hosts are not checked
    no GPU visible              a warning: GPU indices not checked
    $<secret_env> unset/short   a warning (``serve`` refuses; several hosts need one value)

Visible GPUs: the entries of ``$CUDA_VISIBLE_DEVICES`` when set (the servers inherit it),
else the ``/dev/nvidia<N>`` device files. No CUDA library is loaded. Imports no SGLang.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Optional

from sglang_droidspeak.addresses import is_local_host
from sglang_droidspeak.cluster.config import ClusterConfig

STAGED_BY = {".cache/gpu-models/": "python3 scripts/gpu/prepare.py (builds the micro family first)"}


def visible_gpu_count(environ: Mapping[str, str] = os.environ, dev: Path = Path("/dev")) -> int:
    """How many GPUs a server started from this environment can use (0: none found)."""
    devices = len([p for p in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)])
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return devices
    entries = [e for e in listed.split(",") if e.strip()]
    return min(len(entries), devices) if devices else 0


def missing_model_dirs(config: ClusterConfig) -> list[str]:
    """One line per model whose directory is not on this machine."""
    lines = []
    for i, model in enumerate(config.models):
        if not Path(model.path).exists():
            hint = next((how for prefix, how in STAGED_BY.items() if model.path.startswith(prefix)), "")
            lines.append(f"{config.source}: models[{i}].path: {model.path} is not on this machine"
                         + (f"; create it with {hint}" if hint else ""))
    return lines


def gpu_problems(config: ClusterConfig, gpu_count: Optional[int] = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the replicas' GPU indices on this machine."""
    count = visible_gpu_count() if gpu_count is None else gpu_count
    local = [ref for ref in config.replicas() if is_local_host(ref.replica.host)]
    if count == 0:
        return [], ([f"this machine has no visible GPU: the GPU indices of {len(local)} local server(s) "
                     "were not checked"] if local else [])
    errors = [f"{config.source}: {ref.path}.gpus: GPU {gpu} does not exist here ({count} visible: 0..{count - 1})"
              for ref in local for gpu in ref.replica.gpus if gpu >= count]
    return errors, []


def secret_warning(config: ClusterConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    """A warning when ``$<transfer.secret_env>`` cannot be used (``serve`` would refuse)."""
    from sglang_droidspeak.cluster.launcher import secret_problem  # the rule serve applies

    problem = secret_problem(config, environ)
    if not problem:
        return []
    hosts = {ref.replica.host for ref in config.replicas() if not is_local_host(ref.replica.host)}
    several = f"; servers on {len(hosts)} other host(s) need the same value" if hosts else ""
    return [f"{problem} (serve refuses without it{several})"]
