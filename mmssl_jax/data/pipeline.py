"""Grain input pipelines: records -> views -> per-process batches.

A record is a dict as the tfds builders store it (``mmssl_jax.data.builders``):
``image`` (encoded bytes, or an already decoded ``uint8 [H, W, 3]``), ``caption_embeddings``
(``float16 [num_captions, dim]``), and scalar fields such as ``label`` or ``image_id``. Any object
with ``__len__`` and ``__getitem__`` returning such records is a source: ``tfds.data_sources``
with ``decoders={"image": tfds.decode.SkipDecoding()}`` (so our workers decode), or a plain list.

Work is split where it is cheapest:

* host, per sample, in grain workers: decode, random resized crop, flip (:func:`host_view`),
  and caption augmentation (one of an image's captions drawn per step);
* device, per batch, inside the jitted step: the colour operations
  (:func:`device_augment`, dm-pix, vmapped with per-sample keys).

The stream does not depend on the topology (how many processes, how many devices): one seeded
permutation of all the records per epoch makes a global stream, global batch ``t`` is its block
``[t * B, (t + 1) * B)``, and process ``p`` of ``P`` takes rows ``[p * B / P, (p + 1) * B / P)`` of
that block (:class:`ProcessRows`), so the processes' rows, in process order, are the batch one
process would read. Each example's random crops and caption draws come from a generator seeded by
(seed, its position in the global stream), the device-side colour draws from the step's key and
the row of the global batch. A pod run is thus reproduced on one machine. The iterator's
``get_state()`` / ``set_state()`` resume this process's stream exactly, which the trainer stores in
every checkpoint (one state per process).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mmssl_jax.data import augment

CAPTION_MODES = ("random", "first", "pair")
"""How the text views are drawn from an image's captions: ``random`` draws one uniformly each
time the image is seen (caption augmentation), ``first`` always takes caption 0 (the ablation),
``pair`` draws two distinct captions (for a text-text pair)."""

MISSING_CAPTIONS = ("skip", "mask")
"""What becomes of a record without captions: ``skip`` it (a warning), or ``mask`` it: the sample
is kept with ``has_text=False`` and zero text views, so its image-only loss terms train on it and
its image-text terms leave it out (the losses' ``where=`` mask)."""

_CAPTION_SALT = 0x68617374  # keeps the caption draw apart from every other use of the seed


def caption_kept(index: int, fraction: float, seed: int) -> bool:
    """Whether training image ``index`` (its position in the source) keeps its captions when only
    ``fraction`` of the images may: one draw from ``(seed, index)``, the same in every epoch, on
    every process and after a resume (``input.caption_fraction``)."""
    if fraction >= 1.0:
        return True
    return bool(np.random.default_rng([seed, index, _CAPTION_SALT]).random() < fraction)

_log = logging.getLogger(__name__)


class BadRecordError(ValueError):
    """A record that cannot be turned into a sample (corrupt image, no captions...)."""


class _SkipCounter:
    """Counts records skipped by this process and warns with the running count."""

    def __init__(self) -> None:
        self.count = 0

    def skip(self, index_hint: Any, reason: str) -> None:
        self.count += 1
        _log.warning("Skipping record %s (%s); %d skipped so far in this process.", index_hint, reason, self.count)


SKIPPED = _SkipCounter()


def decode_image(value: Any) -> np.ndarray:
    """Encoded bytes or an array -> ``uint8 [H, W, 3]``.

    Raises:
      BadRecordError: the bytes are not a readable image, or the array has the wrong shape.
    """
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        try:
            with Image.open(io.BytesIO(bytes(value))) as img:
                return np.asarray(img.convert("RGB"))
        except Exception as e:  # PIL raises many kinds for corrupt data
            raise BadRecordError(f"undecodable image ({type(e).__name__}: {e})") from e
    array = np.asarray(value)
    if array.dtype == object and array.shape == ():  # a bytes scalar in an object array
        return decode_image(array.item())
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise BadRecordError(f"image must be [H, W, 1|3|4], got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def pick_captions(num_captions: int, mode: str, count: int, rng: np.random.Generator) -> list[int]:
    """Indices of the captions that make the text views of one sample.

    ``count`` text views (1 or 2). ``random`` draws independently and uniformly (with two views,
    distinct captions when the image has several); ``first`` takes caption 0 for every view;
    ``pair`` is ``random`` with two views.
    """
    if num_captions < 1:
        raise BadRecordError("record has no captions")
    if mode == "first":
        return [0] * count
    if count == 1:
        return [int(rng.integers(num_captions))]
    if num_captions >= count:
        return [int(i) for i in rng.choice(num_captions, size=count, replace=False)]
    return [int(i) for i in rng.integers(num_captions, size=count)]


class MakeViews(grain.transforms.RandomMap):
    """One record -> a sample dict of views: host-side image crops and drawn caption embeddings.

    Output: each image view ``uint8 [size, size, 3]``; each text view ``float32 [dim]``; the
    ``keep`` fields copied through. A record that cannot be used is skipped (``None``, counted
    with a warning), never a crash mid-epoch.

    Partially paired (``caption_fraction < 1`` or ``missing_captions="mask"``): the input is
    ``(index, record)`` and the sample gains ``has_text`` (``bool``); a caption-less image (hidden
    by :func:`caption_kept`, or stored without captions) has zero text views.
    """

    def __init__(
        self,
        image_views: Mapping[str, augment.AugmentConfig],
        text_views: Sequence[str] = (),
        caption_mode: str = "random",
        keep: Sequence[str] = (),
        caption_fraction: float = 1.0,
        missing_captions: str = "skip",
        caption_seed: int = 0,
    ):
        if caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption_mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
        if not 0.0 <= caption_fraction <= 1.0:
            raise ValueError(f"caption_fraction must be in [0, 1], got {caption_fraction}")
        if missing_captions not in MISSING_CAPTIONS:
            raise ValueError(f"missing_captions must be one of {MISSING_CAPTIONS}, got {missing_captions!r}")
        if caption_mode == "pair" and len(text_views) != 2:
            raise ValueError(f"caption_mode 'pair' needs two text views, got {list(text_views)}")
        if len(text_views) > 2:
            raise ValueError(f"at most two text views, got {list(text_views)}")
        self.image_views = dict(image_views)
        self.text_views = tuple(text_views)
        self.caption_mode = caption_mode
        self.keep = tuple(keep)
        self.caption_fraction, self.missing_captions, self.caption_seed = caption_fraction, missing_captions, caption_seed
        self.partial = bool(self.text_views) and (caption_fraction < 1.0 or missing_captions == "mask")

    def random_map(self, element: Any, rng: np.random.Generator) -> dict[str, Any] | None:
        index, record = element if self.partial else (None, element)
        try:
            return self._views(record, rng, index)
        except BadRecordError as e:
            SKIPPED.skip(record.get("image_id", "?") if isinstance(record, Mapping) else "?", str(e))
            return None

    def _views(self, record: Mapping[str, Any], rng: np.random.Generator, index: int | None = None) -> dict[str, Any]:
        sample: dict[str, Any] = {}
        if self.image_views:
            image = decode_image(record["image"])
            for name, cfg in self.image_views.items():
                sample[name] = augment.host_view(image, rng, cfg)
        if self.text_views:
            embeddings = np.asarray(record["caption_embeddings"])
            if embeddings.ndim != 2:
                raise BadRecordError(f"caption_embeddings must be [num_captions, dim], got {embeddings.shape}")
            if embeddings.shape[0] == 0 and self.missing_captions != "mask":
                raise BadRecordError("record has no captions")
            has_text = embeddings.shape[0] > 0 and (
                not self.partial or caption_kept(index, self.caption_fraction, self.caption_seed))
            if has_text:
                picks = pick_captions(embeddings.shape[0], self.caption_mode, len(self.text_views), rng)
                for name, pick in zip(self.text_views, picks):
                    sample[name] = embeddings[pick].astype(np.float32)
            else:  # a caption-less image: the text terms leave it out, whatever its text views hold
                for name in self.text_views:
                    sample[name] = np.zeros(embeddings.shape[1], np.float32)
            if self.partial:
                sample["has_text"] = np.asarray(has_text)
        for key in self.keep:
            if key not in record:
                raise KeyError(f"record has no field {key!r} to keep; it has {sorted(record)}")
            sample[key] = np.asarray(record[key])
        return sample


def read_options(num_threads: int, prefetch_buffer_size: int) -> grain.ReadOptions:
    """grain's ``ReadOptions`` (reader threads and prefetch buffer of one process), checked.

    ``num_threads=0`` with ``prefetch_buffer_size=0`` reads in the calling thread, on demand.
    Otherwise both are positive and the buffer holds at least one element per thread: grain
    would leave the extra threads idle (it only warns), or prefetch nothing at all with a
    buffer of 0, so such settings are refused rather than silently not doing what they say.

    Raises:
      ValueError: a negative or non-integer value, or a combination as above.
    """
    for name, value in (("num_threads", num_threads), ("prefetch_buffer_size", prefetch_buffer_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"grain read option {name} must be an integer >= 0, got {value!r}")
    if (num_threads == 0) != (prefetch_buffer_size == 0):
        raise ValueError(
            f"grain read options num_threads={num_threads}, prefetch_buffer_size={prefetch_buffer_size}: "
            "reader threads need a prefetch buffer and a buffer needs threads (grain prefetches only "
            "when both are > 0); use 0 and 0 to read in the calling thread")
    if prefetch_buffer_size < num_threads:
        raise ValueError(
            f"grain read options: prefetch_buffer_size={prefetch_buffer_size} < num_threads={num_threads} "
            "would leave threads idle; give the buffer at least one element per thread")
    return grain.ReadOptions(num_threads=int(num_threads), prefetch_buffer_size=int(prefetch_buffer_size))


def train_dataset(
    source: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    seed: int,
    image_views: Mapping[str, augment.AugmentConfig],
    text_views: Sequence[str] = (),
    caption_mode: str = "random",
    keep: Sequence[str] = (),
    num_epochs: int | None = None,
    worker_count: int = 0,
    read_options: grain.ReadOptions | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    caption_fraction: float = 1.0,
    missing_captions: str = "skip",
) -> grain.IterDataset:
    """This process's rows of the global training stream: shuffled each epoch, augmented, batched.

    Args:
      source: random-access records (see the module docstring).
      batch_size: the global batch, over every process; each process's batches hold
        ``batch_size // process_count`` rows (see the module docstring for which).
      seed: the one seed for shuffling, crops and caption draws.
      image_views: view name -> host-side augmentation (e.g. ``{"image1": cfg, "image2": cfg}``).
      text_views: names of the caption-embedding views (``("text",)`` or ``("text", "text2")``).
      caption_mode: one of :data:`CAPTION_MODES`.
      keep: record fields copied into every sample (``"label"``...).
      num_epochs: ``None`` repeats forever.
      worker_count: grain worker processes for decoding and cropping (0: in this process).
      read_options: grain's reader threads and prefetch buffer, per process (each worker
        process has its own); ``None``: grain's default (16 threads, 500 elements). At small
        image sizes the threads cost more CPU than the decoding they run in parallel (build them with :func:`read_options`).
      process_index, process_count: which rows of each global batch this process reads;
        default from JAX.
      caption_fraction: the fraction of images that keep their captions (:func:`caption_kept`,
        seeded by ``seed``); the others are caption-less.
      missing_captions: one of :data:`MISSING_CAPTIONS`.
      With text views and ``caption_fraction < 1`` or ``missing_captions="mask"``, every
      batch holds ``has_text bool [rows]``, the mask of the image-text loss terms.

    Returns:
      A ``grain.IterDataset``; ``iter()`` it for a checkpointable iterator of batches
      (dicts of arrays with a leading ``batch_size // process_count`` dimension). The last
      partial global batch of a finite stream is dropped so every step has the same shape. A
      record skipped as unusable is replaced by this process's next row, so only then do the
      processes' batches differ from one process's.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} (the global batch) must be a positive multiple of the "
                         f"{process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    if len(source) < batch_size:
        raise ValueError(f"the source has {len(source)} records, fewer than one batch of {batch_size} (the global batch)")
    make_views = MakeViews(image_views, text_views, caption_mode, keep, caption_fraction, missing_captions, seed)
    ds = grain.MapDataset.source(source)
    if make_views.partial:  # which images keep their captions depends on their place in the source
        ds = ds.map_with_index(_WithIndex(len(source)))
    ds = ds.seed(seed).shuffle().repeat(num_epochs).random_map(make_views)
    per_process = batch_size // process_count
    ds = ProcessRows(ds, per_process=per_process, process_index=process_index, process_count=process_count)
    it = ds.to_iter_dataset(read_options).batch(per_process, drop_remainder=True)
    if worker_count > 0:
        # grain's workers read absl flags; outside an absl app (Colab, pytest) nobody parsed them.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it


class _WithIndex:
    """``(index, record) -> (position in the source, record)``: grain hands a later epoch's reads
    indices past the source's end (it wraps them), so the position is ``index % size``."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, index: int, record: Any) -> tuple[int, Any]:
        return index % self.size, record


class ProcessRows(grain.MapDataset):
    """Process ``p``'s rows of every global batch: the global stream's elements
    ``t * B + p * b + r`` for ``r < b``, in order (``b`` rows per process, ``B = b * P``)."""

    def __init__(self, parent: grain.MapDataset, *, per_process: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._b, self._p, self._global = per_process, process_index, per_process * process_count

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._b

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        t, r = divmod(index, self._b)
        return self._parent[t * self._global + self._p * self._b + r]

    def __str__(self) -> str:
        return f"ProcessRows(per_process={self._b}, process_index={self._p}, global_batch={self._global})"


class _EvalView(grain.transforms.Map):
    def __init__(self, cfg: augment.AugmentConfig, keep: Sequence[str]):
        self.cfg, self.keep = cfg, tuple(keep)

    def map(self, record: Mapping[str, Any]) -> dict[str, Any]:
        try:
            image = augment.center_crop_resize(decode_image(record["image"]), self.cfg)
            valid = True
        except BadRecordError as e:
            SKIPPED.skip(record.get("image_id", "?"), str(e))
            image, valid = np.zeros((self.cfg.size, self.cfg.size, 3), np.uint8), False
        sample = {"image": image, "mask": np.asarray(valid)}
        sample.update({k: np.asarray(record[k]) for k in self.keep})
        return sample


def eval_dataset(
    source: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    cfg: augment.AugmentConfig,
    keep: Sequence[str] = ("label",),
    process_index: int | None = None,
    process_count: int | None = None,
    pad_to: int | None = None,
) -> grain.IterDataset:
    """One pass in order, centre crop, every batch full: the last is padded with ``mask=False``.

    This process reads records ``process_index::process_count``; ``pad_to`` pads its slice to
    that many rows (a multiple of ``batch_size``) so that every process runs the same number of
    batches, which collective (multi-host) evaluation steps need.

    A record whose image cannot be decoded stays in place with ``mask=False`` so features line
    up with labels. Batches hold ``image uint8 [B, size, size, 3]``, ``mask bool [B]`` and the
    ``keep`` fields.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(source)[process_index::process_count].map(_EvalView(cfg, keep))
    padding = (-len(ds)) % batch_size if pad_to is None else pad_to - len(ds)
    if padding < 0 or (pad_to is not None and pad_to % batch_size):
        raise ValueError(f"pad_to={pad_to} must be a multiple of batch_size={batch_size} and >= {len(ds)}")
    if padding:
        first = ds[0]
        blank = {k: np.zeros_like(v) for k, v in first.items()}  # mask=False
        ds = grain.MapDataset.concatenate([ds, grain.MapDataset.source([blank] * padding)])
    return ds.batch(batch_size).to_iter_dataset()


def device_augment(
    batch: Mapping[str, jax.Array], key: jax.Array, image_views: Mapping[str, augment.AugmentConfig]
) -> dict[str, jax.Array]:
    """The device half of the augmentation, inside the jitted step.

    Each image view ``uint8 [B, H, W, 3]`` becomes ``float32`` in [0, 1] with its colour
    operations applied (a separate key per view); other fields pass through.
    """
    out = dict(batch)
    for i, (name, cfg) in enumerate(sorted(image_views.items())):
        images = jnp.asarray(batch[name], jnp.float32) / 255.0
        out[name] = augment.color_augment(images, jax.random.fold_in(key, i), cfg)
    return out
