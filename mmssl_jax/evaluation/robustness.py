"""Robustness curves: metrics as a function of a corruption rate, and MultiBench's summary scores.

Pure functions of arrays, like :mod:`~mmssl_jax.evaluation.protocols` (no Flax, no config):

- :func:`affected`: which items a corruption at rate ``r`` touches: the first ``round(r * n)`` of
  one seeded permutation, so the set at a rate contains the sets of every lower rate (a curve's
  points differ by the corruption alone, not by a fresh draw).
- :func:`corrupt_captions`: a fraction ``r`` of the images lose their captions (``missing``: the
  zero input), get another image's (``swapped``), or get Gaussian noise of the same norm
  (``noise``) in place of each caption embedding.
- :func:`corrupt_images`: every image at severity ``r``: additive Gaussian noise (sigma ``0.5 r``
  on [0, 1] pixels), Gaussian blur (sigma ``r * side / 8`` pixels, reflected borders), or a grey
  square covering the fraction ``r`` of the image at a seeded place.
- :func:`caption_curves`: retrieval and the fused (image + caption) probe and kNN along the
  caption corruptions, for any text branch (``text_fn``); the probe and kNN are fit on clean
  features once and scored on corrupted test features (MultiBench's test-time imperfections).
- :func:`relative_robustness`, :func:`effective_robustness`: the scores of MultiBench (Liang et
  al., 2021; ``eval_scripts/robustness.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from mmssl_jax.evaluation.protocols import fit_linear_probe, knn_classify, l2_normalize, retrieval_recall

RATES = tuple(round(0.1 * i, 1) for i in range(11))
"""MultiBench's grid: corruption rates 0, 0.1, ..., 1."""

CAPTION_CORRUPTIONS = ("caption_missing", "caption_swapped", "caption_noise")
IMAGE_CORRUPTIONS = ("image_noise", "image_blur", "image_occlusion")
CORRUPTIONS = CAPTION_CORRUPTIONS + IMAGE_CORRUPTIONS

CAPTION_METRICS = ("retrieval", "fused_probe", "fused_knn")
IMAGE_METRICS = ("retrieval", "probe", "knn", "zero_shot")
METRICS = ("retrieval", "fused_probe", "fused_knn", "probe", "knn", "zero_shot")
"""Metric families a curve may follow (``eval.robustness.metrics``)."""

NOISE_SIGMA = 0.5  # image_noise: the pixel noise sigma at rate 1 (pixels in [0, 1])
BLUR_SIGMA_PER_SIDE = 1 / 8  # image_blur: the blur sigma at rate 1, as a fraction of the image side
OCCLUSION_GREY = 0.5


def check_rates(rates: Sequence[float]) -> tuple[float, ...]:
    """Rates as floats: at least two, strictly increasing, in [0, 1], the first 0 (the clean point)."""
    rates = tuple(float(r) for r in rates)
    if len(rates) < 2 or rates[0] != 0.0 or any(b <= a for a, b in zip(rates, rates[1:])) or rates[-1] > 1.0:
        raise ValueError(f"rates must start at 0, increase strictly and stay in [0, 1] (at least two), got {rates}")
    return rates


