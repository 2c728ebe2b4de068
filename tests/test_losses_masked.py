"""Specification of the losses' ``where=`` mask (partially paired batches, mmssl_jax.loss_inputs).

The semantics, as a specification: with a bool ``[batch]`` mask, a contrastive loss equals the
same loss computed on the valid samples alone (for CLIP: rows and columns restricted; for InfoNCE
with a queue: the queries restricted, the queue kept), the mean over the valid samples of the
global batch; a masked sample gets exactly zero gradient and its content does not matter; no
valid sample gives 0. The references are tests/reference_losses.py's, called on the valid rows.
Every check runs on the default path and on the streamed ``chunk_size`` path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import reference_losses as ref
from mmssl_jax import losses, sharding
from test_losses import _fd_gradient, pair

AXIS = sharding.DATA_AXIS
DEVICES = 8
_QUEUE = np.random.default_rng(321).normal(size=(11, 6))

CALLS = {  # name -> (fn(z1, z2, **kw), reference on the valid rows)
    "nt_xent": (lambda a, b, **kw: losses.nt_xent(a, b, temperature=0.2, **kw),
                lambda a, b: ref.nt_xent(a, b, 0.2)),
    "info_nce": (lambda a, b, **kw: losses.info_nce(a, b, temperature=0.3, **kw),
                 lambda a, b: ref.info_nce(a, b, 0.3)),
    "info_nce_queue": (lambda a, b, **kw: losses.info_nce(a, b, temperature=0.3, negatives=jnp.asarray(
        _QUEUE[:, : a.shape[1]], jnp.float32), **kw),
                       lambda a, b: ref.info_nce(a, b, 0.3, negatives=_QUEUE[:, : a.shape[1]])),
    "clip": (lambda a, b, **kw: losses.clip(a, b, logit_scale=1.5, **kw),
             lambda a, b: ref.clip(a, b, 1.5)),
    "siglip": (lambda a, b, **kw: losses.siglip(a, b, logit_scale=1.2, logit_bias=-2.0, **kw),
               lambda a, b: ref.siglip(a, b, 1.2, -2.0)),
}
NAMES = list(CALLS)
CHUNKS = pytest.mark.parametrize("chunk_size", [None, 3], ids=["gathered", "chunk3"])


def mask(batch: int, seed: int, fraction: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    where = rng.random(batch) < fraction
    where[rng.integers(batch)] = True  # at least one valid sample
    return where


def masked_reference(name: str, z1, z2, where) -> float:
    """The loss on the valid rows alone (0 with none), from the NumPy reference."""
    return CALLS[name][1](z1[where], z2[where]) if where.any() else 0.0


@functools.lru_cache(maxsize=None)
def _value_and_grads(name, chunk_size=None):
    """Jitted ``(z1, z2, where) -> (value, (g1, g2))``, compiled once per loss, path and dtype."""
    fn = CALLS[name][0]
    return jax.jit(jax.value_and_grad(lambda a, b, w: fn(a, b, where=w, chunk_size=chunk_size), argnums=(0, 1)))


@CHUNKS
@pytest.mark.parametrize("name", NAMES)
def test_masked_loss_is_the_loss_on_the_valid_samples_alone(name, chunk_size):
    z1, z2 = pair(batch=12, dim=4, seed=40)
    where = mask(12, seed=41)
    step = _value_and_grads(name, chunk_size)
    value, (g1, g2) = step(z1, z2, where)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), masked_reference(name, z1, z2, where), rtol=2e-5, atol=2e-5)
    # Gradients: finite differences of the reference on the valid rows; exactly 0 on masked rows.
    fd1 = _fd_gradient(lambda x: masked_reference(name, x, z2, where), z1)
    fd2 = _fd_gradient(lambda x: masked_reference(name, z1, x, where), z2)
    np.testing.assert_allclose(np.asarray(g1), fd1, rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(np.asarray(g2), fd2, rtol=1e-3, atol=2e-5)
    assert not np.asarray(g1)[~where].any() and not np.asarray(g2)[~where].any()
    # The content of a masked sample does not matter: the pipeline's zero caption, or anything.
    garbage = np.random.default_rng(42).normal(scale=1e3, size=z1.shape).astype(np.float32)
    for other in (np.zeros_like(z1), garbage):
        o1, o2 = np.where(where[:, None], z1, other), np.where(where[:, None], z2, other[::-1])
        v, (h1, h2) = step(o1, o2, where)
        np.testing.assert_allclose(float(v), float(value), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(h1), np.asarray(g1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(h2), np.asarray(g2), rtol=1e-5, atol=1e-7)
    # Every sample valid: the plain loss; none valid: 0 with zero gradients, not NaN.
    np.testing.assert_allclose(float(step(z1, z2, np.ones(12, bool))[0]), CALLS[name][1](z1, z2), rtol=2e-5)
    value, grads = step(z1, z2, np.zeros(12, bool))
    assert float(value) == 0.0 and all(not np.asarray(g).any() for g in grads)


def test_masked_gradients_of_the_learnable_scalars_through_the_streamed_path():
    """logit_scale and SigLIP's bias get their gradient from the custom_vjp's masked tiles."""
    z1, z2 = pair(batch=8, dim=4, seed=45)
    where = mask(8, seed=46)
    eps = 1e-6
    fd = lambda f, x: (f(x + eps) - f(x - eps)) / (2 * eps)  # noqa: E731
    g = jax.jit(jax.grad(lambda s: losses.clip(z1, z2, logit_scale=s, where=where, chunk_size=3)))(1.5)
    np.testing.assert_allclose(float(g), fd(lambda s: ref.clip(z1[where], z2[where], s), 1.5), rtol=1e-3)
    gs, gb = jax.jit(jax.grad(lambda s, b: losses.siglip(z1, z2, logit_scale=s, logit_bias=b, where=where,
                                                         chunk_size=3), argnums=(0, 1)))(1.2, -2.0)
    np.testing.assert_allclose(float(gs), fd(lambda s: ref.siglip(z1[where], z2[where], s, -2.0), 1.2), rtol=1e-3)
    np.testing.assert_allclose(float(gb), fd(lambda b: ref.siglip(z1[where], z2[where], 1.2, b), -2.0), rtol=1e-3)


@pytest.mark.parametrize("chunk_size", [None, 3], ids=["gathered", "chunk3"])
def test_masked_bfloat16_inputs_give_float32_math(chunk_size):
    """bf16 embeddings: the masked math runs in float32 on the rounded inputs (CLIP and SigLIP:
    the image-text losses a bf16 run masks), gradients come back in bf16."""
    z1, z2 = pair(seed=47)
    where = mask(16, seed=48)
    b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
    rounded = [np.asarray(b, np.float64) for b in (b1, b2)]
    for name in ("clip", "siglip"):
        value, grads = _value_and_grads(name, chunk_size)(b1, b2, where)
        assert value.dtype == jnp.float32 and all(g.dtype == jnp.bfloat16 for g in grads)
        np.testing.assert_allclose(float(value), masked_reference(name, *rounded, where), rtol=2e-5, atol=2e-5)


def _shard(mesh, *arrays):
    return [jax.device_put(jnp.asarray(a), sharding.batch_sharding(mesh)) for a in arrays]


@pytest.mark.parametrize("name", NAMES)
def test_masked_over_8_devices_equals_one_device(name):
    """The mask is gathered like the embeddings: shard_map with axis_name, gathered and ring
    paths, one device holding no valid sample at all."""
    z1, z2 = pair(batch=6 * DEVICES, seed=49)
    where = mask(6 * DEVICES, seed=50)
    where[6:12] = False  # device 1 holds no valid sample
    fn = CALLS[name][0]
    want = _value_and_grads(name)(z1, z2, where)
    np.testing.assert_allclose(float(want[0]), masked_reference(name, z1, z2, where), rtol=2e-5)
    mesh = sharding.make_mesh(jax.devices()[:DEVICES])
    for chunk_size in (None, 4):
        per_device = jax.value_and_grad(lambda a, b, w: fn(a, b, where=w, axis_name=AXIS, chunk_size=chunk_size),
                                        argnums=(0, 1))
        got = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS),) * 3,
                                    out_specs=(P(), (P(AXIS), P(AXIS)))))(*_shard(mesh, z1, z2, where))
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
        for g, w in zip(got[1], want[1]):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    if name == "clip":  # jit on a sharded global batch: XLA partitions the single-device program
        got = jax.jit(jax.value_and_grad(lambda a, b, w: fn(a, b, where=w), argnums=(0, 1)))(
            *_shard(mesh, z1, z2, where))
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)


def test_masked_positive_pair_accuracy():
    z1, z2 = pair(batch=16, seed=53, correlation=0.6)
    where = mask(16, seed=54)
    got = losses.positive_pair_accuracy(z1, z2, where=where)
    np.testing.assert_allclose(float(got), ref.positive_pair_accuracy(z1[where], z2[where]))
    mesh = sharding.make_mesh(jax.devices()[:DEVICES])
    fn = jax.shard_map(lambda a, b, w: losses.positive_pair_accuracy(a, b, where=w, axis_name=AXIS),
                       mesh=mesh, in_specs=(P(AXIS),) * 3, out_specs=P())
    assert float(jax.jit(fn)(*_shard(mesh, z1, z2, where))) == float(got)


@pytest.mark.parametrize("bad, error, match", [
    (np.ones(7, bool), ValueError, r"`where` must be a bool \[batch\] mask with batch=8, got shape \(7,\)"),
    (np.ones((8, 1), bool), ValueError, r"got shape \(8, 1\)"),
    (np.ones(8, np.float32), TypeError, r"`where` must be a bool array.*float32"),
])
@pytest.mark.parametrize("name", NAMES + ["positive_pair_accuracy"])
def test_bad_masks_are_refused_naming_where(name, bad, error, match):
    z1, z2 = pair(batch=8)
    fn = losses.positive_pair_accuracy if name == "positive_pair_accuracy" else CALLS[name][0]
    with pytest.raises(error, match=match):
        fn(z1, z2, where=bad)
