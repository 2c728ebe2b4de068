"""Specification of mmssl_jax.data.augment: host crops/flips and device colour operations."""

from __future__ import annotations

import colorsys
import dataclasses

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmssl_jax.data import augment

SIZE = 24  # Tiny views keep the tests fast; 24 px still has a 3-px blur kernel.
BATCH = 4
OFF = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)  # every device op off


def uint8_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def float_batch(
    seed: int = 0, batch: int = BATCH, size: int = SIZE, lo: float = 0.0, hi: float = 1.0
) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(lo, hi, size=(batch, size, size, 3)), jnp.float32)


def device(images: jax.Array, cfg: augment.AugmentConfig, seed: int = 0) -> np.ndarray:
    return np.asarray(jax.jit(lambda x, k: augment.color_augment(x, k, cfg))(images, jax.random.key(seed)))


def only(op: str, p: float, **fields) -> augment.AugmentConfig:
    """A config whose one device op ``op`` ("jitter", "grayscale", "blur", "solarize") has probability p."""
    return augment.AugmentConfig(size=SIZE, **{**OFF, f"{op}_p": p, **fields})


# ----------------------------------------------------------------------------- presets


def test_simclr_imagenet_preset_is_the_published_recipe():
    cfg = augment.simclr_imagenet(224)
    assert cfg.size == 224 and cfg.random_crop
    assert cfg.crop_scale == (0.08, 1.0) and cfg.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert cfg.crop_max_attempts == 100
    assert cfg.flip_p == 0.5 and cfg.jitter_p == 0.8 and cfg.grayscale_p == 0.2
    assert (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert cfg.brightness_mode == "multiplicative"
    assert cfg.blur_p == 0.5 and cfg.blur_sigma == (0.1, 2.0) and cfg.solarize_p == 0.0
    assert augment.blur_kernel_size(224, cfg.blur_kernel_fraction) == 23  # a tenth of 224, made odd
    assert cfg.center_crop_fraction == 0.875


def test_simclr_cifar_preset_has_half_strength_jitter_and_no_blur():
    cfg = augment.simclr_cifar(32)
    assert (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    assert cfg.jitter_p == 0.8 and cfg.grayscale_p == 0.2
    assert cfg.blur_p == 0.0 and cfg.solarize_p == 0.0
    assert cfg.center_crop_fraction == 1.0  # no evaluation crop at 32 px


def test_byol_views_are_the_asymmetric_pair():
    view1, view2 = augment.byol_views(224)
    assert (view1.blur_p, view1.solarize_p) == (1.0, 0.0)
    assert (view2.blur_p, view2.solarize_p) == (0.1, 0.2)
    for view in (view1, view2):
        assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.4, 0.4, 0.2, 0.1)
        assert view.brightness_mode == "additive" and view.jitter_p == 0.8 and view.grayscale_p == 0.2


def test_eval_preset_centre_crops_0875_and_has_no_randomness():
    cfg = augment.eval_config(224)
    assert not cfg.random_crop and cfg.flip_p == 0.0 and not cfg.has_device_ops
    assert cfg.center_crop_fraction == 0.875 and cfg.small_image_side == 32
    assert augment.eval_config(64, center_crop_fraction=1.0).center_crop_fraction == 1.0


def test_crop_flip_preset_has_no_colour_ops():
    cfg = augment.crop_flip(32)
    assert cfg.random_crop and cfg.flip_p == 0.5 and not cfg.has_device_ops


def test_every_registered_preset_builds_a_config_of_the_requested_size():
    expected = {"simclr_imagenet", "simclr_cifar", "byol_view1", "byol_view2", "crop_flip", "eval"}
    assert expected <= set(augment.PRESETS)
    for name, make in augment.PRESETS.items():
        cfg = make(48)
        assert isinstance(cfg, augment.AugmentConfig) and cfg.size == 48, name


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(flip_p=1.5), "flip_p"),
        (dict(blur_p=-0.1), "blur_p"),
        (dict(crop_scale=(0.5, 0.1)), "crop_scale"),
        (dict(crop_ratio=(0.0, 1.0)), "crop_ratio"),
        (dict(hue=0.6), "hue"),
        (dict(brightness=-1.0), "brightness"),
        (dict(brightness_mode="gamma"), "brightness_mode"),
        (dict(size=0), "size"),
        (dict(blur_sigma=(0.0, 1.0)), "blur_sigma"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=field):
        augment.AugmentConfig(**fields)


def test_config_is_frozen_hashable_and_turns_lists_into_tuples():
    cfg = augment.AugmentConfig(crop_scale=[0.2, 1.0], blur_sigma=[0.5, 1.0])
    assert cfg.crop_scale == (0.2, 1.0) and cfg.blur_sigma == (0.5, 1.0)
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 3


