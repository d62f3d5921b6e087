"""GPU tests (marker ``gpu``) run only where CUDA is available; CI has none and skips them."""

import pytest
import torch

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
