import os
import sys
from pathlib import Path

import pytest
import torch

# tests/helpers: the shared reference code (dense operators, models written as users write them, run
# files); on the path so that tests import them by name and `procres inspect user_models:...` resolves
sys.path.insert(0, str(Path(__file__).parent / "helpers"))
# Hugging Face models are built from tiny configs in the tests: nothing may reach the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def single_threaded():
    """One torch and one BLAS thread for a module of tiny operators: numpy's OpenBLAS threads and
    torch's OpenMP threads spin against each other on a shared 2-core machine (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                         # pragma: no cover
        yield
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