# ----------------------------------------------------------------------------- host side


@pytest.mark.parametrize("shape", [(40, 50), (17, 31), (8, 8), (300, 200)])
def test_host_view_is_uint8_of_the_view_size(shape):
    view = augment.host_view(uint8_image(*shape), np.random.default_rng(0), augment.simclr_cifar(SIZE))
    assert view.shape == (SIZE, SIZE, 3) and view.dtype == np.uint8


def test_host_view_is_deterministic_given_the_rng():
    image, cfg = uint8_image(40, 50), augment.simclr_imagenet(SIZE)
    a = [augment.host_view(image, np.random.default_rng(7), cfg) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    rng = np.random.default_rng(7)
    b, c = augment.host_view(image, rng, cfg), augment.host_view(image, rng, cfg)
    assert not np.array_equal(b, c)  # the stream moves on


def test_grayscale_and_rgba_images_are_converted():
    rgb = uint8_image(30, 30)
    cfg = augment.simclr_cifar(SIZE)
    gray = augment.host_view(rgb[..., 0], np.random.default_rng(0), cfg)
    assert gray.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
    rgba = np.concatenate([rgb, np.full((30, 30, 1), 128, np.uint8)], axis=-1)
    from_rgba = augment.host_view(rgba, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(from_rgba, augment.host_view(rgb, np.random.default_rng(0), cfg))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((2, 8, 8, 3), np.uint8),
        np.zeros((8, 8, 2), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
    ],
    ids=["rank4", "two-channels", "float", "empty"],
)
def test_host_rejects_bad_images_naming_the_shape(image):
    with pytest.raises(ValueError, match=r"\(.*8.*\)"):
        augment.host_view(image, np.random.default_rng(0), augment.simclr_cifar(SIZE))


def test_crop_boxes_respect_the_scale_and_ratio_bounds():
    rng = np.random.default_rng(0)
    height, width = 100, 150
    for scale in [(0.08, 1.0), (0.3, 0.5)]:
        fractions = []
        for _ in range(500):
            box = augment.sample_crop_box(height, width, rng, scale, (3 / 4, 4 / 3))
            assert 0 <= box.top and box.top + box.height <= height
            assert 0 <= box.left and box.left + box.width <= width
            fraction = box.height * box.width / (height * width)
            assert scale[0] <= fraction <= scale[1]
            assert 3 / 4 - 0.05 <= box.width / box.height <= 4 / 3 + 0.05  # +- rounding to pixels
            fractions.append(fraction)
        largest = min(scale[1], height * (height * 4 / 3) / (height * width))  # the widest box that fits
        span = largest - scale[0]
        # The whole range is drawn, not a corner of it.
        assert min(fractions) < scale[0] + 0.1 * span and max(fractions) > largest - 0.1 * span


def test_crop_falls_back_to_the_centred_box_with_clamped_ratio():
    # No crop of a 8x200 strip covers 8% of it with a ratio <= 4/3: the fallback is centred,
    # full height, width 8 * 4/3.
    box = augment.sample_crop_box(8, 200, np.random.default_rng(0), (0.08, 1.0), (3 / 4, 4 / 3))
    assert box == augment.CropBox(top=0, left=(200 - 11) // 2, height=8, width=11)


def test_random_resized_crop_is_the_bicubic_resize_of_its_box():
    image = uint8_image(40, 60)
    box = augment.sample_crop_box(40, 60, np.random.default_rng(3))
    crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
    expected = np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(augment.random_resized_crop(image, np.random.default_rng(3), SIZE), expected)


def test_whole_image_crop_at_its_own_size_is_the_image():
    image = uint8_image(SIZE, SIZE)
    out = augment.random_resized_crop(image, np.random.default_rng(0), SIZE, scale=(1.0, 1.0))
    np.testing.assert_array_equal(out, image)


def test_flip_p1_mirrors_p0_keeps_and_p_half_flips_about_half():
    image, rng = uint8_image(6, 9), np.random.default_rng(0)
    np.testing.assert_array_equal(augment.random_flip(image, rng, p=1.0), image[:, ::-1])
    np.testing.assert_array_equal(augment.random_flip(image, rng, p=0.0), image)
    flips = sum(not np.array_equal(augment.random_flip(image, rng, 0.5), image) for _ in range(400))
    assert 150 < flips < 250


def test_centre_crop_keeps_0875_of_the_shorter_side_then_resizes():
    image = uint8_image(40, 60)
    assert augment.center_crop_box(40, 60, 0.875) == augment.CropBox(3, 13, 35, 35)
    cfg = dataclasses.replace(augment.eval_config(224), size=35)
    np.testing.assert_array_equal(augment.center_crop_resize(image, cfg), image[3:38, 13:48])
    assert augment.center_crop_resize(image, augment.eval_config(16)).shape == (16, 16, 3)


def test_eval_view_at_32_px_is_the_image_itself():
    image = uint8_image(32, 32)
    view = augment.host_view(image, np.random.default_rng(0), augment.eval_config(32))
    np.testing.assert_array_equal(view, image)


def test_the_eval_crop_follows_the_images_own_size_not_the_output_size():
    """A 32 px CIFAR image probed inside a 224 px run is resized whole, not centre-cropped to 28 px."""
    from PIL import Image

    image = uint8_image(32, 32)
    view = augment.center_crop_resize(image, augment.eval_config(224))
    whole = np.asarray(Image.fromarray(image).resize((224, 224), Image.BICUBIC))
    np.testing.assert_array_equal(view, whole)
    # A larger image still gets the 0.875 crop at any output size.
    big = uint8_image(40, 60)
    cfg = dataclasses.replace(augment.eval_config(224), size=35)
    np.testing.assert_array_equal(augment.center_crop_resize(big, cfg), big[3:38, 13:48])


# ----------------------------------------------------------------------------- device ops vs references

FACTOR_IMAGE = float_batch(seed=1, batch=1, size=5)[0]  # [5, 5, 3]


def _per_pixel(fn, image: np.ndarray) -> np.ndarray:
    return np.array([[fn(*pixel) for pixel in row] for row in image], np.float32)


def test_brightness_multiplies_or_adds():
    x = np.asarray(FACTOR_IMAGE)
    np.testing.assert_allclose(augment.adjust_brightness(FACTOR_IMAGE, 1.3), x * 1.3, rtol=1e-6)
    additive = augment.adjust_brightness(FACTOR_IMAGE, 0.1, mode="additive")
    np.testing.assert_allclose(additive, x + 0.1, rtol=1e-6)


def test_contrast_scales_about_each_channels_mean():
    x = np.asarray(FACTOR_IMAGE)
    mean = x.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(augment.adjust_contrast(FACTOR_IMAGE, 0.6), (x - mean) * 0.6 + mean, atol=1e-6)


def test_saturation_scales_hsv_saturation_and_clips():
    def reference(r, g, b, factor=1.5):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v)

    expected = _per_pixel(reference, np.asarray(FACTOR_IMAGE, np.float64))
    np.testing.assert_allclose(augment.adjust_saturation(FACTOR_IMAGE, 1.5), expected, atol=1e-5)


def test_hue_rotates_hsv_hue():
    def reference(r, g, b, delta=-0.15):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)

    expected = _per_pixel(reference, np.asarray(FACTOR_IMAGE, np.float64))
    np.testing.assert_allclose(augment.adjust_hue(FACTOR_IMAGE, -0.15), expected, atol=1e-5)


