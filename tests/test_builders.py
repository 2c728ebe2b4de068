"""Specification of the dataset builders: what they store, what they skip, how they load, what they say when unprepared.

Every dataset here is made by the tests in a temporary directory (tiny shapes splits, a few
generated JPEGs with captions); the caption embeddings are the real all-MiniLM-L6-v2 ones.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmssl_jax.data import builders, shapes
from mmssl_jax.data import prepare as prepare_cli
from mmssl_jax.data.builders.common import tfds

NUM_TRAIN, NUM_TEST = 64, 16


def jpeg(seed: int, size=(40, 30), mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 5, size[0] // 5, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


@pytest.fixture(scope="module")
def encoder():
    return builders.load_text_encoder()


def assert_embeddings_match(record, encoder):
    stored = np.asarray(record["caption_embeddings"])
    assert stored.dtype == np.float16 and stored.shape == (len(record["captions"]), builders.DEFAULT_TEXT_DIM)
    fresh = encoder.encode(text(record["captions"]), batch_size=8)
    np.testing.assert_allclose(stored.astype(np.float32), fresh, atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------- mmssl_shapes


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory, encoder):
    path = tmp_path_factory.mktemp("tfds_shapes")
    result = builders.prepare_embedded(data_dir=path, num_train=NUM_TRAIN, num_test=NUM_TEST, text_encoder=encoder)
    assert not result.reused and result.splits == {"test": NUM_TEST, "train": NUM_TRAIN}
    assert result.name == "mmssl_shapes/all-minilm-l6-v2"
    return path


def test_shapes_records_are_the_generated_examples_with_their_embeddings(shapes_dir, encoder):
    for split, seed in (("train", 0), ("test", 1)):
        source = builders.load_source("mmssl_shapes", split, data_dir=shapes_dir)
        assert len(source) == (NUM_TRAIN if split == "train" else NUM_TEST)
        for index in (0, 5, len(source) - 1):
            record, example = source[index], shapes.generate_example(seed, index)
            np.testing.assert_array_equal(decode(record["image"]), example.image)  # PNG: lossless
            assert text(record["captions"]) == list(example.captions)
            assert record["image_id"] == index
            for name in ("shape", "color", "size", "position", "background", "num_objects"):
                assert record[name] == example.labels[name], name
            assert record["label"] == example.labels["shape"]
            assert list(record["objects"]["color"]) == [shapes.COLORS.index(o.color) for o in example.scene.objects]
            assert_embeddings_match(record, encoder)


def test_preparing_again_reuses_and_refuses_other_sizes(shapes_dir):
    again = builders.prepare_embedded(data_dir=shapes_dir, num_train=NUM_TRAIN, num_test=NUM_TEST)
    assert again.reused and again.seconds == 0.0 and again.splits == {"test": NUM_TEST, "train": NUM_TRAIN}
    assert builders.prepare_embedded(data_dir=shapes_dir).reused  # no sizes asked: whatever is there
    with pytest.raises(ValueError, match="overwrite"):
        builders.prepare_embedded(data_dir=shapes_dir, num_train=NUM_TRAIN + 1, num_test=NUM_TEST)


def test_overwrite_prepares_again_at_the_new_size(tmp_path, encoder):
    builders.prepare_embedded(data_dir=tmp_path, num_train=6, num_test=3, text_encoder=encoder)
    redone = builders.prepare_embedded(data_dir=tmp_path, num_train=4, num_test=2, overwrite=True, text_encoder=encoder)
    assert not redone.reused and redone.splits == {"test": 2, "train": 4}
    assert len(builders.load_source("mmssl_shapes", "train", data_dir=tmp_path)) == 4


def test_shapes_through_tfds_data_source_and_the_classification_loader(shapes_dir):
    source = tfds.data_source("mmssl_shapes", split="test", data_dir=str(shapes_dir), download=False)
    assert source[0]["image"].shape == (64, 64, 3)
    probe = builders.load_classification("mmssl_shapes", "test", data_dir=shapes_dir, label_key="color")
    assert len(probe) == NUM_TEST and probe.class_names == shapes.COLORS
    item = probe[3]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (64, 64, 3)
    assert item["label"] == shapes.generate_example(1, 3).labels["color"]
    with pytest.raises(ValueError, match="class label"):
        builders.load_classification("mmssl_shapes", "test", data_dir=shapes_dir, label_key="captions")
    with pytest.raises(ValueError, match="no split 'validation'"):
        builders.load_source("mmssl_shapes", "validation", data_dir=shapes_dir)


# ----------------------------------------------------------------------------- COCO format


def write_coco_layout(root: Path) -> dict:
    """Official layout: 4 train images (one corrupt, one missing, one PNG named .jpg), 2 val (one grayscale)."""
    (root / "annotations").mkdir(parents=True)
    files = {
        ("train2017", 1): jpeg(1),
        ("train2017", 2): jpeg(2)[:300],  # truncated: corrupt
        ("train2017", 3): None,  # listed, never written: missing
        ("train2017", 4): jpeg(4, fmt="PNG"),  # not a JPEG: re-encoded
        ("val2017", 7): jpeg(7),
        ("val2017", 8): jpeg(8, mode="L"),  # grayscale JPEG: re-encoded as RGB
    }
    captions = {
        1: [
            "A dog runs on the beach.",
            "a dog on sand",
            "a brown dog running",
            "dog and sea",
            "a happy dog",
            "a dog near the water",
            "the dog plays",
        ],  # 7 captions
        2: ["a cat", "a cat sleeping", "a cat on a bed", "cat", "a grey cat"],
        3: ["a bus", "a red bus", "a bus in a street", "a city bus", "bus stop"],
        4: ["two birds", "birds on a wire", "a pair of birds", "small birds", "birds"],
        7: ["a pizza", "a pizza on a table", "a cheese pizza", "food", "a dog on sand"],  # shared caption
        8: ["a black and white photo", "an old photo", "a street", "people walking", "grey photo"],
    }
    for subset in ("train2017", "val2017"):
        (root / subset).mkdir()
        images, annotations = [], []
        for (where, image_id), data in files.items():
            if where != subset:
                continue
            name = f"{image_id:012d}.jpg"
            if data is not None:
                (root / subset / name).write_bytes(data)
            images.append({"id": image_id, "file_name": name, "width": 40, "height": 30})
            for k, caption in enumerate(captions[image_id]):
                annotations.append({"id": 100 * image_id + k, "image_id": image_id, "caption": caption + "  "})
        (root / "annotations" / f"captions_{subset}.json").write_text(
            json.dumps({"images": images, "annotations": annotations})
        )
    return {"files": files, "captions": captions}


@pytest.fixture(scope="module")
def coco(tmp_path_factory, encoder):
    manual = tmp_path_factory.mktemp("coco")
    layout = write_coco_layout(manual)
    data_dir = tmp_path_factory.mktemp("tfds_coco")
    result = builders.prepare("coco_captions_embedded", data_dir=data_dir, manual_dir=manual, text_encoder=encoder)
    return result, layout, data_dir


def test_coco_skips_missing_and_corrupt_images_and_counts_them(coco):
    result, _, _ = coco
    assert result.name == "coco_captions_embedded/all-minilm-l6-v2"
    assert result.splits == {"train": 2, "val": 2}
    assert result.skipped == {"train": {"missing file": 1, "not a decodable image": 1}, "val": {}}
    assert "skipped 2" in result.summary()


def test_coco_stores_jpeg_bytes_ids_every_caption_and_their_embeddings(coco, encoder):
    result, layout, data_dir = coco
    train = builders.load_source("coco_captions_embedded", "train", data_dir=data_dir)
    by_id = {int(r["image_id"]): r for r in (train[i] for i in range(len(train)))}
    assert sorted(by_id) == [1, 4]
    assert by_id[1]["image"] == layout["files"][("train2017", 1)]  # an RGB JPEG is kept byte for byte
    assert text(by_id[1]["captions"]) == [c.strip() for c in layout["captions"][1]]  # all 7, stripped
    converted = by_id[4]["image"]
    assert converted[:2] == b"\xff\xd8" and decode(converted).shape == (30, 40, 3)  # the PNG became a JPEG
    val = builders.load_source("coco_captions_embedded", "val", data_dir=data_dir)
    gray = next(val[i] for i in range(len(val)) if val[i]["image_id"] == 8)
    with Image.open(io.BytesIO(gray["image"])) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
    for record in (by_id[1], by_id[4], gray):
        assert_embeddings_match(record, encoder)


def test_coco_format_single_file_with_split_fields(tmp_path, encoder):
    """Flickr8k-style: one captions.json, images/, a split per image (none -> unsplit)."""
    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for image_id, split in enumerate(["train", "train", "dev", "none", "train"]):
        name = f"img{image_id}.jpg"
        if image_id != 4:  # the last train image is missing
            (tmp_path / "images" / name).write_bytes(jpeg(image_id))
        images.append({"id": image_id, "file_name": name, "split": split})
        annotations += [
            {"id": 10 * image_id + k, "image_id": image_id, "caption": f"photo {image_id} caption {k}"}
            for k in range(5)
        ]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    result = builders.prepare(
        "flickr8k_embedded", data_dir=tmp_path / "tfds", manual_dir=tmp_path, text_encoder=encoder
    )
    assert result.splits == {"dev": 1, "train": 2, "unsplit": 1}
    assert result.skipped["train"] == {"missing file": 1}
    record = builders.load_source("flickr8k_embedded", "dev", data_dir=tmp_path / "tfds")[0]
    assert record["image_id"] == 2 and text(record["captions"])[0] == "photo 2 caption 0"
    assert record["file_name"] == b"img2.jpg"


def write_captions_json(root: Path, splits: dict[str, int], captionless: set[int], size=(40, 30)) -> dict[int, str]:
    """A Flickr8k-style folder (one COCO-format captions.json, images/): ``splits[name]`` images
    per split, numbered in order; the images in ``captionless`` have no annotation. Returns id -> split."""
    (root / "images").mkdir(parents=True)
    images, annotations, split_of = [], [], {}
    for split, count in splits.items():
        for _ in range(count):
            image_id = len(split_of)
            split_of[image_id] = split
            (root / "images" / f"img{image_id}.jpg").write_bytes(jpeg(image_id, size=size))
            images.append({"id": image_id, "file_name": f"img{image_id}.jpg", "split": split})
            if image_id not in captionless:
                annotations += [{"id": 10 * image_id + k, "image_id": image_id,
                                 "caption": f"photo {image_id} caption {k}"} for k in range(2)]
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return split_of


def test_caption_less_images_are_kept_with_zero_captions_only_when_asked(tmp_path, encoder):
    """The default config skips an image without captions (counted); ``keep_captionless`` (config
    ``+captionless``, version 1.1.0, beside the default one) keeps it in its split with zero
    captions, which the pipeline masks (``has_text`` false) or skips."""
    from mmssl_jax.data import pipeline

    split_of = write_captions_json(tmp_path / "src", {"train": 6, "dev": 2, "none": 2}, captionless={1, 4, 8})
    data_dir = tmp_path / "tfds"
    plain = builders.prepare("flickr8k_embedded", data_dir=data_dir, manual_dir=tmp_path / "src", text_encoder=encoder)
    assert plain.splits == {"dev": 2, "train": 4, "unsplit": 1} and plain.captionless == {}
    assert plain.skipped == {"dev": {}, "train": {"no captions": 2}, "unsplit": {"no captions": 1}}
    kept = builders.prepare("flickr8k_embedded", data_dir=data_dir, manual_dir=tmp_path / "src", text_encoder=encoder,
                            keep_captionless=True)
    assert kept.name == "flickr8k_embedded/all-minilm-l6-v2+captionless" and kept.path.endswith("/1.1.0")
    assert kept.splits == {"dev": 2, "train": 6, "unsplit": 2} and kept.skipped == {"dev": {}, "train": {}, "unsplit": {}}
    assert kept.captionless == {"dev": 0, "train": 2, "unsplit": 1} and "mask" in kept.summary()
    for split in ("train", "unsplit"):
        source = builders.load_source(kept.name, split, data_dir=data_dir)
        for record in (source[i] for i in range(len(source))):
            image_id = int(record["image_id"])
            assert split_of[image_id] == {"unsplit": "none"}.get(split, split)
            if image_id in (1, 4, 8):
                assert len(record["captions"]) == 0 and record["caption_embeddings"].shape == (0, 384)
            else:
                assert text(record["captions"]) == [f"photo {image_id} caption {k}" for k in range(2)]
                assert_embeddings_match(record, encoder)
    train = builders.load_source("flickr8k_embedded/all-minilm-l6-v2+captionless", "train", data_dir=data_dir)
    batches = lambda mode: list(pipeline.train_dataset(  # noqa: E731
        train, batch_size=2, seed=0, image_views={}, text_views=("text",), keep=("image_id",),
        missing_captions=mode, num_epochs=1))
    masked = {int(i): bool(t) for b in batches("mask") for i, t in zip(b["image_id"], b["has_text"])}
    assert masked == {i: i not in (1, 4) for i in range(6)}
    assert sorted(int(i) for b in batches("skip") for i in b["image_id"]) == [0, 2, 3, 5]
    # The default config is unchanged and still loads; a +captionless config not prepared says how.
    assert len(builders.load_source("flickr8k_embedded", "train", data_dir=data_dir)) == 4
    with pytest.raises(builders.DatasetNotPreparedError, match="coco_captions_embedded .*--keep_captionless"):
        builders.load_source("coco_captions_embedded/all-minilm-l6-v2+captionless", "train", data_dir=data_dir)
    with pytest.raises(ValueError, match="keep_captionless applies to the captioned builders"):
        builders.prepare("cifar10_npz", data_dir=data_dir, manual_dir=tmp_path, keep_captionless=True)


def test_coco_layout_errors_say_what_is_expected(tmp_path):
    with pytest.raises(builders.LayoutError, match="captions_<split><year>.json"):
        builders.read_coco_layout(tmp_path)


# ----------------------------------------------------------------------------- captioned folder


def test_captioned_folder_from_jsonl_split_files(tmp_path, encoder):
    folder = tmp_path / "toy"
    (folder / "pics" / "a").mkdir(parents=True)
    lines = {"train": [], "test": []}
    for k in range(5):
        split = "test" if k == 4 else "train"
        rel = f"pics/a/{k}.png" if k == 0 else f"pics/a/{k}.jpg"
        (folder / rel).write_bytes(jpeg(k, fmt="PNG" if k == 0 else "JPEG"))
        lines[split].append({"image": rel, "captions": [f"picture number {k}", "a toy picture"]})
    lines["train"].append({"image": "pics/a/gone.jpg", "captions": ["lost"]})
    lines["train"].append({"image": "pics/a/1.jpg", "caption": "", "image_id": 99})  # no caption
    for split, rows in lines.items():
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = builders.prepare("captioned_folder", data_dir=tmp_path / "tfds", manual_dir=folder, text_encoder=encoder)
    assert result.name == "captioned_folder/toy-all-minilm-l6-v2"
    assert result.splits == {"test": 1, "train": 4}
    assert result.skipped["train"] == {"missing file": 1, "no captions": 1}
    source = builders.load_source(result.name, "train", data_dir=tmp_path / "tfds", decode_images=True)
    record = next(source[i] for i in range(len(source)) if source[i]["file_name"] == b"pics/a/0.png")
    assert record["image"].shape == (30, 40, 3) and record["image_id"] == builders.captions.path_id("pics/a/0.png")
    assert_embeddings_match(record, encoder)


def test_a_single_jsonl_file_splits_by_field_or_is_train(tmp_path):
    rows = [{"image": "x.jpg", "captions": ["x"], "split": "val"}, {"image": "y.jpg", "captions": ["y"]}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    layout = builders.read_jsonl_layout(tmp_path)
    assert {s: [i.file_name for i in v] for s, v in layout.items()} == {"train": ["y.jpg"], "val": ["x.jpg"]}
    (tmp_path / "captions.jsonl").write_text('{"img": "x.jpg"}\n')
    with pytest.raises(builders.LayoutError, match=r"captions.jsonl:1"):
        builders.read_jsonl_layout(tmp_path)


# ----------------------------------------------------------------------------- classification


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "flowers"
    for split, count in (("train", 3), ("test", 2)):
        for c, name in enumerate(("daisy", "rose")):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                (root / split / name / f"{k}.jpg").write_bytes(jpeg(100 * c + k))
    (root / "train" / "rose" / "bad.jpg").write_bytes(b"not an image")
    return root


def test_classification_from_an_image_folder_directly_and_prepared(image_folder, tmp_path):
    direct = builders.load_classification(image_folder, "test")
    assert len(direct) == 4 and direct.class_names == ("daisy", "rose")
    assert [int(direct[i]["label"]) for i in range(4)] == [0, 0, 1, 1]
    assert direct[0]["image"].shape == (30, 40, 3) and direct[0]["image"].dtype == np.uint8
    with pytest.raises(IndexError):
        direct[4]

    status = prepare_cli.main(
        ["image_folder_classification", f"--manual_dir={image_folder}", f"--data_dir={tmp_path / 'tfds'}"]
    )
    assert status == 0
    prepared = builders.load_classification("image_folder_classification/flowers", "train", data_dir=tmp_path / "tfds")
    assert len(prepared) == 6 and prepared.class_names == ("daisy", "rose")  # bad.jpg skipped
    builder = builders.open_builder("image_folder_classification/flowers", tmp_path / "tfds")
    assert builder.info.metadata["skipped"]["train"] == {"not a decodable image": 1}


def write_cifar_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    images = np.stack([np.asarray(Image.fromarray(c).resize((32, 32), Image.Resampling.BILINEAR)) for c in coarse])
    labels = np.asarray([0, 3, 9, 1, 1, 2], np.int64)
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=75)
        blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    blob = np.concatenate(blobs)
    np.savez(
        path,
        train_jpeg=blob,
        train_offsets=offsets,
        train_labels=labels,
        test_jpeg=blob[: offsets[2]],
        test_offsets=offsets[:3],
        test_labels=labels[:2],
        label_names=np.asarray(builders.CIFAR10_CLASSES),
    )
    return images, labels


def test_classification_from_npz_files_and_the_cifar10_npz_builder(tmp_path):
    (tmp_path / "npz").mkdir()
    images, labels = write_cifar_npz(tmp_path / "npz" / "cifar10_jpeg.npz")
    train = builders.load_classification(tmp_path / "npz" / "cifar10_jpeg.npz", "train")
    assert len(train) == 6 and train.class_names == builders.CIFAR10_CLASSES
    assert int(train[2]["label"]) == 9
    assert np.abs(train[2]["image"].astype(int) - images[2]).mean() < 8  # lossy JPEG, but the same image

    np.savez(tmp_path / "arrays_test.npz", x=images, y=labels)
    arrays = builders.load_classification(tmp_path / "arrays_test.npz", "test")
    np.testing.assert_array_equal(arrays[1]["image"], images[1])
    with pytest.raises(KeyError, match="no split 'train'"):
        builders.load_classification(tmp_path / "arrays_test.npz", "train")

    result = builders.prepare("cifar10_npz", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "npz")
    assert result.splits == {"test": 2, "train": 6}
    prepared = builders.load_source("cifar10_npz", "train", data_dir=tmp_path / "tfds")
    blob = np.load(tmp_path / "npz" / "cifar10_jpeg.npz")
    assert prepared[1]["image"] == blob["train_jpeg"][blob["train_offsets"][1] : blob["train_offsets"][2]].tobytes()
    probe = builders.load_classification("cifar10_npz", "test", data_dir=tmp_path / "tfds")
    assert [int(probe[i]["label"]) for i in range(2)] == [0, 3]


def test_classification_from_cifar_python_files_folder_and_archive(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    pixels = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        pixels[name] = data
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": [1, 7]}))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in builders.CIFAR10_CLASSES]}))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="cifar-10-batches-py")
    for path in (tmp_path, tmp_path / "cifar-10-python.tar.gz"):
        train = builders.load_classification(path, "train")
        assert len(train) == 10 and train.class_names == builders.CIFAR10_CLASSES
        np.testing.assert_array_equal(
            train[0]["image"], pixels["data_batch_1"][0].reshape(3, 32, 32).transpose(1, 2, 0)
        )
        assert int(builders.load_classification(path, "test")[1]["label"]) == 7

    (root / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros(3, np.uint8), b"labels": [print]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        builders.load_classification(tmp_path, "test")


# ----------------------------------------------------------------------------- unprepared


def test_unprepared_datasets_say_how_to_prepare_them(tmp_path):
    with pytest.raises(builders.DatasetNotPreparedError) as error:
        builders.load_source("coco_captions_embedded", "train", data_dir=tmp_path)
    message = str(error.value)
    assert f"python -m mmssl_jax.data.prepare coco_captions_embedded --data_dir={tmp_path} --manual_dir=" in message
    assert "annotations/captions_train2017.json" in message

    with pytest.raises(
        builders.DatasetNotPreparedError, match=f"python -m mmssl_jax.data.prepare mmssl_shapes --data_dir={tmp_path}$"
    ):
        tfds.data_source("mmssl_shapes", split="train", data_dir=str(tmp_path), download=False)
    with pytest.raises(builders.DatasetNotPreparedError, match="captioned_folder --config=pets"):
        builders.load_classification("captioned_folder/pets-all-minilm-l6-v2", "train", data_dir=tmp_path)
    with pytest.raises(builders.DatasetNotPreparedError, match="prepare NAME"):
        builders.load_source("mmssl_no_such_dataset", data_dir=tmp_path)


def test_preparing_without_the_source_files_explains_the_layout(tmp_path, capsys):
    with pytest.raises(ValueError, match="pass --manual_dir"):
        builders.prepare("coco_captions_embedded", data_dir=tmp_path)
    assert (
        prepare_cli.main(["flickr8k_embedded", f"--data_dir={tmp_path}", f"--manual_dir={tmp_path / 'nowhere'}"]) == 2
    )
    assert "is missing or empty" in capsys.readouterr().err
