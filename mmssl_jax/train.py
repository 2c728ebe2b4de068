"""The one trainer for every method: views -> encoders + heads -> weighted loss terms.

Read top to bottom: the state a step changes, the update step, and the loop in
:func:`train_and_evaluate` (which Colab imports). What it builds on lives beside it: the
objective (:mod:`~mmssl_jax.objectives`), the model (:func:`mmssl_jax.models.build_model`), the
optimizer and schedule (:mod:`~mmssl_jax.optim`), the input (:mod:`mmssl_jax.data.inputs`),
checkpoints (:mod:`~mmssl_jax.checkpoints`), evaluation (:mod:`mmssl_jax.evaluation`), reporting
(:mod:`~mmssl_jax.reporting`) and the config checks (:mod:`~mmssl_jax.validation`).

Sharding: one data-parallel mesh over every device of every host. Parameters and optimizer
state are replicated, the batch is sharded on its leading axis, and the step is ``jit``-ed on
those global arrays, so XLA computes BatchNorm statistics and the contrastive losses over the
global batch (negatives from every device) with no hand-written collectives. With
``config.loss.chunk_size`` the loss terms alone run under ``shard_map`` on the device ring
(:func:`mmssl_jax.objectives.ring_method_loss`): each device keeps its own rows of the
embeddings and ``chunk_size`` tiles of logits, never the gathered batch; the encoders, BatchNorm
statistics, the EMA target and the MoCo queue are computed as without it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmssl_jax import checkpoints, evaluation, gradcache, launch, objectives, optim, recipe, reporting, sharding
from mmssl_jax.data import augment, inputs, pipeline
from mmssl_jax.models import MultiViewModel, build_model
from mmssl_jax.validation import ConfigError, validate_config

__all__ = ["ConfigError", "NonFiniteLossError", "TrainState", "make_train_step", "train_and_evaluate",
           "validate_config"]

_log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; all of it goes into every checkpoint."""

    step: jax.Array  # steps taken (optimizer updates x plan.steps_per_update)
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key; the step's key is fold_in(rng, step)
    momentum_params: Any = None  # the target branch (config.ema): an EMA of params
    momentum_batch_stats: Any = None
    queue: jax.Array | None = None  # MoCo v2: [K, dim] negatives (config.moco.queue_size)
    queue_ptr: jax.Array | None = None


def _init_state(model: MultiViewModel, tx, config, example_batch, rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, example_batch, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    extra = {}
    if config.get("ema") is not None:
        extra.update(momentum_params=params, momentum_batch_stats=batch_stats)
    moco = config.get("moco")
    if moco is not None and moco.get("queue_size"):
        out = model.apply(variables, example_batch, train=False, views=[moco.key_view], predict=False)
        queue = jax.random.normal(jax.random.fold_in(state_rng, 1), (moco.queue_size, out["z"][moco.key_view].shape[-1]))
        extra.update(queue=queue / jnp.linalg.norm(queue, axis=1, keepdims=True), queue_ptr=jnp.zeros((), jnp.int32))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), rng=state_rng, **extra,
    )


# ----------------------------------------------------------------------------- update step


def _ema(decay, old, new):
    return jax.tree.map(lambda o, n: decay * o + (1 - decay) * n, old, new)


