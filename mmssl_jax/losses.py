"""Self-supervised losses as pure functions: plain arrays in, a float32 scalar out.

Every loss takes unnormalized embeddings ``[batch, dim]`` (any float dtype; the math is done in
float32), normalizes them as its paper does, and returns the mean over the *global* batch.

Sharding. ``axis_name=None`` means the arrays on hand are the whole batch; this is also the right
call under ``jit`` on a global array sharded over a mesh, where XLA partitions the work. Inside
``jax.shard_map`` (or ``jax.pmap``) pass the mapped axis name: each device then holds its local
rows, gathers the other devices' embeddings as negatives, and computes only its own rows against
all columns, so per-device memory is ``O(local x global)``, never ``O(global^2)``. Batch
statistics (Barlow Twins, VICReg) are summed over devices; the per-sample losses (BYOL, SimSiam's
negative cosine) gather nothing and sum their rows' terms over devices. The returned value is the global loss
on every device, and gradients with respect to each device's rows equal the corresponding rows of
the unsharded gradient; every device must hold the same number of rows.

Gradients under ``axis_name`` are exact in ``shard_map`` (typed or ``check_vma=False``) and in
``pmap``: on every device, the gradient with respect to that device's rows is the matching block
of the unsharded gradient. For a parameter replicated on every device and fed to the loss (a
learnable ``logit_scale``), ``shard_map`` with its default ``check_vma=True`` already returns the
full gradient; under ``pmap`` each device gets its own share, so ``psum`` (not ``pmean``) those.

Streaming (``chunk_size=`` on the contrastive losses): ``chunk_size x chunk_size`` tiles, a running
log-sum-exp, tiles recomputed in the backward pass, and under ``axis_name`` the columns passed
around a ``ppermute`` ring: memory is the embeddings plus a few tiles, whatever the global batch,
and values and gradients equal the default path to float32 rounding (:mod:`mmssl_jax.streaming`).

Partially paired batches (``where=`` on the contrastive losses and the accuracy): a bool
``[batch]`` mask; the loss equals the unmasked loss on the valid samples alone (masked samples are
neither anchors nor positives nor negatives, and get no gradient), the mean over the valid
samples of the global batch, 0 when there are none (:mod:`mmssl_jax.masking`).

Shapes and ranks are checked at trace time and errors name the argument and its shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mmssl_jax import loss_inputs, sharding, streaming

__all__ = [
    "nt_xent",
    "info_nce",
    "clip",
    "siglip",
    "barlow_twins",
    "barlow_twins_terms",
    "vicreg",
    "vicreg_terms",
    "byol",
    "negative_cosine",
    "positive_pair_accuracy",
]

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_NORMALIZE_EPS = 1e-12  # As torch.nn.functional.normalize: x / max(||x||, eps).
_BN_EPS = 1e-5  # Barlow Twins standardizes with BatchNorm1d(affine=False): eps 1e-5.
_VICREG_EPS = 1e-4  # std = sqrt(var + 1e-4) in the VICReg paper and code.


# --------------------------------------------------------------------------- building blocks


def _l2_normalize(x: ArrayLike) -> Array:
    """Rows scaled to unit L2 norm, in float32: ``x / max(||x||, eps)``."""
    x = jnp.asarray(x, jnp.float32)
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * lax.rsqrt(jnp.maximum(sq, _NORMALIZE_EPS**2))


def _similarity(rows: Array, cols: Array) -> Array:
    """``rows @ cols.T`` in full float32 precision (no TF32 / bf16 passes): ``[n, d], [m, d] -> [n, m]``."""
    return jnp.matmul(rows, cols.T, precision=lax.Precision.HIGHEST)


def _cross_entropy(logits: Array, labels: Array) -> Array:
    """Per-row softmax cross-entropy with integer labels: ``[n, m], [n] -> [n]``."""
    positive = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - positive


def _off_diagonal(m: Array) -> Array:
    """``m`` with its diagonal set to zero: ``[d, d] -> [d, d]``."""
    return jnp.where(jnp.eye(m.shape[0], dtype=bool), 0.0, m)


# --------------------------------------------------------------------------- contrastive losses


def nt_xent(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    temperature: float | ArrayLike = 0.1,
    axis_name: str | None = None,
    chunk_size: int | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """SimCLR's normalized-temperature cross-entropy (NT-Xent), the 2N-way loss.

    Both views are L2-normalized. Each of the 2N embeddings (N = global batch) has its other view
    as the positive and the remaining 2N - 2 embeddings of both views as negatives; its own
    self-similarity is excluded. Returns the mean over the 2N rows.

    Args:
      z1: first view's embeddings, ``[batch, dim]``.
      z2: second view's embeddings, ``[batch, dim]``; row i pairs with ``z1[i]``.
      temperature: softmax temperature (0.1 for large-batch ImageNet, 0.5 on CIFAR, 0.2 at small
        batch); may be a traced array.
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.
      chunk_size: ``None`` (default) builds the local rows x global columns logits at once;
        an int streams them in ``chunk_size x chunk_size`` tiles (and around the device ring
        under ``axis_name``), for global batches whose logits do not fit in memory.
      where: optional bool ``[batch]``: the samples that take part (a partially paired batch);
        the loss is then this loss on the valid samples alone, 0 if there are none.

    Returns:
      float32 scalar.
    """
    n, _ = loss_inputs.pair("nt_xent", "z1", z1, "z2", z2)
    loss_inputs.positive("nt_xent", "temperature", temperature)
    streaming.check_chunk_size("nt_xent", chunk_size)
    valid = loss_inputs.check_where("nt_xent", where, n)
    both = None if valid is None else jnp.concatenate([valid, valid])  # the rows [z1; z2]
    z1, z2 = _l2_normalize(z1), _l2_normalize(z2)
    index, devices = sharding.axis_index_and_size(axis_name)
    g = n * devices
    if chunk_size is not None:  # rows and columns: this device's [z1; z2], self left out
        z = jnp.concatenate([z1, z2])
        lse, _ = streaming.softmax_lse(z, z, 1.0 / temperature, chunk_size=chunk_size, axis_name=axis_name,
                                       exclude_diagonal=True, row_mask=both, col_mask=both)
        positive = 2.0 * jnp.sum(loss_inputs.drop_rows(jnp.sum(z1 * z2, axis=-1), valid)) / temperature
        return loss_inputs.global_mean(jnp.sum(loss_inputs.drop_rows(lse, both)) - positive, valid, g, axis_name, 2)
    # Columns: all of view 1, then all of view 2 (global order). Rows: this device's part of each.
    cols = jnp.concatenate([sharding.all_gather_rows(z1, axis_name), sharding.all_gather_rows(z2, axis_name)])
    rows = jnp.concatenate([z1, z2])
    logits = _similarity(rows, cols) / temperature  # [2n, 2g]
    own = index * n + jnp.arange(n)
    self_col = jnp.concatenate([own, g + own])
    positive_col = jnp.concatenate([g + own, own])
    is_self = jnp.arange(2 * g)[None, :] == self_col[:, None]
    logits = jnp.where(is_self, -jnp.inf, logits)
    gathered = loss_inputs.gather(valid, axis_name)
    logits = loss_inputs.restrict(logits, both, None if valid is None else jnp.concatenate([gathered, gathered]))
    per_row = loss_inputs.drop_rows(_cross_entropy(logits, positive_col), both)
    return loss_inputs.global_mean(jnp.sum(per_row), valid, g, axis_name, 2)


def info_nce(
    query: ArrayLike,
    key: ArrayLike,
    *,
    temperature: float | ArrayLike = 0.07,
    negatives: ArrayLike | None = None,
    axis_name: str | None = None,
    chunk_size: int | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """InfoNCE of queries against keys (one direction), with in-batch or queued negatives.

    Queries, keys and negatives are L2-normalized.

    * ``negatives=None``: row i's positive is ``key[i]`` and every other key of the global batch
      is a negative (logits ``[batch, batch]``, label i).
    * ``negatives`` ``[K, dim]`` (a MoCo queue): row i's logits are
      ``[q_i . k_i, q_i . negatives]`` with label 0; the in-batch keys are not negatives. Pass a
      queue that is not to be trained through ``jax.lax.stop_gradient``. Under ``axis_name`` the
      queue must be the same on every device.

    Args:
      query: ``[batch, dim]``.
      key: ``[batch, dim]``, row i is query i's positive.
      temperature: softmax temperature (MoCo v2: 0.2; CPC/MoCo v1: 0.07).
      negatives: optional ``[K, dim]`` extra negatives.
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.
      chunk_size: ``None`` (default) builds the local rows x global columns logits at once;
        an int streams them in ``chunk_size x chunk_size`` tiles (the queue's columns too;
        the in-batch keys around the device ring under ``axis_name``), for global batches
        whose logits do not fit in memory.
      where: optional bool ``[batch]``: the pairs that take part; a masked query has no loss and a
        masked key is no negative (the queue's negatives are not masked). The loss is then this
        loss on the valid pairs alone, 0 if there are none.

    Returns:
      float32 scalar, the mean over the global batch of queries.
    """
    n, dim = loss_inputs.pair("info_nce", "query", query, "key", key)
    loss_inputs.positive("info_nce", "temperature", temperature)
    streaming.check_chunk_size("info_nce", chunk_size)
    valid = loss_inputs.check_where("info_nce", where, n)
    q, k = _l2_normalize(query), _l2_normalize(key)
    index, devices = sharding.axis_index_and_size(axis_name)
    if chunk_size is not None:
        return _info_nce_chunked(q, k, temperature, negatives, axis_name, chunk_size, valid)
    if negatives is None:
        logits = _similarity(q, sharding.all_gather_rows(k, axis_name))  # [n, g]
        logits = loss_inputs.restrict(logits, valid, loss_inputs.gather(valid, axis_name))
        labels = index * n + jnp.arange(n)
    else:
        loss_inputs.negatives(negatives, dim, jnp.shape(query))
        positive = jnp.sum(q * k, axis=-1, keepdims=True)  # [n, 1]
        logits = jnp.concatenate([positive, _similarity(q, _l2_normalize(negatives))], axis=1)
        labels = jnp.zeros((n,), jnp.int32)
    per_row = loss_inputs.drop_rows(_cross_entropy(logits / temperature, labels), valid)
    return loss_inputs.global_mean(jnp.sum(per_row), valid, n * devices, axis_name)


def _info_nce_chunked(q, k, temperature, negatives, axis_name, chunk_size, valid) -> Array:
    """:func:`info_nce` streamed: in-batch keys around the ring, or the queue in column tiles."""
    positive = jnp.sum(q * k, axis=-1) / temperature  # [n]
    if negatives is None:
        lse, _ = streaming.softmax_lse(q, k, 1.0 / temperature, chunk_size=chunk_size, axis_name=axis_name,
                                       row_mask=valid, col_mask=valid)
    else:
        loss_inputs.negatives(negatives, q.shape[1], q.shape)
        lse, _ = streaming.softmax_lse(q, _l2_normalize(negatives), 1.0 / temperature,
                                       chunk_size=chunk_size, axis_name=axis_name, ring=False)
        lse = jnp.logaddexp(lse, positive)  # the positive is column 0 of [positive, queue]
    _, devices = sharding.axis_index_and_size(axis_name)
    per_row = loss_inputs.drop_rows(lse - positive, valid)
    return loss_inputs.global_mean(jnp.sum(per_row), valid, q.shape[0] * devices, axis_name)


def clip(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    *,
    logit_scale: ArrayLike,
    axis_name: str | None = None,
    chunk_size: int | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """CLIP's symmetric contrastive loss.

    Embeddings are L2-normalized; ``logits = exp(logit_scale) * image @ text.T`` over the global
    batch; the loss is the mean of the image-to-text and text-to-image cross-entropies with the
    matching pair as the label.

    Args:
      image_emb: ``[batch, dim]``.
      text_emb: ``[batch, dim]``, row i is the caption of image i.
      logit_scale: scalar, log of the inverse temperature (CLIP initialises it to log(1/0.07) and
        clamps the learned value at log(100); the clamp belongs to the training step).
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.
      chunk_size: ``None`` (default) builds the local rows x global columns logits at once;
        an int streams both directions in one sweep of ``chunk_size x chunk_size`` tiles (and
        around the device ring under ``axis_name``), for batches whose logits do not fit.
      where: optional bool ``[batch]``: the image-caption pairs that exist (an image without a
        caption: False). Both directions are then restricted to the valid pairs (rows and
        columns): this loss on the valid pairs alone, 0 if there are none.

    Returns:
      float32 scalar.
    """
    n, _ = loss_inputs.pair("clip", "image_emb", image_emb, "text_emb", text_emb)
    streaming.check_chunk_size("clip", chunk_size)
    valid = loss_inputs.check_where("clip", where, n)
    scale = jnp.exp(loss_inputs.scalar("clip", "logit_scale", logit_scale))
    a, b = _l2_normalize(image_emb), _l2_normalize(text_emb)
    index, devices = sharding.axis_index_and_size(axis_name)
    if chunk_size is not None:  # one sweep gives image->text (rows) and text->image (columns)
        row_lse, col_lse = streaming.softmax_lse(
            a, b, scale, chunk_size=chunk_size, axis_name=axis_name, col_lse=True, row_mask=valid, col_mask=valid)
        per_row = loss_inputs.drop_rows(row_lse + col_lse - 2.0 * scale * jnp.sum(a * b, axis=-1), valid)
        return loss_inputs.global_mean(jnp.sum(per_row), valid, n * devices, axis_name, 2)
    labels = index * n + jnp.arange(n)
    image_to_text = scale * _similarity(a, sharding.all_gather_rows(b, axis_name))  # [n, g]
    if axis_name is None:
        text_to_image = image_to_text.T  # the whole square is on hand: one matmul, not two
    else:
        text_to_image = scale * _similarity(b, sharding.all_gather_rows(a, axis_name))  # [n, g]
    gathered = loss_inputs.gather(valid, axis_name)
    per_row = sum(_cross_entropy(loss_inputs.restrict(logits, valid, gathered), labels)
                  for logits in (image_to_text, text_to_image))
    return loss_inputs.global_mean(jnp.sum(loss_inputs.drop_rows(per_row, valid)), valid, n * devices, axis_name, 2)


def siglip(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    *,
    logit_scale: ArrayLike,
    logit_bias: ArrayLike,
    axis_name: str | None = None,
    chunk_size: int | None = None,
    where: ArrayLike | None = None,
) -> Array:
    """SigLIP's pairwise sigmoid loss.

    Embeddings are L2-normalized; ``logits = exp(logit_scale) * image @ text.T + logit_bias``;
    labels are +1 for matching pairs and -1 for every other pair of the global batch;
    ``loss = -sum(log_sigmoid(label * logits)) / batch``.

    Args:
      image_emb: ``[batch, dim]``.
      text_emb: ``[batch, dim]``, row i is the caption of image i.
      logit_scale: scalar log-scale (SigLIP initialises it to log(10)).
      logit_bias: scalar bias (SigLIP initialises it to -10).
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.
      chunk_size: ``None`` (default) builds the local rows x global columns logits at once;
        an int streams the pairs in ``chunk_size x chunk_size`` tiles (and around the device
        ring under ``axis_name``), for global batches whose logits do not fit in memory.
      where: optional bool ``[batch]``: the image-caption pairs that exist; only pairs of two
        valid samples are summed, divided by the number of valid samples (0 if there are none).

    Returns:
      float32 scalar.
    """
    n, _ = loss_inputs.pair("siglip", "image_emb", image_emb, "text_emb", text_emb)
    streaming.check_chunk_size("siglip", chunk_size)
    valid = loss_inputs.check_where("siglip", where, n)
    scale = jnp.exp(loss_inputs.scalar("siglip", "logit_scale", logit_scale))
    bias = loss_inputs.scalar("siglip", "logit_bias", logit_bias)
    a, b = _l2_normalize(image_emb), _l2_normalize(text_emb)
    index, devices = sharding.axis_index_and_size(axis_name)
    g = n * devices
    if chunk_size is not None:
        total = streaming.sigmoid_sum(a, b, scale, bias, chunk_size=chunk_size, axis_name=axis_name,
                                      row_mask=valid, col_mask=valid)
        return loss_inputs.global_mean(total, valid, g, axis_name)
    logits = scale * _similarity(a, sharding.all_gather_rows(b, axis_name)) + bias  # [n, g]
    matching = jnp.arange(g)[None, :] == (index * n + jnp.arange(n))[:, None]
    labels = jnp.where(matching, 1.0, -1.0)
    terms = -jax.nn.log_sigmoid(labels * logits)
    if valid is not None:
        terms = jnp.where(valid[:, None] & loss_inputs.gather(valid, axis_name)[None, :], terms, 0.0)
    return loss_inputs.global_mean(jnp.sum(terms), valid, g, axis_name)


# --------------------------------------------------------------------------- redundancy reduction


def _batch_mean(x: Array, count: int, axis_name: str | None) -> Array:
    """Per-dimension mean over the global batch, ready to combine with ``x``'s rows: ``[n, d] -> [d]``."""
    mean = sharding.global_sum(jnp.sum(x, axis=0), axis_name) / count
    return sharding.use_with_rows(mean, x, axis_name)


def barlow_twins_terms(
    z1: ArrayLike, z2: ArrayLike, *, axis_name: str | None = None
) -> dict[str, Array]:
    """The two parts of the Barlow Twins loss before weighting.

    Returns ``{"on_diagonal": sum_i (1 - C_ii)^2, "off_diagonal": sum_{i != j} C_ij^2}`` where
    ``C`` is the cross-correlation matrix defined in :func:`barlow_twins`.
    """
    n, _ = loss_inputs.pair("barlow_twins", "z1", z1, "z2", z2)
    _, devices = sharding.axis_index_and_size(axis_name)
    g = n * devices

    def standardize(z: ArrayLike) -> Array:
        z = jnp.asarray(z, jnp.float32)
        centred = z - _batch_mean(z, g, axis_name)
        variance = _batch_mean(centred * centred, g, axis_name)  # biased, as BatchNorm
        return centred * lax.rsqrt(variance + _BN_EPS)

    z1n, z2n = standardize(z1), standardize(z2)
    c = sharding.global_sum(_similarity(z1n.T, z2n.T), axis_name) / g  # [dim, dim]
    return {
        "on_diagonal": jnp.sum((1.0 - jnp.diagonal(c)) ** 2),
        "off_diagonal": jnp.sum(_off_diagonal(c) ** 2),
    }


def barlow_twins(
    z1: ArrayLike, z2: ArrayLike, *, lambda_: float = 5e-3, axis_name: str | None = None
) -> Array:
    """Barlow Twins' redundancy-reduction loss.

    Each dimension is standardized over the global batch (biased variance, eps 1e-5: BatchNorm
    without affine); ``C = z1n.T @ z2n / batch`` is the ``[dim, dim]`` cross-correlation, summed
    over devices under ``axis_name``; the loss is
    ``sum_i (1 - C_ii)^2 + lambda_ * sum_{i != j} C_ij^2``.

    Args:
      z1, z2: the two views' projector outputs, ``[batch, dim]``.
      lambda_: weight of the redundancy (off-diagonal) term; the paper uses 5e-3 (0.0051).
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.

    Returns:
      float32 scalar.
    """
    terms = barlow_twins_terms(z1, z2, axis_name=axis_name)
    return terms["on_diagonal"] + lambda_ * terms["off_diagonal"]


def vicreg_terms(z1: ArrayLike, z2: ArrayLike, *, axis_name: str | None = None) -> dict[str, Array]:
    """The three VICReg terms before weighting, as defined in :func:`vicreg`.

    Returns ``{"invariance": ..., "variance": ..., "covariance": ...}``.
    """
    n, dim = loss_inputs.pair("vicreg", "z1", z1, "z2", z2)
    _, devices = sharding.axis_index_and_size(axis_name)
    g = n * devices
    if g < 2:
        raise ValueError(
            f"vicreg: needs a global batch of at least 2 for the unbiased variance, got z1 "
            f"{jnp.shape(z1)} on {devices} device(s)."
        )
    z1, z2 = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
    diff = z1 - z2
    invariance = sharding.global_sum(jnp.sum(diff * diff), axis_name) / (g * dim)

    def variance_and_covariance(z: Array) -> tuple[Array, Array]:
        centred = z - _batch_mean(z, g, axis_name)
        variance = sharding.global_sum(jnp.sum(centred * centred, axis=0), axis_name) / (g - 1)
        hinge = jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(variance + _VICREG_EPS)))
        cov = sharding.global_sum(_similarity(centred.T, centred.T), axis_name) / (g - 1)
        return hinge, jnp.sum(_off_diagonal(cov) ** 2) / dim

    var1, cov1 = variance_and_covariance(z1)
    var2, cov2 = variance_and_covariance(z2)
    return {"invariance": invariance, "variance": (var1 + var2) / 2, "covariance": cov1 + cov2}


