"""Preparing and opening datasets: :func:`prepare`, :func:`load_source`, :func:`load_classification`."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmssl_jax.data.builders import captions, classification, common, embedded
from mmssl_jax.data.builders.common import DatasetNotPreparedError, tfds

_log = logging.getLogger(__name__)

EMBEDDED_DATASET = "mmssl_shapes"
"""The embedded default dataset, the only one prepared on demand (it downloads nothing)."""

BUILDERS: dict[str, type[common.MmsslBuilder]] = {
    cls.name: cls
    for cls in (
        embedded.MmsslShapes,
        captions.CocoCaptionsEmbedded,
        captions.Flickr8kEmbedded,
        captions.CaptionedFolder,
        classification.ImageFolderClassification,
        classification.Cifar10Npz,
    )
}
"""mmssl_jax's builders by tfds name. Any other tfds name (``cifar10``, ``stl10``...) is prepared by
tfds itself, which downloads it."""

_TAGGED = {captions.CaptionedFolder.name, classification.ImageFolderClassification.name}
_CAPTIONED = {cls.name for cls in (captions.CocoCaptionsEmbedded, captions.Flickr8kEmbedded, captions.CaptionedFolder)}


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """What :func:`prepare` made (or found).

    Attributes:
      name: the tfds name to load, config included (``"mmssl_shapes/all-minilm-l6-v2"``).
      data_dir: the tfds data dir it lives in.
      path: the prepared version directory.
      splits: examples per split.
      skipped: per split, items skipped by reason (``{"train": {"missing file": 1}}``).
      seconds: time spent preparing (0 when reused).
      reused: whether it was already prepared.
      captionless: per split, the examples kept without captions (``+captionless`` configs;
        empty otherwise).
    """

    name: str
    data_dir: str
    path: str
    splits: dict[str, int]
    skipped: dict[str, dict[str, int]]
    seconds: float
    reused: bool
    captionless: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for a person: what, where, counts, skips, time, how to use it."""
        lines = [f"{self.name}: {'already prepared, reused' if self.reused else f'prepared in {self.seconds:.1f} s'}"]
        lines.append(f"  path: {self.path}")
        for split, n in self.splits.items():
            skips = self.skipped.get(split) or {}
            extra = f"  (skipped {sum(skips.values())}: {skips})" if skips else ""
            if split in self.captionless:
                extra = f", {self.captionless[split]} without captions" + extra
            lines.append(f"  {split}: {n} examples{extra}")
        train_with = f"  train with: --config.input.name={self.name} --config.input.data_dir={self.data_dir}"
        if any(self.captionless.values()):
            train_with += " --config.input.missing_captions=mask"
        lines.append(train_with)
        return "\n".join(lines)


def _split_name(name: str) -> tuple[str, str | None]:
    base, _, config = name.partition("/")
    return base, (config or None)


def _config_arg(cls: type[tfds.core.DatasetBuilder], config: tfds.core.BuilderConfig | None) -> Any:
    """A registered config by name (tfds refuses a custom config named like a registered one)."""
    if config is not None and config.name in cls.builder_configs:
        registered = cls.builder_configs[config.name]
        for field in ("text_model", "text_dim", "image_size", "keep_captionless"):
            if getattr(registered, field, None) != getattr(config, field, None):
                raise ValueError(
                    f"{cls.name}/{config.name}: {field}={getattr(config, field)!r} differs from the registered "
                    f"config's {getattr(registered, field)!r}"
                )
        return config.name
    return config


