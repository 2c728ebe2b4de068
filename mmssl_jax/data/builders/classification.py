"""Labelled images for probes: local readers, two builders, and one random-access source type.

Readers (no preparation; used by :func:`mmssl_jax.data.builders.load_classification`):

* an image folder ``ROOT/<split>/<class>/<image>`` (:func:`image_folder_records`);
* ``.npz`` files: JPEG bytes + offsets (``<split>_jpeg``, ``<split>_offsets``, ``<split>_labels``,
  ``label_names``), or decoded arrays (``x_<split>``/``y_<split>``, or ``x``/``y`` in a file whose
  name says the split) (:func:`npz_records`);
* the CIFAR-10/100 "python version" files (``cifar-10-batches-py/``, ``cifar-100-python/`` or
  their ``.tar.gz``) (:func:`cifar_python_records`), unpickled with a loader that only admits
  NumPy arrays and builtins.

Builders, for training through the same tfds path as the captioned sets:

* ``image_folder_classification/<tag>``: an image folder (JPEG bytes, ``label``, ``image_id``,
  ``file_name``).
* ``cifar10_npz``: CIFAR-10 from a JPEG ``.npz`` (the JPEG bytes as they are).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import io
import logging
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmssl_jax.data.builders import common
from mmssl_jax.data.builders.common import tfds

_log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def decode_rgb(value: Any) -> np.ndarray:
    """Encoded bytes or an array -> ``uint8 [H, W, 3]``."""
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        with Image.open(io.BytesIO(bytes(value))) as image:
            return np.asarray(image.convert("RGB"))
    array = np.asarray(value)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3], dtype=np.uint8)


class ClassificationSource(collections.abc.Sequence):
    """Random-access labelled images: ``source[i] == {"image": uint8 [H, W, 3], "label": int64}``.

    A valid source for :func:`mmssl_jax.data.pipeline.eval_dataset` and ``train_dataset``.

    Attributes:
      class_names: the name of each label index.
      name, split: where it came from (for logs).
    """

    def __init__(
        self,
        records: Any,
        class_names: collections.abc.Sequence[str],
        *,
        name: str,
        split: str,
        label_key: str = "label",
    ):
        """``records[i]`` is a mapping with ``image`` (encoded bytes or an array) and ``label_key``."""
        self._records = records
        self._label_key = label_key
        self.class_names = tuple(str(c) for c in class_names)
        self.name = name
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} records of {self.name} {self.split}")
        record = self._records[index % n]
        return {"image": decode_rgb(record["image"]), "label": np.int64(record[self._label_key])}

    def labels(self) -> np.ndarray:
        """``int64 [n]``: every record's label, read without decoding any image."""
        fast = getattr(self._records, "labels", None)
        if fast is not None and self._label_key == "label":
            return np.asarray(fast, np.int64)
        return np.fromiter((self._records[i][self._label_key] for i in range(len(self))), np.int64, len(self))

    def __repr__(self) -> str:
        return (
            f"ClassificationSource({self.name!r}, split={self.split!r}, {len(self)} images, {self.num_classes} classes)"
        )


# ----------------------------------------------------------------------------- record sequences


@dataclasses.dataclass
class _ArrayRecords:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i]}


@dataclasses.dataclass
class _JpegBlobRecords:
    blob: np.ndarray  # uint8, all files concatenated
    offsets: np.ndarray  # int64 [N + 1]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes(), "label": self.labels[i]}


@dataclasses.dataclass
class _FileRecords:
    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": Path(self.paths[i]).read_bytes(), "label": self.labels[i]}


# ----------------------------------------------------------------------------- image folders


