"""Data-parallel mesh, batch placement, and the cross-device helpers the losses use.

Two ways to run a loss over many devices, both exact:

* ``jit`` on a global batch sharded over a :func:`make_mesh` mesh (``axis_name=None`` in the
  loss call): XLA partitions the computation.
* Inside ``jax.shard_map`` / ``jax.pmap`` over the mesh axis: every device holds its local
  rows, and the losses call :func:`all_gather_rows` / :func:`global_sum` with the axis name to
  see the whole batch.

Only ``jax`` and ``numpy`` are imported here, so the losses stay light to import.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
"""Name of the data-parallel mesh axis used throughout the library."""


def make_mesh(
    devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS
) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (default: every device of every process).

    On a multi-host run (after ``jax.distributed.initialize()``) ``jax.devices()`` lists the
    devices of all hosts, so the mesh spans the whole pod and each process owns the slice of the
    batch that lives on its local devices.
    """
    # Auto axes: XLA propagates shardings through the program (GSPMD), so library code such as
    # vmapped augmentations mixes sharded and replicated operands freely. (jax.make_mesh
    # defaults to Explicit axes, where shardings are part of the types.)
    auto = (AxisType.Auto,)
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (axis_name,), axis_types=auto)
    devices = list(devices)
    if not devices:
        raise ValueError("make_mesh: `devices` is empty.")
    return Mesh(np.asarray(devices), (axis_name,), axis_types=auto)


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Sharding that splits the leading (batch) dimension over the mesh axis."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def host_batch_to_global(batch: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Puts this process's part of the batch onto the mesh as global arrays.

    Args:
      batch: a pytree of host arrays, each ``[per_process_batch, ...]``. On one host this is the
        whole batch; with P processes the global batch is P times larger.
      mesh: the data-parallel mesh from :func:`make_mesh`.

    Returns:
      The same pytree of ``jax.Array`` of global shape ``[per_process_batch * P, ...]``, sharded
      on the batch dimension.

    Raises:
      ValueError: if a leaf has no batch dimension, the leaves disagree on the batch size, or the
        per-process batch does not split evenly over this process's devices.
    """
    sharding = batch_sharding(mesh, axis_name)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    leaves, _ = jax.tree_util.tree_flatten_with_path(batch)
    sizes = set()
    for path, leaf in leaves:
        shape = np.shape(leaf)
        name = jax.tree_util.keystr(path) or "batch"
        if len(shape) == 0:
            raise ValueError(f"host_batch_to_global: {name} is a scalar; every leaf needs a batch dimension.")
        sizes.add(shape[0])
        if shape[0] % local_devices:
            raise ValueError(
                f"host_batch_to_global: {name} has per-process batch {shape[0]}, which does not "
                f"divide over this process's {local_devices} devices; make the batch size a "
                f"multiple of {local_devices * jax.process_count()} (the global device count)."
            )
    if len(sizes) > 1:
        raise ValueError(f"host_batch_to_global: leaves have different batch sizes {sorted(sizes)}.")
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def axis_index_and_size(axis_name: str | None) -> tuple[jax.Array | int, int]:
    """``(this device's index, number of devices)`` along ``axis_name``; ``(0, 1)`` for ``None``."""
    if axis_name is None:
        return 0, 1
    return lax.axis_index(axis_name), lax.axis_size(axis_name)


def all_gather_rows(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Concatenates every device's rows: ``[local, ...] -> [local * devices, ...]``.

    Rows come in device order, so device ``i``'s row ``r`` lands at ``i * local + r``. The
    gradient flows back to each device's own rows (the transpose is a reduce-scatter), which is
    what makes gathered negatives exact. Identity for ``axis_name=None``.
    """
    if axis_name is None:
        return x
    return lax.all_gather(x, axis_name, axis=0, tiled=True)


def _varying_axes(x: jax.Array) -> frozenset:
    """Mesh axes along which ``x`` is typed as varying (``shard_map`` with ``check_vma=True``).

    Empty under ``pmap`` and ``shard_map(check_vma=False)``, which track no such types.
    """
    aval = jax.typeof(x)
    varying = getattr(aval, "vma", None)  # jax <= 0.9
    if varying is None:  # jax >= 0.10 spells it manual_axis_type.varying
        varying = getattr(getattr(aval, "manual_axis_type", None), "varying", frozenset())
    return frozenset(varying)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _psum_with_identity_transpose(x: jax.Array, axis_name: str) -> jax.Array:
    return lax.psum(x, axis_name)


def _psum_fwd(x: jax.Array, axis_name: str) -> tuple[jax.Array, None]:
    return lax.psum(x, axis_name), None


def _psum_bwd(axis_name: str, _: None, cotangent: jax.Array) -> tuple[jax.Array]:
    del axis_name
    return (cotangent,)


_psum_with_identity_transpose.defvjp(_psum_fwd, _psum_bwd)


def global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Sum over devices (``psum``) whose gradient is each device's own share; identity for ``None``.

    The result is the same on every device. Its transpose hands each device the cotangent
    unchanged, so a loss built from it has, on every device, the exact gradient of the global
    loss with respect to that device's inputs. ``shard_map``'s typed ``psum`` already transposes
    that way; under ``pmap`` (and ``shard_map(check_vma=False)``) the plain ``psum`` transposes
    into another ``psum`` and would scale gradients by the device count, so a ``custom_vjp``
    stands in for it there.
    """
    if axis_name is None:
        return x
    if axis_name in _varying_axes(x):
        return lax.psum(x, axis_name)
    return _psum_with_identity_transpose(x, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _identity_with_psum_transpose(x: jax.Array, axis_name: str) -> jax.Array:
    return x


def _identity_fwd(x: jax.Array, axis_name: str) -> tuple[jax.Array, None]:
    return x, None


def _identity_bwd(axis_name: str, _: None, cotangent: jax.Array) -> tuple[jax.Array]:
    return (lax.psum(cotangent, axis_name),)


_identity_with_psum_transpose.defvjp(_identity_fwd, _identity_bwd)


def use_with_rows(statistic: jax.Array, rows: jax.Array, axis_name: str | None) -> jax.Array:
    """Marks a device-invariant ``statistic`` (a :func:`global_sum` result) for use on local ``rows``.

    When every device combines a global statistic (a batch mean, a variance) with its own rows,
    the statistic's gradient is the sum of every device's cotangent. ``shard_map`` inserts that
    ``pvary`` by itself; under ``pmap`` this function stands in for it (identity forward,
    ``psum`` backward). Identity for ``axis_name=None``.
    """
    if axis_name is None or axis_name in _varying_axes(rows):
        return statistic
    return _identity_with_psum_transpose(statistic, axis_name)


def ring_shift(x: Any, axis_name: str) -> Any:
    """Passes a pytree one step around the device ring: device ``i`` sends to ``i + 1``.

    After ``k`` shifts device ``i`` holds what device ``i - k`` (mod the ring size) started with;
    after a full circle every block is home. Its transpose is the shift the other way, so
    gradients travel back around the ring.
    """
    devices = lax.axis_size(axis_name)
    perm = [(i, (i + 1) % devices) for i in range(devices)]
    return jax.tree.map(lambda leaf: lax.ppermute(leaf, axis_name, perm), x)


def vary_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """``x`` typed as varying along every mesh axis ``like`` varies along (``shard_map`` types).

    A replicated value (a learnable scale, a shared queue) that enters a per-device computation
    is cast with ``pcast``, whose transpose sums the devices' gradients, as ``shard_map`` does
    implicitly for ordinary operations. Identity under ``pmap`` and outside ``shard_map``.
    """
    axes = tuple(sorted(_varying_axes(like) - _varying_axes(x)))
    return lax.pcast(x, axes, to="varying") if axes else x