def vicreg(
    z1: ArrayLike,
    z2: ArrayLike,
    *,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    axis_name: str | None = None,
) -> Array:
    """VICReg: variance-invariance-covariance regularization (Bardes et al., 2022).

    * invariance: mean squared error between the views, averaged over all elements;
    * variance: per branch, the mean over dimensions of ``relu(1 - sqrt(var + 1e-4))`` with the
      unbiased variance over the global batch; averaged over the two branches;
    * covariance: per branch, the sum of squared off-diagonal entries of the (N-1)-normalized
      covariance matrix, divided by dim; summed over the two branches.

    No normalization is applied to the embeddings (as in the paper).

    Args:
      z1, z2: the two views' expander outputs, ``[batch, dim]``; the global batch must be >= 2.
      sim_weight, var_weight, cov_weight: the paper's 25, 25, 1.
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.

    Returns:
      float32 scalar ``sim_weight * invariance + var_weight * variance + cov_weight * covariance``.
    """
    terms = vicreg_terms(z1, z2, axis_name=axis_name)
    return (
        sim_weight * terms["invariance"]
        + var_weight * terms["variance"]
        + cov_weight * terms["covariance"]
    )


# --------------------------------------------------------------------------- predictor / target


def _mean_target_cosine(fn: str, prediction: ArrayLike, target: ArrayLike, axis_name: str | None) -> Array:
    """Mean over the global batch of ``cos(prediction_i, stop_gradient(target_i))``, in float32."""
    n, _ = loss_inputs.pair(fn, "prediction", prediction, "target", target)
    _, devices = sharding.axis_index_and_size(axis_name)
    p = _l2_normalize(prediction)
    z = _l2_normalize(lax.stop_gradient(target))
    cosine = jnp.sum(p * z, axis=-1)  # [n]
    return loss_inputs.global_mean(jnp.sum(cosine), None, n * devices, axis_name)


