"""Test setup shared by every test module.

Eight simulated CPU devices are requested before JAX is imported anywhere, so
the sharding tests can compare an 8-device run against a single device. Tests
that do not shard simply run on the first device.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite is compile-bound (hundreds of small programs, a few steps each): LLVM at -O0 halves
# XLA:CPU's compile time (a tiny ResNet's parameter init 9.9 s -> 1.7 s, its train step 6.3 s ->
# 3.6 s); the tests check values, not speed. Processes the tests start inherit it.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# The CPU options python -m mmssl_jax.main adds: the runs the tests start and the references
# they are held to compute alike.
from mmssl_jax import xla_cpu  # noqa: E402  (imports nothing)

xla_cpu.add_cpu_flags()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (pulled in by tfds / clu) must never take an accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# The slowest tests (a few minutes each on 2 cores: subprocess runs, training runs, notebooks) are
# collected first, so that pytest-xdist hands them out at the start and the two workers finish
# together instead of one of them running a long test alone at the end.
SLOW_FIRST = (
    "test_multihost.py",  # 2-process runs (xdist_group: one worker runs them all, ~6 minutes)
    "test_train.py::test_a_run_killed",
    "test_evaluate.py",  # its trained-checkpoint tests share one module fixture (xdist_group)
    "test_colabs.py::test_notebook_runs",
    "test_train.py::test_eight_devices",
    "test_train.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, key in enumerate(SLOW_FIRST) if key in item.nodeid), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order within a rank is the collection order
