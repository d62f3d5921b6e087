"""scripts/gpu/integration.py's server placement (the script itself needs a GPU)."""

from script_module import load_script


def load_integration():
    return load_script("gpu/integration.py")


def test_nccl_puts_only_the_receivers_on_gpu_1():
    integ = load_integration()
    names = ("lw-a", "lw-b", "odd", "stock", "tester", "libwriter")
    assert [integ.placement(n, "nccl") for n in names] == [
        (), ("--base-gpu-id", "1"), (), (), (), ("--base-gpu-id", "1")]
    for plane in ("zmq", "cuda_ipc"):
        assert all(integ.placement(n, plane) == () for n in names)