def test_grayscale_is_601_luma_in_three_channels_and_solarize_inverts_above_threshold():
    x = np.asarray(FACTOR_IMAGE)
    luma = x @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    np.testing.assert_allclose(augment.to_grayscale(FACTOR_IMAGE), np.repeat(luma[..., None], 3, -1), atol=1e-6)
    np.testing.assert_allclose(augment.solarize(FACTOR_IMAGE, 0.5), np.where(x >= 0.5, 1 - x, x))


def test_jitter_applies_the_four_ops_in_the_given_order_clipping_after_each():
    x = float_batch(seed=2, batch=1, size=6)[0]
    factors = jnp.array([1.4, 1.6, 0.5, 0.1])
    ops = [
        lambda y: augment.adjust_brightness(y, factors[0]),
        lambda y: augment.adjust_contrast(y, factors[1]),
        lambda y: augment.adjust_saturation(y, factors[2]),
        lambda y: augment.adjust_hue(y, factors[3]),
    ]
    outputs = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        expected = x
        for op in order:
            expected = jnp.clip(ops[op](expected), 0.0, 1.0)
        got = augment.jitter_in_order(x, jnp.array(order), factors)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        outputs.append(got)
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)  # the order matters


def test_gaussian_blur_small_sigma_is_identity_and_a_constant_image_stays_constant():
    x = float_batch(seed=3, batch=1, size=12)[0]
    np.testing.assert_allclose(augment.gaussian_blur(x, 0.1, 3), x, atol=1e-6)
    constant = jnp.full((12, 12, 3), 0.37, jnp.float32)
    np.testing.assert_allclose(augment.gaussian_blur(constant, 2.0, 5), constant, atol=1e-6)


