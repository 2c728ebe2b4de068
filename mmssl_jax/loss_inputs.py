"""What the losses take in: argument checks, and the per-sample ``where=`` masks.

Checks run at trace time and their errors name the loss, the argument and its shape.

Masks: a partially paired batch (images of which only some have a caption) trains the image-text terms
on the pairs that exist. ``where`` is a bool ``[batch]``: ``True`` for a sample that takes part.
The masked contrastive losses of :mod:`mmssl_jax.losses` equal the unmasked loss computed on the
valid samples alone: a masked sample is neither an anchor nor a positive nor a negative, gets no
gradient from the term, and the mean is over the valid samples of the *global* batch
(:func:`global_mean`). Under ``axis_name`` each device's mask is gathered like its embeddings.

A batch without any valid sample gives a loss of exactly 0 with zero gradients (the sum over no
pair), not NaN: a batch of caption-less images still trains its image-only terms.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from mmssl_jax import sharding

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


# --------------------------------------------------------------------------- argument checks


def embeddings(fn: str, name: str, x: ArrayLike) -> tuple[int, int]:
    """Checks one ``[batch, dim]`` floating-point array; returns ``(batch, dim)``."""
    shape = jnp.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{fn}: `{name}` must be [batch, dim] (rank 2), got shape {shape}.")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{fn}: `{name}` is empty, shape {shape}; need batch >= 1 and dim >= 1.")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{fn}: `{name}` must be a floating-point array, got dtype {dtype}.")
    return shape[0], shape[1]


def pair(fn: str, name_a: str, a: ArrayLike, name_b: str, b: ArrayLike) -> tuple[int, int]:
    """Checks two paired embedding arrays; returns the local ``(batch, dim)``."""
    batch, dim = embeddings(fn, name_a, a)
    embeddings(fn, name_b, b)
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{fn}: `{name_a}` and `{name_b}` must have the same shape, got "
            f"{jnp.shape(a)} and {jnp.shape(b)}."
        )
    return batch, dim


def negatives(negatives: ArrayLike, dim: int, query_shape: tuple) -> None:
    """Checks InfoNCE's extra ``[K, dim]`` negatives against the queries' dim."""
    _, neg_dim = embeddings("info_nce", "negatives", negatives)
    if neg_dim != dim:
        raise ValueError(
            f"info_nce: `negatives` must have the embedding dim of `query`, got "
            f"negatives {jnp.shape(negatives)} and query {query_shape}."
        )


def positive(fn: str, name: str, value: ArrayLike) -> None:
    """A Python number must be > 0 (a traced value cannot be checked)."""
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"{fn}: `{name}` must be > 0, got {value}.")


def scalar(fn: str, name: str, value: ArrayLike) -> Array:
    """``value`` as a float32 scalar; refuses anything of more than one element."""
    if jnp.size(value) != 1:
        raise ValueError(f"{fn}: `{name}` must be a scalar, got shape {jnp.shape(value)}.")
    return jnp.reshape(jnp.asarray(value, jnp.float32), ())


# --------------------------------------------------------------------------- per-sample masks


def check_where(fn: str, where, batch: int) -> Array | None:
    """``where`` as a bool ``[batch]`` array (``None`` stays ``None``); refuses anything else."""
    if where is None:
        return None
    shape = jnp.shape(where)
    if shape != (batch,):
        raise ValueError(f"{fn}: `where` must be a bool [batch] mask with batch={batch}, got shape {shape}.")
    dtype = jnp.result_type(where)
    if dtype != jnp.bool_:
        raise TypeError(f"{fn}: `where` must be a bool array (True: the sample takes part), got dtype {dtype}.")
    return jnp.asarray(where)


def gather(where: Array | None, axis_name: str | None) -> Array | None:
    """Every device's mask in device order, aligned with :func:`mmssl_jax.sharding.all_gather_rows`."""
    if where is None or axis_name is None:
        return where
    return jax.lax.all_gather(where, axis_name, axis=0, tiled=True)


def restrict(logits: Array, rows: Array | None, cols: Array | None) -> Array:
    """Logits ``[n, m]`` with the masked-out columns at ``-inf`` and the masked-out rows at 0.

    A masked-out row is set to finite zeros (its loss is then dropped by :func:`drop_rows`), so
    neither its value nor its gradient can be NaN; a valid row keeps only the valid columns.
    """
    if rows is None:
        return logits
    logits = jnp.where(cols[None, :], logits, -jnp.inf)
    return jnp.where(rows[:, None], logits, 0.0)


def drop_rows(per_row: Array, rows: Array | None) -> Array:
    """``per_row`` with the masked-out rows' values set to 0."""
    return per_row if rows is None else jnp.where(rows, per_row, 0.0)


def global_mean(local_sum: Array, rows: Array | None, count: int, axis_name: str | None, per_sample: int = 1) -> Array:
    """The sum over every device divided by ``per_sample`` x the number of valid samples of the
    global batch (``count`` when there is no mask); 0 when no sample is valid."""
    total = sharding.global_sum(local_sum, axis_name)
    if rows is None:
        return total / (per_sample * count)
    valid = sharding.global_sum(jnp.sum(rows.astype(jnp.float32)), axis_name)
    return total / jnp.maximum(per_sample * valid, 1.0)
