"""Shared test settings: the `gpu` marker skips without a usable CUDA device."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


class _RepoRootIsNotATestPackage:
    """The repository root is the tapegrad package itself (its __init__.py is the public API). Left to
    itself pytest would collect it as a test package and import that __init__.py under the checkout
    folder's name, which fails for a folder name that is not an identifier. Collect it as a plain
    directory; the tests import the installed ``tapegrad``."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == REPO_ROOT:
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    config.pluginmanager.register(_RepoRootIsNotATestPackage(), "tapegrad-repo-root")

# Reproducible hypothesis runs in CI; `--hypothesis-profile=long` (or TAPEGRAD_FUZZ=long) runs longer.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, database=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=5000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("TAPEGRAD_FUZZ", "ci"))
except ImportError:  # hypothesis is in the test extra; the fuzz tests skip without it
    pass


def _gpu_reason():
    try:
        from tapegrad.engine.backend import require_cuda
        require_cuda()
    except RuntimeError as e:
        return str(e)
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a GPU: {reason}")
    for item in gpu_items:
        item.add_marker(skip)


# ---- fixtures of the GPU tests (tests/test_kernels_gpu.py, tests/test_gpu_engine.py) -------------------------
@pytest.fixture(scope="module")
def cp():
    """cupy, or a skip when it or a usable CUDA device is missing."""
    cupy = pytest.importorskip("cupy")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device, driver too old, ...
        pytest.skip(f"no usable CUDA device: {e}")
    if n == 0:
        pytest.skip("no CUDA device")
    return cupy


@pytest.fixture(params=["cupy", "numba-cuda"])
def gpu_kernel_backend(request, cp):
    """Each GPU kernel backend in turn, skipping numba-cuda where it cannot reach the GPU."""
    if request.param == "numba-cuda":
        cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
        if not cuda.is_available():
            pytest.skip("numba-cuda cannot reach the GPU")
    return request.param


@pytest.fixture
def keep_callers_generator():
    """For tests that reseed freely: give the thread's generator back as it was, for the tests after them."""
    from tapegrad.engine import random as _random
    rng = _random._state.rng
    yield
    _random._state.rng = rng
