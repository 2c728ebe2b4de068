"""XLA:CPU options for training on a CPU, added to ``XLA_FLAGS`` before JAX starts its backend.

XLA:CPU (jaxlib 0.10) hands every convolution to YNNPACK by default. For a ResNet's training
step that path keeps about 1.4 of 2 cores busy and is the slower one: with convolutions left to
XLA's own (Eigen) kernels and the elementwise chains (BatchNorm, ReLU, residual) fused into
YNNPACK instead, our ResNet-18 step (CIFAR stem, width 16, batch 512, forward + backward + SGD)
runs 2.6x faster on a 2-core AVX2 CPU (282 against 110 views/s), at 0.94x PyTorch's NCHW step
(``benchmarks/results/throughput_vs_torch_flags.md``; the losses agree to 1e-7).

``python -m mmssl_jax.main`` and the benchmarks call :func:`add_cpu_flags` first; it adds an
option only where ``XLA_FLAGS`` does not already set it, so a user's own setting wins. The
options only concern the CPU backend: on GPU and TPU they change nothing. Nothing is imported
here, so this module can run before JAX is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

CPU_FLAGS = (
    # No YNNPACK convolutions (XLA's Eigen ones instead), YNNPACK elementwise fusions.
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise",
)


def add_cpu_flags(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Appends each of :data:`CPU_FLAGS` whose option ``XLA_FLAGS`` does not set; returns those added.

    Must run before JAX creates its CPU backend (XLA reads ``XLA_FLAGS`` once, then); later,
    it changes nothing and raises, so that a caller does not believe the flags are in force.
    """
    environ = os.environ if environ is None else environ
    current = environ.get("XLA_FLAGS", "")
    set_options = {flag.split("=", 1)[0] for flag in current.split()}
    added = [flag for flag in CPU_FLAGS if flag.split("=", 1)[0] not in set_options]
    if not added:
        return []
    bridge = sys.modules.get("jax._src.xla_bridge")
    if environ is os.environ and bridge is not None and getattr(bridge, "_backends", None):
        raise RuntimeError(
            f"add_cpu_flags() ran after JAX started its backends, so {added} would not take effect: "
            "call it before the first JAX computation (or set XLA_FLAGS before starting Python)"
        )
    environ["XLA_FLAGS"] = " ".join([*current.split(), *added])
    return added
