"""Command line: ``python -m mmssl_jax.main --config=configs/clip.py [--config.key=value ...]``.

The same command runs on one CPU, one GPU, a TPU VM or a multi-host pod: with several
processes (a TPU pod slice, SLURM, or ``--coordinator_address``/``--num_processes``/
``--process_id``, or ``python -m mmssl_jax.launch`` on one machine), ``jax.distributed.initialize()``
is called first and every process runs the same program on its slice of the batch.
"""

from __future__ import annotations

import logging as std_logging
import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/clip.py or configs/clip.py:coco.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, TensorBoard logs and curves go; a run resumes from it. "
    "Default: a new folder runs/<config>-<time>."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the recipe card, compile one training step, print its per-device memory and "
    "FLOPs, and exit without training (the card is also written to <workdir>/recipe.md)."
)


def _default_workdir(config_path: str) -> str:
    name = Path(config_path.split(":")[0]).stem
    arg = config_path.split(":", 1)[1] if ":" in config_path else ""
    return str(Path("runs") / f"{name}{'-' + arg if arg else ''}-{time.strftime('%Y%m%d-%H%M%S')}")


class _QuietLibraries(std_logging.Filter):
    """Drops INFO chatter of checkpointing internals; their warnings and errors still show."""

    NOISY = ("/orbax/", "/etils/", "/tensorflow_datasets/", "/jax/_src/xla_bridge.py")

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(part in record.pathname for part in self.NOISY)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    from mmssl_jax import xla_cpu

    xla_cpu.add_cpu_flags()  # before any JAX computation; a user's own XLA_FLAGS setting wins
    # TensorFlow (tfds, TensorBoard) must never take an accelerator from JAX.
    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()
    import jax

    from mmssl_jax import launch

    launch.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from mmssl_jax import train

    config_path = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or _default_workdir(config_path)
    logging.info("JAX %s: %d process(es), %d device(s): %s", jax.__version__, jax.process_count(),
                 jax.device_count(), jax.devices()[0].device_kind)
    config = _CONFIG.value
    if config.get("mode") == "evaluate":  # configs/linear_probe.py: evaluate a checkpoint
        from mmssl_jax import evaluation

        try:
            evaluation.evaluate_checkpoint(config, _WORKDIR.value)
        except (FileNotFoundError, ValueError) as e:  # no checkpoint, another model, a bad eval setting
            sys.exit(f"Error: {e}")
        return
    try:
        train.train_and_evaluate(config, workdir, dry_run=_DRY_RUN.value)
    except train.ConfigError as e:
        sys.exit(f"Config error: {e}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
