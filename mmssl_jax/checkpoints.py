"""Training checkpoints (Orbax): the whole train state, the grain iterator and the config.

Saves are synchronous (a save is on disk when the loop moves on) and a run resumes from the
latest one, data stream included. Evaluating a checkpoint on its own is
:mod:`mmssl_jax.evaluation.checkpoints`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax


def make_checkpoint_manager(workdir: Path, config):
    import orbax.checkpoint as ocp

    from mmssl_jax import launch

    # The manager's first act is a collective across processes; they may arrive far apart.
    launch.sync_processes("checkpoint_manager")

    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.get("keep_checkpoints", 3),
        save_interval_steps=1,  # the loop decides when to save
        create=True,
        enable_async_checkpointing=False,  # a save is on disk when the loop moves on
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(manager, step: int, state: Any, iterator, config) -> None:
    import grain
    import orbax.checkpoint as ocp

    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            config=ocp.args.JsonSave(config.to_dict()),
        ),
        force=True,
    )
    manager.wait_until_finished()


def restore(manager, state: Any, iterator) -> Any:
    import grain
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    return restored["state"]
