"""Config-driven evaluators, built once from ``config.eval`` and run by the trainer.

Each has ``run(params, batch_stats) -> metrics`` (a checkpoint evaluated on its own has no
optimizer state) and caches its inputs (decoded images, caption and prompt embeddings):

- :class:`ClassificationEval`: linear probe, kNN and zero-shot on one labelled dataset.
- :class:`RetrievalEval`: image-text retrieval on a captioned split, and the caption ablations.
- :class:`RobustnessEval`: every metric along corruption rates of the captions and the images
  (``eval.robustness``), with MultiBench's relative and effective robustness.
- :class:`CounterfactualEval`: what each modality contributes, per sample, when it is removed,
  swapped or replaced by its class mean (``eval.counterfactual``).
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
from mmssl_jax import reporting
from mmssl_jax.config_base import ConfigError
from mmssl_jax.evaluation import counterfactual, robustness
from mmssl_jax.evaluation.protocols import (
    CAPTION_ABLATIONS, DEFAULT_L2_GRID, ablate_captions, fit_linear_probe, knn_classify, l2_normalize, linear_probe,
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
                 ablations: bool, ablation_label: str | None, keep_label: bool = False,
                 extra_labels: Sequence[str] = ()):
        if "text" not in frozen.modalities:
            raise ValueError("eval protocol 'retrieval' needs a model with a text branch")
        self.ec, self.frozen, self.ablations = ec, frozen, ablations
        self.prefix = ec.get("name") or dataset_prefix(str(ec.dataset))
        source = _load(ec.dataset, ec.split, ec.data_dir)
        self.captions, self.owners = caption_table(source)
        uncaptioned = np.flatnonzero(np.bincount(self.owners, minlength=len(source)) == 0)
        if len(uncaptioned):
            raise ValueError(
                f"{self.prefix} {ec.split}: {len(uncaptioned)} of its {len(source)} images have no captions (records "
                f"{uncaptioned[:5].tolist()}...); image-text retrieval needs every image captioned: evaluate on a split "
                f"without caption-less images (a dataset prepared without --keep_captionless keeps none)")
        labelled = (ablations or keep_label) and ablation_label in _features_of(source)
        self.label_key = ablation_label if labelled else None
        fields = _features_of(source)
        # Label fields kept with the features (the ablations' and eval.counterfactual's).
        self.labels = tuple(dict.fromkeys([k for k in (self.label_key, *extra_labels) if k and k in fields]))
        self.images = ImageSet(source, image_size=image_size, batch_size=ec.batch_size,
                               center_crop_fraction=ec.center_crop_fraction, keep=self.labels, cache_mb=ec.cache_mb,
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


class RobustnessEval:
    """Each metric as a function of a corruption rate (``config.eval.robustness``).

    Caption corruptions (on the retrieval split): retrieval R@1/5 both ways and the fused probe
    and kNN (:func:`~mmssl_jax.evaluation.robustness.caption_curves`). Image corruptions (every
    test image at severity r): the probe and kNN on ``h`` (fit on the clean training features)
    and zero-shot on the classification test split, and retrieval against the clean captions.
    Metrics: ``eval/<dataset>/robustness/<corruption>/<metric>@<rate>``, and per curve
    ``.../<metric>/relative`` and ``.../<metric>/effective`` (against ``baseline``, another run's
    ``eval_summary.json``, else the constant clean score).
    """

    def __init__(self, rc: ml_collections.ConfigDict, frozen: FrozenModel, *, classification: ClassificationEval | None,
                 retrieval: RetrievalEval | None, probe_iters: int, knn_k: int):
        self.frozen, self.probe_iters, self.knn_k, self.seed = frozen, probe_iters, knn_k, int(rc.get("seed", 0))
        self.rates = robustness.check_rates(rc.rates)
        self.metrics = tuple(rc.get("metrics") or robustness.METRICS)
        self.caption = [c for c in rc.corruptions if c in robustness.CAPTION_CORRUPTIONS]
        self.image = [c for c in rc.corruptions if c in robustness.IMAGE_CORRUPTIONS]
        if self.caption and retrieval is None:
            raise ValueError(f"eval.robustness {self.caption} need captions: a model with a text branch")
        self.classification, self.retrieval = classification, retrieval
        self.baseline = _load_baseline(rc.baseline) if rc.get("baseline") else None

    def run(self, params, batch_stats) -> dict[str, float]:
        variables = model_variables(params, batch_stats)
        curves: dict[str, dict[str, dict[str, list[float]]]] = {}  # prefix -> corruption -> metric -> values
        ret, cls = self.retrieval, self.classification
        if ret is not None:
            feats = ret.images.features(self.frozen, variables)
            texts = lambda c: self.frozen.texts(variables, c)  # noqa: E731
            if self.caption:
                labels = feats[ret.label_key] if ret.label_key else None
                curves[ret.prefix] = robustness.caption_curves(
                    feats["h"], feats["z"], ret.captions, ret.owners, texts, labels=labels,
                    corruptions=self.caption, rates=self.rates, metrics=self.metrics, seed=self.seed,
                    probe_iters=self.probe_iters, knn_k=self.knn_k)
            if self.image and "retrieval" in self.metrics:
                text_z = texts(ret.captions)
                for mode in self.image:
                    for rate in self.rates:
                        z = self._corrupted(ret.images, variables, mode, rate)["z"]
                        for key, value in retrieval_recall(z, text_z, ret.owners, ks=(1, 5)).items():
                            _append(curves, ret.prefix, mode, key, value)
        if cls is not None and self.image:
            self._image_curves(cls, variables, curves)
        out = {}
        for prefix, by_mode in curves.items():
            for mode, by_metric in by_mode.items():
                for metric, values in by_metric.items():
                    out.update({f"eval/{prefix}/robustness/{mode}/{metric}@{r:g}": v
                                for r, v in zip(self.rates, values)})
            base = None if self.baseline is None else self._baseline_curves(prefix, by_mode)
            scores = robustness.summary_scores(self.rates, by_mode, base)
            out.update({f"eval/{prefix}/robustness/{k}": v for k, v in scores.items()})
        return out

    def _corrupted(self, images: ImageSet, variables, mode: str, rate: float) -> dict[str, np.ndarray]:
        process = jax.process_index()
        def corrupt(x, number):
            return robustness.corrupt_images(x, mode, rate, seed=(self.seed, process, number))

        return images.features(self.frozen, variables, transform=corrupt)

    def _image_curves(self, cls: ClassificationEval, variables, curves) -> None:
        rep = cls.ec.get("representation", "h")
        train = cls.train.features(self.frozen, variables) if cls.train is not None else None
        probe = None
        if train is not None and "probe" in self.metrics and "linear_probe" in cls.protocols:
            probe = fit_linear_probe(train[rep], train["label"], num_classes=len(cls.class_names),
                                     l2_grid=tuple(cls.ec.probe_l2), iters=self.probe_iters, seed=0)
        knn = train is not None and "knn" in self.metrics and "knn" in cls.protocols
        classes = None
        if cls.prompts is not None and "zero_shot" in self.metrics:
            classes = class_embeddings(self.frozen, variables, cls.prompts)
        for mode in self.image:
            for rate in self.rates:
                test = self._corrupted(cls.test, variables, mode, rate)
                if probe is not None:
                    _append(curves, cls.prefix, mode, "probe_top1", probe.accuracy(test[rep], test["label"]))
                if knn:
                    value = knn_classify(train[rep], train["label"], test[rep], test["label"], ks=(self.knn_k,),
                                         num_classes=len(cls.class_names))[f"k{self.knn_k}_top1"]
                    _append(curves, cls.prefix, mode, f"knn{self.knn_k}_top1", value)
                if classes is not None:
                    value = zero_shot_classify(test["z"], classes, test["label"])["top1"]
                    _append(curves, cls.prefix, mode, "zero_shot_top1", value)

    def _baseline_curves(self, prefix: str, by_mode) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        for mode, by_metric in by_mode.items():
            for metric in by_metric:
                points = self.baseline.get(prefix, {}).get(mode, {}).get(metric, {})
                missing = [r for r in self.rates if r not in points]
                if missing:
                    raise ValueError(f"eval.robustness.baseline has no eval/{prefix}/robustness/{mode}/{metric} at rates "
                                     f"{missing}: evaluate the baseline run with the same corruptions and rates")
                out.setdefault(mode, {})[metric] = [points[r] for r in self.rates]
        return out


def check_counterfactual(cc: ml_collections.ConfigDict | None, modalities: set, protocols: Sequence[str]) -> bool:
    """``config.eval.counterfactual``: whether it is on; a :class:`ConfigError` naming the key if it
    cannot run (unknown modality or kind, no text branch, top_k < 1, nothing evaluated)."""
    if cc is None or not cc.get("modalities"):
        return False
    where = "config.eval.counterfactual"
    for key, known in (("modalities", counterfactual.MODALITIES), ("kinds", counterfactual.KINDS)):
        values = cc.get(key) or ()
        if isinstance(values, str) or not values:
            raise ConfigError(f"{where}.{key} must be a non-empty tuple of {list(known)}, got {values!r}")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}.{key}: unknown {unknown}; known: {list(known)}")
    if not {"image", "text"} <= set(modalities):
        raise ConfigError(f"{where} needs an image+caption model (an image and a text view); it has "
                          f"{sorted(modalities)}")
    top_k = cc.get("top_k", 10)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"{where}.top_k must be an int >= 1, got {top_k!r}")
    if not protocols:
        raise ConfigError(f"{where} is on but config.eval.protocols is empty, so nothing is evaluated; add one "
                          "(e.g. 'retrieval')")
    return True


class CounterfactualEval:
    """Counterfactual modality contribution on the retrieval split (``config.eval.counterfactual``):
    :func:`~mmssl_jax.evaluation.counterfactual.contributions` with the probe and class prototypes
    fit on a seeded half of each class of the split (``stratified_halves``), read on the other
    half. The missing image is the all-zero (black) image ``modality_dropout`` feeds the encoder;
    the missing caption the zero sentence embedding. Metrics: ``eval/<dataset>/counterfactual/<modality>/<kind>/<stat>`` (the
    :data:`~mmssl_jax.evaluation.counterfactual.STATS`) and ``.../clean/<stat>``; :meth:`write`
    puts the per-class, per-sample and top-k tables in ``counterfactual.json`` and ``.md``."""

    def __init__(self, cc: ml_collections.ConfigDict, frozen: FrozenModel, retrieval: RetrievalEval, *,
                 label_key: str, image_size: int, probe_iters: int):
        check_counterfactual(cc, frozen.modalities, ("retrieval",))
        if label_key not in retrieval.labels:
            raise ConfigError(f"config.eval.counterfactual: the retrieval split {retrieval.prefix} has no "
                              f"{label_key!r} field for the fused probe; set config.eval.counterfactual.label_key")
        self.cc, self.frozen, self.retrieval, self.label_key = cc, frozen, retrieval, label_key
        self.image_size, self.probe_iters, self.seed = image_size, probe_iters, int(cc.get("seed", 0))
        self.class_names = _class_names(retrieval.ec, label_key)
        self.last: dict | None = None

    def run(self, params, batch_stats) -> dict[str, float]:
        variables = model_variables(params, batch_stats)
        ret = self.retrieval
        feats = ret.images.features(self.frozen, variables)
        if len(feats["index"]) != len(ret.images):
            raise ValueError(f"{ret.prefix}: {len(ret.images) - len(feats['index'])} images could not be decoded")
        labels = feats[self.label_key].astype(np.int64)
        text_z = self.frozen.texts(variables, ret.first_caption)
        blank_text = self.frozen.texts(variables, np.zeros((1, ret.first_caption.shape[1]), np.float32))
        black = np.zeros((jax.local_device_count(), self.image_size, self.image_size, 3), np.uint8)
        blank_h, blank_z = self.frozen(variables, black, "image")
        train, test = counterfactual.stratified_halves(labels, self.seed)
        num_classes = len(self.class_names) if self.class_names else None
        result = counterfactual.contributions(
            feats["h"], feats["z"], text_z, labels, train=train, test=test, removed_image_h=blank_h[0],
            removed_image_z=blank_z[0], removed_text_z=blank_text[0], modalities=tuple(self.cc.modalities),
            kinds=tuple(self.cc.kinds), num_classes=num_classes, seed=self.seed, probe_iters=self.probe_iters)
        self.last = counterfactual.report(result, k=int(self.cc.top_k), class_names=self.class_names)
        prefix = f"eval/{ret.prefix}/counterfactual"
        return {f"{prefix}/{name}/{stat}": value
                for name, stats in self.last["overall"].items() for stat, value in stats.items()}

    def write(self, workdir: str | Path, step: int) -> None:
        """``counterfactual.json`` (summary, per class, top-k, every sample) and ``counterfactual.md``
        (the tables) in ``workdir``, of the last :meth:`run`."""
        import json

        if self.last is None:
            return
        workdir = Path(workdir)
        title = f"Counterfactual modality contribution: {self.retrieval.prefix} ({self.label_key!r} probe), step {step}"
        reporting.write_text(workdir / "counterfactual.json", json.dumps({"step": step, **self.last}))
        reporting.write_text(workdir / "counterfactual.md", counterfactual.markdown(self.last, title))


def _class_names(ec: ml_collections.ConfigDict, key: str) -> tuple[str, ...] | None:
    """The class names of a prepared dataset's label feature, else None (classes shown as numbers)."""
    from mmssl_jax.data import builders

    try:
        names = builders.open_builder(str(ec.dataset), ec.data_dir or None).info.features[key].names
        return tuple(str(n) for n in names) or None
    except Exception:  # noqa: BLE001 - a path, or a label without names
        return None


