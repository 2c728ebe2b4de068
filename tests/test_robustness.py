"""Specification of the robustness curves (mmssl_jax.evaluation.robustness): corruptions, curves, scores.

The scores are held to hand-computed curves and to MultiBench's own formulas; the curves to
constructed features whose answers are known: captions that name their image perfectly lose
retrieval exactly as fast as they are removed, and a text branch that ignores its input gives
flat caption curves.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmssl_jax import evaluation
from mmssl_jax.evaluation import robustness

# ----------------------------------------------------------------------------- scores


def test_relative_robustness_is_the_trapezoid_area_over_normalized_rates():
    assert robustness.relative_robustness((0, 0.5, 1), (1.0, 0.5, 0.0)) == pytest.approx(0.5)
    # 0 -> 0.8 -> 0.8 over (0, 0.25, 1): 0.25 * (1 + 0.8) / 2 + 0.75 * 0.8 = 0.825
    assert robustness.relative_robustness((0, 0.25, 1), (1.0, 0.8, 0.8)) == pytest.approx(0.825)
    # A sub-range is normalized by its span: a flat curve scores its value.
    assert robustness.relative_robustness((0, 0.2, 0.4), (0.7, 0.7, 0.7)) == pytest.approx(0.7)
    # On MultiBench's grid it is their eval_scripts/robustness.py helper, term for term.
    f = np.random.default_rng(0).random(11)
    multibench = sum((f[i] + f[i + 1]) * 0.1 / 2 for i in range(10))
    assert robustness.relative_robustness(robustness.RATES, f) == pytest.approx(multibench)


def test_effective_robustness_is_the_gain_over_the_shifted_baseline():
    # baseline (0.9, 0.6, 0.3) shifted to the clean 0.8: (0.8, 0.5, 0.2); gains 0, 0.1, 0.2.
    assert robustness.effective_robustness((0.8, 0.6, 0.4), (0.9, 0.6, 0.3)) == pytest.approx(0.3)
    # No baseline: the constant clean score, so a falling curve loses what it drops.
    assert robustness.effective_robustness((0.8, 0.6, 0.4)) == pytest.approx(-0.6)
    assert robustness.effective_robustness((0.5, 0.5, 0.5)) == 0.0
    with pytest.raises(ValueError, match="baseline has 2 points, the curve 3"):
        robustness.effective_robustness((0.8, 0.6, 0.4), (0.9, 0.6))


@pytest.mark.parametrize("rates", [(0.1, 0.5), (0.0,), (0.0, 0.5, 0.5), (0.0, 1.5), (0.0, 0.6, 0.3)])
def test_rates_must_start_clean_and_increase_within_0_1(rates):
    with pytest.raises(ValueError, match="rates must start at 0"):
        robustness.relative_robustness(rates, np.zeros(len(rates)))


# ----------------------------------------------------------------------------- corruptions


def test_affected_sets_grow_with_the_rate():
    sets = [robustness.affected(50, r, seed=3) for r in robustness.RATES]
    assert [s.sum() for s in sets] == [round(50 * r) for r in robustness.RATES]
    assert all((a <= b).all() for a, b in zip(sets, sets[1:]))  # nested: a curve's points differ by the corruption


def test_caption_corruptions():
    rng = np.random.default_rng(1)
    owners = np.repeat(np.arange(20), rng.integers(1, 4, 20))  # 1 to 3 captions per image
    captions = rng.standard_normal((len(owners), 8)).astype(np.float32) * 3
    hit = robustness.affected(20, 0.4, seed=0)[owners]
    missing = robustness.corrupt_captions(captions, owners, "caption_missing", 0.4)
    assert not missing[hit].any() and np.array_equal(missing[~hit], captions[~hit])
    noise = robustness.corrupt_captions(captions, owners, "caption_noise", 0.4)
    np.testing.assert_allclose(np.linalg.norm(noise, axis=1), np.linalg.norm(captions, axis=1), rtol=1e-5)
    assert np.array_equal(noise[~hit], captions[~hit]) and not np.isclose(noise[hit], captions[hit]).all(1).any()
    swapped = robustness.corrupt_captions(captions, owners, "caption_swapped", 0.4)
    assert np.array_equal(swapped[~hit], captions[~hit])
    donors = [np.flatnonzero((captions == row).all(1)) for row in swapped[hit]]
    assert all(len(d) == 1 and owners[d[0]] != owner for d, owner in zip(donors, owners[hit]))  # another image's
    for mode in robustness.CAPTION_CORRUPTIONS:
        assert np.array_equal(robustness.corrupt_captions(captions, owners, mode, 0.0), captions)
    with pytest.raises(ValueError, match="unknown caption corruption 'blur'"):
        robustness.corrupt_captions(captions, owners, "blur", 0.5)


def test_image_corruptions_grow_with_the_severity():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    clean = images / np.float32(255)
    for mode in robustness.IMAGE_CORRUPTIONS:
        np.testing.assert_array_equal(robustness.corrupt_images(images, mode, 0.0), clean)
        change = [np.abs(robustness.corrupt_images(images, mode, r, seed=5) - clean).mean() for r in (0.2, 0.5, 1.0)]
        assert 0 < change[0] < change[1] < change[2], (mode, change)
        out = robustness.corrupt_images(images, mode, 0.5)
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    occluded = robustness.corrupt_images(images, "image_occlusion", 0.25)
    assert all(np.isclose((im == 0.5).all(-1).mean(), 0.25, atol=0.02) for im in occluded)  # an 8 x 8 square of 16 x 16
    assert (robustness.corrupt_images(images, "image_occlusion", 1.0) == 0.5).all()
    blurred = robustness.corrupt_images(np.full((1, 16, 16, 3), 200, np.uint8), "image_blur", 1.0)
    np.testing.assert_allclose(blurred, 200 / 255, rtol=1e-5)  # a flat image stays flat: no darkened borders


# ----------------------------------------------------------------------------- curves


def _perfect_pairs(n=40, dim=16, classes=4, seed=3):
    """Images whose captions are their own embedding (plus a little noise); labels by cluster."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = 4 * rng.standard_normal((classes, dim))
    image = (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32)
    owners = np.repeat(np.arange(n), 2)
    captions = image[owners] + 0.01 * rng.standard_normal((2 * n, dim)).astype(np.float32)
    return image, captions, owners, labels