def image_folder_splits(root: str | Path) -> list[str]:
    """The split folders of ``root``: sub-folders that hold class folders."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(c.is_dir() for c in d.iterdir()))


def image_folder_classes(root: str | Path) -> list[str]:
    """Class names of an image folder: the union of the class folders of every split, sorted."""
    root = Path(root)
    return sorted({c.name for split in image_folder_splits(root) for c in (root / split).iterdir() if c.is_dir()})


def image_folder_files(root: str | Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """``(paths, labels, class_names)`` of ``ROOT/<split>/<class>/<image>``, sorted by class then name."""
    root = Path(root)
    if not (root / split).is_dir():
        raise FileNotFoundError(f"{root} has no {split!r} folder; its splits: {image_folder_splits(root)}")
    classes = image_folder_classes(root)
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / split / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in common.IMAGE_SUFFIXES and path.is_file():
                paths.append(path)
                labels.append(label)
    if not paths:
        raise FileNotFoundError(f"{root / split} holds no images in class folders ({', '.join(common.IMAGE_SUFFIXES)})")
    return paths, np.asarray(labels, np.int64), classes


def image_folder_records(root: str | Path, split: str) -> tuple[_FileRecords, list[str]]:
    paths, labels, classes = image_folder_files(root, split)
    return _FileRecords([str(p) for p in paths], labels), classes


# ----------------------------------------------------------------------------- npz


def _names(data: Any, *keys: str) -> list[str] | None:
    for key in keys:
        if key in data.files:
            return [str(x) for x in np.asarray(data[key]).tolist()]
    return None


def npz_records(path: str | Path, split: str, label_key: str = "label") -> tuple[Any, list[str]]:
    """Labelled images of one split of an ``.npz`` file (see the module docstring for the keys).

    ``label_key``: ``"label"`` (``y_<split>``, or the fine labels of CIFAR-100 files), or a
    label family such as ``"coarse"`` or ``"coarse_label"`` (``y_<split>_coarse``).

    Raises:
      KeyError: the file has no such split, naming the keys it has.
    """
    path = Path(path)
    data = np.load(path, allow_pickle=False)
    files = set(data.files)
    label_key = label_key.removesuffix("_label") if label_key != "label" else label_key
    family = "" if label_key == "label" else f"_{label_key}"
    names = _names(data, f"{label_key}_label_names") if family else _names(data, "label_names", "fine_label_names")
    if {f"{split}_jpeg", f"{split}_offsets"} <= files:
        labels_key = f"{split}_labels" if not family else f"{split}{family}_labels"
        records: Any = _JpegBlobRecords(
            data[f"{split}_jpeg"], data[f"{split}_offsets"].astype(np.int64), data[labels_key].astype(np.int64)
        )
    elif f"x_{split}" in files:
        candidates = [f"y_{split}{family}"] + ([f"y_{split}_fine"] if not family else [])
        key = next((k for k in candidates if k in files), None)
        if key is None:
            raise KeyError(f"{path}: no labels for split {split!r} (looked for {candidates}); keys: {sorted(files)}")
        records = _ArrayRecords(data[f"x_{split}"], data[key].astype(np.int64))
    elif {"x", "y"} <= files and split.lower() in path.stem.lower():
        records = _ArrayRecords(data["x"], data["y"].astype(np.int64))
    else:
        raise KeyError(
            f"{path} has no split {split!r}: expected {split}_jpeg + {split}_offsets + {split}_labels, x_{split} + "
            f"y_{split}, or x + y in a file whose name contains {split!r}; its keys: {sorted(files)}"
        )
    if names is None:
        names = [str(i) for i in range(int(np.max(records.labels)) + 1)]
    return records, names


# ----------------------------------------------------------------------------- CIFAR python files


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR python files hold: builtins containers and NumPy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a CIFAR python file")


def _unpickle(data: bytes) -> dict[str, Any]:
    raw = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _cifar_files(path: Path) -> dict[str, bytes]:
    """Base name -> bytes of the files of a CIFAR python folder or archive."""
    if path.is_file():
        out = {}
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    out[Path(member.name).name] = tar.extractfile(member).read()
        return out
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (path / sub).is_dir():
            path = path / sub
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.suffix in ("", ".meta")}


def is_cifar_python(path: str | Path) -> bool:
    """Whether ``path`` is a CIFAR python folder (or its parent) or a ``.tar.gz`` of one."""
    path = Path(path)
    if path.is_file():
        return path.name.endswith((".tar.gz", ".tgz", ".tar"))
    if not path.is_dir():
        return False
    for candidate in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if (candidate / "batches.meta").is_file() or (
            (candidate / "meta").is_file() and (candidate / "test").is_file()
        ):
            return True
    return False


def cifar_python_records(path: str | Path, split: str, label_key: str = "label") -> tuple[_ArrayRecords, list[str]]:
    """One split (``train`` or ``test``) of the CIFAR-10/100 python files.

    ``label_key``: ``"label"`` (CIFAR-10 labels, CIFAR-100 fine labels) or ``"coarse"`` /
    ``"coarse_label"`` (CIFAR-100, as tfds names it).
    """
    files = _cifar_files(Path(path))
    if "batches.meta" in files:  # CIFAR-10
        names = [
            n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(files["batches.meta"])["label_names"]
        ]
        wanted = (
            [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"] if split == "test" else []
        )
        label_field = "labels"
    elif "meta" in files:  # CIFAR-100
        meta = _unpickle(files["meta"])
        family = "coarse" if label_key in ("coarse", "coarse_label") else "fine"
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[f"{family}_label_names"]]
        wanted = [split] if split in ("train", "test") else []
        label_field = f"{family}_labels"
    else:
        raise FileNotFoundError(f"{path}: no batches.meta (CIFAR-10) or meta (CIFAR-100) file")
    missing = [w for w in wanted if w not in files]
    if not wanted or missing:
        raise FileNotFoundError(f"{path}: split {split!r} needs files {wanted or ['train', 'test']}; missing {missing}")
    images, labels = [], []
    for name in wanted:
        batch = _unpickle(files[name])
        images.append(np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_field], np.int64))
    return _ArrayRecords(np.concatenate(images), np.concatenate(labels)), names


# ----------------------------------------------------------------------------- builders


def folder_config(tag: str) -> tfds.core.BuilderConfig:
    return tfds.core.BuilderConfig(name=common.tag_slug(tag), description=f"The image folder {tag!r}.")


class ImageFolderClassification(common.MmsslBuilder):
    """An image folder ``<manual_dir>/<split>/<class>/<image>``; config ``<tag>`` (the folder's name).

    Features: ``image`` (JPEG bytes, re-encoded only if not an RGB JPEG), ``label`` (class names
    from the class folders of every split, sorted), ``image_id`` (index in the split),
    ``file_name`` (relative to the split folder). Unreadable images are skipped and counted.
    """

    BUILDER_CONFIGS = []
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
One folder per split, one sub-folder per class, the images inside:
    train/<class>/<image>.jpg, test/<class>/<image>.jpg ..."""
    PREPARE_FLAGS = {"manual_dir": "/path/to/folder"}

    def prepare_hint(self) -> str:
        config = self.builder_config
        return common.prepare_command(
            self.name,
            data_dir=self.data_dir_root,
            manual_dir="/path/to/folder",
            config=config.name if config else "TAG",
        )

    def _info(self) -> tfds.core.DatasetInfo:
        if self.builder_config is None:
            raise ValueError(f"{self.name} needs a config (the folder's tag); prepare it with: {self.prepare_hint()}")
        return tfds.core.DatasetInfo(
            builder=self,
            description="A local image-classification folder (split/class/image).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(),
                    "image_id": np.int64,
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = Path(dl_manager.manual_dir)
        splits = image_folder_splits(root)
        if not splits:
            raise FileNotFoundError(f"{root} holds no <split>/<class>/ folders")
        self.info.features["label"].names = image_folder_classes(root)
        self.info.metadata["source"] = str(root)
        return {split: self._generate_examples(root, split) for split in splits}

    def _generate_examples(self, root: Path, split: str):
        paths, labels, _ = image_folder_files(root, split)
        skipped = common.SkipCounter(f"{self.name} {split}")
        kept = 0
        for index, (path, label, data) in enumerate(zip(paths, labels, common.read_images(paths), strict=True)):
            relative = str(path.relative_to(root / split))
            if isinstance(data, common.BadImageError):
                skipped.skip(relative, str(data))
                continue
            kept += 1
            yield index, {"image": data, "label": int(label), "image_id": index, "file_name": relative}
        self.record_skipped(split, skipped, kept)


class Cifar10Npz(common.MmsslBuilder):
    """CIFAR-10 from a JPEG ``.npz`` in the manual dir, its JPEG bytes stored as they are.

    The file holds ``train_jpeg``/``train_offsets``/``train_labels`` and the same for ``test``;
    the records keep its order (``image_id`` is the index).
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
One .npz file with train_jpeg (uint8, the JPEG files concatenated), train_offsets (int64, N+1:
image i is train_jpeg[offsets[i]:offsets[i+1]]), train_labels, the same three test_* keys, and
optionally label_names (the CIFAR-10 class order)."""
    PREPARE_FLAGS = {"manual_dir": "/path/to/cifar10_npz_folder"}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="CIFAR-10 (JPEG copies, original order) from a local .npz file.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(CIFAR10_CLASSES)),
                    "image_id": np.int64,
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            citation="@techreport{krizhevsky2009learning, title={Learning Multiple Layers of Features from Tiny "
            "Images}, author={Krizhevsky, Alex}, year={2009}}",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = Path(dl_manager.manual_dir)
        candidates = sorted(p for p in root.glob("*.npz") if "train_jpeg" in np.load(p, allow_pickle=False).files)
        if len(candidates) != 1:
            found = [p.name for p in candidates]
            raise FileNotFoundError(f"{root} must hold exactly one .npz with train_jpeg/test_jpeg keys; found {found}")
        path = candidates[0]
        names = _names(np.load(path, allow_pickle=False), "label_names")
        if names is not None and tuple(names) != CIFAR10_CLASSES:
            raise ValueError(f"{path}: label_names {names} are not CIFAR-10's {list(CIFAR10_CLASSES)}")
        self.info.metadata["source"] = str(path)
        files = np.load(path, allow_pickle=False).files
        return {split: self._generate_examples(path, split) for split in ("train", "test") if f"{split}_jpeg" in files}

    def _generate_examples(self, path: Path, split: str):
        records, _ = npz_records(path, split)
        skipped = common.SkipCounter(f"{self.name} {split}")
        kept = 0
        for index in range(len(records)):
            record = records[index]
            try:
                data = common.jpeg_bytes(record["image"])
            except common.BadImageError as e:
                skipped.skip(index, str(e))
                continue
            kept += 1
            yield index, {"image": data, "label": int(record["label"]), "image_id": index}
        self.record_skipped(split, skipped, kept)
