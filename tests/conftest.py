"""GPU tests (marker ``gpu``) run only where CUDA is available; CI has none and skips them."""

# Must run before anything imports transformers: it puts the CPU SGLang folder that
# scripts/install_cpu.sh fills on sys.path (see sglang_droidspeak/sglang/cpu_import.py).
from sglang_droidspeak.sglang.cpu_import import prepare_cpu_sglang

prepare_cpu_sglang()

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny test models are dominated by per-op overhead, which extra threads only add to on a
# shared 2-core machine; one thread also keeps float reductions in one order.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the lent device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
