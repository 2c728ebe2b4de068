"""Evaluation of frozen representations: linear probe, kNN, zero-shot, retrieval, modality ablations.

Read top to bottom:

1. **Protocols on features** (pure functions of arrays, no model): :func:`linear_probe`
   (L2-regularized multinomial logistic regression, the regularization chosen on a held-out part
   of the training split and refit on all of it: the SimCLR/CLIP protocol), :func:`knn_classify`
   (cosine similarity, temperature-weighted votes, k=20 and 200: the InstDisc protocol),
   :func:`zero_shot_classify`, :func:`retrieval_recall` (R@1/5/10 both ways, the COCO 5k
   protocol).
2. **Features from a trained model**: :class:`FrozenModel` runs the encoders and heads in eval
   mode, batched and sharded over the mesh; :class:`ImageSet` streams (and caches) a dataset's
   centre-cropped images; :func:`class_prompt_embeddings` embeds zero-shot prompts with the
   sentence encoder that embedded the training captions.
3. **Evaluators**, built once from ``config.eval`` and run during training (every
   ``eval.every`` steps and after the last) or on a checkpoint (:func:`evaluate_checkpoint`,
   ``configs/linear_probe.py``): each has ``run(params, batch_stats) -> metrics`` and caches its
   inputs (images, caption embeddings, prompt embeddings).

Representations: probes and kNN read the encoder output ``h`` (what SimCLR and CLIP probe);
zero-shot and retrieval compare head outputs ``z`` in the joint space.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmssl_jax import sharding

_log = logging.getLogger(__name__)

# ============================================================================ protocols on features

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
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_classes = int(num_classes or max(train_y.max(), test_y.max()) + 1)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    standardize = lambda x: (x - mean) / std  # noqa: E731
    onehot = lambda y: jax.nn.one_hot(y, num_classes, dtype=jnp.float32)  # noqa: E731
    l2s = jnp.asarray(sorted(l2_grid), jnp.float32)

    n = len(train_y)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 1:
        raise ValueError(f"linear_probe needs at least 2 training rows, got {n}")
    val = perm[:n_val]
    fit_weights = np.ones(n, np.float32)
    fit_weights[val] = 0.0  # the held-out rows weigh nothing in the fit
    x, y = jnp.asarray(standardize(train_x)), onehot(train_y)
    ws, bs = _fit_grid(l2s, x, y, jnp.asarray(fit_weights), iters)
    val_logits = np.asarray(jnp.einsum("nd,gdc->gnc", x[val], ws) + bs[:, None])
    val_acc = np.mean(val_logits.argmax(-1) == train_y[val][None], axis=1)
    best = int(np.flatnonzero(val_acc == val_acc.max())[-1])  # the strongest of the best
    # Refit on every training row; the same shapes as the search, so nothing is recompiled.
    ws, bs = _fit_grid(jnp.full_like(l2s, l2s[best]), x, y, jnp.ones(n, jnp.float32), iters)
    scores = np.asarray(standardize(test_x) @ ws[0] + bs[0])
    return {**topk_accuracy(scores, test_y), "val_top1": float(val_acc[best]), "l2": float(l2s[best])}


def _normalize(x: np.ndarray | jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_scores(test, train, train_y, k, temperature, num_classes):
    sims = _normalize(test) @ _normalize(train).T
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
    scores = np.asarray(_normalize(image_z) @ _normalize(class_z).T)
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
    img, txt = np.asarray(_normalize(image_z)), np.asarray(_normalize(text_z))
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


# ============================================================================ modality ablations

CAPTION_ABLATIONS = ("captions", "removed", "shuffled", "noise")
"""How captions are changed at evaluation: kept; removed (the zero input a dropped modality
gets in training, :func:`drop_modality`); shuffled across images; replaced by Gaussian noise of
the same norm."""


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


def drop_modality(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Training switch: zeroes each sample's input with probability ``rate`` (a missing modality).

    The same zero input is what :func:`ablate_captions` ``"removed"`` feeds at evaluation.
    """
    if rate <= 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x, jnp.zeros_like(x))


# ============================================================================ features from a model