def byol(prediction: ArrayLike, target: ArrayLike, *, axis_name: str | None = None) -> Array:
    """BYOL's regression loss (Grill et al., 2020, eq. 2), one direction.

    Both arrays are L2-normalized (``x / max(||x||, 1e-12)``) and the loss is the mean over the
    global batch of the squared distance between them,
    ``||q_i/||q_i|| - z_i/||z_i|| ||^2 = 2 - 2 * <q_i, z_i> / (||q_i|| ||z_i||)``.
    ``target`` passes through ``jax.lax.stop_gradient``: the target network's projection is never
    differentiated, and its gradient here is exactly zero. BYOL symmetrizes by adding the term
    with the views swapped, ``byol(q1, z2') + byol(q2, z1')``; that sum belongs to the trainer.

    Args:
      prediction: the online network's predictor output ``q``, ``[batch, dim]``.
      target: the target network's projection ``z'`` of the other view, ``[batch, dim]``; row i
        pairs with ``prediction[i]``.
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.

    Returns:
      float32 scalar in [0, 4]; 0 when every prediction points along its target.
    """
    return 2.0 - 2.0 * _mean_target_cosine("byol", prediction, target, axis_name)


def negative_cosine(prediction: ArrayLike, target: ArrayLike, *, axis_name: str | None = None) -> Array:
    """SimSiam's negative cosine similarity ``D(p, stopgrad(z))`` (Chen & He, 2021, eq. 1-3).

    ``D(p, z) = -(p / ||p||_2) . (z / ||z||_2)``, averaged over the global batch, with
    ``jax.lax.stop_gradient`` on ``target`` (SimSiam's stop-gradient; its gradient here is
    exactly zero). One direction: SimSiam's loss is
    ``negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2``, formed by the trainer.

    Args:
      prediction: the predictor output ``p``, ``[batch, dim]``.
      target: the other view's projection ``z``, ``[batch, dim]``; row i pairs with
        ``prediction[i]``.
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.

    Returns:
      float32 scalar in [-1, 1]; -1 when every prediction points along its target.
    """
    return -_mean_target_cosine("negative_cosine", prediction, target, axis_name)


