"""Exact gradient accumulation for contrastive losses (GradCache, Gao et al., 2021).

Plain gradient accumulation is wrong for a contrastive loss: each micro-batch would see only its
own negatives. GradCache keeps the whole batch's negatives while only one micro-batch's
activations are live:

1. embed every micro-batch without keeping activations (no gradient);
2. the loss and its gradient with respect to the embeddings, on the whole batch at once (the
   embeddings are small, and ``chunk_size=`` on the loss keeps its logits small too);
3. embed each micro-batch again, this time pulling the cached embedding gradient back to the
   parameters (a VJP), and sum.

The result equals ``jax.value_and_grad`` of the loss on the whole batch to float32 rounding,
provided the embedding of a sample does not depend on the other samples of its micro-batch
(BatchNorm in training mode does; use it with per-sample normalization or frozen statistics)
and ``embed_fn`` is deterministic (draw dropout keys from the inputs, not from a hidden state).

:func:`value_and_grad_with_state` is the form the trainer uses (``accumulation_mode="exact"``):
BatchNorm's running averages threaded through the micro-batches, a loss that reads parameters of
its own (CLIP's learnable temperature), and micro-batches cut across a batch-sharded array
without moving rows between devices. There BatchNorm normalizes each micro-batch with its own
statistics: the gradient is exact for that loss, not for one BatchNorm over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["value_and_grad", "value_and_grad_with_state"]


def _split(batch: Any, micro_batches: int, devices: int = 1) -> Any:
    """Every leaf ``[B, ...] -> [micro_batches, B / micro_batches, ...]``.

    The batch is read as ``devices`` equal blocks (one per device of a batch-sharded array) and
    micro-batch ``i`` takes the ``i``-th slice of every block, so each micro-batch is spread over
    the devices like the batch and splitting moves no row between devices.
    """
    def split(x):
        if jnp.ndim(x) == 0 or x.shape[0] % (micro_batches * devices):
            raise ValueError(
                f"gradcache: `micro_batches`={micro_batches} must divide every leaf's batch dimension"
                + (f" into {devices} equal device blocks" if devices > 1 else "")
                + f", got a leaf of shape {jnp.shape(x)}.")
        blocks = x.reshape(devices, micro_batches, x.shape[0] // (devices * micro_batches), *x.shape[1:])
        return jnp.swapaxes(blocks, 0, 1).reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

    return jax.tree.map(split, batch)


def _merge(stacked: Any, devices: int = 1) -> Any:
    """Every leaf ``[micro_batches, b, ...] -> [micro_batches * b, ...]``, the inverse of :func:`_split`."""
    def merge(x):
        k, b = x.shape[0], x.shape[1]
        blocks = jnp.swapaxes(x.reshape(k, devices, b // devices, *x.shape[2:]), 0, 1)
        return blocks.reshape(k * b, *x.shape[2:])

    return jax.tree.map(merge, stacked)


def _check_micro_batches(micro_batches: object) -> None:
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches <= 0:
        raise ValueError(f"gradcache: `micro_batches` must be a positive int, got {micro_batches!r}.")


def value_and_grad(
    embed_fn: Callable[[Any, Any], Any],
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    batch: Any,
    *,
    micro_batches: int,
) -> tuple[jax.Array, Any]:
    """The loss on the whole batch and its gradient with respect to ``params``, by micro-batches.

    Args:
      embed_fn: ``embed_fn(params, micro_batch) -> embeddings`` (a pytree of ``[b, dim]``
        arrays, e.g. ``(image_emb, text_emb)``); per sample, independent of the other samples.
      loss_fn: ``loss_fn(embeddings) -> scalar`` on the embeddings of the whole batch, e.g.
        ``lambda z: losses.clip(*z, logit_scale=s, chunk_size=1024)``.
      params: the parameters to differentiate (any pytree).
      batch: a pytree of ``[B, ...]`` arrays.
      micro_batches: how many micro-batches to split ``B`` into (it must divide ``B``).

    Returns:
      ``(loss, grads)`` with ``grads`` shaped like ``params``, equal to
      ``jax.value_and_grad(lambda p: loss_fn(embed_fn(p, batch)))(params)``.
    """
    loss, grads, _ = value_and_grad_with_state(
        lambda p, chunk, state: (embed_fn(p, chunk), state), lambda p, z: loss_fn(z), params, batch, (),
        micro_batches=micro_batches)
    return loss, grads


def value_and_grad_with_state(
    embed_fn: Callable[[Any, Any, Any], tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
    state: Any,
    *,
    micro_batches: int,
    devices: int = 1,
    has_aux: bool = False,
) -> tuple[Any, Any, Any]:
    """:func:`value_and_grad` for a trainer: a state threaded through the micro-batches (BatchNorm's
    running averages), a loss that reads parameters itself (a learnable temperature).

    Args:
      embed_fn: ``embed_fn(params, micro_batch, state) -> (embeddings, new_state)``; the
        embeddings must not depend on ``state`` (true of BatchNorm in training mode, which
        normalizes with the micro-batch's statistics and only updates its running averages).
      loss_fn: ``loss_fn(params, embeddings) -> scalar`` on the whole batch's embeddings,
        differentiated with respect to both.
      state: threaded through the micro-batches in order; returned after the last one.
      devices: the batch is sharded over this many devices (see :func:`_split`): each
        micro-batch takes a slice of every device's rows, and the embeddings come back to
        ``loss_fn`` in the batch's own row order.
      has_aux: ``loss_fn`` returns ``(loss, aux)`` (metrics), as ``jax.value_and_grad``'s.

    Returns:
      ``(loss, grads, state)``; ``((loss, aux), grads, state)`` with ``has_aux``.
    """
    _check_micro_batches(micro_batches)
    chunks = _split(batch, micro_batches, devices)

    # 1. Embeddings of every micro-batch, one micro-batch's activations live at a time.
    def embed(state, chunk):
        embeddings, state = embed_fn(jax.lax.stop_gradient(params), chunk, state)
        return state, embeddings

    new_state, stacked = jax.lax.scan(embed, state, chunks)
    embeddings = _merge(stacked, devices)
    # 2. The loss over the whole batch and its gradient with respect to the embeddings.
    loss, (direct, d_embeddings) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=has_aux)(params, embeddings)
    d_chunks = _split(d_embeddings, micro_batches, devices)

    # 3. Each micro-batch again (the same states in the same order), its cached embedding
    # gradient pulled back to the parameters.
    def accumulate(carry, chunk_and_cotangent):
        total, state = carry
        chunk, cotangent = chunk_and_cotangent
        _, pullback, state = jax.vjp(lambda p: embed_fn(p, chunk, state), params, has_aux=True)
        (grads,) = pullback(cotangent)
        return (jax.tree.map(jnp.add, total, grads), state), None

    (grads, _), _ = jax.lax.scan(accumulate, (direct, state), (chunks, d_chunks))
    return loss, grads, new_state
