"""Image-caption datasets from local files: COCO-format captions and captioned folders.

* ``coco_captions_embedded``: MS-COCO captions in the official layout, or any COCO-format
  ``captions.json`` with per-image splits (:func:`read_coco_layout`).
* ``flickr8k_embedded``: the same reader under its own name, for Flickr8k in COCO format.
* ``captioned_folder``: a folder of images with JSONL caption files (:func:`read_jsonl_layout`).

Each stores, per image: ``image`` (the JPEG bytes, re-encoded only if they are not an RGB
JPEG), ``image_id``, ``file_name``, every ``captions`` and their ``caption_embeddings``
(``float16 [num_captions, dim]``). A missing or corrupt image is skipped with a counted
warning; the counts per split end up in ``info.metadata["skipped"]`` and in what
:func:`mmssl_jax.data.builders.prepare` returns.

An image without captions is skipped too (``"no captions"``), unless the config keeps it
(``keep_captionless``, config ``<name>+captionless``, ``prepare --keep_captionless``): then it is
a record with zero captions (``captions == []``, ``caption_embeddings`` ``[0, dim]``), which
the trainer skips by default and trains on the image-only loss terms with
``input.missing_captions="mask"``. It stays in the split its source gives it; per split, the
number kept so is ``info.metadata["captionless"]``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from mmssl_jax.data.builders import common
from mmssl_jax.data.builders.common import tfds

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One image to store: its id, file (absolute and as recorded) and cleaned captions."""

    image_id: int
    path: Path
    file_name: str
    captions: tuple[str, ...]


class LayoutError(ValueError):
    """A manual dir whose layout this reader does not recognise; the message says what it expects."""


# ----------------------------------------------------------------------------- COCO format


