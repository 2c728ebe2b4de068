"""TensorFlow, kept off the accelerators.

TensorFlow is only a helper here (tfds encodes image features with it; clu's TensorBoard
writer uses it). JAX owns the GPUs/TPUs, so TensorFlow must never see them: importing it
through :func:`import_tensorflow` hides every accelerator from it before it can allocate
memory.
"""

from __future__ import annotations

import os
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Imports TensorFlow with only the CPU visible to it, and returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # RuntimeError: TF already initialised its devices (someone imported it first and
            # ran an op); ValueError: this build knows no such device kind. Either way, check
            # what TF actually holds.
            pass
    taken = [d.name for kind in ("GPU", "TPU") for d in tf.config.get_visible_devices(kind)]
    if taken:
        raise RuntimeError(
            f"TensorFlow was initialised before mmssl_jax could hide the accelerators and now "
            f"holds {taken}; import mmssl_jax's data/train modules before running TensorFlow "
            f"ops, or set CUDA_VISIBLE_DEVICES for TensorFlow-only processes."
        )
    return tf
