"""mmssl_jax's datasets as tfds builders, and the functions that prepare and open them.

Importing this package registers the builders with tfds (so ``tfds.data_source(NAME, ...)``
finds them) and imports TensorFlow through :mod:`mmssl_jax.tf_compat`, so it never takes an
accelerator.

=================================  ==========================================================
builder                            source
=================================  ==========================================================
``mmssl_shapes``                   generated (:mod:`mmssl_jax.data.shapes`); the default
``coco_captions_embedded``         MS-COCO captions, official layout or one ``captions.json``
``flickr8k_embedded``              Flickr8k in COCO format
``captioned_folder/<tag>-<model>`` a folder of images + JSONL captions
``image_folder_classification/<tag>``  ``<split>/<class>/<image>`` folders
``cifar10_npz``                    CIFAR-10 as a JPEG ``.npz``
=================================  ==========================================================

Every builder writes ArrayRecord files (random access through ``tfds.data_source``). The
captioned ones store, per image: ``image`` (encoded; JPEG for photos, PNG for the generated set),
``image_id`` (int64), ``captions`` (all of them) and ``caption_embeddings`` (``float16
[num_captions, dim]``, one row per caption, from :class:`mmssl_jax.text.SentenceEncoder`);
their config is named after the text model (``all-minilm-l6-v2``), so another model is another
config directory. An image without captions is skipped, unless prepared with ``keep_captionless``
(config ``<name>+captionless``): then it is a record with zero captions.

Prepare from the shell (``python -m mmssl_jax.data.prepare NAME [--data_dir=...]
[--manual_dir=...]``) or from Python::

    from mmssl_jax.data import builders

    builders.prepare("coco_captions_embedded", manual_dir="/data/coco")
    train = builders.load_source("coco_captions_embedded", "train")     # records, image bytes
    probe = builders.load_classification("mmssl_shapes", "test", label_key="color")
    probe[0]["image"], probe[0]["label"], probe.class_names

A dataset that is not prepared raises :class:`DatasetNotPreparedError` with the exact command
that prepares it. The data dir defaults to ``$MMSSL_DATA_DIR``, else ``~/tensorflow_datasets``.
"""

from mmssl_jax.data.builders.captions import (
    CaptionedFolder,
    CaptionedImage,
    CocoCaptionsEmbedded,
    Flickr8kEmbedded,
    LayoutError,
    read_coco_layout,
    read_jsonl_layout,
)
from mmssl_jax.data.builders.classification import (
    CIFAR10_CLASSES,
    ClassificationSource,
    Cifar10Npz,
    ImageFolderClassification,
)
from mmssl_jax.data.builders.common import (
    DATA_DIR_ENV,
    DEFAULT_TEXT_DIM,
    DEFAULT_TEXT_MODEL,
    DatasetNotPreparedError,
    TextConfig,
    default_data_dir,
    embed_captions,
    load_text_encoder,
    model_slug,
    prepare_command,
)
from mmssl_jax.data.builders.embedded import MmsslShapes, ShapesConfig, shapes_config
from mmssl_jax.data.builders.loading import (
    BUILDERS,
    EMBEDDED_DATASET,
    PreparedDataset,
    load_classification,
    load_source,
    make_builder,
    open_builder,
    prepare,
    prepare_embedded,
)

__all__ = [
    "BUILDERS",
    "CIFAR10_CLASSES",
    "CaptionedFolder",
    "CaptionedImage",
    "Cifar10Npz",
    "ClassificationSource",
    "CocoCaptionsEmbedded",
    "DATA_DIR_ENV",
    "DEFAULT_TEXT_DIM",
    "DEFAULT_TEXT_MODEL",
    "DatasetNotPreparedError",
    "EMBEDDED_DATASET",
    "Flickr8kEmbedded",
    "ImageFolderClassification",
    "LayoutError",
    "MmsslShapes",
    "PreparedDataset",
    "ShapesConfig",
    "TextConfig",
    "default_data_dir",
    "embed_captions",
    "load_classification",
    "load_source",
    "load_text_encoder",
    "make_builder",
    "model_slug",
    "open_builder",
    "prepare",
    "prepare_command",
    "prepare_embedded",
    "read_coco_layout",
    "read_jsonl_layout",
    "shapes_config",
]
