"""Independent NumPy (float64) references for mmssl_jax.losses, written from the papers' formulas.

They are deliberately naive (explicit loops over rows and pairs where the paper sums) so they
share no code, tricks or vectorization with the library. Inputs are anything ``np.asarray``
accepts; outputs are Python floats.
"""

from __future__ import annotations

import numpy as np


def normalize(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _log_softmax_at(logits: np.ndarray, index: int) -> float:
    """log(exp(logits[index]) / sum_k exp(logits[k])) for a 1-D array, computed stably."""
    m = np.max(logits)
    return float(logits[index] - m - np.log(np.sum(np.exp(logits - m))))


def nt_xent(z1, z2, temperature: float) -> float:
    """SimCLR eq. (1): l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t), mean over 2N anchors."""
    z = np.concatenate([normalize(z1), normalize(z2)])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2  # the other view of the same image
        others = [k for k in range(n2) if k != i]
        logits = np.array([z[i] @ z[k] / temperature for k in others])
        total -= _log_softmax_at(logits, others.index(j))
    return total / n2


def info_nce(query, key, temperature: float, negatives=None) -> float:
    """CPC / MoCo InfoNCE: -log exp(q.k+/t) / (exp(q.k+/t) + sum_neg exp(q.k-/t)), mean over queries."""
    q, k = normalize(query), normalize(key)
    total = 0.0
    for i in range(q.shape[0]):
        if negatives is None:
            logits = np.array([q[i] @ k[j] for j in range(k.shape[0])]) / temperature
            total -= _log_softmax_at(logits, i)
        else:
            neg = normalize(negatives)
            logits = np.array([q[i] @ k[i]] + [q[i] @ neg[j] for j in range(neg.shape[0])])
            total -= _log_softmax_at(logits / temperature, 0)
    return total / q.shape[0]


def clip(image, text, logit_scale: float) -> float:
    """CLIP (Radford et al. 2021, fig. 3): mean of the image->text and text->image cross-entropies."""
    a, b = normalize(image), normalize(text)
    scale = np.exp(logit_scale)
    n = a.shape[0]
    image_to_text = sum(-_log_softmax_at(scale * (b @ a[i]), i) for i in range(n)) / n
    text_to_image = sum(-_log_softmax_at(scale * (a @ b[i]), i) for i in range(n)) / n
    return (image_to_text + text_to_image) / 2


def siglip(image, text, logit_scale: float, logit_bias: float) -> float:
    """SigLIP (Zhai et al. 2023, alg. 1): -1/N sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))."""
    a, b = normalize(image), normalize(text)
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            logit = np.exp(logit_scale) * (a[i] @ b[j]) + logit_bias
            # log sigmoid(x) = -log(1 + exp(-x)), written stably.
            x = label * logit
            total += -np.logaddexp(0.0, -x)
    return -total / n


def barlow_twins(z1, z2, lambda_: float) -> float:
    """Barlow Twins (Zbontar et al. 2021, eq. 1-2) with BatchNorm(affine=False) standardization."""
    def standardize(z):
        z = np.asarray(z, np.float64)
        return (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + 1e-5)

    a, b = standardize(z1), standardize(z2)
    n, d = a.shape
    c = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            c[i, j] = np.sum(a[:, i] * b[:, j]) / n
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lambda_ * off


def vicreg(z1, z2, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0) -> float:
    """VICReg (Bardes et al. 2022, eq. 1-6 and the reference code)."""
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = z1.shape
    invariance = np.mean((z1 - z2) ** 2)

    def variance(z):
        std = np.sqrt(np.var(z, axis=0, ddof=1) + 1e-4)
        return np.mean(np.maximum(0.0, 1.0 - std))

    def covariance(z):
        c = np.cov(z, rowvar=False)  # (N - 1)-normalized
        return sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    var_term = (variance(z1) + variance(z2)) / 2
    cov_term = covariance(z1) + covariance(z2)
    return sim_weight * invariance + var_weight * var_term + cov_weight * cov_term


def byol(prediction, target) -> float:
    """BYOL (Grill et al. 2020, eq. 2): ||q_i/||q_i|| - z_i/||z_i|| ||_2^2, mean over the batch."""
    q, z = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    total = 0.0
    for i in range(q.shape[0]):
        q_bar = q[i] / np.sqrt(np.sum(q[i] ** 2))
        z_bar = z[i] / np.sqrt(np.sum(z[i] ** 2))
        total += np.sum((q_bar - z_bar) ** 2)
    return total / q.shape[0]


def negative_cosine(prediction, target) -> float:
    """SimSiam (Chen & He 2021, eq. 1): D(p, z) = -p/||p||_2 . z/||z||_2, mean over the batch."""
    p, z = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    total = 0.0
    for i in range(p.shape[0]):
        total -= np.dot(p[i], z[i]) / (np.linalg.norm(p[i]) * np.linalg.norm(z[i]))
    return total / p.shape[0]


def positive_pair_accuracy(query, key) -> float:
    q, k = normalize(query), normalize(key)
    hits = [int(np.argmax([q[i] @ k[j] for j in range(k.shape[0])]) == i) for i in range(q.shape[0])]
    return float(np.mean(hits))