def _append(curves, prefix: str, mode: str, metric: str, value: float) -> None:
    curves.setdefault(prefix, {}).setdefault(mode, {}).setdefault(metric, []).append(float(value))


def _load_baseline(path: str) -> dict:
    """The robustness curves of another run: its ``eval_summary.json`` (or a workdir holding one),
    last evaluated step."""
    import json

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "eval_summary.json"
    if not path.exists():
        raise FileNotFoundError(f"eval.robustness.baseline: no {path}; give another run's eval_summary.json or workdir")
    history = json.loads(path.read_text())
    last = history[max(history, key=int)]
    return reporting.robustness_curves(last)


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
        rc = ec.get("robustness")
        corruptions = tuple(rc.corruptions) if rc is not None else ()
        cls_protocols = [p for p in protocols if p in ("linear_probe", "knn", "zero_shot")]
        classification = retrieval = None
        if cls_protocols:
            classification = ClassificationEval(cls_ec, self.frozen, protocols=cls_protocols, image_size=image_size,
                                                text_model=text_model)
            self.evaluators.append(classification)
        wants_captions = set(corruptions) & set(robustness.CAPTION_CORRUPTIONS)
        cc = ec.get("counterfactual")
        wants_counterfactual = check_counterfactual(cc, self.frozen.modalities, protocols)
        cf_label = (cc.get("label_key") or ec.classification.label_key) if wants_counterfactual else None
        if "retrieval" in protocols or ((wants_captions or wants_counterfactual) and "text" in self.frozen.modalities):
            ret_ec = _with(ec.retrieval, dataset=ec.retrieval.dataset or config.input.name,
                           data_dir=ec.retrieval.data_dir or data_dir, batch_size=ec.batch_size,
                           cache_mb=ec.cache_mb, probe_iters=ec.probe_iters,
                           center_crop_fraction=ec.center_crop_fraction)
            retrieval = RetrievalEval(ret_ec, self.frozen, image_size=image_size, ablations=ec.ablations,
                                      ablation_label=ec.classification.label_key, keep_label=bool(wants_captions),
                                      extra_labels=(cf_label,) if cf_label else ())
            if "retrieval" in protocols:
                self.evaluators.append(retrieval)
        if corruptions:  # after the others: their cached images are shared
            self.evaluators.append(RobustnessEval(rc, self.frozen, classification=classification, retrieval=retrieval,
                                                  probe_iters=ec.probe_iters, knn_k=int(tuple(ec.knn_k)[0])))
        if wants_counterfactual:
            self.evaluators.append(CounterfactualEval(cc, self.frozen, retrieval, label_key=cf_label,
                                                      image_size=image_size, probe_iters=ec.probe_iters))

    def run(self, params, batch_stats) -> dict[str, float]:
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        for evaluator in self.evaluators:
            metrics.update(evaluator.run(params, batch_stats))
        if self.evaluators:
            metrics["eval/seconds"] = time.perf_counter() - start
        return metrics

    def write(self, workdir: str | Path, step: int) -> None:
        """The files of evaluators that write more than scalars (``counterfactual.json``/``.md``)."""
        for evaluator in self.evaluators:
            if hasattr(evaluator, "write"):
                evaluator.write(workdir, step)


def _with(cd: ml_collections.ConfigDict, **kwargs) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict(cd.to_dict())
    for k, v in kwargs.items():
        out[k] = v
    return out