def test_caption_curves_fall_monotonically_as_captions_go_missing():
    """Captions that name their image: image-to-text R@1 is exactly the share of images that keep
    their captions, 1 - r; every curve falls monotonically."""
    image, captions, owners, labels = _perfect_pairs()
    curves = robustness.caption_curves(image, image, captions, owners, lambda c: c, labels=labels,
                                       corruptions=("caption_missing", "caption_swapped"), probe_iters=30)
    missing = curves["caption_missing"]
    np.testing.assert_allclose(missing["i2t_r@1"], [1 - r for r in robustness.RATES], atol=1e-6)
    for mode, by_metric in curves.items():
        for metric in ("i2t_r@1", "t2i_r@1", "i2t_r@5"):
            values = by_metric[metric]
            assert all(b <= a + 1e-9 for a, b in zip(values, values[1:])), (mode, metric, values)
            assert values[0] == 1.0 and values[-1] <= 0.1, (mode, metric, values)
    assert set(missing) == {"i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "fused_probe_top1", "fused_knn20_top1"}
    scores = robustness.summary_scores(robustness.RATES, curves)
    assert scores["caption_missing/i2t_r@1/relative"] == pytest.approx(0.5)
    assert scores["caption_missing/i2t_r@1/effective"] == pytest.approx(-sum(robustness.RATES))


def test_a_model_that_ignores_captions_has_flat_caption_curves():
    image, captions, owners, labels = _perfect_pairs()
    constant = lambda c: np.ones((len(c), 16), np.float32)  # noqa: E731 - the text branch ignores its input
    curves = robustness.caption_curves(image, image, captions, owners, constant, labels=labels,
                                       rates=(0.0, 0.5, 1.0), probe_iters=30)
    for mode, by_metric in curves.items():
        for metric, values in by_metric.items():
            assert values == [values[0]] * 3, (mode, metric, values)
        scores = robustness.summary_scores((0.0, 0.5, 1.0), {mode: by_metric})
        assert all(v == 0.0 for k, v in scores.items() if k.endswith("effective"))
    assert curves["caption_noise"]["fused_probe_top1"][0] > 0.9  # the image half still classifies


def test_fit_linear_probe_scores_like_linear_probe():
    image, _, _, labels = _perfect_pairs(n=80)
    probe = evaluation.fit_linear_probe(image[:60], labels[:60], iters=40)
    out = evaluation.linear_probe(image[:60], labels[:60], image[60:], labels[60:], iters=40)
    assert probe.accuracy(image[60:], labels[60:]) == out["top1"] and probe.l2 == out["l2"]