def make_train_step(model: MultiViewModel, optimizer: optim.Optimizer, config, mesh=None):
    """``(state, batch) -> (state, metrics)``; jit it with the state donated.

    ``mesh``: the data-parallel mesh the batch is sharded over; needed (only) with
    ``config.loss.chunk_size``, whose loss terms run on that mesh's device ring.

    The online branch computes the views the loss terms read from it, the target branch (EMA)
    the views they read as ``VIEW@momentum``: nothing else runs (MoCo: query view only online,
    key view only in the target). The target's EMA and the learning rate advance once per
    optimizer update (every ``accumulation_steps`` micro-steps). With ``accumulation_mode="exact"``
    a step is a whole update: its batch of ``accumulation_steps`` micro-batches goes through
    :func:`mmssl_jax.gradcache.value_and_grad_with_state` (BatchNorm per micro-batch).
    """
    chunk_size = int(config.get("loss", {}).get("chunk_size", 0) or 0)
    if chunk_size and mesh is None:
        raise ValueError("make_train_step: config.loss.chunk_size runs the loss terms on the device ring "
                         "of a mesh; pass mesh= (the mesh the batch is sharded over)")
    image_views = inputs.augment_configs(config)
    terms = [dict(t) for t in config.loss_terms]
    online_views, target_views = objectives.branch_views(terms)
    moco = config.get("moco") if config.get("moco") is not None and config.moco.get("queue_size") else None
    ema_decay = optim.ema_momentum(config, optimizer.plan) if config.get("ema") is not None else None
    k = optimizer.plan.steps_per_update
    exact = optimizer.plan.exact
    micro_batches = optimizer.plan.accumulation_steps
    tx, schedule = optimizer.tx, optimizer.schedule
    compute_dtype = jnp.dtype(config.get("dtype", "float32"))
    max_logit_scale = config.get("max_logit_scale", math.inf)
    dropout = dict(config.get("modality_dropout", {}))
    text_views = inputs.text_views(config)
    partial = inputs.partially_paired(config)
    scalar_names = tuple(dict(config.get("learned_scalars", {})))
    if chunk_size:
        objective = objectives.ring_method_loss(terms, chunk_size=chunk_size, mesh=mesh)
    else:  # jit on the global arrays: XLA partitions the loss (it gathers the embeddings)
        objective = lambda z, scalars, queue, where: objectives.method_loss(z, scalars, terms, queue, where)  # noqa: E731

    def forward(params, batch_stats, batch, views, predict):
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch, train=True,
                                   views=views, predict=predict, mutable=["batch_stats"])
        return out, updates.get("batch_stats", {})

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        key = jax.random.fold_in(state.rng, state.step)
        batch = pipeline.device_augment(batch, key, image_views)
        where = None
        if partial:  # some samples have no caption: the image-text terms leave them out
            has_text = batch.pop("has_text", None)
            if dropout.get("text", 0.0) > 0:  # a caption dropped for this step
                kept = jax.random.bernoulli(jax.random.fold_in(key, 20_000), 1.0 - dropout["text"],
                                            batch[text_views[0]].shape[:1])
                has_text = kept if has_text is None else has_text & kept
            where = {view: has_text for view in text_views}
        for i, (view, spec) in enumerate(sorted(config.views.items())):
            rate = dropout.get(spec.modality, 0.0)
            if rate > 0 and spec.modality != "text":  # a missing input: zero this view for some samples
                batch[view] = augment.drop_modality(batch[view], jax.random.fold_in(key, 10_000 + i), rate)
        batch = {k: (v.astype(compute_dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v) for k, v in batch.items()}

        target, target_stats = None, state.momentum_batch_stats
        if target_views:
            target, target_stats = forward(state.momentum_params, state.momentum_batch_stats, batch,
                                           target_views, False)

        def loss_fn(params):
            online, new_stats = forward(params, state.batch_stats, batch, online_views, True)
            z = objectives.side_embeddings(online, target)
            loss, metrics = objective(z, online["scalars"], state.queue, where)
            return loss, (metrics, new_stats)

        if exact:  # GradCache: the loss over every micro-batch's embeddings, one micro-batch's activations live
            def embed(params, micro_batch, stats):
                online, stats = forward(params, stats, micro_batch, online_views, True)
                return objectives.side_embeddings(online, None), stats

            def loss_of_embeddings(params, z):
                return objective(z, {name: params[name] for name in scalar_names}, state.queue, where)

            (loss, metrics), grads, new_stats = gradcache.value_and_grad_with_state(
                embed, loss_of_embeddings, state.params, batch, state.batch_stats, micro_batches=micro_batches,
                devices=mesh.size if mesh is not None else 1, has_aux=True)
        else:
            (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if math.isfinite(max_logit_scale) and "logit_scale" in params:  # CLIP: inverse temperature <= 100
            params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], max_logit_scale)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        update_index = state.step // k  # this micro-step belongs to optimizer update number update_index
        if ema_decay is not None:
            decay = ema_decay(update_index)
            applied = (state.step + 1) % k == 0  # params change only on the last micro-step of an update
            new_state = new_state.replace(
                momentum_params=jax.tree.map(lambda e, o: jnp.where(applied, e, o),
                                             _ema(decay, state.momentum_params, params), state.momentum_params),
                momentum_batch_stats=target_stats,
            )
            metrics["ema_momentum"] = jnp.asarray(decay, jnp.float32)
        if moco is not None:
            keys = target["z"][moco.key_view].astype(jnp.float32)
            keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
            queue = jax.lax.dynamic_update_slice(state.queue, keys, (state.queue_ptr, 0))
            new_state = new_state.replace(queue=queue, queue_ptr=(state.queue_ptr + keys.shape[0]) % state.queue.shape[0])

        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite step changes nothing: the loop stops on it with the last good state.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        if where is not None:  # the share of this batch's samples the image-text terms trained on
            metrics["input/caption_fraction"] = jnp.mean(where[text_views[0]].astype(jnp.float32))
        metrics.update(
            grad_norm=grad_norm,
            param_norm=optax.global_norm(state.params),
            learning_rate=schedule(update_index),
            finite=finite,
        )
        return new_state, metrics

    return step


