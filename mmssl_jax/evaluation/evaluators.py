"""Config-driven evaluators, built once from ``config.eval`` and run by the trainer.

Each has ``run(params, batch_stats) -> metrics`` (a checkpoint evaluated on its own has no
optimizer state) and caches its inputs (decoded images, caption and prompt embeddings):

- :class:`ClassificationEval`: linear probe, kNN and zero-shot on one labelled dataset.
- :class:`RetrievalEval`: image-text retrieval on a captioned split, and the caption ablations.
- :class:`Evaluation`: every evaluator a config asks for.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from mmssl_jax.evaluation.features import (
    ZERO_SHOT_TEMPLATES, FrozenModel, ImageSet, Subset, caption_table, class_embeddings, class_prompt_embeddings,
    model_variables, stratified_sample,
)
from mmssl_jax.evaluation.protocols import (
    CAPTION_ABLATIONS, DEFAULT_L2_GRID, ablate_captions, knn_classify, l2_normalize, linear_probe,
    retrieval_recall, zero_shot_classify,
)

IMAGE_PROTOCOLS = ("linear_probe", "knn")
TEXT_PROTOCOLS = ("zero_shot", "retrieval")
PROTOCOLS = IMAGE_PROTOCOLS + TEXT_PROTOCOLS
"""Protocol names ``config.eval.protocols`` may use."""

def _load(name: str, split: str, data_dir: str | None, *, labelled: str | None = None):
    """A split of a prepared dataset or a classification path (npz, image folder, CIFAR files)."""
    from mmssl_jax.data import builders

    if labelled is not None:
        return builders.load_classification(name, split, data_dir=data_dir or None, label_key=labelled)
    return builders.load_source(name, split, data_dir=data_dir or None)


def _text_model(name: str, data_dir: str | None, default: str) -> str:
    """The sentence model that embedded a dataset's captions (its metadata), else ``default``."""
    from mmssl_jax.data import builders

    try:
        return str(builders.open_builder(name, data_dir or None).info.metadata.get("text_model", default))
    except Exception:  # noqa: BLE001 - a path or an unprepared dataset: use the configured model
        return default


@functools.lru_cache(maxsize=2)
def _sentence_encoder(name: str):
    from mmssl_jax.text import SentenceEncoder

    return SentenceEncoder.from_pretrained(name, devices=jax.local_devices()[:1])


FOLDER_BUILDERS = ("image_folder_classification", "captioned_folder")
"""tfds builders whose config names the data (``image_folder_classification/flowers``)."""


def dataset_prefix(dataset: str) -> str:
    """The metric prefix of a dataset: a path's file or folder name (``/data/cifar10.npz`` ->
    ``cifar10``); a tfds ``name[/config][:version]``'s name (``mmssl_shapes/all-minilm-l6-v2`` ->
    ``mmssl_shapes``), or its config for the folder builders (``image_folder_classification/flowers``
    -> ``flowers``)."""
    path = Path(dataset).expanduser()
    if path.exists() or dataset.endswith((".npz", ".tar.gz")) or dataset.startswith(("/", ".", "~")):
        return path.name.removesuffix(".tar.gz").removesuffix(".npz") or dataset
    name, _, config = dataset.split(":")[0].partition("/")
    return config if name in FOLDER_BUILDERS and config else name


