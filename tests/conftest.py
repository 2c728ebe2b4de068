"""Test setup shared by every test module.

Eight simulated CPU devices are requested before JAX is imported anywhere, so
the sharding tests can compare an 8-device run against a single device. Tests
that do not shard simply run on the first device.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (pulled in by tfds / clu) must never take an accelerator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
