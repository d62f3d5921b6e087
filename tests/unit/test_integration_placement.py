"""scripts/gpu/integration.py's server placement (the script itself needs a GPU)."""

import importlib.util
import sys
from pathlib import Path

GPU_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "gpu"


def load_integration():
    sys.path.insert(0, str(GPU_SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("gpu_integration", GPU_SCRIPTS / "integration.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GPU_SCRIPTS))


def test_nccl_puts_only_the_receivers_on_gpu_1():
    integ = load_integration()
    names = ("lw-a", "lw-b", "odd", "stock", "tester", "libwriter")
    assert [integ.placement(n, "nccl") for n in names] == [
        (), ("--base-gpu-id", "1"), (), (), (), ("--base-gpu-id", "1")]
    for plane in ("zmq", "cuda_ipc"):
        assert all(integ.placement(n, plane) == () for n in names)