def make_builder(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    config: str | None = None,
    text_model: str = common.DEFAULT_TEXT_MODEL,
    image_size: int = embedded.IMAGE_SIZE,
    num_train: int | None = None,
    num_test: int | None = None,
    keep_captionless: bool = False,
    text_encoder: Any = None,
) -> tfds.core.DatasetBuilder:
    """The builder :func:`prepare` runs (arguments as there)."""
    data_dir = common.default_data_dir(data_dir)
    base, name_config = _split_name(name)
    config = config or name_config
    if config and config.endswith(common.CAPTIONLESS_SUFFIX):  # a +captionless config named in full
        config, keep_captionless = config.removesuffix(common.CAPTIONLESS_SUFFIX) or None, True
    if keep_captionless and base not in _CAPTIONED:
        raise ValueError(
            f"keep_captionless applies to the captioned builders ({', '.join(sorted(_CAPTIONED))}), not {base}"
        )
    if base not in BUILDERS:
        if num_train is not None or num_test is not None:
            raise ValueError(f"num_train/num_test only apply to {EMBEDDED_DATASET}, not {base}")
        try:
            return tfds.builder(f"{base}/{config}" if config else base, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(
                f"no builder named {base!r}: mmssl_jax's are {', '.join(BUILDERS)}; other names are tfds's own "
                f"datasets (cifar10, cifar100, stl10...)"
            ) from e
    cls = BUILDERS[base]
    kwargs: dict[str, Any] = {"data_dir": data_dir, "text_encoder": text_encoder}
    if cls is embedded.MmsslShapes:
        if config and config != embedded.shapes_config(text_model, image_size=image_size).name:
            raise ValueError(
                f"{base}: config {config!r} does not match text_model={text_model!r}, image_size={image_size}"
            )
        kwargs.update(
            config=_config_arg(cls, embedded.shapes_config(text_model, image_size=image_size)),
            num_train=num_train,
            num_test=num_test,
        )
    elif num_train is not None or num_test is not None:
        raise ValueError(f"num_train/num_test only apply to {EMBEDDED_DATASET}; {base} keeps every image of its source")
    elif base in _TAGGED:
        if config is None:
            if manual_dir is None:
                raise ValueError(f"{base} needs a config (a tag for the folder) or a manual_dir to name it after")
            config = Path(manual_dir).expanduser().resolve().name
        if cls is captions.CaptionedFolder:
            model = common.model_slug(text_model)
            tag = captions.tag_of(config, text_model) if config.endswith("-" + model) else config
            kwargs["config"] = captions.captions_config(text_model, tag=tag, keep_captionless=keep_captionless)
        else:
            kwargs["config"] = classification.folder_config(config)
    elif cls in (captions.CocoCaptionsEmbedded, captions.Flickr8kEmbedded):
        if config and config != common.model_slug(text_model):
            expected = common.model_slug(text_model)
            raise ValueError(
                f"{base}: config {config!r} does not match text_model={text_model!r} (its config: {expected!r})"
            )
        kwargs["config"] = _config_arg(cls, captions.captions_config(text_model, keep_captionless=keep_captionless))
    elif config:
        raise ValueError(f"{base} has no configs; got {config!r}")
    return cls(**kwargs)


def _full_name(builder: tfds.core.DatasetBuilder) -> str:
    return builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")


def _result(builder: tfds.core.DatasetBuilder, seconds: float, reused: bool) -> PreparedDataset:
    metadata = builder.info.metadata or {}
    return PreparedDataset(
        name=_full_name(builder),
        data_dir=str(builder.data_dir_root),
        path=str(builder.data_dir),
        splits={split: int(info.num_examples) for split, info in sorted(builder.info.splits.items())},
        skipped={split: dict(v) for split, v in dict(metadata.get("skipped", {})).items()},
        seconds=seconds,
        reused=reused,
        captionless={split: int(n) for split, n in dict(metadata.get("captionless", {})).items()},
    )


def _check_reusable(builder: tfds.core.DatasetBuilder) -> None:
    """Refuses to pass off prepared data made with other settings as what was asked for."""
    metadata = builder.info.metadata or {}
    config = builder.builder_config
    wanted_model = getattr(config, "text_model", None)
    if wanted_model and metadata.get("text_model") not in (None, wanted_model):
        raise ValueError(
            f"{builder.data_dir} holds embeddings of {metadata['text_model']!r}, not {wanted_model!r}; "
            f"use another data_dir or --overwrite"
        )
    if isinstance(builder, embedded.MmsslShapes):
        found = {split: int(info.num_examples) for split, info in builder.info.splits.items()}
        asked = {split: n for split, n in builder.requested_sizes.items() if n is not None}
        if any(found.get(split) != n for split, n in asked.items()):
            raise ValueError(
                f"{builder.data_dir} holds {EMBEDDED_DATASET} prepared with {found} examples, not the "
                f"{asked} asked for; use another data_dir, or --overwrite to replace it "
                f"(example i is the same at any size)"
            )


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    config: str | None = None,
    text_model: str = common.DEFAULT_TEXT_MODEL,
    image_size: int = embedded.IMAGE_SIZE,
    num_train: int | None = None,
    num_test: int | None = None,
    overwrite: bool = False,
    keep_captionless: bool = False,
    text_encoder: Any = None,
) -> PreparedDataset:
    """Prepares a dataset in ``data_dir`` (reusing it when already there), as ArrayRecord files.

    Args:
      name: a builder of :data:`BUILDERS` (optionally ``name/config``), or any tfds name, which
        tfds prepares itself (and downloads: ``cifar10``, ``cifar100``, ``stl10``...).
      data_dir: tfds data dir; default ``$MMSSL_DATA_DIR`` or ``~/tensorflow_datasets``.
      manual_dir: where the source files are, for the builders that read local files.
      config: config name; for ``captioned_folder`` and ``image_folder_classification`` the
        folder's tag (default: ``manual_dir``'s base name).
      text_model: sentence model of the caption embeddings (a different model is a different config).
      image_size, num_train, num_test: ``mmssl_shapes`` only (sizes default to 10,000 / 2,000).
      overwrite: prepare again even if prepared.
      keep_captionless: captioned builders only: keep the images without captions as records with
        zero captions (config ``<name>+captionless``, next to the default config, which skips
        them); train on them with ``input.missing_captions="mask"``. Also chosen by naming the
        config in full (``flickr8k_embedded/all-minilm-l6-v2+captionless``).
      text_encoder: an already loaded :class:`mmssl_jax.text.SentenceEncoder` of ``text_model``.

    Raises:
      ValueError: inconsistent arguments, a missing ``manual_dir``, or prepared data that does not
        match the arguments without ``overwrite`` (another text model, or other split sizes when
        ``num_train``/``num_test`` are given; without them, whatever size is prepared is reused).
    """
    builder = make_builder(
        name,
        data_dir=data_dir,
        manual_dir=manual_dir,
        config=config,
        text_model=text_model,
        image_size=image_size,
        num_train=num_train,
        num_test=num_test,
        keep_captionless=keep_captionless,
        text_encoder=text_encoder,
    )
    if common.is_prepared(builder) and not overwrite:
        _check_reusable(builder)
        _log.info("Reusing %s in %s", _full_name(builder), builder.data_dir)
        return _result(builder, 0.0, reused=True)
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        default_manual = Path(builder.data_dir_root) / "downloads" / "manual"
        manual = Path(manual_dir).expanduser() if manual_dir else default_manual
        if not manual.is_dir() or not any(manual.iterdir()):
            hint = builder.prepare_hint() if isinstance(builder, common.MmsslBuilder) else name
            problem = (
                f"{manual} is missing or empty" if manual_dir else f"pass --manual_dir ({default_manual} is empty)"
            )
            raise ValueError(
                f"{_full_name(builder)} reads local files: {problem}.\n    {hint}\n"
                f"where --manual_dir holds:\n{instructions.strip()}"
            )
        manual_dir = manual
    ours = isinstance(builder, common.MmsslBuilder)
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir else None,
        download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        try_download_gcs=not ours,
    )
    start = time.perf_counter()
    try:
        builder.download_and_prepare(download_config=download_config)  # ArrayRecord: set when the builder was made
    except ModuleNotFoundError as e:
        if e.name != "importlib_resources":
            raise
        raise RuntimeError(
            f"tfds {tfds.__version__} needs the importlib_resources package to prepare its own datasets "
            f"(tensorflow/datasets#11212): pip install importlib_resources"
        ) from e
    except Exception as e:
        if ours:
            raise
        raise RuntimeError(f"tfds could not prepare {name} (it downloads it: this needs internet access): {e}") from e
    seconds = time.perf_counter() - start
    return _result(builder, seconds, reused=False)


