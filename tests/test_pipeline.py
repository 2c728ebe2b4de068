"""Specification of mmssl_jax.data.pipeline on records the tests make."""

from __future__ import annotations

import io
import logging

import jax
import numpy as np
import pytest
from PIL import Image

from mmssl_jax.data import augment, pipeline

SIZE = 16
DIM = 4


def _png(rng: np.random.Generator, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_records(n: int = 40, captions: int = 3, seed: int = 0) -> list[dict]:
    """Records like the builders store: image bytes, float16 caption embeddings, a label.

    Caption c of image i has embedding value ``i + c / 10`` everywhere, so a drawn text view
    tells which caption of which image it came from.
    """
    rng = np.random.default_rng(seed)
    return [
        {
            "image": _png(rng),
            "image_id": np.int64(i),
            "label": np.int64(i % 5),
            "caption_embeddings": np.stack([np.full(DIM, i + c / 10, np.float16) for c in range(captions)]),
        }
        for i in range(n)
    ]


def views(size: int = SIZE) -> dict[str, augment.AugmentConfig]:
    cfg = augment.simclr_cifar(size)
    return {"image1": cfg, "image2": cfg}


def batches(ds, n: int) -> list[dict]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_batches_hold_views_captions_and_labels():
    ds = pipeline.train_dataset(
        make_records(), batch_size=8, seed=0, image_views=views(), text_views=("text",), keep=("label", "image_id")
    )
    batch = batches(ds, 1)[0]
    assert batch["image1"].shape == (8, SIZE, SIZE, 3) and batch["image1"].dtype == np.uint8
    assert batch["image2"].shape == (8, SIZE, SIZE, 3)
    assert batch["text"].shape == (8, DIM) and batch["text"].dtype == np.float32
    assert batch["label"].shape == (8,)
    # The text view belongs to the same image as the label and image id.
    np.testing.assert_array_equal(np.floor(batch["text"][:, 0] + 1e-3).astype(int), batch["image_id"])
    assert not np.array_equal(batch["image1"], batch["image2"])  # two independent crops


def test_same_seed_same_stream_and_new_order_each_epoch():
    records = make_records(n=16)
    make = lambda seed: pipeline.train_dataset(
        records, batch_size=16, seed=seed, image_views=views(), keep=("image_id",)
    )
    a, b = batches(make(0), 3), batches(make(0), 3)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    epoch_orders = [tuple(batch["image_id"]) for batch in a]
    assert all(sorted(order) == list(range(16)) for order in epoch_orders)  # each epoch is a permutation
    assert len(set(epoch_orders)) == 3  # ...and a different one every epoch
    assert tuple(batches(make(1), 1)[0]["image_id"]) != epoch_orders[0]


def test_processes_read_disjoint_slices_that_cover_the_data():
    records = make_records(n=48)
    seen = []
    for process in range(3):
        ds = pipeline.train_dataset(
            records, batch_size=24, seed=0, image_views={}, keep=("image_id",),
            process_index=process, process_count=3, num_epochs=1,
        )
        seen.append([int(i) for batch in ds for i in batch["image_id"]])
    assert all(len(s) == 16 for s in seen)  # 2 global batches of 24, 8 rows each
    assert sorted(sum(seen, [])) == list(range(48))  # every record once, none twice


def test_the_global_batch_does_not_depend_on_the_number_of_processes():
    """Process p's rows, in process order, are the batch one process reads: ids, crops and
    caption draws, across an epoch boundary (20 records, global batch 8)."""
    records = make_records(n=20)

    def stream(process: int, count: int) -> list[dict]:
        return batches(pipeline.train_dataset(
            records, batch_size=8, seed=5, image_views=views(), text_views=("text",), keep=("image_id",),
            process_index=process, process_count=count,
        ), 6)

    one = stream(0, 1)
    for count in (2, 4):
        parts = [stream(p, count) for p in range(count)]
        for step, want in enumerate(one):
            for key in want:
                got = np.concatenate([part[step][key] for part in parts])
                np.testing.assert_array_equal(got, want[key], err_msg=f"{count} processes, step {step}, {key}")
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        pipeline.train_dataset(records, batch_size=8, seed=0, image_views={}, process_index=0, process_count=3)


def test_restoring_the_iterator_state_gives_the_same_next_batches():
    ds = pipeline.train_dataset(make_records(), batch_size=8, seed=3, image_views=views(), text_views=("text",))
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses an epoch boundary (40 records, batch 8)
    resumed = iter(ds)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_caption_modes():
    records = make_records(n=8, captions=5)
    first = pipeline.train_dataset(
        records, batch_size=8, seed=0, image_views={}, text_views=("text",), caption_mode="first"
    )
    drawn_first = np.concatenate([b["text"][:, 0] for b in batches(first, 10)])
    np.testing.assert_allclose(drawn_first % 1, 0, atol=1e-3)  # always caption 0

    rand = pipeline.train_dataset(records, batch_size=8, seed=0, image_views={}, text_views=("text",))
    drawn = np.concatenate([b["text"][:, 0] for b in batches(rand, 40)])
    caption_index = np.round((drawn % 1) * 10).astype(int)
    counts = np.bincount(caption_index, minlength=5)
    assert (counts > 0).all() and counts.max() < 2 * counts.min() + 30  # every caption, roughly uniform

    pair = pipeline.train_dataset(
        records, batch_size=8, seed=0, image_views={}, text_views=("text", "text2"), caption_mode="pair"
    )
    for b in batches(pair, 5):
        np.testing.assert_array_equal(np.floor(b["text"][:, 0] + 1e-3), np.floor(b["text2"][:, 0] + 1e-3))
        assert (b["text"][:, 0] != b["text2"][:, 0]).all()  # two distinct captions of one image


def test_single_caption_pair_reuses_it():
    assert pipeline.pick_captions(1, "pair", 2, np.random.default_rng(0)) == [0, 0]
    with pytest.raises(pipeline.BadRecordError, match="no captions"):
        pipeline.pick_captions(0, "random", 1, np.random.default_rng(0))


def test_corrupt_images_are_skipped_and_counted(caplog):
    records = make_records(n=20)
    records[3]["image"] = b"\xff\xd8\xff\xe0 this is not a jpeg"
    records[7]["image"] = b""
    before = pipeline.SKIPPED.count
    ds = pipeline.train_dataset(
        records, batch_size=5, seed=0, image_views=views(), keep=("image_id",), num_epochs=1
    )
    with caplog.at_level(logging.WARNING, logger="mmssl_jax.data.pipeline"):
        ids = [int(i) for batch in ds for i in batch["image_id"]]
    assert pipeline.SKIPPED.count - before == 2
    # 4 global batches of 5 are read; 18 good records fill 3 (the rest is a partial batch, dropped).
    assert len(ids) == 15 and 3 not in ids and 7 not in ids
    # The counter is per process and other tests on this xdist worker may have skipped records first.
    assert "undecodable image" in caplog.text and f"{before + 2} skipped so far" in caplog.text


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="caption_mode"):
        pipeline.train_dataset(make_records(), batch_size=4, seed=0, image_views={}, text_views=("text",), caption_mode="any")
    with pytest.raises(ValueError, match="fewer than one batch"):
        pipeline.train_dataset(make_records(n=4), batch_size=8, seed=0, image_views=views())
    with pytest.raises(ValueError, match="two text views"):
        pipeline.train_dataset(make_records(), batch_size=4, seed=0, image_views={}, text_views=("text",), caption_mode="pair")


