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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["value_and_grad"]


def _split(batch: Any, micro_batches: int) -> Any:
    """Every leaf ``[B, ...] -> [micro_batches, B / micro_batches, ...]``."""
    def split(x):
        if jnp.ndim(x) == 0 or x.shape[0] % micro_batches:
            raise ValueError(
                f"gradcache.value_and_grad: `micro_batches`={micro_batches} must divide every leaf's "
                f"batch dimension, got a leaf of shape {jnp.shape(x)}.")
        return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

    return jax.tree.map(split, batch)


def _merge(stacked: Any) -> Any:
    """Every leaf ``[micro_batches, b, ...] -> [micro_batches * b, ...]``."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), stacked)


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
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches <= 0:
        raise ValueError(f"gradcache.value_and_grad: `micro_batches` must be a positive int, got {micro_batches!r}.")
    chunks = _split(batch, micro_batches)
    # 1. Embeddings of every micro-batch, one micro-batch's activations live at a time.
    embeddings = _merge(jax.lax.map(lambda chunk: embed_fn(jax.lax.stop_gradient(params), chunk), chunks))
    # 2. The loss over the whole batch and its gradient with respect to the embeddings.
    loss, d_embeddings = jax.value_and_grad(loss_fn)(embeddings)
    d_chunks = _split(d_embeddings, micro_batches)

    # 3. Each micro-batch again, its cached embedding gradient pulled back to the parameters.
    def accumulate(total, chunk_and_cotangent):
        chunk, cotangent = chunk_and_cotangent
        _, pullback = jax.vjp(lambda p: embed_fn(p, chunk), params)
        (grads,) = pullback(cotangent)
        return jax.tree.map(jnp.add, total, grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (chunks, d_chunks))
    return loss, grads
