"""Specification of mmssl_jax.gradcache: micro-batched gradients equal the whole-batch gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmssl_jax import gradcache, losses


def _towers(seed: int = 0):
    """A two-layer image tower and a linear text tower, and a batch of 24 paired inputs."""
    rng = np.random.default_rng(seed)
    params = {
        "image": {"w1": rng.normal(size=(8, 16)) / 3, "w2": rng.normal(size=(16, 4)) / 4},
        "text": {"w": rng.normal(size=(5, 4)) / 2},
        "logit_scale": np.float32(2.0),
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    batch = {"image": rng.normal(size=(24, 8)), "text": rng.normal(size=(24, 5))}
    batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), batch)
    return params, batch


def _embed(params, batch):
    image = jnp.tanh(batch["image"] @ params["image"]["w1"]) @ params["image"]["w2"]
    return image, batch["text"] @ params["text"]["w"]


@pytest.mark.parametrize("micro_batches", [1, 3, 8])
@pytest.mark.parametrize("loss", ["clip", "nt_xent"])
def test_micro_batched_gradient_equals_the_whole_batch_gradient(loss, micro_batches):
    params, batch = _towers()
    call = {"clip": losses.clip, "nt_xent": lambda a, b, logit_scale, **kw: losses.nt_xent(
        a, b, temperature=jnp.exp(-logit_scale), **kw)}[loss]

    def whole(p):
        return call(*_embed(p, batch), logit_scale=p["logit_scale"])

    want_value, want_grads = jax.value_and_grad(whole)(params)
    # The learnable scale is a parameter the loss reads directly: differentiate it through
    # loss_fn by closing over the same params in both places.
    embed = lambda p, chunk: _embed(p, chunk)  # noqa: E731

    def value_and_grad(p):
        value, grads = gradcache.value_and_grad(
            embed, lambda z: call(*z, logit_scale=jax.lax.stop_gradient(p["logit_scale"]), chunk_size=5),
            p, batch, micro_batches=micro_batches)
        scale_grad = jax.grad(lambda s: call(*_embed(p, batch), logit_scale=s, chunk_size=5))(p["logit_scale"])
        return value, {**grads, "logit_scale": scale_grad}

    value, grads = jax.jit(value_and_grad)(params)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_micro_batches_must_divide_the_batch():
    params, batch = _towers()
    with pytest.raises(ValueError, match=r"`micro_batches`=5 must divide.*\(24, 8\)"):
        gradcache.value_and_grad(_embed, lambda z: losses.clip(*z, logit_scale=1.0), params, batch, micro_batches=5)
    with pytest.raises(ValueError, match="`micro_batches` must be a positive int"):
        gradcache.value_and_grad(_embed, lambda z: losses.clip(*z, logit_scale=1.0), params, batch, micro_batches=0)


@pytest.mark.parametrize("devices", [1, 2])
def test_with_state_threads_the_state_and_differentiates_the_loss_own_parameters(devices):
    """The trainer's form: a running average threaded through the micro-batches in order (as
    BatchNorm's), the learnable scale read by the loss itself, and micro-batches that take a
    slice of every device's rows, handing the embeddings back in the batch's row order."""
    params, batch = _towers(seed=3)

    def embed(p, chunk, state):
        return _embed(p, chunk), 0.5 * state + 0.5 * jnp.mean(chunk["image"])

    def loss_fn(p, z):  # + a term weighting each row by its position: rows out of order would show
        position = jnp.sum(jnp.arange(24.0) * z[0][:, 0]) / 100
        return losses.nt_xent(*z, temperature=jnp.exp(-p["logit_scale"]), chunk_size=5) + position

    want_value, want_grads = jax.value_and_grad(lambda p: loss_fn(p, _embed(p, batch)))(params)
    value, grads, state = jax.jit(lambda p: gradcache.value_and_grad_with_state(
        embed, loss_fn, p, batch, jnp.float32(0.0), micro_batches=3, devices=devices))(params)
    np.testing.assert_allclose(float(value), float(want_value), rtol=1e-6)
    assert float(jnp.abs(grads["logit_scale"])) > 1e-3
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    images = np.asarray(batch["image"]).reshape(devices, 3, 24 // (3 * devices), 8)  # device blocks
    expected = 0.0
    for i in range(3):  # micro-batch i: slice i of every device block
        expected = 0.5 * expected + 0.5 * images[:, i].mean()
    np.testing.assert_allclose(float(state), expected, rtol=1e-5)
