"""What every mmssl_jax builder shares: data dir, text-model configs, caption embedding, images, errors.

TensorFlow is imported here, through :func:`mmssl_jax.tf_compat.import_tensorflow`, before
tensorflow_datasets, so it never sees an accelerator.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import inspect
import io
import logging
import os
import re
import shlex
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from etils import epath
from PIL import Image

from mmssl_jax.tf_compat import import_tensorflow

import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (after TensorFlow has been kept off the accelerators)

_log = logging.getLogger(__name__)

DATA_DIR_ENV = "MMSSL_DATA_DIR"
"""Environment variable naming the default tfds data dir (else ``~/tensorflow_datasets``)."""

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
"""Sentence model whose embeddings are stored with every caption (see :mod:`mmssl_jax.text`)."""

DEFAULT_TEXT_DIM = 384
"""Embedding width of :data:`DEFAULT_TEXT_MODEL`."""

VERSION = tfds.core.Version("1.0.0")
RELEASE_NOTES = {"1.0.0": "Initial release."}

PREPARE_MODULE = "mmssl_jax.data.prepare"
"""The prepare command line: ``python -m mmssl_jax.data.prepare NAME ...``."""

CAPTIONLESS_SUFFIX = "+captionless"
"""Config-name suffix of the captioned builders' configs that keep caption-less images
(``flickr8k_embedded/all-minilm-l6-v2+captionless``; prepare with ``--keep_captionless``)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""File suffixes read as images by the folder builders."""


def default_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """``data_dir`` if given, else ``$MMSSL_DATA_DIR``, else ``~/tensorflow_datasets``."""
    if data_dir:
        return os.fspath(Path(data_dir).expanduser())
    return os.fspath(Path(os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets").expanduser())


def model_slug(text_model: str) -> str:
    """A config-name-safe name of a text model: ``"all-MiniLM-L6-v2"`` -> ``"all-minilm-l6-v2"``.

    A Hub id keeps its last part (``sentence-transformers/all-MiniLM-L6-v2`` is the same model
    as ``all-MiniLM-L6-v2``); a local directory its base name.
    """
    base = str(text_model).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-z0-9.+-]+", "-", base.lower()).strip("-.")
    if not slug:
        raise ValueError(f"cannot derive a config name from text model {text_model!r}")
    return slug


def tag_slug(tag: str) -> str:
    """A config-name-safe tag (a folder's base name): lower case, ``[a-z0-9_.+-]``."""
    slug = re.sub(r"[^a-z0-9_.+-]+", "-", str(tag).lower()).strip("-.")
    if not slug:
        raise ValueError(f"cannot derive a config name from {tag!r}")
    return slug


def split_name(raw: str) -> str:
    """A tfds split name from a dataset's own name for it.

    ``"train2017"`` -> ``"train"``, ``"val2014"`` -> ``"val"``, ``"none"`` or ``""`` ->
    ``"unsplit"``; other names are kept (lower case, characters other than ``[a-z0-9_-]`` -> ``_``).
    """
    name = re.sub(r"(?<=[a-z])(19|20)\d\d$", "", str(raw).strip().lower())
    if name in ("", "none", "null"):
        return "unsplit"
    return re.sub(r"[^a-z0-9_-]+", "_", name)


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset that is not prepared in the data dir; the message gives the command that prepares it."""


def prepare_command(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | None = None,
    text_model: str | None = None,
    config: str | None = None,
    keep_captionless: bool = False,
) -> str:
    """The exact shell command that prepares ``name`` (flags only where they are needed)."""
    parts = ["python", "-m", PREPARE_MODULE, name]
    if config:
        parts.append(f"--config={config}")
    if keep_captionless:
        parts.append("--keep_captionless")
    if data_dir is not None:
        parts.append(f"--data_dir={default_data_dir(data_dir)}")
    if manual_dir is not None:
        parts.append(f"--manual_dir={manual_dir}")
    if text_model and text_model != DEFAULT_TEXT_MODEL:
        parts.append(f"--text_model={text_model}")
    return " ".join(shlex.quote(p) for p in parts)


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(eq=False)
class TextConfig(tfds.core.BuilderConfig):
    """A builder config that names the sentence model of the stored caption embeddings.

    Attributes:
      text_model: a :meth:`mmssl_jax.text.SentenceEncoder.from_pretrained` name or directory.
      text_dim: its embedding width (the ``caption_embeddings`` feature is ``[None, text_dim]``).
      keep_captionless: the captioned builders keep an image without captions as a record with
        zero captions (``captions`` empty, ``caption_embeddings`` ``[0, text_dim]``) instead of
        skipping it; the config's name ends in :data:`CAPTIONLESS_SUFFIX`.
    """

    text_model: str = DEFAULT_TEXT_MODEL
    text_dim: int = DEFAULT_TEXT_DIM
    keep_captionless: bool = False


def caption_features(text_dim: int) -> dict[str, tfds.features.FeatureConnector]:
    """The caption fields every captioned dataset stores."""
    return {
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "caption_embeddings": tfds.features.Tensor(shape=(None, text_dim), dtype=np.float16),
    }


# ----------------------------------------------------------------------------- caption embedding


@functools.lru_cache(maxsize=2)
def load_text_encoder(text_model: str = DEFAULT_TEXT_MODEL) -> Any:
    """A :class:`mmssl_jax.text.SentenceEncoder` on one device, cached per model name.

    One device is plenty to embed captions once; the cache spares the reload (and recompiles)
    when several datasets are prepared in one process.
    """
    import jax

    from mmssl_jax.text import SentenceEncoder

    return SentenceEncoder.from_pretrained(text_model, devices=jax.local_devices()[:1])


@dataclasses.dataclass(frozen=True)
class CaptionTable:
    """Embeddings of the distinct captions of a split.

    Attributes:
      index: caption -> row of ``embeddings``.
      embeddings: ``float16 [num_distinct, dim]``.
    """

    index: dict[str, int]
    embeddings: np.ndarray

    def rows(self, captions: Sequence[str]) -> np.ndarray:
        """``float16 [len(captions), dim]``, one row per caption, in order."""
        return self.embeddings[[self.index[c] for c in captions]]


def embed_captions(
    caption_lists: Iterable[Sequence[str]], encoder: Any, *, batch_size: int = 256, desc: str = ""
) -> CaptionTable:
    """Embeds every distinct caption once, in batches, with a progress bar.

    Args:
      caption_lists: the captions of each item (duplicates, within or across items, are
        embedded once).
      encoder: a :class:`mmssl_jax.text.SentenceEncoder` (anything with ``encode`` and ``dim``).
      batch_size: sentences per forward pass.
      desc: a name for the log line (the split).
    """
    distinct: dict[str, int] = {}
    total = 0
    for captions in caption_lists:
        for caption in captions:
            total += 1
            distinct.setdefault(caption, len(distinct))
    _log.info("Embedding %d distinct captions (%d in all) %s", len(distinct), total, desc)
    if distinct:
        emb = encoder.encode(list(distinct), batch_size=batch_size, show_progress=True)
    else:
        emb = np.zeros((0, encoder.dim), np.float32)
    return CaptionTable(index=distinct, embeddings=np.asarray(emb, np.float16))


def clean_captions(captions: Iterable[Any]) -> list[str]:
    """Captions as strings with whitespace runs collapsed and ends stripped; empty ones dropped (order and
    duplicates kept)."""
    out = []
    for caption in captions:
        text = " ".join(str(caption).split())
        if text:
            out.append(text)
    return out


# ----------------------------------------------------------------------------- images


class BadImageError(ValueError):
    """An image file that is missing, unreadable or not an image; the message says which."""


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_bytes(data: bytes, *, quality: int = 95) -> bytes:
    """RGB JPEG bytes of an encoded image: the bytes themselves when they already are one.

    The image is fully decoded to check it; anything else (PNG, grayscale or CMYK JPEG...) is
    re-encoded as an RGB JPEG at ``quality``.

    Raises:
      BadImageError: the bytes are not a decodable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG" and image.mode == "RGB":
                return data
            return encode_jpeg(image, quality)
    except Exception as e:  # PIL raises many kinds for corrupt data
        raise BadImageError(f"not a decodable image ({type(e).__name__}: {e})") from e


def read_jpeg(path: str | os.PathLike) -> bytes:
    """:func:`jpeg_bytes` of a file. Raises :class:`BadImageError` when missing or corrupt."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise BadImageError("missing file") from e
    except OSError as e:
        raise BadImageError(f"unreadable file ({e})") from e
    return jpeg_bytes(data)


def read_images(paths: Sequence[str | os.PathLike], *, workers: int | None = None) -> Iterator[bytes | BadImageError]:
    """:func:`read_jpeg` of each path, in order, read by a few threads (PIL decodes off the GIL).

    Yields the JPEG bytes, or the :class:`BadImageError` of a file that cannot be used.
    """
    workers = workers or min(8, os.cpu_count() or 1)

    def load(path: str | os.PathLike) -> bytes | BadImageError:
        try:
            return read_jpeg(path)
        except BadImageError as e:
            return e

    if workers <= 1:
        yield from map(load, paths)
        return
    chunk = 64 * workers
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), chunk):
            yield from pool.map(load, paths[start : start + chunk])


class SkipCounter:
    """Counts the items a split skips, by reason, and warns with the running count."""

    def __init__(self, split: str) -> None:
        self.split = split
        self.counts: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def skip(self, item: Any, reason: str) -> None:
        kind = reason.split(" (", 1)[0]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        _log.warning("%s: skipping %s: %s (%d skipped so far)", self.split, item, reason, self.total)

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


# ----------------------------------------------------------------------------- the base builder


class MmsslBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of mmssl_jax's builders: ArrayRecord files, the prepare command in every error.

    Subclasses set ``PREPARE_FLAGS`` (how the prepare command reaches their source, e.g.
    ``{"manual_dir": "/path/to/coco"}``) and record per-split ``skipped`` counts in
    ``self.info.metadata``.
    """

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    PREPARE_FLAGS: ClassVar[dict[str, str]] = {}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        """The file defining the builder class.

        tfds 4.9.10's own ``code_path`` needs the ``importlib_resources`` backport for any builder
        defined in a package, though it declares it only for Python < 3.9
        (tensorflow/datasets#11212); the class's file is all tfds wants from it.
        """
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None

    def __init__(self, *, text_encoder: Any = None, **kwargs: Any) -> None:
        """Args: ``text_encoder``: a SentenceEncoder to use instead of loading the config's model;
        other keyword arguments go to ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ``config``...)."""
        kwargs.setdefault("file_format", "array_record")
        self._text_encoder = text_encoder
        super().__init__(**kwargs)

    # -- helpers for subclasses

    def text_encoder(self) -> Any:
        """The encoder of this config's text model, checked against the config's width."""
        config = self.builder_config
        encoder = self._text_encoder or load_text_encoder(config.text_model)
        if int(encoder.dim) != int(config.text_dim):
            raise ValueError(
                f"{self.name}/{config.name}: text model {config.text_model!r} gives {encoder.dim}-d embeddings but "
                f"the config declares text_dim={config.text_dim}; build the config with the model's width."
            )
        return encoder

    def record_skipped(self, split: str, counter: SkipCounter, kept: int) -> None:
        skipped = self.info.metadata.setdefault("skipped", {})
        skipped[split] = counter.summary()
        if counter.total:
            _log.warning("%s %s: kept %d, skipped %d %s", self.name, split, kept, counter.total, counter.summary())

    def prepare_hint(self) -> str:
        """The command line that prepares this builder's config in its data dir."""
        config = self.builder_config
        keep = bool(getattr(config, "keep_captionless", False))
        name = config.name.removesuffix(CAPTIONLESS_SUFFIX) if keep else getattr(config, "name", None)
        is_default = config is None or name == getattr(self.get_default_builder_config(), "name", None)
        return prepare_command(
            self.name,
            data_dir=self.data_dir_root,
            config=None if is_default else name,
            text_model=getattr(config, "text_model", None),
            keep_captionless=keep,
            **self.PREPARE_FLAGS,
        )

    # -- reading

    def as_data_source(self, split: Any = None, **kwargs: Any) -> Any:
        """``tfds.core.DatasetBuilder.as_data_source``, with the prepare command when not prepared."""
        if not is_prepared(self):
            raise DatasetNotPreparedError(not_prepared_message(self))
        return super().as_data_source(split, **kwargs)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether the builder's version directory holds a prepared dataset (quietly, unlike tfds's check)."""
    return (Path(builder.data_dir) / "dataset_info.json").is_file()


def other_versions(builder: tfds.core.DatasetBuilder) -> list[str]:
    """The versions of the builder's config, other than its own, prepared in its data dir (oldest first)."""
    config_dir = Path(builder.data_dir).parent
    if not config_dir.is_dir():
        return []
    found = [p.name for p in config_dir.iterdir() if p.name != str(builder.version) and (p / "dataset_info.json").is_file()]
    return sorted(found, key=lambda v: tuple(int(x) if x.isdigit() else 0 for x in v.split(".")))


def not_prepared_message(builder: tfds.core.DatasetBuilder) -> str:
    """What to say about a builder whose data is not in its data dir."""
    full = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
    hint = (
        builder.prepare_hint()
        if isinstance(builder, MmsslBuilder)
        else prepare_command(builder.name, data_dir=builder.data_dir_root)
    )
    message = f"Dataset {full!r} is not prepared in {builder.data_dir_root}. Prepare it with:\n    {hint}"
    others = other_versions(builder)
    if others:
        message += (
            f"\n(version {builder.version} is asked for; {', '.join(others)} is prepared there: load it as "
            f"'{full}:{others[-1]}', or prepare this version)"
        )
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        message += f"\nwhere --manual_dir holds:\n{instructions.strip()}"
    return message