def test_read_options_are_checked_and_leave_the_stream_unchanged():
    for threads, buffer, match in [(-1, 4, "num_threads must be an integer >= 0"), (True, 4, "integer"),
                                   (2, 1.5, "prefetch_buffer_size must be an integer"), (2, 0, "need a prefetch buffer"),
                                   (0, 8, "need a prefetch buffer"), (4, 2, "threads idle")]:
        with pytest.raises(ValueError, match=match):
            pipeline.read_options(threads, buffer)
    options = pipeline.read_options(2, 8)
    assert (options.num_threads, options.prefetch_buffer_size) == (2, 8)
    records = make_records(n=24)
    streams = [batches(pipeline.train_dataset(records, batch_size=8, seed=0, image_views=views(), keep=("image_id",),
                                              read_options=ro), 4)
               for ro in (None, pipeline.read_options(0, 0), options)]
    for other in streams[1:]:
        for x, y in zip(streams[0], other):
            np.testing.assert_array_equal(x["image_id"], y["image_id"])
            np.testing.assert_array_equal(x["image1"], y["image1"])


def test_decode_image_accepts_arrays_and_rejects_garbage():
    assert pipeline.decode_image(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    assert pipeline.decode_image(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(pipeline.BadRecordError, match="shape"):
        pipeline.decode_image(np.zeros((5,), np.uint8))
    with pytest.raises(pipeline.BadRecordError, match="undecodable"):
        pipeline.decode_image(b"garbage")


def test_eval_stream_is_ordered_and_padded_with_a_mask():
    records = make_records(n=10)
    records[4]["image"] = b"broken"
    ds = pipeline.eval_dataset(records, batch_size=4, cfg=augment.eval_config(SIZE), keep=("label", "image_id"))
    out = list(ds)
    assert len(out) == 3 and all(b["image"].shape == (4, SIZE, SIZE, 3) for b in out)
    mask = np.concatenate([b["mask"] for b in out])
    ids = np.concatenate([b["image_id"] for b in out])
    np.testing.assert_array_equal(ids[:10], np.arange(10))
    np.testing.assert_array_equal(mask, [True] * 4 + [False] + [True] * 5 + [False] * 2)


def test_device_augment_turns_uint8_views_into_augmented_floats():
    ds = pipeline.train_dataset(make_records(), batch_size=8, seed=0, image_views=views(), text_views=("text",))
    batch = batches(ds, 1)[0]
    out = jax.jit(lambda b, k: pipeline.device_augment(b, k, views()))(batch, jax.random.key(0))
    assert out["image1"].dtype == np.float32 and out["image1"].shape == (8, SIZE, SIZE, 3)
    assert 0.0 <= float(out["image1"].min()) and float(out["image1"].max()) <= 1.0
    np.testing.assert_array_equal(out["text"], batch["text"])


def test_worker_processes_give_a_deterministic_stream():
    records = make_records(n=32)
    make = lambda: pipeline.train_dataset(
        records, batch_size=8, seed=0, image_views=views(), keep=("image_id",), worker_count=2
    )
    a, b = batches(make(), 4), batches(make(), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image1"], y["image1"])
        np.testing.assert_array_equal(x["image_id"], y["image_id"])


# ----------------------------------------------------------------------------- partially paired


def test_caption_fraction_hides_a_seeded_fixed_set_of_images():
    """``caption_fraction``: each image keeps its captions or not once and for all (the same in
    every epoch, on every process, after a resume), roughly the fraction of them; a caption-less
    image's text view is zeros and ``has_text`` says which."""
    records = make_records(n=200, captions=2)
    kept = np.array([pipeline.caption_kept(i, 0.3, seed=7) for i in range(200)])
    assert 0.2 < kept.mean() < 0.4 and kept.tolist() != [pipeline.caption_kept(i, 0.3, seed=8) for i in range(200)]
    make = lambda **kw: pipeline.train_dataset(  # noqa: E731
        records, batch_size=40, seed=7, image_views={}, text_views=("text",), keep=("image_id",),
        caption_fraction=0.3, **kw)
    seen = {}
    for batch in batches(make(), 15):  # three epochs
        ids = batch["image_id"]
        np.testing.assert_array_equal(batch["has_text"], kept[ids])
        assert not batch["text"][~batch["has_text"]].any()
        np.testing.assert_array_equal(np.floor(batch["text"][batch["has_text"], 0] + 1e-3), ids[batch["has_text"]])
        seen.update(zip(ids.tolist(), batch["has_text"].tolist()))
    assert len(seen) == 200
    halves = [batches(make(process_index=p, process_count=2), 2) for p in range(2)]
    for step, whole in enumerate(batches(make(), 2)):
        np.testing.assert_array_equal(np.concatenate([h[step]["has_text"] for h in halves]), whole["has_text"])
    # Without a text view, or with every caption kept, nothing changes and no mask is made.
    assert "has_text" not in batches(pipeline.train_dataset(records, batch_size=40, seed=7, image_views={},
                                                            text_views=("text",)), 1)[0]


def test_images_stored_without_captions_are_skipped_or_masked():
    records = make_records(n=16)
    for i in (2, 9):
        records[i]["caption_embeddings"] = np.zeros((0, DIM), np.float16)
    make = lambda mode: pipeline.train_dataset(  # noqa: E731
        records, batch_size=8, seed=0, image_views={}, text_views=("text",), keep=("image_id",),
        missing_captions=mode, num_epochs=1)
    skipped = [int(i) for b in make("skip") for i in b["image_id"]]
    assert 2 not in skipped and 9 not in skipped
    masked = {int(i): bool(t) for b in make("mask") for i, t in zip(b["image_id"], b["has_text"])}
    assert len(masked) == 16 and [i for i, t in masked.items() if not t] == sorted([2, 9], key=list(masked).index)
    with pytest.raises(ValueError, match="missing_captions must be one of"):
        make("drop")
    with pytest.raises(ValueError, match=r"caption_fraction must be in \[0, 1\], got 1.5"):
        pipeline.train_dataset(records, batch_size=8, seed=0, image_views={}, text_views=("text",), caption_fraction=1.5)