def affected(count: int, rate: float, seed: int) -> np.ndarray:
    """Bool ``[count]``: the ``round(rate * count)`` items a corruption at ``rate`` touches (nested in rate)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    order = np.random.default_rng([seed, count]).permutation(count)
    out = np.zeros(count, bool)
    out[order[: int(round(rate * count))]] = True
    return out


def corrupt_captions(embeddings: np.ndarray, owners: np.ndarray, mode: str, rate: float, seed: int = 0) -> np.ndarray:
    """Caption embeddings ``[T, d]`` (caption t belongs to image ``owners[t]``) with the captions of a
    fraction ``rate`` of the images corrupted as ``mode`` (one of :data:`CAPTION_CORRUPTIONS`).

    ``caption_missing``: zeros (what a caption-less image feeds a text branch); ``caption_swapped``:
    the affected images pass their captions around a cycle (caption k of an image becomes caption
    k, modulo their count, of the next affected image), so none keeps its own when two or more are
    affected; ``caption_noise``: Gaussian noise with each caption's norm.
    """
    embeddings, owners = np.asarray(embeddings, np.float32), np.asarray(owners)
    if embeddings.ndim != 2 or owners.shape != (len(embeddings),):
        raise ValueError(f"embeddings must be [T, d] and owners [T], got {embeddings.shape} and {owners.shape}")
    images = int(owners.max()) + 1
    hit = affected(images, rate, seed)
    out = embeddings.copy()
    touched = hit[owners]
    if mode == "caption_missing":
        out[touched] = 0.0
    elif mode == "caption_noise":
        noise = np.random.default_rng([seed, 1]).standard_normal(embeddings.shape).astype(np.float32)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        out[touched] = (noise / np.linalg.norm(noise, axis=1, keepdims=True) * norms)[touched]
    elif mode == "caption_swapped":
        cycle = np.flatnonzero(hit)
        if len(cycle) > 1:
            donor = dict(zip(cycle, np.roll(cycle, -1)))
            first = np.searchsorted(owners, np.arange(images))  # owners are sorted: image i's captions
            counts = np.bincount(owners, minlength=images)
            for t in np.flatnonzero(touched):
                i = owners[t]
                k = t - first[i]
                out[t] = embeddings[first[donor[i]] + k % counts[donor[i]]]
    else:
        raise ValueError(f"unknown caption corruption {mode!r}; known: {CAPTION_CORRUPTIONS}")
    return out


def corrupt_images(images: np.ndarray, mode: str, rate: float, seed: int | Sequence[int] = 0) -> np.ndarray:
    """``[B, H, W, 3]`` images (uint8, or float in [0, 1]) corrupted at severity ``rate`` as ``mode``
    (one of :data:`IMAGE_CORRUPTIONS`); float32 in [0, 1] out. Rate 0 returns the images unchanged.
    ``seed``: an int or a sequence of ints (the noise and the occluder's places)."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got {x.shape}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if mode not in IMAGE_CORRUPTIONS:
        raise ValueError(f"unknown image corruption {mode!r}; known: {IMAGE_CORRUPTIONS}")
    if rate == 0.0:
        return x
    rng = np.random.default_rng([*np.ravel(seed).tolist(), 2])
    b, h, w, _ = x.shape
    if mode == "image_noise":
        return np.clip(x + NOISE_SIGMA * rate * rng.standard_normal(x.shape).astype(np.float32), 0.0, 1.0)
    if mode == "image_blur":
        return np.asarray(_blur(jnp.asarray(x), rate * BLUR_SIGMA_PER_SIDE * min(h, w)))
    side_h, side_w = int(round(np.sqrt(rate) * h)), int(round(np.sqrt(rate) * w))
    out = x.copy()
    for i in range(b):
        top, left = rng.integers(0, h - side_h + 1), rng.integers(0, w - side_w + 1)
        out[i, top : top + side_h, left : left + side_w] = OCCLUSION_GREY
    return out


def _blur(x: jax.Array, sigma: float) -> jax.Array:
    """Gaussian blur of ``[B, H, W, 3]`` with reflected borders (no darkened edges)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    radius = min(radius, x.shape[1] - 1, x.shape[2] - 1)
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    return jax.vmap(lambda im: dm_pix.gaussian_blur(im, sigma, 2 * radius + 1, padding="VALID"))(padded)


# ----------------------------------------------------------------------------- curves


def caption_curves(
    image_h: np.ndarray,
    image_z: np.ndarray,
    captions: np.ndarray,
    owners: np.ndarray,
    text_fn: Callable[[np.ndarray], np.ndarray],
    *,
    labels: np.ndarray | None = None,
    corruptions: Sequence[str] = CAPTION_CORRUPTIONS,
    rates: Sequence[float] = RATES,
    metrics: Sequence[str] = CAPTION_METRICS,
    seed: int = 0,
    probe_iters: int = 100,
    knn_k: int = 20,
) -> dict[str, dict[str, list[float]]]:
    """Each metric along each caption corruption: ``{corruption: {metric: [value at each rate]}}``.

    Args:
      image_h, image_z: ``[n, *]`` image features (encoder output, joint-space embedding).
      captions: ``[T, d]`` caption embeddings as the text branch takes them; ``owners [T]`` (sorted)
        names each caption's image.
      text_fn: the text branch, ``[T, d] -> [T, dim]`` (``FrozenModel.texts``).
      labels: ``[n]`` classes for the fused probe and kNN (skipped without).
      metrics: families from :data:`CAPTION_METRICS`: ``retrieval`` gives ``i2t_r@1/5`` and
        ``t2i_r@1/5`` over all images; ``fused_probe`` / ``fused_knn`` read
        ``[normalize(h), normalize(text_fn(first caption))]``, fit on a clean seeded half of the
        images and scored on the other half with its captions corrupted.
    """
    rates = check_rates(rates)
    owners = np.asarray(owners)
    first = np.searchsorted(owners, np.arange(len(image_h)))
    out: dict[str, dict[str, list[float]]] = {}
    fused = labels is not None and {"fused_probe", "fused_knn"} & set(metrics)
    if fused:
        labels = np.asarray(labels).astype(np.int32)
        split = np.random.default_rng([seed, 3]).permutation(len(labels))
        train, test = split[: len(split) // 2], split[len(split) // 2:]
        image_part = np.asarray(l2_normalize(image_h))
        clean = np.concatenate([image_part, np.asarray(l2_normalize(text_fn(captions[first])))], axis=1)
        probe = None
        if "fused_probe" in metrics:
            probe = fit_linear_probe(clean[train], labels[train], iters=probe_iters, seed=seed)
        test_owners = np.arange(len(test))
    for mode in corruptions:
        curves: dict[str, list[float]] = {}
        for rate in rates:
            point: dict[str, float] = {}
            if "retrieval" in metrics:
                text_z = text_fn(corrupt_captions(captions, owners, mode, rate, seed))
                point.update(retrieval_recall(image_z, text_z, owners, ks=(1, 5)))
            if fused:
                text_z = text_fn(corrupt_captions(captions[first[test]], test_owners, mode, rate, seed))
                x = np.concatenate([image_part[test], np.asarray(l2_normalize(text_z))], axis=1)
                if probe is not None:
                    point["fused_probe_top1"] = probe.accuracy(x, labels[test])
                if "fused_knn" in metrics:
                    knn = knn_classify(clean[train], labels[train], x, labels[test], ks=(knn_k,))
                    point[f"fused_knn{knn_k}_top1"] = knn[f"k{knn_k}_top1"]
            for key, value in point.items():
                curves.setdefault(key, []).append(float(value))
        out[mode] = curves
    return out


# ----------------------------------------------------------------------------- scores


def relative_robustness(rates: Sequence[float], values: Sequence[float]) -> float:
    """MultiBench's relative robustness: the area under the performance-vs-rate curve by the
    trapezoid rule, over rates normalized to [0, 1] (divided by the rates' span), so it is the
    mean performance over the corruption range. On the 0, 0.1, ..., 1 grid it is exactly
    MultiBench's ``sum((f_i + f_i+1) * 0.1 / 2)`` (before their max-min normalization across
    methods, which needs the other methods' curves)."""
    rates, values = np.asarray(check_rates(rates)), np.asarray(values, np.float64)
    if values.shape != rates.shape:
        raise ValueError(f"values has {values.shape[0]} points, rates {rates.shape[0]}")
    area = np.sum((values[1:] + values[:-1]) * np.diff(rates) / 2)
    return float(area / (rates[-1] - rates[0]))


def effective_robustness(values: Sequence[float], baseline: Sequence[float] | None = None) -> float:
    """MultiBench's effective robustness: the summed gain, over the rates, of a curve over a
    baseline's curve shifted to the same clean score, ``sum_i f_i - (b_i + f_0 - b_0)``.

    ``baseline=None`` is the constant curve at the clean score (a model the corruption cannot
    touch), so the score is ``sum_i (f_i - f_0)``: 0 for a flat curve, negative as it falls.
    """
    f = np.asarray(values, np.float64)
    b = np.full_like(f, f[0]) if baseline is None else np.asarray(baseline, np.float64)
    if b.shape != f.shape:
        raise ValueError(f"baseline has {b.shape[0]} points, the curve {f.shape[0]}")
    return float(np.sum(f - (b + (f[0] - b[0]))))  # the shift first: a curve against itself scores exactly 0


def summary_scores(rates: Sequence[float], curves: Mapping[str, Mapping[str, Sequence[float]]],
                   baseline: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> dict[str, float]:
    """``{"corruption/metric/relative": ..., "corruption/metric/effective": ...}`` for every curve;
    a ``baseline`` (the same layout) must hold every curve it is asked for."""
    out = {}
    for mode, metrics in curves.items():
        for metric, values in metrics.items():
            base = None
            if baseline is not None:
                if metric not in baseline.get(mode, {}):
                    raise ValueError(f"the robustness baseline has no {mode}/{metric} curve")
                base = baseline[mode][metric]
            out[f"{mode}/{metric}/relative"] = relative_robustness(rates, values)
            out[f"{mode}/{metric}/effective"] = effective_robustness(values, base)
    return out