class ClassificationEval:
    """Linear probe, kNN and zero-shot on one labelled dataset (train split -> test split)."""

    def __init__(self, ec: ml_collections.ConfigDict, frozen: FrozenModel, *, protocols: Sequence[str],
                 image_size: int, text_model: str):
        self.ec, self.frozen, self.protocols = ec, frozen, tuple(protocols)
        self.prefix = ec.get("name") or dataset_prefix(str(ec.dataset))
        label_key = ec.get("label_key", "label")
        kw = dict(image_size=image_size, batch_size=ec.batch_size, keep=("label",), cache_mb=ec.cache_mb,
                  center_crop_fraction=ec.center_crop_fraction)
        test = _load(ec.dataset, ec.test_split, ec.data_dir, labelled=label_key)
        self.class_names = test.class_names
        self.test = ImageSet(test, name=f"{self.prefix} {ec.test_split}", **kw)
        self.train = None
        if {"linear_probe", "knn"} & set(self.protocols):
            train = _load(ec.dataset, ec.train_split, ec.data_dir, labelled=label_key)
            if ec.get("max_train") and len(train) > ec.max_train:  # every class keeps its share
                train = Subset(train, stratified_sample(train.labels(), ec.max_train, seed=0))
            self.train = ImageSet(train, name=f"{self.prefix} {ec.train_split}", **kw)
        self.prompts = None
        if "zero_shot" in self.protocols:
            if "text" not in frozen.modalities:
                raise ValueError("eval protocol 'zero_shot' needs a model with a text branch")
            encoder = _sentence_encoder(text_model)
            self.prompts = class_prompt_embeddings(self.class_names, encoder, tuple(ec.templates))

    def run(self, params, batch_stats) -> dict[str, float]:
        variables = model_variables(params, batch_stats)
        test = self.test.features(self.frozen, variables)
        metrics: dict[str, float] = {}
        if self.train is not None:
            train = self.train.features(self.frozen, variables)
            rep = self.ec.get("representation", "h")
            if "linear_probe" in self.protocols:
                probe = linear_probe(train[rep], train["label"], test[rep], test["label"],
                                     num_classes=len(self.class_names), l2_grid=tuple(self.ec.probe_l2),
                                     iters=self.ec.probe_iters, seed=0)
                metrics.update({f"linear_probe/{k}": v for k, v in probe.items()})
            if "knn" in self.protocols:
                knn = knn_classify(train[rep], train["label"], test[rep], test["label"], ks=tuple(self.ec.knn_k),
                                   temperature=self.ec.knn_temperature, num_classes=len(self.class_names))
                metrics.update({f"knn/{k}": v for k, v in knn.items()})
        if self.prompts is not None:
            classes = class_embeddings(self.frozen, variables, self.prompts)
            metrics.update({f"zero_shot/{k}": v for k, v in zero_shot_classify(test["z"], classes, test["label"]).items()})
        return {f"eval/{self.prefix}/{k}": v for k, v in metrics.items()}


