"""Blockwise similarity reductions for the contrastive losses' ``chunk_size=`` path.

The softmax losses (CLIP, NT-Xent, InfoNCE) need, for each row, the log-sum-exp of its logits
against every column of the global batch; SigLIP needs the sum of a sigmoid term over every
(row, column) pair. Both are computed here tile by tile, as in Inf-CL (Cheng et al., 2024):

* the local rows and the columns are cut into tiles of ``chunk_size`` (the last one padded with
  masked rows / columns), so no more than ``chunk_size x chunk_size`` logits are ever live;
* the forward pass keeps a running maximum and a running sum of exponentials per row (and, for
  CLIP's second direction, per column), rescaling the sum whenever the maximum grows, which keeps
  it finite at any temperature;
* a ``custom_vjp`` saves only the embeddings and the per-row (per-column) log-sum-exp; the
  backward pass recomputes each tile's logits and softmax from them;
* with an ``axis_name`` (inside ``shard_map`` / ``pmap``) the column blocks travel around the
  device ring by ``ppermute`` instead of one ``all_gather``, together with the state that belongs
  to them (the per-column log-sum-exp, the column gradients), and come home after a full circle;
* optional row and column masks (the losses' ``where=``) leave masked samples out of every tile;
  a column block's mask travels the ring with it.

Everything here works on already-normalized float32 embeddings; ``mmssl_jax.losses`` is the
public interface.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
from jax import lax

from mmssl_jax import sharding

Array = jax.Array


def check_chunk_size(fn: str, chunk_size: object) -> None:
    """Raises ``ValueError`` naming ``chunk_size`` unless it is ``None`` or a positive int."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise ValueError(f"{fn}: `chunk_size` must be a positive int or None, got {chunk_size!r}.")
    if chunk_size <= 0:
        raise ValueError(f"{fn}: `chunk_size` must be a positive int or None, got {chunk_size}.")


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The static shape of one blockwise reduction (hashable: a ``nondiff`` argument)."""

    kind: str  # "softmax": per-row (and per-column) log-sum-exp; "sigmoid": SigLIP's summed term
    chunk: int
    axis_name: str | None  # the mesh axis the rows are split over (None: one device)
    ring: bool  # the columns are split like the rows and travel the ring (False: a shared queue)
    exclude_diagonal: bool = False  # softmax: leave out each row's own column (NT-Xent)
    col_lse: bool = False  # softmax: also each column's log-sum-exp over every row (CLIP)


def _similarity(rows: Array, cols: Array) -> Array:
    return jnp.matmul(rows, cols.T, precision=lax.Precision.HIGHEST)


def _tiles(count: int, chunk: int) -> tuple[int, int]:
    """(tile size, number of tiles) covering ``count`` items with tiles of at most ``chunk``."""
    size = min(chunk, count)
    return size, -(-count // size)


def _pad(x: Array, rows: int) -> Array:
    extra = rows - x.shape[0]
    return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1)) if extra else x


def _slice(x: Array, start, size: int) -> Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _add_at(x: Array, start, update: Array) -> Array:
    return lax.dynamic_update_slice_in_dim(x, _slice(x, start, update.shape[0]) + update, start, axis=0)


def _sweep(plan: _Plan, n: int, m: int, tile, stationary: dict, travelling: dict):
    """Calls ``tile(stationary, travelling, r0, c0, source)`` on every (row tile, column tile).

    ``travelling`` holds the column block on hand (``"cols"``) and arrays aligned with it; on a
    ring it moves one device on after each block and is back home after a full circle.
    ``source`` is the device the block on hand came from.
    """
    rc, nr = _tiles(n, plan.chunk)
    cc, nc = _tiles(m, plan.chunk)

    def one_block(state, source):
        def body(t, state):
            return tile(*state, (t // nc) * rc, (t % nc) * cc, source)

        return lax.fori_loop(0, nr * nc, body, state)

    if plan.axis_name is None or not plan.ring:
        return one_block((stationary, travelling), 0)
    index, devices = sharding.axis_index_and_size(plan.axis_name)

    def step(k, state):
        stationary, travelling = one_block(state, (index - k) % devices)
        return stationary, sharding.ring_shift(travelling, plan.axis_name)

    return lax.fori_loop(0, devices, step, (stationary, travelling))


def _masks(plan: _Plan, n: int, m: int, r0, c0, source, row_mask, col_mask) -> tuple[Array, Array]:
    """(valid, diagonal) for the tile at (r0, c0): real rows x real columns that their masks keep
    (``row_mask``: the padded local rows' mask; ``col_mask``: the column block's), and row == column."""
    rc, _ = _tiles(n, plan.chunk)
    cc, _ = _tiles(m, plan.chunk)
    row = r0 + jnp.arange(rc)
    col = c0 + jnp.arange(cc)
    valid = (row < n)[:, None] & (col < m)[None, :]
    valid = valid & _slice(row_mask, r0, rc)[:, None] & _slice(col_mask, c0, cc)[None, :]
    index = sharding.axis_index_and_size(plan.axis_name if plan.ring else None)[0]
    diagonal = (row[:, None] == col[None, :]) & (source == index)
    return valid, diagonal


def _online_update(old_max: Array, old_sum: Array, logits: Array, axis: int) -> tuple[Array, Array]:
    """One step of the streaming log-sum-exp along ``axis``, stable at any scale."""
    new_max = jnp.maximum(old_max, jnp.max(logits, axis=axis))
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)  # a fully masked line so far
    fresh = jnp.sum(jnp.exp(logits - jnp.expand_dims(shift, axis)), axis=axis)
    new_sum = old_sum * jnp.exp(old_max - shift) + fresh  # the old sum rescaled to the new max
    return new_max, new_sum


def _forward(plan: _Plan, rows: Array, cols: Array, scale: Array, bias: Array, row_mask: Array, col_mask: Array):
    n, m = rows.shape[0], cols.shape[0]
    rc, nr = _tiles(n, plan.chunk)
    cc, nc = _tiles(m, plan.chunk)
    padded_rows, padded_mask = _pad(rows, rc * nr), _pad(row_mask, rc * nr)
    vary = functools.partial(sharding.vary_like, like=rows)

    def tile(stationary, travelling, r0, c0, source):
        dots = _similarity(_slice(padded_rows, r0, rc), _slice(travelling["cols"], c0, cc))
        valid, diagonal = _masks(plan, n, m, r0, c0, source, padded_mask, travelling["mask"])
        if plan.kind == "sigmoid":
            labels = jnp.where(diagonal, 1.0, -1.0)
            terms = -jax.nn.log_sigmoid(labels * (scale * dots + bias))
            return {"total": stationary["total"] + jnp.sum(jnp.where(valid, terms, 0.0))}, travelling
        keep = valid & ~diagonal if plan.exclude_diagonal else valid
        logits = jnp.where(keep, scale * dots, -jnp.inf)
        row_max, row_sum = _online_update(
            _slice(stationary["max"], r0, rc), _slice(stationary["sum"], r0, rc), logits, axis=1)
        stationary = {"max": lax.dynamic_update_slice_in_dim(stationary["max"], row_max, r0, 0),
                      "sum": lax.dynamic_update_slice_in_dim(stationary["sum"], row_sum, r0, 0)}
        if plan.col_lse:
            col_max, col_sum = _online_update(
                _slice(travelling["max"], c0, cc), _slice(travelling["sum"], c0, cc), logits, axis=0)
            travelling = {**travelling,
                          "max": lax.dynamic_update_slice_in_dim(travelling["max"], col_max, c0, 0),
                          "sum": lax.dynamic_update_slice_in_dim(travelling["sum"], col_sum, c0, 0)}
        return stationary, travelling

    travelling = {"cols": _pad(cols, cc * nc), "mask": _pad(col_mask, cc * nc)}
    if plan.kind == "sigmoid":
        stationary, _ = _sweep(plan, n, m, tile, {"total": vary(jnp.zeros((), jnp.float32))}, travelling)
        return (stationary["total"],)
    lines = lambda size: {"max": vary(jnp.full((size,), -jnp.inf, jnp.float32)),  # noqa: E731
                          "sum": vary(jnp.zeros((size,), jnp.float32))}
    if plan.col_lse:
        travelling.update(lines(cc * nc))
    stationary, travelling = _sweep(plan, n, m, tile, lines(rc * nr), travelling)
    row_lse = (stationary["max"] + jnp.log(stationary["sum"]))[:n]
    if not plan.col_lse:
        return row_lse, vary(jnp.zeros((m,), jnp.float32))
    return row_lse, (travelling["max"] + jnp.log(travelling["sum"]))[:m]


def _backward(plan: _Plan, rows, cols, scale, bias, row_mask, col_mask, outputs, cotangents):
    n, m = rows.shape[0], cols.shape[0]
    rc, nr = _tiles(n, plan.chunk)
    cc, nc = _tiles(m, plan.chunk)
    padded_rows, padded_mask = _pad(rows, rc * nr), _pad(row_mask, rc * nr)
    vary = functools.partial(sharding.vary_like, like=rows)
    if plan.kind == "softmax":  # padded lines get lse 0 and cotangent 0: they add nothing
        row_lse, row_g = _pad(outputs[0], rc * nr), _pad(cotangents[0], rc * nr)

    def tile(stationary, travelling, r0, c0, source):
        block_rows = _slice(padded_rows, r0, rc)
        block_cols = _slice(travelling["cols"], c0, cc)
        dots = _similarity(block_rows, block_cols)
        valid, diagonal = _masks(plan, n, m, r0, c0, source, padded_mask, travelling["mask"])
        if plan.kind == "sigmoid":  # d/dz -log sigmoid(y z) = -y sigmoid(-y z)
            labels = jnp.where(diagonal, 1.0, -1.0)
            weights = jnp.where(valid, -labels * jax.nn.sigmoid(-labels * (scale * dots + bias)), 0.0)
            weights = cotangents[0] * weights
        else:  # d lse_i / d z_ij = softmax_ij, recomputed from the saved lse
            keep = valid & ~diagonal if plan.exclude_diagonal else valid
            logits = scale * dots
            weights = jnp.where(keep, jnp.exp(logits - _slice(row_lse, r0, rc)[:, None]), 0.0)
            weights = weights * _slice(row_g, r0, rc)[:, None]
            if plan.col_lse:
                col_p = jnp.where(keep, jnp.exp(logits - _slice(travelling["lse"], c0, cc)[None, :]), 0.0)
                weights = weights + col_p * _slice(travelling["g"], c0, cc)[None, :]
        d_rows = scale * jnp.matmul(weights, block_cols, precision=lax.Precision.HIGHEST)
        stationary = {
            "rows": _add_at(stationary["rows"], r0, d_rows),
            "scale": stationary["scale"] + jnp.sum(weights * dots),
            "bias": stationary["bias"] + jnp.sum(weights),
        }
        d_cols = scale * jnp.matmul(weights.T, block_rows, precision=lax.Precision.HIGHEST)
        return stationary, {**travelling, "d_cols": _add_at(travelling["d_cols"], c0, d_cols)}

    zeros = lambda *shape: vary(jnp.zeros(shape, jnp.float32))  # noqa: E731
    travelling = {"cols": _pad(cols, cc * nc), "mask": _pad(col_mask, cc * nc), "d_cols": zeros(cc * nc, cols.shape[1])}
    if plan.col_lse:
        travelling.update(lse=_pad(outputs[1], cc * nc), g=_pad(cotangents[1], cc * nc))
    stationary = {"rows": zeros(rc * nr, rows.shape[1]), "scale": zeros(), "bias": zeros()}
    stationary, travelling = _sweep(plan, n, m, tile, stationary, travelling)
    d_bias = stationary["bias"] if plan.kind == "sigmoid" else jnp.zeros_like(bias)
    return stationary["rows"][:n], travelling["d_cols"][:m], stationary["scale"], d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blockwise(plan: _Plan, rows: Array, cols: Array, scale: Array, bias: Array, row_mask: Array, col_mask: Array):
    return _forward(plan, rows, cols, scale, bias, row_mask, col_mask)


def _blockwise_fwd(plan, rows, cols, scale, bias, row_mask, col_mask):
    outputs = _forward(plan, rows, cols, scale, bias, row_mask, col_mask)
    return outputs, (rows, cols, scale, bias, row_mask, col_mask, outputs)


def _blockwise_bwd(plan, residuals, cotangents):
    rows, cols, scale, bias, row_mask, col_mask, outputs = residuals
    d_rows, d_cols, d_scale, d_bias = _backward(plan, rows, cols, scale, bias, row_mask, col_mask, outputs, cotangents)
    return d_rows, d_cols, sharding.vary_like(d_scale, scale), sharding.vary_like(d_bias, bias), None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def softmax_lse(
    rows: Array, cols: Array, scale, *, chunk_size: int, axis_name: str | None, ring: bool = True,
    exclude_diagonal: bool = False, col_lse: bool = False, row_mask: Array | None = None,
    col_mask: Array | None = None,
) -> tuple[Array, Array]:
    """Per-row (and per-column) log-sum-exp of ``scale * rows @ all_cols.T``, streamed.

    Args:
      rows: this device's normalized rows, ``[n, dim]`` float32.
      cols: this device's columns ``[m, dim]``; with ``ring`` and an ``axis_name`` the columns
        of the whole ring (every device's block) are the columns, else ``cols`` alone.
      scale: scalar multiplying the similarities (inverse temperature).
      chunk_size: tile edge; live logits are at most ``chunk_size x chunk_size``.
      axis_name: the mapped axis inside ``shard_map``/``pmap``, or ``None``.
      ring: whether ``cols`` is split over ``axis_name`` like the rows (False: a shared queue).
      exclude_diagonal: leave out column ``r`` of this device's block for local row ``r``.
      col_lse: also return each local column's log-sum-exp over the rows of every device.
      row_mask, col_mask: optional bool ``[n]`` / ``[m]``: only kept rows meet only kept columns
        (a column block travels with its mask); a masked-out line's log-sum-exp is ``-inf``.

    Returns:
      ``(row_lse [n], col_lse [m])``; ``col_lse`` is zeros unless asked for.
    """
    plan = _Plan("softmax", int(chunk_size), axis_name, ring, exclude_diagonal, col_lse)
    return _blockwise(plan, *_prepare(rows, cols, scale, 0.0, row_mask, col_mask))


def sigmoid_sum(rows: Array, cols: Array, scale, bias, *, chunk_size: int, axis_name: str | None,
                row_mask: Array | None = None, col_mask: Array | None = None) -> Array:
    """``sum_ij -log_sigmoid(y_ij (scale * rows_i . cols_j + bias))`` over local rows and ring columns.

    ``y_ij`` is +1 where row and column are the same sample (same device, same position), -1
    elsewhere; pairs whose row or column is masked out add nothing. Shapes and arguments as
    :func:`softmax_lse`. Returns a float32 scalar, this device's share of the SigLIP sum.
    """
    plan = _Plan("sigmoid", int(chunk_size), axis_name, True)
    return _blockwise(plan, *_prepare(rows, cols, scale, bias, row_mask, col_mask))[0]


def _prepare(rows, cols, scale, bias, row_mask, col_mask) -> tuple[Array, ...]:
    rows = jnp.asarray(rows, jnp.float32)
    # Everything that meets the local rows is typed like them under shard_map; a replicated
    # input (the scale, a shared queue) gets its gradient summed over devices by the cast.
    cols, scale, bias = (sharding.vary_like(jnp.asarray(x, jnp.float32), rows) for x in (cols, scale, bias))
    masks = (jnp.ones((x.shape[0],), bool) if mask is None else jnp.asarray(mask, bool)
             for mask, x in ((row_mask, rows), (col_mask, cols)))
    row_mask, col_mask = (sharding.vary_like(mask, rows) for mask in masks)
    return rows, cols, jnp.reshape(scale, ()), jnp.reshape(bias, ()), row_mask, col_mask


def positive_pair_hits(query: Array, key: Array, *, chunk_size: int, axis_name: str | None,
                       where: Array | None = None) -> Array:
    """How many local rows of ``query`` find their own ``key`` row first among every key: streamed.

    The count behind ``losses.positive_pair_accuracy`` (``argmax`` of the cosine similarities
    against every key of the global batch, ties going to the lower index), computed tile by tile
    with the keys travelling the device ring, so no device holds more than a
    ``chunk_size x chunk_size`` block of similarities or another device's whole key matrix.
    A metric: no gradient flows through it.

    Args:
      query, key: this device's ``[n, dim]`` paired embeddings (any float dtype; normalized here).
      chunk_size: tile edge.
      axis_name: the mapped axis inside ``shard_map``/``pmap``, or ``None``.
      where: optional bool ``[n]``: only valid queries are scored, among valid keys (the mask
        travels the ring with its keys), as ``positive_pair_accuracy(where=)``.

    Returns:
      float32 scalar: this device's count of hits among its valid rows (``global_sum`` it).
    """
    check_chunk_size("positive_pair_hits", chunk_size)
    rows, cols = (lax.stop_gradient(x.astype(jnp.float32)) for x in (query, key))
    rows, cols = (x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, 1, keepdims=True), 1e-24)) for x in (rows, cols))
    plan = _Plan("hits", int(chunk_size), axis_name, True)
    n, m = rows.shape[0], cols.shape[0]
    rc, nr = _tiles(n, plan.chunk)
    cc, nc = _tiles(m, plan.chunk)
    mask = sharding.vary_like(jnp.ones((n,), bool) if where is None else jnp.asarray(where, bool), rows)
    padded_rows, padded_mask = _pad(rows, rc * nr), _pad(mask, rc * nr)
    index = sharding.axis_index_and_size(axis_name)[0]

    def tile(stationary, travelling, r0, c0, source):
        dots = _similarity(_slice(padded_rows, r0, rc), _slice(travelling["cols"], c0, cc))
        valid, _ = _masks(plan, n, m, r0, c0, source, padded_mask, travelling["mask"])
        row = (index * n + r0 + jnp.arange(rc))[:, None]  # global sample indices
        col = (source * m + c0 + jnp.arange(cc))[None, :]
        best = lambda where: jnp.max(jnp.where(valid & where, dots, -jnp.inf), axis=1)  # noqa: E731
        update = {"before": best(col < row), "after": best(col > row),
                  "own": jnp.sum(jnp.where(valid & (col == row), dots, 0.0), axis=1)}
        combine = {"before": jnp.maximum, "after": jnp.maximum, "own": jnp.add}
        stationary = {k: lax.dynamic_update_slice_in_dim(
            v, combine[k](_slice(v, r0, rc), update[k]), r0, 0) for k, v in stationary.items()}
        return stationary, travelling

    vary = functools.partial(sharding.vary_like, like=rows)
    lines = {"before": vary(jnp.full((rc * nr,), -jnp.inf, jnp.float32)),
             "after": vary(jnp.full((rc * nr,), -jnp.inf, jnp.float32)),
             "own": vary(jnp.zeros((rc * nr,), jnp.float32))}
    travelling = {"cols": _pad(sharding.vary_like(cols, rows), cc * nc), "mask": _pad(mask, cc * nc)}
    stationary, _ = _sweep(plan, n, m, tile, lines, travelling)
    # argmax picks the first maximum: the own key must beat every earlier key and tie no later one
    hit = (stationary["own"] > stationary["before"]) & (stationary["own"] >= stationary["after"]) & padded_mask
    return jnp.sum(hit[:n].astype(jnp.float32))
