"""The training input a config describes: the prepared split, the views' augmentations, the stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmssl_jax.data import augment, pipeline


def augment_configs(config) -> dict[str, augment.AugmentConfig]:
    """Image view name -> the augmentation its preset (``config.views.NAME.augment``) builds."""
    views = {}
    for name, view in config.views.items():
        if view.modality == "image":
            preset = view.get("augment", "simclr_imagenet")
            if preset not in augment.PRESETS:
                raise ValueError(
                    f"config.views.{name}.augment: unknown preset {preset!r}; known: {sorted(augment.PRESETS)}"
                )
            views[name] = augment.PRESETS[preset](config.input.image_size)
    return views


def text_views(config) -> list[str]:
    """Names of the text views (caption embeddings drawn per ``input.caption_mode``)."""
    return sorted(name for name, view in config.views.items() if view.modality == "text")


def train_source(config) -> Sequence[Mapping[str, Any]]:
    """The prepared training split (image bytes are decoded by the pipeline's workers).

    The embedded default dataset is prepared on first use when ``input.prepare_if_missing``;
    any other unprepared dataset raises an error that gives the command preparing it.
    """
    from mmssl_jax.data import builders

    return builders.load_source(
        config.input.name,
        config.input.split,
        data_dir=config.input.data_dir or None,
        prepare_if_missing=config.input.get("prepare_if_missing", False),
    )


def read_options(config):
    """grain's reader threads and prefetch buffer per process (``config.input.read_threads``,
    ``config.input.read_buffer_size``; grain's own 16 and 500 where a config predates them)."""
    threads = config.input.get("read_threads", 16)
    buffer = config.input.get("read_buffer_size", 500)
    try:
        return pipeline.read_options(threads, buffer)
    except ValueError as e:
        raise ValueError(f"config.input.read_threads={threads!r}, config.input.read_buffer_size={buffer!r}: {e}") from e


def make_input(config, source, *, seed: int, batch_size: int | None = None):
    """This process's rows of the global training stream a config describes (see
    ``mmssl_jax.data.pipeline``): the same global batches whatever the number of processes.
    ``batch_size``: the global batch per step (default ``config.input.batch_size``; the trainer's
    exact accumulation draws a whole update's batch at once)."""
    return pipeline.train_dataset(
        source,
        batch_size=batch_size or config.input.batch_size,
        seed=seed,
        image_views=augment_configs(config),
        text_views=text_views(config),
        caption_mode=config.input.get("caption_mode", "random"),
        worker_count=config.input.get("worker_count", 0),
        caption_fraction=config.input.get("caption_fraction", 1.0),
        missing_captions=config.input.get("missing_captions", "skip"),
        read_options=read_options(config),
    )


def partially_paired(config) -> bool:
    """Whether some training samples lack a caption: the step then masks the image-text terms
    (``input.caption_fraction < 1``, ``input.missing_captions="mask"``, ``modality_dropout.text``)."""
    if not text_views(config):
        return False
    return (config.input.get("caption_fraction", 1.0) < 1.0 or config.input.get("missing_captions", "skip") == "mask"
            or dict(config.get("modality_dropout", {})).get("text", 0.0) > 0)
