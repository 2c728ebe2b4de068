"""Evaluation protocols on frozen features: pure functions of arrays (no model, no config).

Like :mod:`mmssl_jax.losses`, usable from any project: NumPy/JAX arrays in, a dict of floats out.

- :func:`linear_probe`: L2-regularized multinomial logistic regression, the strength chosen on a
  held-out part of the training split and refit on all of it (the SimCLR/CLIP protocol).
- :func:`knn_classify`: cosine similarity, temperature-weighted votes, k=20 and 200 (InstDisc).
- :func:`zero_shot_classify`: nearest class embedding.
- :func:`retrieval_recall`: image-text R@1/5/10 both ways.
- :func:`ablate_captions`: captions removed, shuffled or replaced by noise (modality ablations).
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_L2_GRID = tuple(float(x) for x in np.logspace(-6, 0, 7))
"""Regularization strengths the probe tries (on standardized features, mean cross-entropy)."""


def _check_features(name: str, x: np.ndarray, rows: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [n, dim] array, got shape {x.shape}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} has {x.shape[0]} rows but its labels have {rows}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values")
    return x.astype(np.float32)


def _check_labels(name: str, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return y.astype(np.int32)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``: the fraction of rows whose label is among the k best scores.

    A k at or above the number of classes is left out (it would be 1 by construction).
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {}
    for k in ks:
        if k == 1 or k < scores.shape[1]:
            out[f"top{k}"] = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
    return out


def _softmax_regression(l2: jax.Array, x: jax.Array, onehot: jax.Array, weights: jax.Array, iters: int):
    """Minimizes the ``weights``-weighted mean CE + l2/2 ||W||^2 (bias not decayed) by L-BFGS."""
    dim, classes = x.shape[1], onehot.shape[1]

    def loss(params):
        w, b = params
        ce = -jnp.sum(onehot * jax.nn.log_softmax(x @ w + b), axis=1)
        return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(w * w)

    # A backtracking (Armijo) line search: the same minimum as the default zoom search here, and
    # several times faster to compile and run under vmap.
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=20, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(loss)
    params = (jnp.zeros((dim, classes), jnp.float32), jnp.zeros((classes,), jnp.float32))

    def body(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    params, _ = jax.lax.fori_loop(0, iters, body, (params, opt.init(params)))
    return params


@functools.partial(jax.jit, static_argnames=("iters",))
def _fit_grid(l2s, x, onehot, weights, iters):
    return jax.vmap(_softmax_regression, in_axes=(0, None, None, None, None))(l2s, x, onehot, weights, iters)


class LinearProbe(namedtuple("LinearProbe", "mean std w b val_top1 l2")):
    """A fitted probe (:func:`fit_linear_probe`): standardization, weights ``[dim, classes]``,
    bias, the held-out top-1 at the chosen strength and that strength."""

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores ``[n, classes]`` of features ``[n, dim]``."""
        return np.asarray((np.asarray(x, np.float32) - self.mean) / self.std @ self.w + self.b)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 accuracy on features ``x`` with labels ``y``."""
        return topk_accuracy(self.scores(x), _check_labels("y", y), ks=(1,))["top1"]


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    iters: int = 300,
    seed: int = 0,
) -> LinearProbe:
    """The probe of :func:`linear_probe`, fit once and kept, to score several test sets (the
    robustness curves score one probe on the test set at every corruption rate)."""
    train_y = _check_labels("train_y", train_y)
    train_x = _check_features("train_x", train_x, len(train_y))
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_classes = int(num_classes or train_y.max() + 1)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    l2s = jnp.asarray(sorted(l2_grid), jnp.float32)
    n = len(train_y)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 1:
        raise ValueError(f"linear_probe needs at least 2 training rows, got {n}")
    val = perm[:n_val]
    fit_weights = np.ones(n, np.float32)
    fit_weights[val] = 0.0  # the held-out rows weigh nothing in the fit
    x, y = jnp.asarray((train_x - mean) / std), jax.nn.one_hot(train_y, num_classes, dtype=jnp.float32)
    ws, bs = _fit_grid(l2s, x, y, jnp.asarray(fit_weights), iters)
    val_logits = np.asarray(jnp.einsum("nd,gdc->gnc", x[val], ws) + bs[:, None])
    val_acc = np.mean(val_logits.argmax(-1) == train_y[val][None], axis=1)
    best = int(np.flatnonzero(val_acc == val_acc.max())[-1])  # the strongest of the best
    # Refit on every training row; the same shapes as the search, so nothing is recompiled.
    ws, bs = _fit_grid(jnp.full_like(l2s, l2s[best]), x, y, jnp.ones(n, jnp.float32), iters)
    return LinearProbe(mean, std, np.asarray(ws[0]), np.asarray(bs[0]), float(val_acc[best]), float(l2s[best]))


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    iters: int = 300,
    seed: int = 0,
) -> dict[str, float]:
    """Linear probe on frozen features: top-1/top-5 on the test set.

    Features are standardized with the training mean and standard deviation. For each L2
    strength in ``l2_grid`` a multinomial logistic regression is fit by full-batch L-BFGS (all
    strengths at once, vmapped) on ``1 - val_fraction`` of the training rows (the rest weigh 0)
    and scored on the rest; the best strength (ties: the stronger) is refit on all training rows
    and scored on the test set.

    Returns:
      ``top1``, ``top5`` (test), ``val_top1`` (held-out, at the chosen strength) and ``l2``.
    """
    train_y, test_y = _check_labels("train_y", train_y), _check_labels("test_y", test_y)
    train_x = _check_features("train_x", train_x, len(train_y))
    test_x = _check_features("test_x", test_x, len(test_y))
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has dim {train_x.shape[1]} but test_x has dim {test_x.shape[1]}")
    num_classes = int(num_classes or max(train_y.max(), test_y.max()) + 1)
    probe = fit_linear_probe(train_x, train_y, num_classes=num_classes, l2_grid=l2_grid, val_fraction=val_fraction,
                             iters=iters, seed=seed)
    return {**topk_accuracy(probe.scores(test_x), test_y), "val_top1": probe.val_top1, "l2": probe.l2}


def l2_normalize(x: np.ndarray | jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm (float32; a zero row stays zero)."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_scores(test, train, train_y, k, temperature, num_classes):
    sims = l2_normalize(test) @ l2_normalize(train).T
    top, idx = jax.lax.top_k(sims, k)
    votes = jax.nn.one_hot(train_y[idx], num_classes) * jnp.exp(top / temperature)[..., None]
    return votes.sum(1)


def knn_classify(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> dict[str, float]:
    """Weighted kNN (Wu et al. 2018, InstDisc): each test row's k most cosine-similar training
    rows vote for their label with weight ``exp(similarity / temperature)``.

    Returns ``k{K}_top1`` (and ``k{K}_top5`` with more than 5 classes) for each K (clipped to
    the number of training rows).
    """
    train_y, test_y = _check_labels("train_y", train_y), _check_labels("test_y", test_y)
    train_x = _check_features("train_x", train_x, len(train_y))
    test_x = _check_features("test_x", test_x, len(test_y))
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has dim {train_x.shape[1]} but test_x has dim {test_x.shape[1]}")
    num_classes = int(num_classes or max(train_y.max(), test_y.max()) + 1)
    out = {}
    for k in ks:
        k_eff = min(int(k), len(train_y))
        scores = np.concatenate([
            np.asarray(_knn_scores(test_x[i : i + chunk], train_x, train_y, k_eff, temperature, num_classes))
            for i in range(0, len(test_y), chunk)
        ])
        out.update({f"k{k}_{name}": v for name, v in topk_accuracy(scores, test_y).items()})
    return out


def zero_shot_classify(image_z: np.ndarray, class_z: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Zero-shot: each image's class is the class embedding nearest by cosine similarity.

    Args:
      image_z: ``[n, dim]`` image embeddings in the joint space.
      class_z: ``[classes, dim]`` class embeddings (e.g. the mean of prompt embeddings).
      labels: ``[n]`` true classes.
    """
    labels = _check_labels("labels", labels)
    image_z = _check_features("image_z", image_z, len(labels))
    class_z = _check_features("class_z", class_z)
    if image_z.shape[1] != class_z.shape[1]:
        raise ValueError(f"image_z has dim {image_z.shape[1]} but class_z has dim {class_z.shape[1]}")
    scores = np.asarray(l2_normalize(image_z) @ l2_normalize(class_z).T)
    return topk_accuracy(scores, labels)