class RetrievalEval:
    """Image-text retrieval R@1/5/10 on a captioned split, and the caption ablations."""

    def __init__(self, ec: ml_collections.ConfigDict, frozen: FrozenModel, *, image_size: int,
                 ablations: bool, ablation_label: str | None):
        if "text" not in frozen.modalities:
            raise ValueError("eval protocol 'retrieval' needs a model with a text branch")
        self.ec, self.frozen, self.ablations = ec, frozen, ablations
        self.prefix = ec.get("name") or dataset_prefix(str(ec.dataset))
        source = _load(ec.dataset, ec.split, ec.data_dir)
        self.captions, self.owners = caption_table(source)
        self.label_key = ablation_label if ablations and ablation_label in _features_of(source) else None
        self.images = ImageSet(source, image_size=image_size, batch_size=ec.batch_size,
                               center_crop_fraction=ec.center_crop_fraction,
                               keep=(self.label_key,) if self.label_key else (), cache_mb=ec.cache_mb,
                               name=f"{self.prefix} {ec.split}")
        first = np.r_[0, np.flatnonzero(np.diff(self.owners)) + 1]  # each image's first caption
        self.first_caption = self.captions[first]

    def run(self, params, batch_stats) -> dict[str, float]:
        variables = model_variables(params, batch_stats)
        feats = self.images.features(self.frozen, variables)
        if len(feats["index"]) != len(self.images):
            raise ValueError(f"{self.prefix}: {len(self.images) - len(feats['index'])} images could not be decoded")
        out = {}
        text_z = self.frozen.texts(variables, self.captions)
        out.update({f"retrieval/{k}": v for k, v in retrieval_recall(feats["z"], text_z, self.owners).items()})
        if self.ablations:
            out.update(self._ablations(variables, feats))
        return {f"eval/{self.prefix}/{k}": v for k, v in out.items()}

    def _ablations(self, variables, feats) -> dict[str, float]:
        """How each metric moves when the captions are removed, shuffled or replaced by noise.

        Retrieval uses every caption so changed; the fused probe and kNN (when the split has a
        label) read ``[normalize(h_image), normalize(z_text)]`` of each image and its first caption.
        """
        out = {}
        n = len(self.first_caption)
        for mode in CAPTION_ABLATIONS[1:]:
            text_z = self.frozen.texts(variables, ablate_captions(self.captions, mode, seed=1))
            for k, v in retrieval_recall(feats["z"], text_z, self.owners, ks=(1, 5)).items():
                out[f"ablation/{mode}/retrieval/{k}"] = v
        if self.label_key:
            labels = feats[self.label_key].astype(np.int32)
            image_part = np.asarray(l2_normalize(feats["h"]))
            split = np.random.default_rng(0).permutation(n)
            tr, te = split[: n // 2], split[n // 2:]
            for mode in CAPTION_ABLATIONS:
                text_z = self.frozen.texts(variables, ablate_captions(self.first_caption, mode, seed=1))
                fused = np.concatenate([image_part, np.asarray(l2_normalize(text_z))], axis=1)
                probe = linear_probe(fused[tr], labels[tr], fused[te], labels[te], iters=self.ec.probe_iters)
                knn = knn_classify(fused[tr], labels[tr], fused[te], labels[te], ks=(20,))
                out[f"ablation/{mode}/fused_probe_top1"] = probe["top1"]
                out[f"ablation/{mode}/fused_knn20_top1"] = knn["k20_top1"]
            probe = linear_probe(image_part[tr], labels[tr], image_part[te], labels[te], iters=self.ec.probe_iters)
            out["ablation/image_only/probe_top1"] = probe["top1"]
        return out


def _features_of(source) -> set[str]:
    try:
        return set(source[0].keys())
    except Exception:  # noqa: BLE001
        return set()


class Evaluation:
    """Every evaluator a config asks for; ``run(params, batch_stats)`` returns all their metrics.

    Built once (datasets opened, prompt embeddings computed, functions jitted); each run extracts
    features with the given parameters.
    """

    def __init__(self, config: ml_collections.ConfigDict, model, mesh: jax.sharding.Mesh):
        ec = config.eval
        protocols = tuple(ec.protocols)
        unknown = sorted(set(protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"config.eval.protocols: unknown {unknown}; known: {list(PROTOCOLS)}")
        self.frozen = FrozenModel(model, mesh, config.get("dtype", "float32"))
        image_size = ec.get("image_size") or config.input.image_size
        data_dir = config.input.get("data_dir", "")
        cls_ec = _with(ec.classification, dataset=ec.classification.dataset or config.input.name,
                       data_dir=ec.classification.data_dir or data_dir, batch_size=ec.batch_size,
                       cache_mb=ec.cache_mb, probe_l2=tuple(ec.probe_l2) or DEFAULT_L2_GRID,
                       center_crop_fraction=ec.center_crop_fraction,
                       probe_iters=ec.probe_iters, knn_k=ec.knn_k, knn_temperature=ec.knn_temperature,
                       templates=tuple(ec.templates) or ZERO_SHOT_TEMPLATES)
        text_model = _text_model(config.input.name, data_dir, ec.text_model)
        self.evaluators: list[Any] = []
        cls_protocols = [p for p in protocols if p in ("linear_probe", "knn", "zero_shot")]
        if cls_protocols:
            self.evaluators.append(ClassificationEval(cls_ec, self.frozen, protocols=cls_protocols,
                                                      image_size=image_size, text_model=text_model))
        if "retrieval" in protocols:
            ret_ec = _with(ec.retrieval, dataset=ec.retrieval.dataset or config.input.name,
                           data_dir=ec.retrieval.data_dir or data_dir, batch_size=ec.batch_size,
                           cache_mb=ec.cache_mb, probe_iters=ec.probe_iters,
                           center_crop_fraction=ec.center_crop_fraction)
            self.evaluators.append(RetrievalEval(ret_ec, self.frozen, image_size=image_size,
                                                 ablations=ec.ablations, ablation_label=ec.classification.label_key))

    def run(self, params, batch_stats) -> dict[str, float]:
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        for evaluator in self.evaluators:
            metrics.update(evaluator.run(params, batch_stats))
        if self.evaluators:
            metrics["eval/seconds"] = time.perf_counter() - start
        return metrics


def _with(cd: ml_collections.ConfigDict, **kwargs) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(cd.to_dict())
    for k, v in kwargs.items():
        out[k] = v
    return out