def test_gaussian_blur_is_dm_pix_blur_of_the_reflect_padded_image():
    x = float_batch(seed=4, batch=1, size=12)[0]
    padded = jnp.pad(x, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    expected = pix.gaussian_blur(padded, 1.3, 5, padding="VALID")
    np.testing.assert_allclose(augment.gaussian_blur(x, 1.3, 5), expected, atol=1e-6)


def test_blur_kernel_is_a_tenth_of_the_height_made_odd():
    assert [augment.blur_kernel_size(h) for h in (224, 96, 64, 32, 24, 16)] == [23, 9, 7, 3, 3, 1]


# ----------------------------------------------------------------------------- device policy


@pytest.mark.parametrize(
    "cfg", [augment.simclr_imagenet(SIZE), augment.byol_view2(SIZE)], ids=["simclr_imagenet", "byol_view2"]
)
def test_color_augment_keeps_shape_and_dtype_and_stays_in_unit_range(cfg):
    out = device(float_batch(), cfg)
    assert out.shape == (BATCH, SIZE, SIZE, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_color_augment_is_deterministic_given_the_key_and_differs_per_sample():
    cfg = augment.simclr_imagenet(SIZE)
    same = jnp.repeat(float_batch(batch=1), BATCH, axis=0)  # one image, four times
    a, b, c = device(same, cfg, 0), device(same, cfg, 0), device(same, cfg, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({a[i].tobytes() for i in range(BATCH)}) > 1  # each sample draws its own ops


def test_color_augment_takes_uint8_as_x_over_255():
    images = jnp.asarray(uint8_image(SIZE, SIZE)[None].repeat(2, 0))
    cfg = augment.simclr_cifar(SIZE)
    np.testing.assert_allclose(device(images, cfg), device(images.astype(jnp.float32) / 255.0, cfg), atol=1e-6)


@pytest.mark.parametrize(
    "images", [jnp.zeros((SIZE, SIZE, 3)), jnp.zeros((2, SIZE, SIZE, 1)), jnp.zeros((2, SIZE, SIZE, 3), jnp.int32)]
)
def test_color_augment_rejects_bad_batches(images):
    with pytest.raises(ValueError, match="color_augment"):
        augment.color_augment(images, jax.random.key(0), augment.simclr_cifar(SIZE))


@pytest.mark.parametrize("op", ["jitter", "grayscale", "blur", "solarize"])
def test_an_op_with_probability_zero_leaves_the_image_unchanged(op):
    images = float_batch()
    np.testing.assert_array_equal(device(images, only(op, 0.0)), images)


def test_turning_an_op_on_does_not_change_the_others_draws():
    images = float_batch()
    grayscale_only = augment.AugmentConfig(size=SIZE, **{**OFF, "grayscale_p": 0.5})
    # Solarize is now traced and drawn for, but with threshold 1.1 it never inverts a pixel.
    plus_inert_solarize = dataclasses.replace(grayscale_only, solarize_p=1.0, solarize_threshold=1.1)
    np.testing.assert_array_equal(device(images, grayscale_only), device(images, plus_inert_solarize))


def test_grayscale_p1_makes_equal_channels():
    out = device(float_batch(), only("grayscale", 1.0))
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-6)


def test_solarize_p1_inverts_pixels_at_or_above_the_threshold():
    images = float_batch()
    x = np.asarray(images)
    np.testing.assert_allclose(device(images, only("solarize", 1.0)), np.where(x >= 0.5, 1.0 - x, x))


def test_blur_p1_with_small_sigma_is_identity_and_keeps_a_constant_image():
    images = float_batch()
    np.testing.assert_allclose(device(images, only("blur", 1.0, blur_sigma=(0.1, 0.1))), images, atol=1e-6)
    constant = jnp.full((BATCH, SIZE, SIZE, 3), 0.6, jnp.float32)
    out = device(constant, only("blur", 1.0, blur_sigma=(2.0, 2.0)))
    np.testing.assert_allclose(out, constant, atol=1e-6)
    assert out.mean() == pytest.approx(0.6, abs=1e-6)


def test_brightness_only_jitter_scales_each_image_by_one_factor_in_range():
    images = float_batch(batch=8, lo=0.1, hi=0.5)  # never clipped by factors <= 1.5
    cfg = only("jitter", 1.0, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    ratios = device(images, cfg) / np.asarray(images)
    per_image = ratios.reshape(8, -1)
    np.testing.assert_allclose(per_image, per_image[:, :1].repeat(per_image.shape[1], 1), rtol=1e-5)
    assert per_image[:, 0].min() >= 0.5 - 1e-6 and per_image[:, 0].max() <= 1.5 + 1e-6
    assert np.ptp(per_image[:, 0]) > 0.1  # a different factor per image


def test_jitter_p1_changes_every_image_and_stays_in_range():
    images = float_batch(batch=8)
    out = device(images, only("jitter", 1.0, **augment.simclr_jitter(1.0)))
    assert all(not np.allclose(out[i], images[i], atol=1e-3) for i in range(8))
    assert out.min() >= 0.0 and out.max() <= 1.0
