"""Specification of mmssl_jax.sharding: the mesh, batch placement and the gather helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmssl_jax import sharding

AXIS = sharding.DATA_AXIS


def test_mesh_spans_every_device():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == (AXIS,)
    assert mesh.devices.size == jax.device_count() == 8


def test_mesh_over_chosen_devices_and_empty_list_error():
    assert sharding.make_mesh(jax.devices()[:2]).devices.size == 2
    with pytest.raises(ValueError, match="empty"):
        sharding.make_mesh([])


def test_host_batch_becomes_a_global_array_sharded_on_the_batch():
    mesh = sharding.make_mesh()
    batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "label": np.arange(16)}
    out = sharding.host_batch_to_global(batch, mesh)
    assert out["image"].shape == (16, 3)
    assert out["image"].sharding.spec == P(AXIS)
    assert len(out["image"].addressable_shards) == 8
    assert out["image"].addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])


def test_host_batch_errors_name_the_problem():
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match=r"\['image'\].*12.*8 devices"):
        sharding.host_batch_to_global({"image": np.zeros((12, 3))}, mesh)
    with pytest.raises(ValueError, match="different batch sizes"):
        sharding.host_batch_to_global({"a": np.zeros((8, 3)), "b": np.zeros((16,))}, mesh)
    with pytest.raises(ValueError, match="scalar"):
        sharding.host_batch_to_global({"a": np.float32(1.0)}, mesh)


def test_all_gather_rows_orders_rows_by_device_and_is_identity_without_axis():
    mesh = sharding.make_mesh()
    x = np.arange(16, dtype=np.float32).reshape(16, 1)
    gathered = jax.jit(
        jax.shard_map(lambda v: sharding.all_gather_rows(v, AXIS), mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS))
    )(jax.device_put(x, sharding.batch_sharding(mesh)))
    # Every device holds all 16 rows in device order; out_specs stacks the 8 copies.
    np.testing.assert_array_equal(np.asarray(gathered).reshape(8, 16, 1), np.broadcast_to(x, (8, 16, 1)))
    assert sharding.all_gather_rows(x, None) is x
    assert sharding.axis_index_and_size(None) == (0, 1)


@pytest.mark.parametrize("check_vma", [True, False])
def test_global_sum_gradient_is_each_devices_share_in_shard_map(check_vma):
    """d/dx of sum_devices(sum(x**2)) is 2x on every device, not 8 * 2x."""
    mesh = sharding.make_mesh()
    x = np.arange(16, dtype=np.float32)
    grad = jax.jit(
        jax.shard_map(
            jax.grad(lambda v: sharding.global_sum(jnp.sum(v**2), AXIS)),
            mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=check_vma,
        )
    )(jax.device_put(x, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(np.asarray(grad), 2 * x)


def test_global_sum_and_use_with_rows_gradients_under_pmap():
    """A centred sum of squares: the mean's gradient must collect every device's rows."""
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)

    def per_device(v):
        mean = sharding.global_sum(jnp.sum(v), AXIS) / x.size
        centred = v - sharding.use_with_rows(mean, v, AXIS)
        return sharding.global_sum(jnp.sum(centred**3), AXIS)

    want = jax.grad(lambda v: jnp.sum((v - v.mean()) ** 3))(x)
    got = jax.pmap(jax.grad(per_device), axis_name=AXIS)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
