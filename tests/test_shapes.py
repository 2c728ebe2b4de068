"""Specification of the embedded dataset's generator.

Deterministic by seed, labels true to the pixels, captions true to the labels.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest

from mmssl_jax.data import shapes

N = 120  # examples checked per property; about 0.1 s to generate


@pytest.fixture(scope="module")
def examples() -> list[shapes.Example]:
    return [shapes.generate_example(0, i) for i in range(N)]


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def test_same_seed_and_index_give_the_same_example():
    a, b = shapes.generate_example(7, 11), shapes.generate_example(7, 11)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.captions == b.captions and a.scene == b.scene


def test_an_example_does_not_depend_on_how_many_are_generated():
    streamed = list(shapes.generate(3, 4, start=2))
    for offset, example in enumerate(streamed):
        alone = shapes.generate_example(3, 2 + offset)
        np.testing.assert_array_equal(example.image, alone.image)
        assert example.captions == alone.captions


def test_different_seeds_or_indices_give_different_examples():
    images = {shapes.generate_example(seed, i).image.tobytes() for seed in (0, 1) for i in range(20)}
    assert len(images) == 40


def test_scene_captions_match_the_generated_example_without_drawing():
    for i in range(10):
        assert shapes.scene_captions(5, i) == shapes.generate_example(5, i).captions


def test_images_are_rgb_uint8_of_the_requested_size():
    for size in (32, 64, 96):
        image = shapes.generate_example(0, 0, image_size=size).image
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError, match="image_size"):
        shapes.generate_example(0, 0, image_size=8)


def test_the_main_objects_pixels_have_the_labelled_colour(examples):
    for example in examples:
        main = example.scene.main
        mask = shapes.object_mask(main, example.image.shape[0]) > 0.99
        assert mask.sum() >= 10, main
        mean = example.image[mask].astype(np.float64).mean(axis=0) / 255.0
        hue = 360.0 * colorsys.rgb_to_hsv(*mean)[0]
        nearest = min(shapes.COLORS, key=lambda c: hue_distance(hue, shapes.COLOR_HSV[c][0]))
        assert nearest == main.color, (example.captions[0], mean, hue)
        assert example.labels["color"] == shapes.COLORS.index(main.color)


def test_every_object_sits_in_its_labelled_cell(examples):
    for example in examples:
        size = example.image.shape[0]
        for obj in example.scene.objects:
            mask = shapes.object_mask(obj, size)
            ys, xs = np.nonzero(mask > 0.5)
            cx, cy = (xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size
            row, col = int(cy * 3), int(cx * 3)
            assert shapes.POSITIONS[3 * row + col] == obj.position, (obj, cx, cy)


@pytest.mark.parametrize(
    "shape,fraction",
    [
        ("circle", 1.0),
        ("square", 2 / math.pi),
        ("hexagon", 3 * math.sqrt(3) / (2 * math.pi)),
        ("triangle", 3 * math.sqrt(3) / (4 * math.pi)),
        ("ring", 1 - 0.55**2),
    ],
)
def test_the_drawn_area_is_that_of_the_labelled_shape(shape, fraction):
    obj = shapes.ShapeObject(shape, "red", "large", "center", (0.5, 0.5), 0.3, 3.0, (1.0, 0.0, 0.0))
    mask = shapes.object_mask(obj, 128)
    area = mask.sum() / (math.pi * (0.3 * 128) ** 2)
    assert area == pytest.approx(fraction, rel=0.05)
    assert (mask[64, 64] < 0.01) == (shape == "ring")  # only the ring is hollow


def test_a_second_object_is_smaller_elsewhere_and_never_overlaps(examples):
    pairs = [e for e in examples if len(e.scene.objects) == 2]
    assert len(pairs) > N // 5
    for example in pairs:
        main, other = example.scene.objects
        assert shapes.SIZES.index(other.size) < shapes.SIZES.index(main.size)
        assert other.position != main.position
        overlap = shapes.object_mask(main, 64) * shapes.object_mask(other, 64)
        assert overlap.max() == 0.0


def test_caption_zero_names_every_label_in_label_words(examples):
    for example in examples:
        first = example.captions[0]
        for obj in example.scene.objects:
            assert f"{obj.size} {obj.color} {obj.shape} in the {obj.position}" in first, first


def test_every_caption_names_colour_and_shape_of_every_object(examples):
    for example in examples:
        assert len(example.captions) == 5 and len(set(example.captions)) == 5
        for caption in example.captions:
            for obj in example.scene.objects:
                assert obj.color in caption, (caption, obj)
                assert any(word in caption for word in shapes.SHAPE_WORDS[obj.shape]), (caption, obj)


def test_paraphrases_vary_wording_and_sometimes_name_the_background(examples):
    captions = [c for e in examples for c in e.captions[1:]]
    backgrounds = {w for words in shapes.BACKGROUND_WORDS.values() for w in words}
    assert sum(any(f" {w} background" in c for w in backgrounds) for c in captions) > len(captions) // 5
    synonyms = {w for words in shapes.SHAPE_WORDS.values() for w in words[1:]}
    assert sum(any(w in c for w in synonyms) for c in captions) > len(captions) // 3
    assert len(set(captions)) > 0.9 * len(captions)


def test_every_class_of_every_label_occurs():
    labels = [shapes.generate_example(0, i).labels for i in range(400)]
    for name, classes in shapes.class_names().items():
        assert {lab[name] for lab in labels} == set(range(len(classes))), name
    assert {lab["num_objects"] for lab in labels} == {1, 2}


def test_articles_follow_the_next_word():
    assert shapes.article("orange") == "an" and shapes.article("red") == "a"
    assert shapes.article("uniform") == "a" and shapes.article("image") == "an"
