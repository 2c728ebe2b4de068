"""Image operations the augmentations are made of: host crops on ``uint8`` numpy images, and
device colour operations on ``float32 [..., H, W, 3]`` in [0, 1] (jit/vmap-able).

The random policies that combine them (which op, with which probability and strength) are in
:mod:`mmssl_jax.data.augment`, which re-exports every name here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

BRIGHTNESS_MODES = ("multiplicative", "additive")

# ----------------------------------------------------------------------------- host side


class CropBox(NamedTuple):
    """A crop in pixels: rows ``[top, top + height)``, columns ``[left, left + width)``."""

    top: int
    left: int
    height: int
    width: int


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``uint8 [H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` -> ``uint8 [H, W, 3]``.

    Grayscale is repeated to three channels; RGBA drops its alpha channel (no compositing).

    Raises:
      ValueError: not a numpy array, not uint8, another rank or channel count, or an empty image.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy uint8 array [H, W, 3], got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got dtype {image.dtype} with shape {image.shape}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W, 3] (or [H, W], [H, W, 1], [H, W, 4]), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def sample_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 100,
) -> CropBox:
    """The box of a random resized crop of an ``height x width`` image.

    Each attempt draws an area fraction uniformly in ``scale`` and an aspect ratio (width /
    height) log-uniformly in ``ratio`` (torchvision's ``RandomResizedCrop.get_params``), rounds
    the box to whole pixels, and keeps it if it fits and its area fraction is still in ``scale``;
    then a uniform position. After ``max_attempts`` misses: the largest centred box with the
    image's aspect ratio clamped into ``ratio`` (the whole image when its ratio is in range).
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(max_attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height and scale[0] <= h * w / area <= scale[1]:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, min(height, max(1, int(round(width / ratio[0]))))
    elif in_ratio > ratio[1]:
        h, w = height, min(width, max(1, int(round(height * ratio[1]))))
    else:
        h, w = height, width
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def _crop_resize(image: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Crop ``box`` out of ``uint8 [H, W, 3]`` and resize it to ``[size, size, 3]`` (bicubic)."""
    if box.height == size and box.width == size:  # nothing to resample; a copy, never the caller's array
        return np.array(image[box.top : box.top + size, box.left : box.left + size], order="C", copy=True)
    # Crop, then resize the crop alone, as torchvision does: PIL's ``resize(box=...)`` would let
    # the filter read pixels outside the box.
    crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 100,
) -> np.ndarray:
    """Random resized crop: ``uint8 [H, W, 3]`` -> ``uint8 [size, size, 3]``.

    The box comes from :func:`sample_crop_box`; the crop is resized bicubically by PIL.
    Deterministic given the state of ``rng``.
    """
    image = as_rgb_uint8(image)
    box = sample_crop_box(image.shape[0], image.shape[1], rng, scale, ratio, max_attempts)
    return _crop_resize(image, box, size)


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Horizontal flip with probability ``p``: ``[H, W, C]`` -> ``[H, W, C]`` (one draw from rng)."""
    if rng.random() < p:
        return np.ascontiguousarray(image[:, ::-1])
    return image


def center_crop_box(height: int, width: int, fraction: float) -> CropBox:
    """The centred square box with side ``round(fraction * min(height, width))``.

    SimCLR's ``center_crop`` for a square output (``_compute_crop_shape``), with its offsets
    ``(H - h + 1) // 2``.
    """
    side = max(1, int(np.rint(fraction * min(height, width))))
    return CropBox((height - side + 1) // 2, (width - side + 1) // 2, side, side)


# ----------------------------------------------------------------------------- device side
# Each op takes ``float [..., H, W, 3]`` images in [0, 1] and a scalar parameter, and returns
# the same shape unclipped (as TF and dm-pix do); the jitter clips after each op.


def adjust_brightness(
    images: jax.Array, factor: jax.typing.ArrayLike, *, mode: str = "multiplicative"
) -> jax.Array:
    """``images * factor`` (``mode="multiplicative"``, SimCLR v2) or ``images + factor``
    (``"additive"``, SimCLR v1 / BYOL). ``images: [..., H, W, 3]``."""
    if mode == "multiplicative":
        return images * jnp.asarray(factor, images.dtype)
    if mode == "additive":
        return pix.adjust_brightness(images, factor)
    raise ValueError(f"adjust_brightness: mode must be one of {BRIGHTNESS_MODES}, got {mode!r}")


def adjust_contrast(images: jax.Array, factor: jax.typing.ArrayLike) -> jax.Array:
    """``(x - mean) * factor + mean`` with each channel's spatial mean (``tf.image.adjust_contrast``).

    ``images: [..., H, W, 3]``.
    """
    return pix.adjust_contrast(images, factor)


def _adjust_hsv(
    images: jax.Array, hue_delta: jax.typing.ArrayLike, saturation_factor: jax.typing.ArrayLike
) -> jax.Array:
    """One HSV round trip: hue shifted by ``hue_delta`` (mod 1), saturation scaled and clipped to [0, 1]."""
    hue, sat, value = jnp.moveaxis(pix.rgb_to_hsv(images), -1, 0)
    sat = jnp.clip(sat * jnp.asarray(saturation_factor, images.dtype), 0.0, 1.0)
    return pix.hsv_to_rgb(jnp.stack([(hue + jnp.asarray(hue_delta, images.dtype)) % 1.0, sat, value], axis=-1))


def adjust_saturation(images: jax.Array, factor: jax.typing.ArrayLike) -> jax.Array:
    """HSV saturation times ``factor``, clipped to [0, 1] (``tf.image.adjust_saturation``).

    ``images: [..., H, W, 3]``.
    """
    return _adjust_hsv(images, 0.0, factor)


def adjust_hue(images: jax.Array, delta: jax.typing.ArrayLike) -> jax.Array:
    """HSV hue plus ``delta`` (a fraction of the circle, mod 1) (``tf.image.adjust_hue``).

    ``images: [..., H, W, 3]``.
    """
    return _adjust_hsv(images, delta, 1.0)


def to_grayscale(images: jax.Array) -> jax.Array:
    """ITU-R 601 luma ``0.2989 R + 0.5870 G + 0.1140 B`` in all three channels. ``[..., H, W, 3]``."""
    return pix.rgb_to_grayscale(images, keep_dims=True)


def solarize(images: jax.Array, threshold: jax.typing.ArrayLike = 0.5) -> jax.Array:
    """``1 - x`` where ``x >= threshold``, else ``x``. ``images: [..., H, W, 3]``."""
    return pix.solarize(images, threshold)


def blur_kernel_size(height: int, fraction: float = 0.1) -> int:
    """SimCLR's blur kernel side: ``floor(fraction * height)`` made odd (radius = half of it).

    224 -> 23, 96 -> 9, 64 -> 7, 32 -> 3, below 20 -> 1 (no blur).
    """
    kernel = int(fraction * height + 1e-6)
    return 2 * (kernel // 2) + 1


def gaussian_blur(image: jax.Array, sigma: jax.typing.ArrayLike, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur with reflect padding: ``[..., H, W, C]`` -> ``[..., H, W, C]``.

    Args:
      image: float images; any leading dimensions share the one ``sigma``.
      sigma: scalar standard deviation in pixels; may be traced (vmap over it for per-sample
        sigmas).
      kernel_size: static, odd, smaller than ``2 * min(H, W)``.

    The taps are ``exp(-t^2 / (2 sigma^2))`` for ``t`` in ``[-r, r]``, normalised to sum to 1, as
    SimCLR and ``dm_pix.gaussian_blur``; the two passes are shifted weighted sums, which XLA
    fuses (a vmapped ``dm_pix.gaussian_blur`` with per-sample sigma becomes a grouped convolution
    with one kernel per sample, about 20x slower on CPU).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"gaussian_blur: kernel_size must be odd and >= 1, got {kernel_size}")
    if image.ndim < 3:
        raise ValueError(f"gaussian_blur: image must be [..., H, W, C], got shape {image.shape}")
    radius = kernel_size // 2
    height, width = image.shape[-3], image.shape[-2]
    if radius == 0:
        return image
    if radius >= min(height, width):
        raise ValueError(
            f"gaussian_blur: kernel_size {kernel_size} too large for an image of shape {image.shape}"
        )
    taps = jnp.arange(-radius, radius + 1, dtype=image.dtype)
    sigma = jnp.asarray(sigma, image.dtype)
    weights = jnp.exp(-(taps**2) / (2.0 * sigma**2))
    weights = weights / jnp.sum(weights)
    pad = [(0, 0)] * (image.ndim - 3) + [(radius, radius), (radius, radius), (0, 0)]
    padded = jnp.pad(image, pad, mode="reflect")
    rows = sum(weights[i] * padded[..., i : i + height, :, :] for i in range(kernel_size))
    return sum(weights[i] * rows[..., :, i : i + width, :] for i in range(kernel_size))
