"""Restoring a training checkpoint for evaluation, and evaluating it on its own.

``configs/linear_probe.py`` runs :func:`evaluate_checkpoint`: the model is rebuilt from the config
saved in the checkpoint, and only its parameters and BatchNorm statistics are read (no optimizer
state, no data iterator).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections

from mmssl_jax import launch, reporting, sharding
from mmssl_jax.evaluation.evaluators import Evaluation
from mmssl_jax.models import build_model

MODEL_KEYS = ("views", "encoders", "heads", "predictors", "learned_scalars")
"""Config sections that define the parameters a checkpoint holds."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was trained with a different model than the config expects."""


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    if a in (None, {}) and b in (None, {}):  # a section absent and an empty one are the same model
        return []
    return [] if a == b else [f"{path}: checkpoint {a!r} vs config {b!r}"]


def restore_for_eval(checkpoint_dir: str | Path, step: int | None = None,
                     expected: ml_collections.ConfigDict | None = None):
    """Loads a training checkpoint's config and parameters.

    Args:
      checkpoint_dir: a training workdir (or its ``checkpoints`` folder).
      step: a saved step; ``None`` or a negative value: the latest.
      expected: a training config the checkpoint must match in :data:`MODEL_KEYS`.

    Returns:
      ``(train_config, step, params, batch_stats)``.

    Raises:
      FileNotFoundError: no checkpoint there (or not that step).
      CheckpointMismatchError: the checkpoint's model differs from ``expected``, naming the keys.
    """
    import orbax.checkpoint as ocp

    root = Path(checkpoint_dir).expanduser().absolute()
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {root} (config.checkpoint_dir)")
    launch.sync_processes("restore_for_eval")  # before the processes' first collective
    manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(create=False, read_only=True))
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{root} holds no checkpoint")
    step = max(steps) if step is None or step < 0 else int(step)
    if step not in steps:
        raise FileNotFoundError(f"{root} has no checkpoint at step {step}; it has {sorted(steps)}")
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    train_config = ml_collections.ConfigDict(saved)
    if expected is not None:
        diffs = _diff({k: saved.get(k) for k in MODEL_KEYS},
                      {k: (expected[k].to_dict() if hasattr(expected.get(k), "to_dict") else expected.get(k))
                       for k in MODEL_KEYS})
        if diffs:
            sections = sorted({d.split(".")[0].split(":")[0] for d in diffs})
            raise CheckpointMismatchError(
                f"the checkpoint in {root} was trained with a different model than config.train "
                f"({expected.get('method', '?')}); they differ in {', '.join(sections)}: "
                + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
            )
    # The state as saved, replicated on this run's devices (only params and batch statistics are
    # used): the checkpoint may come from another topology (a pod's processes, other devices),
    # which a restore without a target tree refuses.
    metadata = ocp.CheckpointManager(
        root, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    ).item_metadata(step)["state"]
    replicated = sharding.replicated(sharding.make_mesh())
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), metadata)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    manager.close()
    return train_config, step, state["params"], state.get("batch_stats") or {}


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | Path | None = None) -> dict[str, float]:
    """Evaluates a training checkpoint as ``configs/linear_probe.py`` describes.

    The model is rebuilt from the config saved in the checkpoint; ``config.eval`` (protocols,
    datasets) replaces the training run's. Metrics go to TensorBoard and ``eval_summary.json``
    in ``workdir`` (default: ``<checkpoint_dir>/eval``).
    """
    if not config.get("checkpoint_dir"):
        raise ValueError("config.checkpoint_dir: set it to a training workdir (--config.checkpoint_dir=runs/...)")
    expected = config.get("train") if config.get("train") and config.train.get("views") else None
    train_config, step, params, batch_stats = restore_for_eval(config.checkpoint_dir, config.get("step"), expected)
    train_config.unlock()
    train_config.eval = ml_collections.ConfigDict(config.eval.to_dict())
    if config.get("dtype"):
        train_config.dtype = config.dtype
    mesh = sharding.make_mesh()
    evaluation = Evaluation(train_config, build_model(train_config), mesh)
    replicated = sharding.replicated(mesh)
    params, batch_stats = jax.device_put((params, batch_stats), replicated)
    metrics = evaluation.run(params, batch_stats)
    workdir = Path(workdir) if workdir else Path(config.checkpoint_dir) / "eval"
    reporting.write_eval_metrics(workdir, step, metrics)
    reporting.write_robustness_curves(metrics, workdir / "robustness.png")
    evaluation.write(workdir, step)
    print(reporting.format_eval_summary(f"Evaluated {train_config.get('method', 'model')} step {step}", metrics))
    return metrics