def prepare_embedded(
    data_dir: str | os.PathLike | None = None,
    *,
    num_train: int | None = None,
    num_test: int | None = None,
    text_model: str = common.DEFAULT_TEXT_MODEL,
    image_size: int = embedded.IMAGE_SIZE,
    overwrite: bool = False,
    text_encoder: Any = None,
) -> PreparedDataset:
    """Prepares ``mmssl_shapes`` (:func:`prepare` with its arguments); no download, a few minutes on CPU."""
    return prepare(
        EMBEDDED_DATASET,
        data_dir=data_dir,
        text_model=text_model,
        image_size=image_size,
        num_train=num_train,
        num_test=num_test,
        overwrite=overwrite,
        text_encoder=text_encoder,
    )


# ----------------------------------------------------------------------------- reading


def _unknown_message(name: str, data_dir: str) -> str:
    base, config = _split_name(name)
    if base in BUILDERS:
        cls = BUILDERS[base]
        flags = dict(cls.PREPARE_FLAGS)
        keep = bool(config and config.endswith(common.CAPTIONLESS_SUFFIX))
        if keep:
            config = config.removesuffix(common.CAPTIONLESS_SUFFIX)
            flags["keep_captionless"] = True
            if config == common.model_slug(common.DEFAULT_TEXT_MODEL):
                config = None
        if (
            cls is captions.CaptionedFolder
            and config
            and config.endswith("-" + common.model_slug(common.DEFAULT_TEXT_MODEL))
        ):
            config = captions.tag_of(config, common.DEFAULT_TEXT_MODEL)
        command = common.prepare_command(base, data_dir=data_dir, config=config, **flags)
        message = f"Dataset {name!r} is not prepared in {data_dir}. Prepare it with:\n    {command}"
        if cls.MANUAL_DOWNLOAD_INSTRUCTIONS:
            message += f"\nwhere --manual_dir holds:\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
        return message
    return (
        f"No dataset {name!r} is prepared in {data_dir}, and tfds knows no builder of that name. "
        f"mmssl_jax's datasets: {', '.join(BUILDERS)}; prepare one with:\n"
        f"    {common.prepare_command('NAME', data_dir=data_dir)}"
    )