def _coco_images(annotation_file: Path, image_dir: Path, default_split: str | None) -> dict[str, list[CaptionedImage]]:
    """Images of one COCO-format captions file, by split (``split`` / ``coco_split`` fields)."""
    with open(annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise LayoutError(f"{annotation_file} is not COCO-format captions: it needs 'images' and 'annotations' lists")
    captions: dict[int, list[str]] = collections.defaultdict(list)
    for ann in sorted(data["annotations"], key=lambda a: a.get("id", 0)):
        captions[int(ann["image_id"])].append(ann.get("caption", ""))
    splits: dict[str, list[CaptionedImage]] = collections.defaultdict(list)
    seen: set[int] = set()
    for image in data["images"]:
        image_id = int(image["id"])
        if image_id in seen:
            raise LayoutError(f"{annotation_file}: image id {image_id} appears twice in 'images'")
        seen.add(image_id)
        raw_split = image.get("split", image.get("coco_split", default_split))
        split = common.split_name(raw_split if raw_split is not None else "train")
        file_name = str(image["file_name"])
        splits[split].append(
            CaptionedImage(
                image_id, image_dir / file_name, file_name, tuple(common.clean_captions(captions.get(image_id, [])))
            )
        )
    return splits


def read_coco_layout(root: str | Path) -> dict[str, list[CaptionedImage]]:
    """The images of a COCO-format manual dir, by split.

    Two layouts:

    * official: ``annotations/captions_<split><year>.json`` with images in ``<split><year>/``
      (``captions_train2017.json`` -> split ``train`` from ``train2017/``, ``captions_val2017.json``
      -> ``val`` from ``val2017/``);
    * one file: ``captions.json`` (COCO format) with images in ``images/``, each image's split
      in its ``split`` or ``coco_split`` field (``train2017`` -> ``train``, ``none`` -> ``unsplit``;
      no field: ``train``).

    Raises:
      LayoutError: neither layout, naming what was looked for.
    """
    root = Path(root)
    official = sorted((root / "annotations").glob("captions_*.json"))
    splits: dict[str, list[CaptionedImage]] = collections.defaultdict(list)
    if official:
        for annotation_file in official:
            subset = annotation_file.stem[len("captions_") :]  # e.g. train2017
            for split, images in _coco_images(annotation_file, root / subset, subset).items():
                splits[split].extend(images)
    elif (root / "captions.json").is_file():
        image_dir = root / "images" if (root / "images").is_dir() else root
        splits.update(_coco_images(root / "captions.json", image_dir, None))
    else:
        raise LayoutError(
            f"{root} holds neither annotations/captions_<split><year>.json (the official COCO layout) "
            f"nor a COCO-format captions.json with an images/ folder"
        )
    for split, images in splits.items():
        ids = collections.Counter(i.image_id for i in images)
        dup = [i for i, n in ids.items() if n > 1]
        if dup:
            raise LayoutError(f"{root}: split {split!r} has image ids used more than once, e.g. {dup[:5]}")
    return dict(sorted(splits.items()))


# ----------------------------------------------------------------------------- JSONL folders


def path_id(path: str) -> int:
    """A stable 63-bit id of a relative path (for images whose records give no id)."""
    return int.from_bytes(hashlib.sha1(path.encode("utf-8")).digest()[:8], "big") >> 1


def read_jsonl_layout(root: str | Path) -> dict[str, list[CaptionedImage]]:
    """The images of a captioned folder, by split.

    Every ``*.jsonl`` file directly in ``root`` is read; each line is
    ``{"image": "relative/path.jpg", "captions": ["...", ...]}`` (paths relative to ``root``;
    ``"caption": "..."`` is accepted for a single caption, ``"image_id"`` or ``"id"`` for an
    integer id, else one is derived from the path). A line's split is its ``"split"`` field,
    else the file's name (``train.jsonl`` -> ``train``, ``test.jsonl`` -> ``test``), except that
    a file named ``captions.jsonl`` or ``data.jsonl`` without split fields gives ``train``.

    Raises:
      LayoutError: no JSONL file, a line that is not such a JSON object (file and line named).
    """
    root = Path(root)
    files = sorted(root.glob("*.jsonl"))
    if not files:
        raise LayoutError(f"{root} holds no *.jsonl caption file (one per split, e.g. train.jsonl and test.jsonl)")
    splits: dict[str, list[CaptionedImage]] = collections.defaultdict(list)
    for jsonl in files:
        file_split = "train" if jsonl.stem in ("captions", "data") else jsonl.stem
        with open(jsonl, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    file_name = str(record["image"])
                    raw = record["captions"] if "captions" in record else [record["caption"]]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    expected = '{"image": "relative/path.jpg", "captions": [...]}'
                    raise LayoutError(f"{jsonl}:{line_no}: expected {expected}, got {line.strip()[:200]!r}") from e
                if isinstance(raw, str):
                    raw = [raw]
                image_id = record.get("image_id", record.get("id"))
                image_id = path_id(file_name) if image_id is None else int(image_id)
                split = common.split_name(record.get("split", file_split))
                splits[split].append(
                    CaptionedImage(image_id, root / file_name, file_name, tuple(common.clean_captions(raw)))
                )
    for split, images in splits.items():
        ids = collections.Counter(i.image_id for i in images)
        dup = [i for i, n in ids.items() if n > 1]
        if dup:
            raise LayoutError(f"{root}: split {split!r} lists the same image (id) more than once, e.g. {dup[:5]}")
    return dict(sorted(splits.items()))


# ----------------------------------------------------------------------------- builders


def captions_config(
    text_model: str = common.DEFAULT_TEXT_MODEL,
    text_dim: int | None = None,
    tag: str | None = None,
    keep_captionless: bool = False,
) -> common.TextConfig:
    """The config of a text model (named after it, or ``<tag>-<model>`` for a tagged folder;
    ``+captionless`` appended when it keeps the images without captions)."""
    if text_dim is None:
        if common.model_slug(text_model) == common.model_slug(common.DEFAULT_TEXT_MODEL):
            text_dim = common.DEFAULT_TEXT_DIM
        else:
            text_dim = int(common.load_text_encoder(text_model).dim)
    name = common.model_slug(text_model)
    if tag:
        name = f"{common.tag_slug(tag)}-{name}"
    description = f"Captions embedded with {text_model}."
    if keep_captionless:
        name += common.CAPTIONLESS_SUFFIX
        description += " Images without captions are kept, with zero captions."
    return common.TextConfig(
        name=name,
        description=description,
        text_model=text_model,
        text_dim=text_dim,
        keep_captionless=keep_captionless,
    )


class _CaptionedImages(common.MmsslBuilder, skip_registration=True):
    """Shared body: images and captions from a layout reader, embeddings, skipped counts."""

    VERSION = tfds.core.Version("1.1.0")
    SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]  # the default configs' data is unchanged: still readable
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Configs <name>+captionless (prepare --keep_captionless) keep images without captions as "
        "records with zero captions; the other configs' records are unchanged.",
    }
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def read_layout(self, root: Path) -> dict[str, list[CaptionedImage]]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        if config is None:
            raise ValueError(f"{self.name} needs a config; prepare it with: {self.prepare_hint()}")
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "image_id": np.int64,
                    "file_name": tfds.features.Text(),
                    **common.caption_features(config.text_dim),
                }
            ),
            disable_shuffling=True,
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            metadata=tfds.core.MetadataDict(
                text_model=config.text_model,
                text_dim=config.text_dim,
                keep_captionless=bool(getattr(config, "keep_captionless", False)),
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = Path(dl_manager.manual_dir)
        splits = self.read_layout(root)
        self.info.metadata["source"] = str(root)
        _log.info("%s: %s", self.name, {s: len(v) for s, v in splits.items()})
        return {split: self._generate_examples(split, images) for split, images in splits.items()}

    def _generate_examples(self, split: str, images: list[CaptionedImage]):
        skipped = common.SkipCounter(f"{self.name} {split}")
        keep_captionless = bool(getattr(self.builder_config, "keep_captionless", False))
        usable = []
        for image in images:
            if image.captions or keep_captionless:
                usable.append(image)
            else:
                skipped.skip(image.file_name, "no captions")
        table = common.embed_captions(
            [i.captions for i in usable], self.text_encoder(), desc=f"for {self.name} {split}"
        )
        kept = captionless = 0
        for image, data in zip(usable, common.read_images([i.path for i in usable]), strict=True):
            if isinstance(data, common.BadImageError):
                skipped.skip(image.file_name, str(data))
                continue
            kept += 1
            captionless += not image.captions
            yield (
                image.image_id,
                {
                    "image": data,
                    "image_id": image.image_id,
                    "file_name": image.file_name,
                    "captions": list(image.captions),
                    "caption_embeddings": table.rows(image.captions),
                },
            )
        self.record_skipped(split, skipped, kept)
        if keep_captionless:
            self.info.metadata.setdefault("captionless", {})[split] = captionless
            _log.info("%s %s: %d of the %d images kept have no captions", self.name, split, captionless, kept)


_COCO_INSTRUCTIONS = """\
Either the official MS-COCO layout:
    annotations/captions_train2017.json, annotations/captions_val2017.json
    train2017/*.jpg, val2017/*.jpg
(any captions_<split><year>.json with its <split><year>/ image folder; splits are named train, val...)
or one COCO-format captions.json (images with 'id', 'file_name' and a 'split' or 'coco_split'
field; annotations with 'image_id' and 'caption') next to an images/ folder."""


class CocoCaptionsEmbedded(_CaptionedImages):
    """MS-COCO captions (5-7 per image) with their sentence embeddings."""

    BUILDER_CONFIGS = [captions_config(), captions_config(keep_captionless=True)]
    MANUAL_DOWNLOAD_INSTRUCTIONS = _COCO_INSTRUCTIONS
    PREPARE_FLAGS = {"manual_dir": "/path/to/coco"}
    DESCRIPTION = "MS-COCO images with every caption and its sentence embedding (read from a local copy)."
    HOMEPAGE = "https://cocodataset.org"
    CITATION = """@inproceedings{lin2014microsoft,
  title={Microsoft COCO: Common Objects in Context},
  author={Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and others},
  booktitle={ECCV}, year={2014}}"""

    def read_layout(self, root: Path) -> dict[str, list[CaptionedImage]]:
        return read_coco_layout(root)


class Flickr8kEmbedded(CocoCaptionsEmbedded):
    """Flickr8k (5 captions per image) in COCO format, with sentence embeddings.

    Splits come from each image's ``split`` field (Flickr8k: ``train``, ``dev``, ``test``, and
    ``unsplit`` for images in no list; the unsplit ones are in no evaluation list, so training
    may add them: ``input.split="train+unsplit"``).
    """

    BUILDER_CONFIGS = [captions_config(), captions_config(keep_captionless=True)]
    PREPARE_FLAGS = {"manual_dir": "/path/to/flickr8k"}
    DESCRIPTION = "Flickr8k images with their 5 captions and sentence embeddings (COCO-format local copy)."
    HOMEPAGE = "https://doi.org/10.1613/jair.3994"
    CITATION = """@article{hodosh2013framing,
  title={Framing Image Description as a Ranking Task: Data, Models and Evaluation Metrics},
  author={Hodosh, Micah and Young, Peter and Hockenmaier, Julia},
  journal={Journal of Artificial Intelligence Research}, volume={47}, pages={853--899}, year={2013}}"""


class CaptionedFolder(_CaptionedImages):
    """Any folder of images with JSONL captions; its config is ``<tag>-<text model>``.

    Prepare with ``python -m mmssl_jax.data.prepare captioned_folder --manual_dir=DIR
    [--config=TAG]`` (TAG defaults to DIR's base name) and load ``captioned_folder/TAG-all-minilm-l6-v2``.
    """

    BUILDER_CONFIGS = []
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Images (any folder structure) and one or more JSONL files directly in the folder, one image a line:
    {"image": "relative/path.jpg", "captions": ["a caption", "another caption"]}
train.jsonl, test.jsonl... give the splits (or a "split" field on each line; a single
captions.jsonl without split fields is the train split)."""
    PREPARE_FLAGS = {"manual_dir": "/path/to/folder"}
    DESCRIPTION = "A local folder of captioned images with the captions' sentence embeddings."

    def prepare_hint(self) -> str:
        config = self.builder_config
        tag = tag_of(config.name, config.text_model) if config else "TAG"
        return common.prepare_command(
            self.name,
            data_dir=self.data_dir_root,
            manual_dir="/path/to/folder",
            config=tag,
            text_model=getattr(config, "text_model", None),
            keep_captionless=bool(getattr(config, "keep_captionless", False)),
        )

    def read_layout(self, root: Path) -> dict[str, list[CaptionedImage]]:
        return read_jsonl_layout(root)


def tag_of(config_name: str, text_model: str) -> str:
    """The folder tag of a ``captioned_folder`` config name (``"pets-all-minilm-l6-v2"`` and
    ``"pets-all-minilm-l6-v2+captionless"`` -> ``"pets"``)."""
    suffix = "-" + common.model_slug(text_model)
    return re.sub(re.escape(suffix) + "$", "", config_name.removesuffix(common.CAPTIONLESS_SUFFIX))