def retrieval_recall(
    image_z: np.ndarray,
    text_z: np.ndarray,
    text_to_image: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Image-text retrieval recall at K, both directions, by cosine similarity.

    ``i2t_r@K``: the fraction of images with at least one of their captions among the K most
    similar captions. ``t2i_r@K``: the fraction of captions whose image is among the K most
    similar images. Ties count against the query: a rank is the number of wrong candidates at
    least as similar as the best correct one (so identical embeddings retrieve nothing).

    Args:
      image_z: ``[n_images, dim]``.
      text_z: ``[n_texts, dim]``.
      text_to_image: ``[n_texts]``, the image each caption belongs to.
    """
    text_to_image = _check_labels("text_to_image", text_to_image)
    text_z = _check_features("text_z", text_z, len(text_to_image))
    image_z = _check_features("image_z", image_z)
    if image_z.shape[1] != text_z.shape[1]:
        raise ValueError(f"image_z has dim {image_z.shape[1]} but text_z has dim {text_z.shape[1]}")
    if text_to_image.max() >= len(image_z):
        raise ValueError(f"text_to_image refers to image {text_to_image.max()} of {len(image_z)}")
    img, txt = np.asarray(l2_normalize(image_z)), np.asarray(l2_normalize(text_z))
    t2i_rank = np.empty(len(txt), np.int64)
    for i in range(0, len(txt), chunk):
        sims = txt[i : i + chunk] @ img.T
        correct = sims[np.arange(len(sims)), text_to_image[i : i + chunk]]
        t2i_rank[i : i + chunk] = (sims >= correct[:, None]).sum(1) - 1  # less the correct image
    i2t_rank = np.empty(len(img), np.int64)
    for i in range(0, len(img), chunk):
        sims = img[i : i + chunk] @ txt.T
        owns = text_to_image[None, :] == np.arange(i, i + len(sims))[:, None]
        best = np.where(owns, sims, -np.inf).max(1)  # -inf for an image without captions: never found
        i2t_rank[i : i + chunk] = ((sims >= best[:, None]) & ~owns).sum(1) + np.isinf(best) * len(txt)
    out = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float(np.mean(i2t_rank < k))
        out[f"t2i_r@{k}"] = float(np.mean(t2i_rank < k))
    return out


# ----------------------------------------------------------------------------- modality ablations

CAPTION_ABLATIONS = ("captions", "removed", "shuffled", "noise")
"""How captions are changed at evaluation: kept; removed (a zero input, what a model that fuses
the modalities would see for a missing caption); shuffled across images; replaced by Gaussian
noise of the same norm."""


def ablate_captions(embeddings: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """``[n, dim]`` caption embeddings changed as ``mode`` (one of :data:`CAPTION_ABLATIONS`) says."""
    embeddings = np.asarray(embeddings, np.float32)
    rng = np.random.default_rng(seed)
    if mode == "captions":
        return embeddings
    if mode == "removed":
        return np.zeros_like(embeddings)
    if mode == "shuffled":
        # A random derangement (a random cycle), so no image keeps its own caption.
        order = rng.permutation(len(embeddings))
        out = np.empty_like(embeddings)
        out[order] = embeddings[np.roll(order, -1)]
        return out
    if mode == "noise":
        noise = rng.standard_normal(embeddings.shape).astype(np.float32)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return noise / np.linalg.norm(noise, axis=1, keepdims=True) * norms
    raise ValueError(f"unknown caption ablation {mode!r}; known: {CAPTION_ABLATIONS}")
