"""Image augmentations for the SimCLR / BYOL family, split between host and device.

This module holds the configs, the presets and the random policies; the operations they combine
are in :mod:`mmssl_jax.data.image_ops` (re-exported here).

The work is split where each part is cheapest (``benchmarks/augment.py`` measures the split):

* **Host**, per sample, in the data-loader workers, on ``uint8 [H, W, 3]`` numpy images with a
  ``np.random.Generator``: the random resized crop (which changes the image size, so it cannot
  batch before it) and the horizontal flip. :func:`host_view` does both for one view;
  :func:`center_crop_resize` is the evaluation crop.
* **Device**, per batch, inside the jitted step, on ``float32 [B, H, W, 3]`` in [0, 1] with one
  JAX key: colour jitter, grayscale, Gaussian blur and solarize (:func:`color_augment`). Each
  sample gets its own key split from the batch key, every random choice is a ``jnp.where``
  selection (no ``lax.cond``, no Python-side randomness), so it vmaps, jits and shards.

What follows the SimCLR v2 reference code (``tf2/data_util.py``) and where it departs:

* Crop: area fraction uniform in ``crop_scale``, aspect ratio log-uniform in ``crop_ratio``
  (torchvision's sampler), up to ``crop_max_attempts`` (100, as SimCLR) tries; a try is kept only
  if the integer box fits and its area fraction is inside ``crop_scale``. After that, torchvision's
  fallback: the largest centred box whose aspect ratio is clamped into ``crop_ratio`` (for an image
  whose own ratio is already inside the range, the whole image, as in SimCLR). Bicubic resize by
  PIL (antialiased when shrinking, like torchvision; TF's bicubic is not antialiased).
* Colour jitter: the four operations in a random order per image, clipped to [0, 1] after each;
  brightness multiplicative with factor in ``[max(1 - b, 0), 1 + b]`` (SimCLR v2), contrast about
  each channel's mean (``tf.image.adjust_contrast``), saturation and hue in HSV (TF's definitions,
  via dm-pix). Factors below 0 are clamped to 0 (TF would raise).
* Grayscale: ITU-R 601 luma (TF's weights), kept as 3 channels.
* Blur: sigma uniform in ``blur_sigma`` per sample, kernel ``height // 10`` made odd (SimCLR's
  rule) and, unlike SimCLR's zero ``SAME`` padding, reflect padding (as torchvision), so a constant
  image stays constant and borders do not darken. SimCLR's batched blur draws one sigma per batch;
  here each sample draws its own, as its single-image blur does.
* Solarize (BYOL): pixels ``>= threshold`` become ``1 - x``.

Shapes: ``H, W`` input size, ``S`` output size (``cfg.size``), ``B`` batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmssl_jax.data.image_ops import (  # re-exported: the ops the policies below combine
    BRIGHTNESS_MODES, CropBox, _adjust_hsv, _crop_resize, adjust_brightness, adjust_contrast, adjust_hue,
    adjust_saturation, as_rgb_uint8, blur_kernel_size, center_crop_box, gaussian_blur, random_flip,
    random_resized_crop, sample_crop_box, solarize, to_grayscale,
)

__all__ = [
    "AugmentConfig",
    "simclr_jitter",
    "simclr_imagenet",
    "simclr_cifar",
    "byol_views",
    "byol_view1",
    "byol_view2",
    "crop_flip",
    "clip_crop",
    "moco_v2",
    "barlow_view1",
    "barlow_view2",
    "moco_v3_view1",
    "moco_v3_view2",
    "eval_config",
    "PRESETS",
    "CropBox",
    "as_rgb_uint8",
    "sample_crop_box",
    "random_resized_crop",
    "random_flip",
    "center_crop_box",
    "center_crop_resize",
    "host_view",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "to_grayscale",
    "gaussian_blur",
    "blur_kernel_size",
    "solarize",
    "jitter_in_order",
    "color_augment",
    "drop_modality",
]

_SMALL_IMAGE = 32  # At or below this size, evaluation takes no centre crop (SimCLR on CIFAR).


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """One view's augmentation; defaults are SimCLR's ImageNet recipe at 224 px.

    Host side (:func:`host_view`): crop, flip. Device side (:func:`color_augment`): jitter,
    grayscale, blur, solarize, in that order. Hashable, so it can be a static jit argument.

    Attributes:
      size: side ``S`` of the square output view, in pixels.
      random_crop: ``True``: random resized crop (training); ``False``: the centre crop of
        :func:`center_crop_resize` (evaluation).
      crop_scale: ``(min, max)`` fraction of the image area the random crop covers.
      crop_ratio: ``(min, max)`` aspect ratio (width / height) of the random crop, sampled
        log-uniformly.
      crop_max_attempts: tries at a crop that fits before the centred fallback box.
      center_crop_fraction: side of the evaluation centre crop as a fraction of the shorter
        image side (0.875 on ImageNet).
      small_image_side: images whose shorter side is at most this many pixels are not centre
        cropped (CIFAR's 32 px images are evaluated whole, whatever the output size).
      flip_p: probability of a horizontal flip.
      jitter_p: probability of applying the colour jitter (all four operations, random order).
      brightness: brightness strength ``b``: factor in ``[max(1 - b, 0), 1 + b]``
        (multiplicative) or offset in ``[-b, b]`` (additive); 0 turns it off.
      contrast: contrast strength ``c``: factor in ``[max(1 - c, 0), 1 + c]``; 0 turns it off.
      saturation: saturation strength ``s``: factor in ``[max(1 - s, 0), 1 + s]``; 0 turns it off.
      hue: hue strength ``h`` in [0, 0.5]: shift in ``[-h, h]`` of the full hue circle; 0 turns it
        off. SimCLR sets ``(b, c, s, h) = (0.8, 0.8, 0.8, 0.2) x strength`` (:func:`simclr_jitter`).
      brightness_mode: ``"multiplicative"`` (SimCLR v2: ``x * factor``) or ``"additive"``
        (SimCLR v1, BYOL: ``x + offset``).
      grayscale_p: probability of converting to grayscale (kept as 3 equal channels).
      blur_p: probability of a Gaussian blur (0.5 ImageNet SimCLR; 0 on CIFAR).
      blur_sigma: ``(min, max)`` of the uniformly drawn blur standard deviation, in pixels.
      blur_kernel_fraction: blur kernel side as a fraction of the image height, rounded down
        and then made odd (0.1: 23 px at 224, 3 px at 32; below 20 px the kernel is 1 px, no blur).
      solarize_p: probability of solarizing (BYOL's second view: 0.2).
      solarize_threshold: solarize inverts pixels ``>= threshold``.
    """

    size: int = 224
    random_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_max_attempts: int = 100
    center_crop_fraction: float = 0.875
    small_image_side: int = _SMALL_IMAGE
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    brightness_mode: str = "multiplicative"
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):  # lists (from a ConfigDict) -> tuples
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        _check(isinstance(self.size, (int, np.integer)) and self.size >= 1,
               f"size must be an int >= 1, got {self.size!r}")
        lo, hi = _pair("crop_scale", self.crop_scale)
        _check(0 < lo <= hi <= 1, f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = _pair("crop_ratio", self.crop_ratio)
        _check(0 < lo <= hi, f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        _check(self.crop_max_attempts >= 1, f"crop_max_attempts must be >= 1, got {self.crop_max_attempts}")
        _check(0 < self.center_crop_fraction <= 1,
               f"center_crop_fraction must be in (0, 1], got {self.center_crop_fraction}")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            _check(0 <= p <= 1, f"{name} is a probability, must be in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(0 <= self.hue <= 0.5, f"hue must be in [0, 0.5] (a fraction of the hue circle), got {self.hue}")
        _check(
            self.brightness_mode in BRIGHTNESS_MODES,
            f"brightness_mode must be one of {BRIGHTNESS_MODES}, got {self.brightness_mode!r}",
        )
        lo, hi = _pair("blur_sigma", self.blur_sigma)
        _check(0 < lo <= hi, f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        _check(0 <= self.blur_kernel_fraction <= 1,
               f"blur_kernel_fraction must be in [0, 1], got {self.blur_kernel_fraction}")

    @property
    def jitter_enabled(self) -> tuple[bool, bool, bool, bool]:
        """Which of (brightness, contrast, saturation, hue) the jitter applies (strength > 0)."""
        return (self.brightness > 0, self.contrast > 0, self.saturation > 0, self.hue > 0)

    @property
    def has_device_ops(self) -> bool:
        """Whether :func:`color_augment` changes anything (``False``: it only converts dtype)."""
        jitter = self.jitter_p > 0 and any(self.jitter_enabled)
        return jitter or self.grayscale_p > 0 or self.blur_p > 0 or self.solarize_p > 0


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"AugmentConfig: {message}")


def _pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    _check(len(value) == 2, f"{name} must be a (min, max) pair, got {value!r}")
    return float(value[0]), float(value[1])


# ----------------------------------------------------------------------------- presets


def simclr_jitter(strength: float) -> dict[str, float]:
    """SimCLR's jitter strengths for a colour strength ``s``: ``(0.8s, 0.8s, 0.8s, 0.2s)``.

    ``s = 1.0`` on ImageNet, ``0.5`` on CIFAR (the familiar ``(0.4, 0.4, 0.4, 0.1)`` jitter).
    """
    return {
        "brightness": 0.8 * strength,
        "contrast": 0.8 * strength,
        "saturation": 0.8 * strength,
        "hue": 0.2 * strength,
    }


def _eval_fraction(size: int) -> float:
    return 1.0 if size <= _SMALL_IMAGE else 0.875


def simclr_imagenet(size: int = 224) -> AugmentConfig:
    """SimCLR (v2) ImageNet views: crop, flip, jitter s=1.0 p=0.8, grayscale 0.2, blur 0.5."""
    return AugmentConfig(size=size, jitter_p=0.8, **simclr_jitter(1.0), grayscale_p=0.2, blur_p=0.5,
                         center_crop_fraction=_eval_fraction(size))


def simclr_cifar(size: int = 32) -> AugmentConfig:
    """SimCLR CIFAR views: as ImageNet but jitter strength 0.5 and no blur."""
    return AugmentConfig(size=size, jitter_p=0.8, **simclr_jitter(0.5), grayscale_p=0.2, blur_p=0.0,
                         center_crop_fraction=_eval_fraction(size))


def _byol(size: int, blur_p: float, solarize_p: float) -> AugmentConfig:
    return AugmentConfig(
        size=size, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
        brightness_mode="additive", grayscale_p=0.2, blur_p=blur_p, solarize_p=solarize_p,
        center_crop_fraction=_eval_fraction(size),
    )


def byol_view1(size: int = 224) -> AugmentConfig:
    """BYOL's first view: jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur 1.0, no solarize."""
    return _byol(size, blur_p=1.0, solarize_p=0.0)


def byol_view2(size: int = 224) -> AugmentConfig:
    """BYOL's second view: as the first but blur 0.1 and solarize 0.2."""
    return _byol(size, blur_p=0.1, solarize_p=0.2)


def byol_views(size: int = 224) -> tuple[AugmentConfig, AugmentConfig]:
    """BYOL's asymmetric pair ``(view1, view2)``; brightness is additive, as in BYOL's code."""
    return byol_view1(size), byol_view2(size)


def crop_flip(size: int = 224) -> AugmentConfig:
    """Random resized crop and flip only, no colour operations (linear-probe training)."""
    return AugmentConfig(size=size, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
                         center_crop_fraction=_eval_fraction(size))


def clip_crop(size: int = 224) -> AugmentConfig:
    """CLIP-style training view: a gentle random resized crop (scale 0.9-1, as open_clip) and no
    flip or colour operations, so the crop keeps what the caption describes ("on the left", "red")."""
    return AugmentConfig(size=size, crop_scale=(0.9, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                         blur_p=0.0, solarize_p=0.0, center_crop_fraction=_eval_fraction(size))


def eval_config(size: int = 224, center_crop_fraction: float = 0.875) -> AugmentConfig:
    """Evaluation: centre crop (0.875 of the shorter side: ImageNet's resize 256, crop 224) then
    resize, no flip, no colour operations. Whether to crop follows the evaluation image's own
    size, not the output's: a 32 px CIFAR image is resized whole (to 32 px: unchanged; to 224 px
    in a 224 px run)."""
    return AugmentConfig(size=size, random_crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                         solarize_p=0.0, center_crop_fraction=center_crop_fraction)


def moco_v2(size: int = 224) -> AugmentConfig:
    """MoCo v2's views (its ``--aug-plus``; SimSiam's too): crop scale 0.2-1, jitter (0.4, 0.4,
    0.4, 0.1) p=0.8 (torchvision's, brightness multiplicative), grayscale 0.2, blur p=0.5 with
    sigma 0.1-2, flip."""
    return AugmentConfig(size=size, crop_scale=(0.2, 1.0), jitter_p=0.8, brightness=0.4, contrast=0.4,
                         saturation=0.4, hue=0.1, grayscale_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0))


def _torchvision_byol(size: int, blur_p: float, solarize_p: float, crop_min: float) -> AugmentConfig:
    return AugmentConfig(
        size=size, crop_scale=(crop_min, 1.0), jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2,
        hue=0.1, brightness_mode="multiplicative", grayscale_p=0.2, blur_p=blur_p, solarize_p=solarize_p,
    )


def barlow_view1(size: int = 224) -> AugmentConfig:
    """Barlow Twins' first view: BYOL's probabilities with torchvision's ColorJitter (0.4, 0.4,
    0.2, 0.1; brightness multiplicative) p=0.8, grayscale 0.2, blur 1.0, no solarize."""
    return _torchvision_byol(size, blur_p=1.0, solarize_p=0.0, crop_min=0.08)


def barlow_view2(size: int = 224) -> AugmentConfig:
    """Barlow Twins' second view: blur 0.1, solarize 0.2."""
    return _torchvision_byol(size, blur_p=0.1, solarize_p=0.2, crop_min=0.08)


def moco_v3_view1(size: int = 224) -> AugmentConfig:
    """MoCo v3's first view (ResNet-50 recipes, ``--crop-min=.2``): as Barlow Twins' with crop
    scale 0.2-1."""
    return _torchvision_byol(size, blur_p=1.0, solarize_p=0.0, crop_min=0.2)


def moco_v3_view2(size: int = 224) -> AugmentConfig:
    """MoCo v3's second view: crop scale 0.2-1, blur 0.1, solarize 0.2."""
    return _torchvision_byol(size, blur_p=0.1, solarize_p=0.2, crop_min=0.2)


PRESETS: dict[str, Callable[[int], AugmentConfig]] = {
    "simclr_imagenet": simclr_imagenet,
    "simclr_cifar": simclr_cifar,
    "byol_view1": byol_view1,
    "byol_view2": byol_view2,
    "crop_flip": crop_flip,
    "clip_crop": clip_crop,
    "moco_v2": moco_v2,
    "barlow_view1": barlow_view1,
    "barlow_view2": barlow_view2,
    "moco_v3_view1": moco_v3_view1,
    "moco_v3_view2": moco_v3_view2,
    "eval": eval_config,
}
"""Preset name -> ``fn(size) -> AugmentConfig``; the names configs use (``views.*.augment``)."""


# ----------------------------------------------------------------------------- host side (ops: image_ops.py)


def center_crop_resize(image: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Evaluation view: ``uint8 [H, W, 3]`` -> ``uint8 [S, S, 3]``.

    The centred square of side ``cfg.center_crop_fraction x min(H, W)`` (the whole shorter side
    when it is at most ``cfg.small_image_side``), resized bicubically to ``cfg.size``; an
    ``S x S`` image with fraction 1.0 is returned unchanged.
    """
    image = as_rgb_uint8(image)
    small = min(image.shape[0], image.shape[1]) <= cfg.small_image_side
    box = center_crop_box(image.shape[0], image.shape[1], 1.0 if small else cfg.center_crop_fraction)
    return _crop_resize(image, box, cfg.size)


def host_view(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """The host half of one view: crop then flip, ``uint8 [H, W, 3]`` -> ``uint8 [S, S, 3]``.

    With ``cfg.random_crop`` the random resized crop, otherwise :func:`center_crop_resize`; then a
    flip with ``cfg.flip_p``. Grayscale / RGBA inputs are converted (:func:`as_rgb_uint8`).
    Deterministic given the state of ``rng``.
    """
    if cfg.random_crop:
        view = random_resized_crop(image, rng, cfg.size, cfg.crop_scale, cfg.crop_ratio, cfg.crop_max_attempts)
    else:
        view = center_crop_resize(image, cfg)
    return random_flip(view, rng, cfg.flip_p)


# ----------------------------------------------------------------------------- device side (ops: image_ops.py)


def jitter_in_order(
    image: jax.Array,
    order: jax.Array,
    factors: jax.Array,
    *,
    brightness_mode: str = "multiplicative",
    enabled: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> jax.Array:
    """The colour jitter with given parameters: four ops in ``order``, clipped after each.

    Args:
      image: ``float [H, W, 3]`` in [0, 1] (vmap for a batch).
      order: ``int [4]``, a permutation of ``0..3`` naming the ops brightness, contrast,
        saturation, hue in the order applied; may be traced.
      factors: ``float [4]``: brightness factor (or offset when additive), contrast factor,
        saturation factor, hue delta.
      brightness_mode: see :func:`adjust_brightness`.
      enabled: static; a disabled op is the identity (SimCLR skips an op of strength 0).

    Returns:
      ``float [H, W, 3]`` in [0, 1].

    Every slot computes brightness, contrast and one shared HSV round trip (saturation or hue,
    whichever the slot holds) and selects with ``jnp.where``, so traced orders vmap.
    """
    order = jnp.asarray(order)
    factors = jnp.asarray(factors, image.dtype)
    x = image
    for slot in range(4):
        op = order[slot]
        bright = adjust_brightness(x, factors[0], mode=brightness_mode) if enabled[0] else x
        contrast = adjust_contrast(x, factors[1]) if enabled[1] else x
        if enabled[2] or enabled[3]:
            sat_factor = jnp.where(op == 2, factors[2], 1.0) if enabled[2] else 1.0
            hue_delta = jnp.where(op == 3, factors[3], 0.0) if enabled[3] else 0.0
            hsv = _adjust_hsv(x, hue_delta, sat_factor)
        sat = hsv if enabled[2] else x
        hue = hsv if enabled[3] else x
        x = jnp.select([op == 0, op == 1, op == 2], [bright, contrast, sat], hue)
        x = jnp.clip(x, 0.0, 1.0)
    return x


# Indices into the per-sample vector of uniform draws; every draw is made whatever the config,
# so turning one op off does not change the randomness of the others.
_U_JITTER, _U_BRIGHT, _U_CONTRAST, _U_SAT, _U_HUE, _U_GRAY, _U_BLUR, _U_SIGMA, _U_SOLARIZE = range(9)
_NUM_DRAWS = 9


def _uniform(u: jax.Array, lo: float, hi: float) -> jax.Array:
    return lo + (hi - lo) * u


def _augment_one(image: jax.Array, key: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """``float32 [H, W, 3]`` -> ``float32 [H, W, 3]``: jitter, grayscale, blur, solarize."""
    key_u, key_order = jax.random.split(key)
    u = jax.random.uniform(key_u, (_NUM_DRAWS,), jnp.float32)
    x = image
    enabled = cfg.jitter_enabled
    if cfg.jitter_p > 0 and any(enabled):
        if cfg.brightness_mode == "multiplicative":
            bright = _uniform(u[_U_BRIGHT], max(1.0 - cfg.brightness, 0.0), 1.0 + cfg.brightness)
        else:
            bright = _uniform(u[_U_BRIGHT], -cfg.brightness, cfg.brightness)
        factors = jnp.stack([
            bright,
            _uniform(u[_U_CONTRAST], max(1.0 - cfg.contrast, 0.0), 1.0 + cfg.contrast),
            _uniform(u[_U_SAT], max(1.0 - cfg.saturation, 0.0), 1.0 + cfg.saturation),
            _uniform(u[_U_HUE], -cfg.hue, cfg.hue),
        ])
        order = jax.random.permutation(key_order, 4)
        jittered = jitter_in_order(x, order, factors, brightness_mode=cfg.brightness_mode, enabled=enabled)
        x = jnp.where(u[_U_JITTER] < cfg.jitter_p, jittered, x)
    if cfg.grayscale_p > 0:
        x = jnp.where(u[_U_GRAY] < cfg.grayscale_p, to_grayscale(x), x)
    kernel = blur_kernel_size(image.shape[0], cfg.blur_kernel_fraction)
    if cfg.blur_p > 0 and kernel > 1:
        sigma = _uniform(u[_U_SIGMA], *cfg.blur_sigma)
        blurred = jnp.clip(gaussian_blur(x, sigma, kernel), 0.0, 1.0)
        x = jnp.where(u[_U_BLUR] < cfg.blur_p, blurred, x)
    if cfg.solarize_p > 0:
        x = jnp.where(u[_U_SOLARIZE] < cfg.solarize_p, solarize(x, cfg.solarize_threshold), x)
    return x


def color_augment(images: jax.Array, key: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """The device half of a view: ``[B, H, W, 3]`` in [0, 1] -> ``float32 [B, H, W, 3]`` in [0, 1].

    Per sample, each with its own key split from ``key``: colour jitter with ``cfg.jitter_p``
    (the four ops in a random order, clipped after each, see :func:`jitter_in_order`), grayscale
    with ``cfg.grayscale_p``, Gaussian blur with ``cfg.blur_p`` (sigma drawn per sample), solarize
    with ``cfg.solarize_p``. Ops whose probability (or strength) is 0 are not traced at all, so
    they leave the image bit-for-bit unchanged. Jit-able with ``cfg`` static (closed over);
    deterministic given ``key``. The blur kernel follows the image height ``H``.

    Args:
      images: ``float [B, H, W, 3]`` in [0, 1] (computed in float32), or ``uint8`` (divided by 255).
      key: a JAX PRNG key (typed or raw).
      cfg: the view's :class:`AugmentConfig` (only the device fields are read).

    Raises:
      ValueError: ``images`` is not ``[B, H, W, 3]`` or not float / uint8 (at trace time).
    """
    shape = jnp.shape(images)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"color_augment: images must be [batch, height, width, 3], got shape {shape}")
    dtype = jnp.result_type(images)
    if dtype == jnp.uint8:
        images = jnp.asarray(images, jnp.float32) / 255.0
    elif jnp.issubdtype(dtype, jnp.floating):
        images = jnp.asarray(images, jnp.float32)
    else:
        raise ValueError(f"color_augment: images must be float in [0, 1] or uint8, got dtype {dtype}")
    if shape[0] == 0:
        return images
    keys = jax.random.split(key, shape[0])
    return jax.vmap(lambda image, k: _augment_one(image, k, cfg))(images, keys)


# ----------------------------------------------------------------------------- modality dropout


def drop_modality(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    """Training switch: zeroes each sample's input with probability ``rate`` (a missing modality).

    The trainer zeroes the views of ``config.modality_dropout`` modalities other than text; a
    dropped caption is masked out of the image-text loss terms instead (``where=``), since a
    zero caption would still be a positive and a negative there.
    """
    if rate <= 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x, jnp.zeros_like(x))
