"""Features of a trained model for evaluation: a frozen model on the mesh, image sets, prompts.

:class:`FrozenModel` runs the encoders and heads in eval mode, batched and sharded over the mesh;
:class:`ImageSet` streams (and caches) a dataset's centre-cropped images, each process its share,
and gathers every process's features back in the dataset's order; :func:`class_prompt_embeddings`
embeds zero-shot prompts with the sentence encoder that embedded the training captions.

Representations: probes and kNN read the encoder output ``h`` (what SimCLR and CLIP probe);
zero-shot and retrieval compare head outputs ``z`` in the joint space.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmssl_jax import sharding
from mmssl_jax.evaluation.protocols import l2_normalize

_log = logging.getLogger(__name__)

class FrozenModel:
    """A trained :class:`~mmssl_jax.models.multiview.MultiViewModel` in eval mode on the mesh.

    ``images(variables, uint8 [B, S, S, 3]) -> (h, z)`` and ``texts(variables, [B, d]) -> (h, z)``
    are jitted once, the batch sharded over the mesh's data axis, outputs float32.
    """

    def __init__(self, model, mesh: jax.sharding.Mesh, dtype: Any = jnp.float32):
        self.model, self.mesh, self.dtype = model, mesh, jnp.dtype(dtype)
        self.modalities = {m for _, m in model.view_modality}
        batch = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)

        def represent(variables, x, modality):
            if jnp.issubdtype(x.dtype, jnp.integer):
                x = x.astype(jnp.float32) / 255.0
            h, z = model.apply(variables, x.astype(self.dtype), modality, method=model.represent)
            return h.astype(jnp.float32), z.astype(jnp.float32)

        self._fns = {
            m: jax.jit(functools.partial(represent, modality=m), in_shardings=(rep, batch), out_shardings=batch)
            for m in self.modalities
        }

    def __call__(self, variables, x: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """``(h, z)`` for this process's rows ``x`` (a multiple of its local devices)."""
        if modality not in self._fns:
            raise ValueError(f"the model has no {modality!r} branch; it has {sorted(self._fns)}")
        h, z = self._fns[modality](variables, sharding.host_batch_to_global(np.asarray(x), self.mesh))
        return _local_rows(h), _local_rows(z)

    def texts(self, variables, embeddings: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Text-head embeddings ``z`` of precomputed sentence embeddings (every process the same rows)."""
        embeddings = np.asarray(embeddings, np.float32)
        step = _round_up(batch_size, jax.local_device_count())
        out = []
        for i in range(0, len(embeddings), step):
            chunk = embeddings[i : i + step]
            pad = _round_up(len(chunk), jax.local_device_count()) - len(chunk)
            chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), np.float32)])
            out.append(self(variables, chunk, "text")[1][: len(chunk) - pad])
        return np.concatenate(out)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def _gather_processes(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class _Progress:
    """Log lines with rate and ETA every few seconds (evaluation passes can be long)."""

    def __init__(self, what: str, total: int, every_s: float = 10.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        """A line every ``every_s`` seconds, and a last one at the end of a pass that took that long."""
        now = time.perf_counter()
        if now - self.last >= self.every_s or (done >= self.total and now - self.start >= self.every_s):
            rate = done / max(now - self.start, 1e-9)
            eta = (self.total - done) / max(rate, 1e-9)
            _log.info("%s: %d/%d (%.0f%%), %.0f/s, ETA %.0f s", self.what, done, self.total,
                      100 * done / max(self.total, 1), rate, eta)
            self.last = now


class ImageSet:
    """One split's evaluation images (centre crop), each process its share, in fixed order.

    The images are kept in memory after the first pass when they fit in ``cache_mb``, so
    repeated evaluations during training decode them once.

    Attributes:
      source: the random-access records (``image`` and the ``keep`` fields).
      fields: ``keep`` fields of every record, in the dataset's order (after :meth:`features`).
    """

    def __init__(self, source: Sequence[Mapping[str, Any]], *, image_size: int, batch_size: int,
                 keep: Sequence[str] = (), cache_mb: float = 2048, name: str = "images",
                 center_crop_fraction: float = 0.875):
        from mmssl_jax.data import augment

        if len(source) == 0:
            raise ValueError(f"{name}: the evaluation split is empty")
        self.source, self.keep, self.name = source, tuple(keep), name
        self.cfg = augment.eval_config(image_size, center_crop_fraction)
        processes = jax.process_count()
        self.batch_size = _round_up(max(batch_size // processes, 1), jax.local_device_count())
        per_process = -(-len(source) // processes)
        self.pad_to = _round_up(per_process, self.batch_size)
        self._cached: list[dict[str, np.ndarray]] | None = None
        bytes_needed = self.pad_to * image_size * image_size * 3
        self._cache_ok = bytes_needed <= cache_mb * 2**20
        # Original record index of each row this process reads (-1: padding).
        p = jax.process_index()
        local = np.arange(p, len(source), processes)
        self._index = np.concatenate([local, -np.ones(self.pad_to - len(local), np.int64)])

    def __len__(self) -> int:
        return len(self.source)

    def batches(self):
        if self._cached is not None:
            yield from self._cached
            return
        from mmssl_jax.data import pipeline

        ds = pipeline.eval_dataset(self.source, batch_size=self.batch_size, cfg=self.cfg, keep=self.keep,
                                   pad_to=self.pad_to)
        cache = [] if self._cache_ok else None
        for batch in ds:
            batch = {k: np.asarray(v) for k, v in batch.items()}
            if cache is not None:
                cache.append(batch)
            yield batch
        if cache is not None:
            self._cached = cache

    def features(self, frozen: FrozenModel, variables, transform=None) -> dict[str, np.ndarray]:
        """``{"h", "z"}`` and the ``keep`` fields, for every record in the dataset's order
        (records whose image could not be decoded are dropped, ``index`` says which are left).

        ``transform(images uint8 [B, S, S, 3], number) -> float [B, S, S, 3]`` in [0, 1] changes
        each batch first (the robustness curves' image corruptions; ``number`` counts this
        process's batches, for seeding)."""
        out: dict[str, list] = {"h": [], "z": [], "mask": [], **{k: [] for k in self.keep}}
        progress = _Progress(f"features of {self.name}", self.pad_to)
        done = 0
        for number, batch in enumerate(self.batches()):
            images = batch["image"] if transform is None else transform(batch["image"], number)
            h, z = frozen(variables, images, "image")
            out["h"].append(h)
            out["z"].append(z)
            out["mask"].append(batch["mask"])
            for k in self.keep:
                out[k].append(batch[k])
            done += len(batch["mask"])
            progress.update(done)
        arrays = {k: _gather_processes(np.concatenate(v)) for k, v in out.items()}
        index = _gather_processes(self._index)
        keep = (index >= 0) & arrays.pop("mask").astype(bool)
        order = np.argsort(index[keep], kind="stable")
        result = {k: v[keep][order] for k, v in arrays.items()}
        result["index"] = index[keep][order]
        return result


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` records drawn without replacement so that each class keeps its share
    (largest remainders round), seeded; sorted. A dataset stored sorted by class (an image folder)
    is sampled from every class, not from its first ones."""
    labels = np.asarray(labels)
    if not 0 < n <= len(labels):
        raise ValueError(f"stratified_sample: n={n} must be in [1, {len(labels)}]")
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n / len(labels)
    take = np.floor(share).astype(np.int64)
    short = n - take.sum()
    take[np.argsort(-(share - take), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


class Subset(Sequence):
    """The records ``indices`` of a random-access source, in that order."""

    def __init__(self, source: Sequence, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.class_names = getattr(source, "class_names", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        return self.source[int(self.indices[index])]


def caption_table(source: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """All precomputed caption embeddings of a captioned split: ``(embeddings [T, d] float32,
    text_to_image [T])``, image i's captions in order."""
    embeddings, owners = [], []
    for i in range(len(source)):
        e = np.asarray(source[i]["caption_embeddings"], np.float32)
        embeddings.append(e)
        owners.append(np.full(len(e), i, np.int32))
    return np.concatenate(embeddings), np.concatenate(owners)


ZERO_SHOT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
)
"""Prompt templates averaged for zero-shot classification (a few of CLIP's ImageNet templates)."""


def class_prompt_embeddings(class_names: Sequence[str], encoder, templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
                            ) -> np.ndarray:
    """Sentence embeddings ``[classes, templates, d]`` of every class prompt.

    ``encoder`` is a :class:`~mmssl_jax.text.SentenceEncoder`, the one that embedded the training
    captions. Underscores in class names become spaces (``"aquarium_fish"``).
    """
    prompts = [t.format(str(c).replace("_", " ")) for c in class_names for t in templates]
    emb = np.asarray(encoder.encode(prompts, batch_size=256), np.float32)
    return emb.reshape(len(class_names), len(templates), -1)


def class_embeddings(frozen: FrozenModel, variables, prompt_embeddings: np.ndarray) -> np.ndarray:
    """CLIP's prompt ensembling: each prompt through the text head, normalized, averaged per class,
    normalized again: ``[classes, templates, d] -> [classes, dim]``."""
    classes, templates, d = prompt_embeddings.shape
    z = frozen.texts(variables, prompt_embeddings.reshape(-1, d))
    z = np.asarray(l2_normalize(z)).reshape(classes, templates, -1).mean(1)
    return np.asarray(l2_normalize(z))


def model_variables(params, batch_stats) -> dict:
    """The Flax variables dict of a model's parameters and (if any) BatchNorm statistics."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