class FrozenModel:
    """A trained :class:`~mmssl_jax.models.multiview.MultiViewModel` in eval mode on the mesh.

    ``images(variables, uint8 [B, S, S, 3]) -> (h, z)`` and ``texts(variables, [B, d]) -> (h, z)``
    are jitted once, the batch sharded over the mesh's data axis, outputs float32.
    """

    def __init__(self, model, mesh: jax.sharding.Mesh, dtype: Any = jnp.float32):
        self.model, self.mesh, self.dtype = model, mesh, jnp.dtype(dtype)
        self.modalities = {m for _, m in model.view_modality}
        batch = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)

        def represent(variables, x, modality):
            if jnp.issubdtype(x.dtype, jnp.integer):
                x = x.astype(jnp.float32) / 255.0
            h, z = model.apply(variables, x.astype(self.dtype), modality, method=model.represent)
            return h.astype(jnp.float32), z.astype(jnp.float32)

        self._fns = {
            m: jax.jit(functools.partial(represent, modality=m), in_shardings=(rep, batch), out_shardings=batch)
            for m in self.modalities
        }

    def __call__(self, variables, x: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """``(h, z)`` for this process's rows ``x`` (a multiple of its local devices)."""
        if modality not in self._fns:
            raise ValueError(f"the model has no {modality!r} branch; it has {sorted(self._fns)}")
        h, z = self._fns[modality](variables, sharding.host_batch_to_global(np.asarray(x), self.mesh))
        return _local_rows(h), _local_rows(z)

    def texts(self, variables, embeddings: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Text-head embeddings ``z`` of precomputed sentence embeddings (every process the same rows)."""
        embeddings = np.asarray(embeddings, np.float32)
        step = _round_up(batch_size, jax.local_device_count())
        out = []
        for i in range(0, len(embeddings), step):
            chunk = embeddings[i : i + step]
            pad = _round_up(len(chunk), jax.local_device_count()) - len(chunk)
            chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), np.float32)])
            out.append(self(variables, chunk, "text")[1][: len(chunk) - pad])
        return np.concatenate(out)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def _gather_processes(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class _Progress:
    """Log lines with rate and ETA every few seconds (evaluation passes can be long)."""

    def __init__(self, what: str, total: int, every_s: float = 10.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every_s or done >= self.total:
            rate = done / max(now - self.start, 1e-9)
            eta = (self.total - done) / max(rate, 1e-9)
            _log.info("%s: %d/%d (%.0f%%), %.0f/s, ETA %.0f s", self.what, done, self.total,
                      100 * done / max(self.total, 1), rate, eta)
            self.last = now


class ImageSet:
    """One split's evaluation images (centre crop), each process its share, in fixed order.

    The images are kept in memory after the first pass when they fit in ``cache_mb``, so
    repeated evaluations during training decode them once.

    Attributes:
      source: the random-access records (``image`` and the ``keep`` fields).
      fields: ``keep`` fields of every record, in the dataset's order (after :meth:`features`).
    """

    def __init__(self, source: Sequence[Mapping[str, Any]], *, image_size: int, batch_size: int,
                 keep: Sequence[str] = (), cache_mb: float = 2048, name: str = "images"):
        from mmssl_jax.data import augment

        if len(source) == 0:
            raise ValueError(f"{name}: the evaluation split is empty")
        self.source, self.keep, self.name = source, tuple(keep), name
        self.cfg = augment.eval_config(image_size)
        processes = jax.process_count()
        self.batch_size = _round_up(max(batch_size // processes, 1), jax.local_device_count())
        per_process = -(-len(source) // processes)
        self.pad_to = _round_up(per_process, self.batch_size)
        self._cached: list[dict[str, np.ndarray]] | None = None
        bytes_needed = self.pad_to * image_size * image_size * 3
        self._cache_ok = bytes_needed <= cache_mb * 2**20
        # Original record index of each row this process reads (-1: padding).
        p = jax.process_index()
        local = np.arange(p, len(source), processes)
        self._index = np.concatenate([local, -np.ones(self.pad_to - len(local), np.int64)])

    def __len__(self) -> int:
        return len(self.source)

    def batches(self):
        if self._cached is not None:
            yield from self._cached
            return
        from mmssl_jax.data import pipeline

        ds = pipeline.eval_dataset(self.source, batch_size=self.batch_size, cfg=self.cfg, keep=self.keep,
                                   pad_to=self.pad_to)
        cache = [] if self._cache_ok else None
        for batch in ds:
            batch = {k: np.asarray(v) for k, v in batch.items()}
            if cache is not None:
                cache.append(batch)
            yield batch
        if cache is not None:
            self._cached = cache

    def features(self, frozen: FrozenModel, variables) -> dict[str, np.ndarray]:
        """``{"h", "z"}`` and the ``keep`` fields, for every record in the dataset's order
        (records whose image could not be decoded are dropped, ``index`` says which are left)."""
        out: dict[str, list] = {"h": [], "z": [], "mask": [], **{k: [] for k in self.keep}}
        progress = _Progress(f"features of {self.name}", self.pad_to)
        done = 0
        for batch in self.batches():
            h, z = frozen(variables, batch["image"], "image")
            out["h"].append(h)
            out["z"].append(z)
            out["mask"].append(batch["mask"])
            for k in self.keep:
                out[k].append(batch[k])
            done += len(batch["mask"])
            progress.update(done)
        arrays = {k: _gather_processes(np.concatenate(v)) for k, v in out.items()}
        index = _gather_processes(self._index)
        keep = (index >= 0) & arrays.pop("mask").astype(bool)
        order = np.argsort(index[keep], kind="stable")
        result = {k: v[keep][order] for k, v in arrays.items()}
        result["index"] = index[keep][order]
        return result


def caption_table(source: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """All precomputed caption embeddings of a captioned split: ``(embeddings [T, d] float32,
    text_to_image [T])``, image i's captions in order."""
    embeddings, owners = [], []
    for i in range(len(source)):
        e = np.asarray(source[i]["caption_embeddings"], np.float32)
        embeddings.append(e)
        owners.append(np.full(len(e), i, np.int32))
    return np.concatenate(embeddings), np.concatenate(owners)


ZERO_SHOT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
)
"""Prompt templates averaged for zero-shot classification (a few of CLIP's ImageNet templates)."""


def class_prompt_embeddings(class_names: Sequence[str], encoder, templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
                            ) -> np.ndarray:
    """Sentence embeddings ``[classes, templates, d]`` of every class prompt.

    ``encoder`` is a :class:`~mmssl_jax.text.SentenceEncoder`, the one that embedded the training
    captions. Underscores in class names become spaces (``"aquarium_fish"``).
    """
    prompts = [t.format(str(c).replace("_", " ")) for c in class_names for t in templates]
    emb = np.asarray(encoder.encode(prompts, batch_size=256), np.float32)
    return emb.reshape(len(class_names), len(templates), -1)


def class_embeddings(frozen: FrozenModel, variables, prompt_embeddings: np.ndarray) -> np.ndarray:
    """CLIP's prompt ensembling: each prompt through the text head, normalized, averaged per class,
    normalized again: ``[classes, templates, d] -> [classes, dim]``."""
    classes, templates, d = prompt_embeddings.shape
    z = frozen.texts(variables, prompt_embeddings.reshape(-1, d))
    z = np.asarray(_normalize(z)).reshape(classes, templates, -1).mean(1)
    return np.asarray(_normalize(z))


# ============================================================================ evaluators


def _variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _load(name: str, split: str, data_dir: str | None, *, labelled: str | None = None):
    """A split of a prepared dataset or a classification path (npz, image folder, CIFAR files)."""
    from mmssl_jax.data import builders

    if labelled is not None:
        return builders.load_classification(name, split, data_dir=data_dir or None, label_key=labelled)
    return builders.load_source(name, split, data_dir=data_dir or None)


def _text_model(name: str, data_dir: str | None, default: str) -> str:
    """The sentence model that embedded a dataset's captions (its metadata), else ``default``."""
    from mmssl_jax.data import builders

    try:
        return str(builders.open_builder(name, data_dir or None).info.metadata.get("text_model", default))
    except Exception:  # noqa: BLE001 - a path or an unprepared dataset: use the configured model
        return default


@functools.lru_cache(maxsize=2)
def _sentence_encoder(name: str):
    from mmssl_jax.text import SentenceEncoder

    return SentenceEncoder.from_pretrained(name, devices=jax.local_devices()[:1])


class _Head(Sequence):
    """The first ``n`` records of a random-access source."""

    def __init__(self, source: Sequence, n: int):
        self.source, self.n = source, int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.source[index]


class ClassificationEval:
    """Linear probe, kNN and zero-shot on one labelled dataset (train split -> test split)."""

    def __init__(self, ec: ml_collections.ConfigDict, frozen: FrozenModel, *, protocols: Sequence[str],
                 image_size: int, text_model: str):
        self.ec, self.frozen, self.protocols = ec, frozen, tuple(protocols)
        self.prefix = ec.get("name") or Path(str(ec.dataset)).stem.split("/")[0]
        label_key = ec.get("label_key", "label")
        kw = dict(image_size=image_size, batch_size=ec.batch_size, keep=("label",), cache_mb=ec.cache_mb)
        test = _load(ec.dataset, ec.test_split, ec.data_dir, labelled=label_key)
        self.class_names = test.class_names
        self.test = ImageSet(test, name=f"{self.prefix} {ec.test_split}", **kw)
        self.train = None
        if {"linear_probe", "knn"} & set(self.protocols):
            train = _load(ec.dataset, ec.train_split, ec.data_dir, labelled=label_key)
            if ec.get("max_train") and len(train) > ec.max_train:
                train = _Head(train, ec.max_train)
            self.train = ImageSet(train, name=f"{self.prefix} {ec.train_split}", **kw)
        self.prompts = None
        if "zero_shot" in self.protocols:
            if "text" not in frozen.modalities:
                raise ValueError("eval protocol 'zero_shot' needs a model with a text branch")
            encoder = _sentence_encoder(text_model)
            self.prompts = class_prompt_embeddings(self.class_names, encoder, tuple(ec.templates))

    def run(self, params, batch_stats) -> dict[str, float]:
        variables = _variables(params, batch_stats)
        test = self.test.features(self.frozen, variables)
        metrics: dict[str, float] = {}
        if self.train is not None:
            train = self.train.features(self.frozen, variables)
            rep = self.ec.get("representation", "h")
            if "linear_probe" in self.protocols:
                probe = linear_probe(train[rep], train["label"], test[rep], test["label"],
                                     num_classes=len(self.class_names), l2_grid=tuple(self.ec.probe_l2),
                                     iters=self.ec.probe_iters, seed=0)
                metrics.update({f"linear_probe/{k}": v for k, v in probe.items()})
            if "knn" in self.protocols:
                knn = knn_classify(train[rep], train["label"], test[rep], test["label"], ks=tuple(self.ec.knn_k),
                                   temperature=self.ec.knn_temperature, num_classes=len(self.class_names))
                metrics.update({f"knn/{k}": v for k, v in knn.items()})
        if self.prompts is not None:
            classes = class_embeddings(self.frozen, variables, self.prompts)
            metrics.update({f"zero_shot/{k}": v for k, v in zero_shot_classify(test["z"], classes, test["label"]).items()})
        return {f"eval/{self.prefix}/{k}": v for k, v in metrics.items()}


class RetrievalEval:
    """Image-text retrieval R@1/5/10 on a captioned split, and the caption ablations."""

    def __init__(self, ec: ml_collections.ConfigDict, frozen: FrozenModel, *, image_size: int,
                 ablations: bool, ablation_label: str | None):
        if "text" not in frozen.modalities:
            raise ValueError("eval protocol 'retrieval' needs a model with a text branch")
        self.ec, self.frozen, self.ablations = ec, frozen, ablations
        self.prefix = ec.get("name") or str(ec.dataset).split("/")[0]
        source = _load(ec.dataset, ec.split, ec.data_dir)
        self.captions, self.owners = caption_table(source)
        self.label_key = ablation_label if ablations and ablation_label in _features_of(source) else None
        self.images = ImageSet(source, image_size=image_size, batch_size=ec.batch_size,
                               keep=(self.label_key,) if self.label_key else (), cache_mb=ec.cache_mb,
                               name=f"{self.prefix} {ec.split}")
        first = np.r_[0, np.flatnonzero(np.diff(self.owners)) + 1]  # each image's first caption
        self.first_caption = self.captions[first]

    def run(self, params, batch_stats) -> dict[str, float]:
        variables = _variables(params, batch_stats)
        feats = self.images.features(self.frozen, variables)
        if len(feats["index"]) != len(self.images):
            raise ValueError(f"{self.prefix}: {len(self.images) - len(feats['index'])} images could not be decoded")
        out = {}
        text_z = self.frozen.texts(variables, self.captions)
        out.update({f"retrieval/{k}": v for k, v in retrieval_recall(feats["z"], text_z, self.owners).items()})
        if self.ablations:
            out.update(self._ablations(variables, feats))
        return {f"eval/{self.prefix}/{k}": v for k, v in out.items()}

    def _ablations(self, variables, feats) -> dict[str, float]:
        """How each metric moves when the captions are removed, shuffled or replaced by noise.

        Retrieval uses every caption so changed; the fused probe and kNN (when the split has a
        label) read ``[normalize(h_image), normalize(z_text)]`` of each image and its first caption.
        """
        out = {}
        n = len(self.first_caption)
        for mode in CAPTION_ABLATIONS[1:]:
            text_z = self.frozen.texts(variables, ablate_captions(self.captions, mode, seed=1))
            for k, v in retrieval_recall(feats["z"], text_z, self.owners, ks=(1, 5)).items():
                out[f"ablation/{mode}/retrieval/{k}"] = v
        if self.label_key:
            labels = feats[self.label_key].astype(np.int32)
            image_part = np.asarray(_normalize(feats["h"]))
            split = np.random.default_rng(0).permutation(n)
            tr, te = split[: n // 2], split[n // 2:]
            for mode in CAPTION_ABLATIONS:
                text_z = self.frozen.texts(variables, ablate_captions(self.first_caption, mode, seed=1))
                fused = np.concatenate([image_part, np.asarray(_normalize(text_z))], axis=1)
                probe = linear_probe(fused[tr], labels[tr], fused[te], labels[te], iters=self.ec.probe_iters)
                knn = knn_classify(fused[tr], labels[tr], fused[te], labels[te], ks=(20,))
                out[f"ablation/{mode}/fused_probe_top1"] = probe["top1"]
                out[f"ablation/{mode}/fused_knn20_top1"] = knn["k20_top1"]
            probe = linear_probe(image_part[tr], labels[tr], image_part[te], labels[te], iters=self.ec.probe_iters)
            out["ablation/image_only/probe_top1"] = probe["top1"]
        return out


def _features_of(source) -> set[str]:
    try:
        return set(source[0].keys())
    except Exception:  # noqa: BLE001
        return set()


IMAGE_PROTOCOLS = ("linear_probe", "knn")
TEXT_PROTOCOLS = ("zero_shot", "retrieval")
PROTOCOLS = IMAGE_PROTOCOLS + TEXT_PROTOCOLS


class Evaluation:
    """Every evaluator a config asks for; ``run(params, batch_stats)`` returns all their metrics.

    Built once (datasets opened, prompt embeddings computed, functions jitted); each run extracts
    features with the given parameters.
    """

    def __init__(self, config: ml_collections.ConfigDict, model, mesh: jax.sharding.Mesh):
        ec = config.eval
        protocols = tuple(ec.protocols)
        unknown = sorted(set(protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"config.eval.protocols: unknown {unknown}; known: {list(PROTOCOLS)}")
        self.frozen = FrozenModel(model, mesh, config.get("dtype", "float32"))
        image_size = ec.get("image_size") or config.input.image_size
        data_dir = config.input.get("data_dir", "")
        cls_ec = _with(ec.classification, dataset=ec.classification.dataset or config.input.name,
                       data_dir=ec.classification.data_dir or data_dir, batch_size=ec.batch_size,
                       cache_mb=ec.cache_mb, probe_l2=tuple(ec.probe_l2) or DEFAULT_L2_GRID,
                       probe_iters=ec.probe_iters, knn_k=ec.knn_k, knn_temperature=ec.knn_temperature,
                       templates=tuple(ec.templates) or ZERO_SHOT_TEMPLATES)
        text_model = _text_model(config.input.name, data_dir, ec.text_model)
        self.evaluators: list[Any] = []
        cls_protocols = [p for p in protocols if p in ("linear_probe", "knn", "zero_shot")]
        if cls_protocols:
            self.evaluators.append(ClassificationEval(cls_ec, self.frozen, protocols=cls_protocols,
                                                      image_size=image_size, text_model=text_model))
        if "retrieval" in protocols:
            ret_ec = _with(ec.retrieval, dataset=ec.retrieval.dataset or config.input.name,
                           data_dir=ec.retrieval.data_dir or data_dir, batch_size=ec.batch_size,
                           cache_mb=ec.cache_mb, probe_iters=ec.probe_iters)
            self.evaluators.append(RetrievalEval(ret_ec, self.frozen, image_size=image_size,
                                                 ablations=ec.ablations, ablation_label=ec.classification.label_key))

    def run(self, params, batch_stats) -> dict[str, float]:
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        for evaluator in self.evaluators:
            metrics.update(evaluator.run(params, batch_stats))
        if self.evaluators:
            metrics["eval/seconds"] = time.perf_counter() - start
        return metrics


def _with(cd: ml_collections.ConfigDict, **kwargs) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(cd.to_dict())
    for k, v in kwargs.items():
        out[k] = v
    return out


# ============================================================================ a checkpoint, on its own

MODEL_KEYS = ("views", "encoders", "heads", "learned_scalars", "moco")
"""Config sections that define the parameters a checkpoint holds."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was trained with a different model than the config expects."""


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [f"{path}: checkpoint {a!r} vs config {b!r}"]


def restore_for_eval(checkpoint_dir: str | Path, step: int | None = None,
                     expected: ml_collections.ConfigDict | None = None):
    """Loads a training checkpoint's config and parameters.

    Args:
      checkpoint_dir: a training workdir (or its ``checkpoints`` folder).
      step: a saved step; ``None`` or a negative value: the latest.
      expected: a training config the checkpoint must match in :data:`MODEL_KEYS`.

    Returns:
      ``(train_config, step, params, batch_stats)``.

    Raises:
      FileNotFoundError: no checkpoint there (or not that step).
      CheckpointMismatchError: the checkpoint's model differs from ``expected``, naming the keys.
    """
    import orbax.checkpoint as ocp

    root = Path(checkpoint_dir).expanduser().absolute()
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {root} (config.checkpoint_dir)")
    manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(create=False, read_only=True))
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{root} holds no checkpoint")
    step = max(steps) if step is None or step < 0 else int(step)
    if step not in steps:
        raise FileNotFoundError(f"{root} has no checkpoint at step {step}; it has {sorted(steps)}")
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    train_config = ml_collections.ConfigDict(saved)
    if expected is not None:
        diffs = _diff({k: saved.get(k) for k in MODEL_KEYS},
                      {k: (expected[k].to_dict() if hasattr(expected.get(k), "to_dict") else expected.get(k))
                       for k in MODEL_KEYS})
        if diffs:
            sections = sorted({d.split(".")[0].split(":")[0] for d in diffs})
            raise CheckpointMismatchError(
                f"the checkpoint in {root} was trained with a different model than config.train "
                f"({expected.get('method', '?')}); they differ in {', '.join(sections)}: "
                + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
            )
    # The state as saved (no target tree): only params and batch statistics are used.
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return train_config, step, state["params"], state.get("batch_stats") or {}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | Path | None = None) -> dict[str, float]:
    """Evaluates a training checkpoint as ``configs/linear_probe.py`` describes.

    The model is rebuilt from the config saved in the checkpoint; ``config.eval`` (protocols,
    datasets) replaces the training run's. Metrics go to TensorBoard and ``eval_summary.json``
    in ``workdir`` (default: ``<checkpoint_dir>/eval``).
    """
    if not config.get("checkpoint_dir"):
        raise ValueError("config.checkpoint_dir: set it to a training workdir (--config.checkpoint_dir=runs/...)")
    expected = config.get("train") if config.get("train") and config.train.get("views") else None
    train_config, step, params, batch_stats = restore_for_eval(config.checkpoint_dir, config.get("step"), expected)
    train_config.unlock()
    train_config.eval = ml_collections.ConfigDict(config.eval.to_dict())
    if config.get("dtype"):
        train_config.dtype = config.dtype
    from mmssl_jax import train

    mesh = sharding.make_mesh()
    evaluation = Evaluation(train_config, train.build_model(train_config), mesh)
    replicated = sharding.replicated(mesh)
    params, batch_stats = jax.device_put((params, batch_stats), replicated)
    metrics = evaluation.run(params, batch_stats)
    workdir = Path(workdir) if workdir else Path(config.checkpoint_dir) / "eval"
    write_metrics(workdir, step, metrics)
    print(format_summary(f"Evaluated {train_config.get('method', 'model')} step {step}", metrics))
    return metrics


def write_metrics(workdir: Path, step: int, metrics: Mapping[str, float], writer=None) -> None:
    """TensorBoard scalars (through ``writer``, default a new clu writer in ``workdir``) and
    ``eval_summary.json`` (one entry per evaluated step)."""
    if jax.process_index() != 0:
        return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if writer is None:
        from clu import metric_writers

        writer = metric_writers.create_default_writer(str(workdir))
    writer.write_scalars(step, dict(metrics))
    writer.flush()
    path = workdir / "eval_summary.json"
    history = json.loads(path.read_text()) if path.exists() else {}
    history[str(step)] = {k: float(v) for k, v in metrics.items()}
    path.write_text(json.dumps(history, indent=1, sort_keys=True))


def format_summary(title: str, metrics: Mapping[str, float]) -> str:
    shown = [f"{k.removeprefix('eval/')}={v:.4g}" for k, v in sorted(metrics.items())
             if "ablation" not in k and k != "eval/seconds"]
    return f"{title}: " + ", ".join(shown)
