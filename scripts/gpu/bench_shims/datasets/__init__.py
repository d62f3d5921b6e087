"""Stand-in for Hugging Face `datasets` on the GPU machine, which lacks it.

sglang.bench_serving imports `datasets.load_dataset` at module import (for MMMU) even
when the workload is synthetic. scripts/gpu/overhead.py puts this folder on PYTHONPATH
only when the real package is missing; only `--dataset-name random-ids` is used.
"""


def load_dataset(*args, **kwargs):
    raise NotImplementedError("the `datasets` package is not installed; only synthetic workloads are available")