# --------------------------------------------------------------------------- metrics


def positive_pair_accuracy(query: ArrayLike, key: ArrayLike, *, axis_name: str | None = None,
                           where: ArrayLike | None = None) -> Array:
    """In-batch top-1 retrieval accuracy: how often ``query[i]``'s most similar key is ``key[i]``.

    Cosine similarity against every key of the global batch; the metric a trainer logs beside a
    contrastive loss (average both directions for symmetric methods).

    Args:
      query, key: ``[batch, dim]`` paired embeddings.
      axis_name: mapped axis inside ``shard_map``/``pmap``; ``None`` when the batch is whole.
      where: optional bool ``[batch]``: only valid queries are scored, among valid keys.

    Returns:
      float32 scalar in [0, 1], the fraction over the (valid samples of the) global batch.
    """
    n, _ = loss_inputs.pair("positive_pair_accuracy", "query", query, "key", key)
    valid = loss_inputs.check_where("positive_pair_accuracy", where, n)
    q, k = _l2_normalize(query), _l2_normalize(key)
    index, devices = sharding.axis_index_and_size(axis_name)
    similarity = _similarity(q, sharding.all_gather_rows(k, axis_name))
    similarity = loss_inputs.restrict(similarity, valid, loss_inputs.gather(valid, axis_name))
    correct = (jnp.argmax(similarity, axis=-1) == index * n + jnp.arange(n)).astype(jnp.float32)
    correct = loss_inputs.drop_rows(correct, valid)
    return loss_inputs.global_mean(jnp.sum(correct), valid, n * devices, axis_name)