# ----------------------------------------------------------------------------- the loop


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def _accuracy_key(config) -> str | None:
    """The metric the console shows as the method's accuracy: its first contrastive term's."""
    for term in config.loss_terms:
        if term["loss"] in objectives.CONTRASTIVE:
            return f"accuracy/{objectives.term_name(term)}"
    return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       dry_run: bool = False) -> dict[str, float]:
    """Trains the method a config describes in ``workdir``, resuming from its last checkpoint.

    Before the first step it prints the recipe card (what will run, as built) and writes it to
    ``workdir/recipe.md``. ``dry_run``: stop after compiling one step, adding XLA's per-device
    memory and FLOPs of that step to the card.

    Returns the last logged metrics (also written to ``workdir/summary.json``); with
    ``dry_run``, the compiled step's figures.
    """
    workdir = Path(workdir)
    validate_config(config)
    workdir.mkdir(parents=True, exist_ok=True)

    # Mesh: every device of every host, batch split on the data axis.
    mesh = sharding.make_mesh()
    # Input: the prepared dataset, shuffled and augmented; this process's rows of each global batch.
    source = inputs.train_source(config)
    plan = optim.plan_run(config, len(source))
    total_steps = plan.total_micro_steps
    iterator = iter(inputs.make_input(config, source, seed=config.seed, batch_size=plan.batch_per_step))
    first = next(iter(inputs.make_input(config, source, seed=config.seed, batch_size=plan.batch_per_step)))

    # Model and optimizer, initialised already placed (replicated) on the mesh.
    model = build_model(config)
    example = {k: jnp.asarray(v[:2]) for k, v in first.items() if k in config.views}
    example = pipeline.device_augment(example, jax.random.key(0), inputs.augment_configs(config))
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))["params"]
    optimizer = optim.make_optimizer(config, params_shape, plan)
    card = recipe.recipe_card(config, optimizer, params_shape)
    reporting.write_text(workdir / "recipe.md", card)
    if jax.process_index() == 0:
        print(card if dry_run else recipe.card_summary(config, optimizer, params_shape, workdir / "recipe.md"),
              flush=True)
    # Evaluation: datasets opened and prompts embedded now, so a missing one fails before training.
    evaluator = None
    if config.get("eval") is not None and config.eval.protocols and not dry_run:
        evaluator = evaluation.Evaluation(config, model, mesh)
    eval_every = config.eval.every if evaluator is not None else 0
    replicated = sharding.replicated(mesh)
    init = jax.jit(functools.partial(_init_state, model, optimizer.tx, config), out_shardings=replicated)
    state = init(example, jax.random.PRNGKey(config.seed))
    step_fn = jax.jit(
        make_train_step(model, optimizer, config, mesh),
        in_shardings=(replicated, sharding.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    if dry_run:
        compiled = step_fn.lower(state, sharding.host_batch_to_global(first, mesh)).compile()
        figures = recipe.compiled_figures(compiled, plan)
        text = recipe.figures_markdown(figures)
        reporting.write_text(workdir / "recipe.md", card + "\n" + text)
        if jax.process_index() == 0:
            print(text, flush=True)
        return figures

    # Checkpoints: resume if the workdir has one.
    manager = checkpoints.make_checkpoint_manager(workdir, config)
    if manager.latest_step() is not None:
        state = checkpoints.restore(manager, state, iterator)
        _log.info("Resumed from step %d in %s", int(state.step), workdir)
    start = int(state.step)
    # The step compiled before the processes meet, so that one compiling longer than another
    # cannot make the first step's cross-process collectives time out (the call reuses it).
    if start < total_steps:
        step_fn.lower(state, sharding.host_batch_to_global(first, mesh)).compile()
        launch.sync_processes("first_step")

    # Reporting: TensorBoard, one console line per log step, history and curves.
    writer = reporting.make_writer(workdir)
    if start == 0:
        reporting.write_hparams(writer, config)
    profiler = None
    if config.get("profile") and jax.process_index() == 0:
        from clu import periodic_actions

        profiler = periodic_actions.Profile(logdir=str(workdir), num_profile_steps=5)
    accuracy_key = _accuracy_key(config)
    history = [h for h in reporting.load_history(workdir) if h[0] <= start]
    last: dict[str, float] = {}
    for _, row in history:  # a resumed (or finished) run reports what it logged before, too
        last.update(row)
    finite_flags: list[jax.Array] = []
    started = last_log = (time.perf_counter(), start)

    try:
        for step in range(start + 1, total_steps + 1):
            batch = sharding.host_batch_to_global(next(iterator), mesh)
            state, metrics = step_fn(state, batch)
            finite_flags.append(metrics.pop("finite"))
            if profiler is not None:
                profiler(step)
            if step % config.log_every == 0 or step % config.checkpoint_every == 0 or step == total_steps:
                # One host sync per log/checkpoint, not per step: a bad step since the last check
                # stops the run before a checkpoint could record it.
                flags = np.asarray(jax.device_get(finite_flags))
                finite_flags = []
                if not flags.all():
                    bad = step - len(flags) + 1 + int(np.argmin(flags))
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at step {bad} ({int((~flags).sum())} of steps "
                        f"{step - len(flags) + 1}-{step}); each such step was skipped (it left the state "
                        f"unchanged), the run stops at step {step} and the last checkpoint in {workdir} is kept"
                    )
            row: dict[str, float] = {}
            if step % config.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                row["examples_per_second"] = (step - last_log[1]) * plan.batch_per_step / max(now - last_log[0], 1e-9)
                row["steps_per_second"] = (step - last_log[1]) / max(now - last_log[0], 1e-9)
                eta = (total_steps - step) * (now - started[0]) / max(step - started[1], 1)
                last_log = (now, step)
                reporting.log_step(writer, step, total_steps, row, examples_per_second=row["examples_per_second"],
                                   eta_seconds=eta, accuracy_key=accuracy_key)
            if evaluator is not None and ((eval_every and step % eval_every == 0) or step == total_steps):
                eval_metrics = evaluator.run(state.params, state.batch_stats)
                reporting.write_eval_metrics(workdir, step, eval_metrics, writer)
                reporting.write_robustness_curves(eval_metrics, workdir / "robustness.png")
                evaluator.write(workdir, step)
                row.update(eval_metrics)
                if jax.process_index() == 0:
                    print(reporting.format_eval_summary(f"Step {step} evaluation", eval_metrics), flush=True)
            if row:  # this step's own metrics only: a row never carries another step's values
                history.append((step, row))
                last.update(row)
            if step % config.checkpoint_every == 0 or step == total_steps:
                # History first: a run killed between the two resumes with every row it logged
                # (rows past the checkpoint it resumes from are dropped on resume).
                reporting.save_history(workdir, history)
                checkpoints.save(manager, step, state, iterator, config)
    finally:
        writer.flush()
        manager.close()

    reporting.write_curves(history, workdir / "curves.png")
    summary = {"step": int(state.step), **last}
    reporting.write_summary(workdir, summary)
    if jax.process_index() == 0:
        print(reporting.final_line(config.get("method") or "training", int(state.step), last, workdir,
                                   accuracy_key=accuracy_key), flush=True)
    return summary