def open_builder(name: str, data_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset (``name`` or ``name/config``).

    Raises:
      DatasetNotPreparedError: not prepared (or unknown), with the command that prepares it.
    """
    data_dir = common.default_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as e:  # DatasetNotFoundError, or a config the code does not know and no files
        raise DatasetNotPreparedError(_unknown_message(name, data_dir)) from e
    if not common.is_prepared(builder):
        raise DatasetNotPreparedError(common.not_prepared_message(builder) + _download_note(builder))
    return builder


def _download_note(builder: tfds.core.DatasetBuilder) -> str:
    if isinstance(builder, common.MmsslBuilder):
        return ""
    return "\n(tfds downloads this dataset: it needs internet access, or a data_dir where it is already prepared.)"


def _base_split(split: str) -> list[str]:
    return [re.split(r"[\[(]", part, maxsplit=1)[0].strip() for part in split.split("+")]


def load_source(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    decode_images: bool = False,
    prepare_if_missing: bool = False,
) -> Sequence[dict[str, Any]]:
    """Random access to a prepared dataset's split (``tfds.data_source`` over its ArrayRecord files).

    Args:
      name: ``name`` or ``name/config`` (``"mmssl_shapes"``, ``"coco_captions_embedded"``...).
      split: a split, or a tfds split expression (``"train[:10%]"``).
      data_dir: default ``$MMSSL_DATA_DIR`` or ``~/tensorflow_datasets``.
      decode_images: decode ``image`` to ``uint8 [H, W, 3]``; by default the encoded bytes are
        returned and the input pipeline's workers decode them.
      prepare_if_missing: prepare :data:`EMBEDDED_DATASET` (at its default size) if it is not
        there; other datasets are never prepared implicitly.

    Returns:
      A sequence of records (dicts of the dataset's features).

    Raises:
      DatasetNotPreparedError: not prepared, with the exact command that prepares it.
      ValueError: no such split (naming the splits there are).
    """
    data_dir = common.default_data_dir(data_dir)
    try:
        builder = open_builder(name, data_dir)
    except DatasetNotPreparedError:
        if not (prepare_if_missing and _split_name(name)[0] == EMBEDDED_DATASET):
            raise
        base, config = _split_name(name)
        _log.info("Preparing %s in %s (first use)", name, data_dir)
        prepare(EMBEDDED_DATASET, data_dir=data_dir, config=config)
        builder = open_builder(name, data_dir)
    missing = [s for s in _base_split(split) if s not in builder.info.splits]
    if missing:
        raise ValueError(
            f"{_full_name(builder)} has no split {missing[0]!r}; its splits: {sorted(builder.info.splits)}"
        )
    decoders = None
    if not decode_images and "image" in builder.info.features:
        decoders = {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split=split, decoders=decoders)


def load_classification(
    name_or_path: str | os.PathLike,
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    label_key: str = "label",
) -> classification.ClassificationSource:
    """Labelled images for linear probes, kNN and zero-shot evaluation, from wherever they are.

    ``name_or_path`` is one of:

    * a prepared tfds dataset with an ``image`` and a ClassLabel ``label_key`` feature:
      ``mmssl_shapes`` (``label_key`` ``"label"``/``"shape"``, ``"color"``, ``"size"``,
      ``"position"``, ``"background"``), ``image_folder_classification/<tag>``, ``cifar10_npz``,
      or tfds's own ``cifar10``, ``cifar100``, ``stl10`` once prepared;
    * an ``.npz`` file (JPEG bytes + offsets, or arrays; see
      :func:`~mmssl_jax.data.builders.classification.npz_records`; ``label_key="coarse_label"``
      for CIFAR-100's coarse labels, as in tfds's ``cifar100``);
    * a CIFAR-10/100 python folder or ``.tar.gz``;
    * an image folder ``ROOT/<split>/<class>/<image>``.

    Returns:
      A :class:`~mmssl_jax.data.builders.classification.ClassificationSource`:
      ``source[i] == {"image": uint8 [H, W, 3], "label": int64}``, ``source.class_names``.

    Raises:
      DatasetNotPreparedError: a dataset name that is not prepared (with the command).
      FileNotFoundError / KeyError / ValueError: a path without that split or label, named.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".npz":
            records, names = classification.npz_records(path, split, label_key)
        elif classification.is_cifar_python(path):
            records, names = classification.cifar_python_records(path, split, label_key)
        elif path.is_dir() and classification.image_folder_splits(path):
            if label_key != "label":
                raise ValueError(f"{path}: an image folder has only 'label', not {label_key!r}")
            records, names = classification.image_folder_records(path, split)
        else:
            raise FileNotFoundError(
                f"{path} is neither an .npz file, CIFAR python files nor an image folder (<split>/<class>/<image>)"
            )
        return classification.ClassificationSource(records, names, name=str(path), split=split)
    name = os.fspath(name_or_path)
    builder = open_builder(name, data_dir)
    features = builder.info.features
    feature = features[label_key] if label_key in features else None
    if not isinstance(feature, tfds.features.ClassLabel) or "image" not in features:
        labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
        raise ValueError(f"{name}: {label_key!r} is not a class label of an image dataset; its class labels: {labels}")
    source = load_source(name, split, data_dir=data_dir)
    return classification.ClassificationSource(
        source, feature.names, name=_full_name(builder), split=split, label_key=label_key
    )
