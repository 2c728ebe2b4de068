r"""Prepares a dataset for training and evaluation (ArrayRecord files in a tfds data dir).

    python -m mmssl_jax.data.prepare NAME [--data_dir=DIR] [--manual_dir=DIR] [options]

Examples::

    python -m mmssl_jax.data.prepare mmssl_shapes                       # generated, ~2 min on CPU
    python -m mmssl_jax.data.prepare mmssl_shapes --num_train=256 --num_test=64 --data_dir=/tmp/tiny
    python -m mmssl_jax.data.prepare coco_captions_embedded --manual_dir=/data/coco
    python -m mmssl_jax.data.prepare flickr8k_embedded --manual_dir=/data/flickr8k
    python -m mmssl_jax.data.prepare flickr8k_embedded --manual_dir=/data/flickr8k --keep_captionless
    python -m mmssl_jax.data.prepare captioned_folder --manual_dir=/data/pets --config=pets
    python -m mmssl_jax.data.prepare image_folder_classification --manual_dir=/data/flowers
    python -m mmssl_jax.data.prepare cifar10_npz --manual_dir=/data/cifar10_npz
    python -m mmssl_jax.data.prepare cifar10                            # tfds's own (downloads)

Preparing again reuses what is there (``--overwrite`` replaces it). ``--list`` shows the
builders and what their ``--manual_dir`` must hold. The data dir defaults to
``$MMSSL_DATA_DIR``, else ``~/tensorflow_datasets``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mmssl_jax.data.prepare",
        description="Prepare a dataset (ArrayRecord files in a tfds data dir).",
        epilog="Builders: mmssl_shapes, coco_captions_embedded, flickr8k_embedded, captioned_folder, "
        "image_folder_classification, cifar10_npz; or any tfds name (downloads). --list describes them.",
    )
    parser.add_argument("name", nargs="?", help="builder name, optionally NAME/CONFIG")
    parser.add_argument(
        "--data_dir", default=None, help="tfds data dir (default: $MMSSL_DATA_DIR or ~/tensorflow_datasets)"
    )
    parser.add_argument("--manual_dir", default=None, help="the local source files, for builders that read them")
    parser.add_argument(
        "--config", default=None, help="config name; for folder builders, the folder's tag (default: its base name)"
    )
    parser.add_argument(
        "--text_model", default=None, help="sentence model of the caption embeddings (default: all-MiniLM-L6-v2)"
    )
    parser.add_argument("--num_train", type=int, default=None, help="mmssl_shapes: train examples (default 10000)")
    parser.add_argument("--num_test", type=int, default=None, help="mmssl_shapes: test examples (default 2000)")
    parser.add_argument("--image_size", type=int, default=None, help="mmssl_shapes: image side in pixels (default 64)")
    parser.add_argument(
        "--keep_captionless",
        action="store_true",
        help="captioned builders: keep images without captions as records with zero captions (config "
        "<name>+captionless; train on them with --config.input.missing_captions=mask)",
    )
    parser.add_argument("--overwrite", action="store_true", help="prepare again even if already prepared")
    parser.add_argument("--list", action="store_true", help="list the builders and their manual_dir layouts")
    return parser


def _list_builders() -> str:
    from mmssl_jax.data import builders

    lines = []
    for name, cls in builders.BUILDERS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"{name}: {doc}")
        if cls.MANUAL_DOWNLOAD_INSTRUCTIONS:
            lines += ["    --manual_dir holds:"] + [
                f"      {line}" for line in cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip().splitlines()
            ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mmssl_jax.data import builders  # imports TensorFlow with no accelerator, then tfds

    if args.list:
        print(_list_builders())
        return 0
    if not args.name:
        _parser().print_usage(sys.stderr)
        print("error: NAME is required (or --list)", file=sys.stderr)
        return 2
    kwargs = {}
    if args.text_model:
        kwargs["text_model"] = args.text_model
    if args.image_size:
        kwargs["image_size"] = args.image_size
    try:
        result = builders.prepare(
            args.name,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            config=args.config,
            num_train=args.num_train,
            num_test=args.num_test,
            overwrite=args.overwrite,
            keep_captionless=args.keep_captionless,
            **kwargs,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
