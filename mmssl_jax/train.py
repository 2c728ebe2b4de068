"""The one trainer for every method: views -> encoders + heads -> weighted loss terms.

Read top to bottom: method (loss terms), model, optimizer, state, input, update step,
checkpoints, logging, and the loop in :func:`train_and_evaluate`, which Colab imports.

Sharding: one data-parallel mesh over every device of every host. Parameters and optimizer
state are replicated, the batch is sharded on its leading axis, and the step is ``jit``-ed on
those global arrays, so XLA computes BatchNorm statistics and the contrastive losses over the
global batch (negatives from every device) with no hand-written collectives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmssl_jax import evaluate, losses, sharding
from mmssl_jax.data import augment, pipeline
from mmssl_jax.models import build_encoder, build_head
from mmssl_jax.models.multiview import MultiViewModel

_log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- method: loss terms

LOSS_FNS: dict[str, Callable[..., jax.Array]] = {
    "nt_xent": losses.nt_xent,
    "info_nce": losses.info_nce,
    "clip": losses.clip,
    "siglip": losses.siglip,
    "barlow_twins": losses.barlow_twins,
    "vicreg": losses.vicreg,
}
"""Loss names a config's ``loss_terms`` may use."""

CONTRASTIVE = {"nt_xent", "info_nce", "clip", "siglip"}
MOMENTUM_SUFFIX = "@momentum"  # "image2@momentum": the view through the momentum encoder


def _term_name(term: Mapping[str, Any]) -> str:
    return f"{term['loss']}/{term['a']}-{term['b']}"


def method_loss(
    z: Mapping[str, jax.Array],
    scalars: Mapping[str, jax.Array],
    terms: Sequence[Mapping[str, Any]],
    queue: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of a method's loss terms, and the metrics to log.

    Args:
      z: view name -> embeddings ``[B, dim]`` (momentum views under ``"view@momentum"``).
      scalars: learnable scalars (``logit_scale``, ``logit_bias``) by name.
      terms: each ``{"a", "b", "loss", "weight", "kwargs"}``; a kwarg value ``"learned:NAME"``
        is replaced by the learnable scalar NAME, ``"queue"`` by the MoCo queue.
      queue: the MoCo queue ``[K, dim]`` if the method has one.
    """
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for term in terms:
        kwargs = {}
        for key, value in dict(term.get("kwargs", {})).items():
            if isinstance(value, str) and value.startswith("learned:"):
                value = scalars[value.split(":", 1)[1]]
            elif isinstance(value, str) and value == "queue":
                value = jax.lax.stop_gradient(queue)
            kwargs[key] = value
        a, b = z[term["a"]], z[term["b"]]
        value = LOSS_FNS[term["loss"]](a, b, **kwargs)
        name = _term_name(term)
        metrics[f"loss/{name}"] = value
        if term["loss"] in CONTRASTIVE:
            metrics[f"accuracy/{name}"] = losses.positive_pair_accuracy(a, b)
        total = total + term.get("weight", 1.0) * value
    metrics["loss"] = total
    for name, value in scalars.items():
        metrics[f"scalar/{name}"] = value
        if name == "logit_scale":
            metrics["scalar/temperature"] = jnp.exp(-value)
    return total, metrics


# ----------------------------------------------------------------------------- model


def build_model(config: ml_collections.ConfigDict) -> MultiViewModel:
    """The multi-view model a config describes (encoders and heads found by name)."""
    dtype = jnp.dtype(config.get("dtype", "float32"))
    encoders, heads = {}, {}
    for modality, spec in config.encoders.items():
        if spec.name not in (None, "", "none"):
            encoders[modality] = build_encoder(spec.name, dtype=dtype, **dict(spec.get("kwargs", {})))
    for modality, spec in config.heads.items():
        if spec.name not in (None, "", "none"):
            heads[modality] = build_head(spec.name, dtype=dtype, **dict(spec.get("kwargs", {})))
    view_modality = tuple((name, view.modality) for name, view in sorted(config.views.items()))
    scalars = tuple(sorted(dict(config.get("learned_scalars", {})).items()))
    return MultiViewModel(view_modality=view_modality, encoders=encoders, heads=heads, scalars=scalars)


# ----------------------------------------------------------------------------- optimizer


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _mask(params, predicate: Callable[[str, jax.Array], bool]):
    return jax.tree_util.tree_map_with_path(lambda p, x: predicate(_path_str(p), x), params)


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup then cosine to zero; the peak scales with the batch as the recipe says."""
    opt = config.optimizer
    batch = config.input.batch_size * config.get("accumulation_steps", 1)
    scaling = opt.get("lr_scaling", "none")
    if scaling == "linear":
        peak = opt.learning_rate * batch / 256
    elif scaling == "sqrt":
        peak = opt.learning_rate * math.sqrt(batch)
    elif scaling == "none":
        peak = opt.learning_rate
    else:
        raise ValueError(f"config.optimizer.lr_scaling must be 'linear', 'sqrt' or 'none', got {scaling!r}")
    warmup = min(int(opt.get("warmup_steps", 0)), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(config: ml_collections.ConfigDict, params, total_steps: int):
    """The optax chain a config asks for, with its masks; returns ``(tx, schedule)``.

    Parameters of rank <= 1 (biases, BatchNorm/LayerNorm scales, learned scalars) and names
    matching ``optimizer.no_decay`` are excluded from weight decay and LARS adaptation;
    names matching ``optimizer.freeze`` get no update at all.
    """
    opt = config.optimizer
    schedule = learning_rate_schedule(config, total_steps)
    no_decay = [re.compile(p) for p in opt.get("no_decay", ())]
    decay_mask = _mask(params, lambda name, x: x.ndim > 1 and not any(p.search(name) for p in no_decay))
    name = opt.name
    if name == "lars":
        tx = optax.lars(
            schedule, weight_decay=opt.weight_decay, weight_decay_mask=decay_mask,
            trust_coefficient=opt.get("trust_coefficient", 1e-3), eps=0.0,
            trust_ratio_mask=decay_mask, momentum=opt.get("momentum", 0.9),
        )
    elif name == "adamw":
        tx = optax.adamw(
            schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8),
            weight_decay=opt.weight_decay, mask=decay_mask,
        )
    elif name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=opt.get("momentum", 0.9), nesterov=opt.get("nesterov", False)),
        )
    else:
        raise ValueError(f"config.optimizer.name must be one of 'lars', 'adamw', 'sgd', got {name!r}")
    if opt.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    freeze = [re.compile(p) for p in opt.get("freeze", ())]
    if freeze:
        labels = _mask(params, lambda n, x: "frozen" if any(p.search(n) for p in freeze) else "trained")
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    if config.get("accumulation_steps", 1) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.accumulation_steps)
    return tx, schedule


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; all of it goes into every checkpoint."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key; the step's key is fold_in(rng, step)
    momentum_params: Any = None  # MoCo: the key encoder, an EMA of params
    momentum_batch_stats: Any = None
    queue: jax.Array | None = None  # MoCo: [K, dim] negatives
    queue_ptr: jax.Array | None = None


def _init_state(model: MultiViewModel, tx, config, example_batch, rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, example_batch, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    extra = {}
    moco = config.get("moco")
    if moco is not None and moco.get("queue_size"):
        dim = model.apply(variables, example_batch, train=False)["z"][moco.key_view].shape[-1]
        queue = jax.random.normal(jax.random.fold_in(state_rng, 1), (moco.queue_size, dim))
        queue = queue / jnp.linalg.norm(queue, axis=1, keepdims=True)
        extra = dict(
            momentum_params=params, momentum_batch_stats=batch_stats,
            queue=queue, queue_ptr=jnp.zeros((), jnp.int32),
        )
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), rng=state_rng, **extra,
    )


# ----------------------------------------------------------------------------- input


def _augment_configs(config) -> dict[str, augment.AugmentConfig]:
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


def _text_views(config) -> list[str]:
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


def make_input(config, source, *, seed: int):
    """The per-process training stream for a config (see ``mmssl_jax.data.pipeline``)."""
    per_process = config.input.batch_size // jax.process_count()
    return pipeline.train_dataset(
        source,
        batch_size=per_process,
        seed=seed,
        image_views=_augment_configs(config),
        text_views=_text_views(config),
        caption_mode=config.input.get("caption_mode", "random"),
        worker_count=config.input.get("worker_count", 0),
    )


# ----------------------------------------------------------------------------- update step


def make_train_step(model: MultiViewModel, tx, schedule, config):
    """``(state, batch) -> (state, metrics)``; jit it with the state donated."""
    image_views = _augment_configs(config)
    terms = [dict(t) for t in config.loss_terms]
    moco = config.get("moco")
    compute_dtype = jnp.dtype(config.get("dtype", "float32"))
    max_logit_scale = config.get("max_logit_scale", math.log(100.0))
    dropout = dict(config.get("modality_dropout", {}))

    def forward(params, batch_stats, batch):
        out, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, batch, train=True, mutable=["batch_stats"]
        )
        return out, updates.get("batch_stats", {})

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        key = jax.random.fold_in(state.rng, state.step)
        batch = pipeline.device_augment(batch, key, image_views)
        for i, (view, spec) in enumerate(sorted(config.views.items())):
            rate = dropout.get(spec.modality, 0.0)
            if rate > 0:  # robustness to a missing modality: zero this view for some samples
                batch[view] = evaluate.drop_modality(batch[view], jax.random.fold_in(key, 10_000 + i), rate)
        batch = {k: (v.astype(compute_dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v) for k, v in batch.items()}

        momentum_z, momentum_stats = {}, state.momentum_batch_stats
        if moco is not None:
            out_m, momentum_stats = forward(state.momentum_params, state.momentum_batch_stats, batch)
            momentum_z = {f"{v}{MOMENTUM_SUFFIX}": jax.lax.stop_gradient(z) for v, z in out_m["z"].items()}

        def loss_fn(params):
            out, new_stats = forward(params, state.batch_stats, batch)
            z = {**out["z"], **momentum_z}
            loss, metrics = method_loss(z, out["scalars"], terms, state.queue)
            return loss, (metrics, new_stats)

        (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if "logit_scale" in params:  # CLIP clamps the learned inverse temperature at 100
            params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], max_logit_scale)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        if moco is not None:
            m = moco.momentum
            ema = lambda old, new: jax.tree.map(lambda o, n: m * o + (1 - m) * n, old, new)
            keys = momentum_z[f"{moco.key_view}{MOMENTUM_SUFFIX}"].astype(jnp.float32)
            keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
            size = state.queue.shape[0]
            queue = jax.lax.dynamic_update_slice(state.queue, keys, (state.queue_ptr, 0))
            new_state = new_state.replace(
                momentum_params=ema(state.momentum_params, params),
                momentum_batch_stats=momentum_stats,
                queue=queue,
                queue_ptr=(state.queue_ptr + keys.shape[0]) % size,
            )

        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite step changes nothing: the loop stops on it with the last good state.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        metrics.update(
            grad_norm=grad_norm,
            param_norm=optax.global_norm(state.params),
            learning_rate=schedule(state.step // config.get("accumulation_steps", 1)),
            finite=finite,
        )
        return new_state, metrics

    return step


# ----------------------------------------------------------------------------- checkpoints


def make_checkpoint_manager(workdir: Path, config):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.get("keep_checkpoints", 3),
        save_interval_steps=1,  # the loop decides when to save
        create=True,
        enable_async_checkpointing=False,  # a save is on disk when the loop moves on
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def _save(manager, step: int, state: TrainState, iterator, config) -> None:
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


def _restore(manager, state: TrainState, iterator) -> TrainState:
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


# ----------------------------------------------------------------------------- logging


def _write_curves(history: list[tuple[int, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[-1][1] if k.startswith(("loss", "accuracy", "scalar/temperature"))]
    keys = sorted(keys, key=lambda k: (not k == "loss", k))[:8]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
    steps = [s for s, _ in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [m.get(key, float("nan")) for _, m in history])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- config checks


class ConfigError(ValueError):
    """A config that cannot train; raised before any training step, naming the key."""


_REQUIRED = ("seed", "input.batch_size", "input.image_size", "views", "encoders", "heads", "loss_terms",
             "optimizer.name", "optimizer.learning_rate", "log_every", "checkpoint_every")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Fails early, naming the key, on anything that would only break later in training."""
    for dotted in _REQUIRED:
        node = config
        for part in dotted.split("."):
            if part not in node:
                raise ConfigError(f"config.{dotted} is missing")
            node = node[part]
    if not (config.get("num_steps") or config.get("num_epochs")):
        raise ConfigError("set config.num_steps or config.num_epochs (> 0)")
    batch = config.input.batch_size
    if batch % jax.device_count():
        raise ConfigError(
            f"config.input.batch_size={batch} does not divide over the {jax.device_count()} devices; "
            f"use a multiple of {jax.device_count()}"
        )
    for key in ("log_every", "checkpoint_every"):
        if config[key] < 1:
            raise ConfigError(f"config.{key} must be >= 1, got {config[key]}")
    views = dict(config.views)
    for name, view in views.items():
        if view.get("modality") not in ("image", "text"):
            raise ConfigError(f"config.views.{name}.modality must be 'image' or 'text', got {view.get('modality')!r}")
    moco = config.get("moco")
    scalars = dict(config.get("learned_scalars", {}))
    for i, term in enumerate(config.loss_terms):
        where = f"config.loss_terms[{i}]"
        if term.get("loss") not in LOSS_FNS:
            raise ConfigError(f"{where}.loss={term.get('loss')!r} is not one of {sorted(LOSS_FNS)}")
        for side in ("a", "b"):
            view = term.get(side, "")
            base = view[: -len(MOMENTUM_SUFFIX)] if view.endswith(MOMENTUM_SUFFIX) else view
            if base not in views:
                raise ConfigError(f"{where}.{side}={view!r} names no view; views are {sorted(views)}")
            if view.endswith(MOMENTUM_SUFFIX) and moco is None:
                raise ConfigError(f"{where}.{side}={view!r} needs config.moco (a momentum encoder)")
        for key, value in dict(term.get("kwargs", {})).items():
            if isinstance(value, str) and value.startswith("learned:") and value[8:] not in scalars:
                raise ConfigError(f"{where}.kwargs.{key}={value!r}: no such entry in config.learned_scalars {sorted(scalars)}")
            if value == "queue" and not (moco and moco.get("queue_size")):
                raise ConfigError(f"{where}.kwargs.{key}='queue' needs config.moco.queue_size")
    if moco is not None and moco.get("queue_size"):
        if moco.queue_size % batch:
            raise ConfigError(f"config.moco.queue_size={moco.queue_size} must be a multiple of the batch size {batch}")
        if moco.key_view not in views:
            raise ConfigError(f"config.moco.key_view={moco.key_view!r} names no view")
    modalities = {view.modality for view in views.values()}
    for modality, rate in dict(config.get("modality_dropout", {})).items():
        if modality not in modalities:
            raise ConfigError(f"config.modality_dropout.{modality}: no view has that modality; modalities: {sorted(modalities)}")
        if not 0.0 <= float(rate) < 1.0:
            raise ConfigError(f"config.modality_dropout.{modality}={rate} must be in [0, 1)")
    ec = config.get("eval")
    if ec is not None:
        unknown = sorted(set(ec.protocols) - set(evaluate.PROTOCOLS))
        if unknown:
            raise ConfigError(f"config.eval.protocols: unknown {unknown}; known: {list(evaluate.PROTOCOLS)}")
        if set(ec.protocols) & set(evaluate.TEXT_PROTOCOLS) and "text" not in modalities:
            raise ConfigError(f"config.eval.protocols {list(ec.protocols)}: zero_shot and retrieval need a text view")
        if ec.every < 0:
            raise ConfigError(f"config.eval.every must be >= 0, got {ec.every}")
    try:
        _augment_configs(config)
        build_model(config)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    if config.get("accumulation_steps", 1) < 1:
        raise ConfigError(f"config.accumulation_steps must be >= 1, got {config.accumulation_steps}")


# ----------------------------------------------------------------------------- the loop


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains the method a config describes in ``workdir``, resuming from its last checkpoint.

    Returns the last logged metrics (also written to ``workdir/summary.json``).
    """
    workdir = Path(workdir)
    validate_config(config)
    workdir.mkdir(parents=True, exist_ok=True)

    # Mesh: every device of every host, batch split on the data axis.
    mesh = sharding.make_mesh()
    # Input: the prepared dataset, this process's slice, shuffled and augmented.
    source = train_source(config)
    steps_per_epoch = max(len(source) // config.input.batch_size, 1)
    total_steps = config.get("num_steps") or config.num_epochs * steps_per_epoch
    iterator = iter(make_input(config, source, seed=config.seed))
    first = next(iter(make_input(config, source, seed=config.seed)))  # shapes only

    # Model and optimizer, initialised already placed (replicated) on the mesh.
    model = build_model(config)
    # Evaluation: datasets opened and prompts embedded now, so a missing one fails before training.
    evaluation = None
    if config.get("eval") is not None and config.eval.protocols:
        evaluation = evaluate.Evaluation(config, model, mesh)
    eval_every = config.eval.every if evaluation is not None else 0
    example = {k: jnp.asarray(v[:2]) for k, v in first.items() if k in config.views}
    example = pipeline.device_augment(example, jax.random.key(0), _augment_configs(config))
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))["params"]
    tx, schedule = make_optimizer(config, params_shape, total_steps)
    replicated = sharding.replicated(mesh)
    init = jax.jit(
        functools.partial(_init_state, model, tx, config),
        out_shardings=replicated,
    )
    state = init(example, jax.random.PRNGKey(config.seed))

    # Checkpoints: resume if the workdir has one.
    manager = make_checkpoint_manager(workdir, config)
    if manager.latest_step() is not None:
        state = _restore(manager, state, iterator)
        _log.info("Resumed from step %d in %s", int(state.step), workdir)
    start = int(state.step)

    step_fn = jax.jit(
        make_train_step(model, tx, schedule, config),
        in_shardings=(replicated, sharding.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )

    # Logging: TensorBoard + console, progress with steps/s and ETA.
    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()
    from clu import metric_writers, periodic_actions

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start == 0:
        writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items() if isinstance(v, (int, float, str, bool))})
    hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer, every_steps=config.log_every)]
    if config.get("profile") and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(logdir=str(workdir), num_profile_steps=5))
    history = [h for h in _load_history(workdir) if h[0] <= start]
    finite_flags: list[jax.Array] = []
    last: dict[str, float] = {}
    examples_seen_at = (time.perf_counter(), start)

    try:
        for step in range(start + 1, total_steps + 1):
            batch = sharding.host_batch_to_global(next(iterator), mesh)
            state, metrics = step_fn(state, batch)
            finite_flags.append(metrics.pop("finite"))
            for hook in hooks:
                hook(step)
            if step % config.log_every == 0 or step % config.checkpoint_every == 0 or step == total_steps:
                # One host sync per log/checkpoint, not per step: any bad step since the last
                # check stops the run before a checkpoint could record it.
                flags = np.asarray(jax.device_get(finite_flags))
                finite_flags = []
                if not flags.all():
                    bad = step - len(flags) + 1 + int(np.argmin(flags))
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at step {bad}; steps from there on were not applied "
                        f"and the last good checkpoint in {workdir} is kept"
                    )
            if step % config.log_every == 0 or step == total_steps:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                rate = (step - examples_seen_at[1]) * config.input.batch_size / max(now - examples_seen_at[0], 1e-9)
                examples_seen_at = (now, step)
                last = {k: float(v) for k, v in metrics.items()}
                last["examples_per_second"] = rate
                writer.write_scalars(step, last)
                history.append((step, last))
            if evaluation is not None and ((eval_every and step % eval_every == 0) or step == total_steps):
                eval_metrics = evaluation.run(state.params, state.batch_stats)
                evaluate.write_metrics(workdir, step, eval_metrics, writer)
                last.update(eval_metrics)
                print(evaluate.format_summary(f"Step {step}", eval_metrics), flush=True)
            if step % config.checkpoint_every == 0 or step == total_steps:
                _save(manager, step, state, iterator, config)
                _save_history(workdir, history)
    finally:
        writer.flush()
        manager.close()

    if history and jax.process_index() == 0:
        _write_curves(history, workdir / "curves.png")
    summary = {"step": int(state.step), **last}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    shown = ", ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in sorted(last.items())
                      if k.startswith(("loss", "accuracy", "eval/")) and "ablation" not in k and k != "eval/seconds")
    print(f"Finished {config.get('method', 'training')} at step {int(state.step)}: {shown}. Workdir: {workdir}")
    return summary


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _load_history(workdir: Path) -> list:
    path = workdir / "history.json"
    return [tuple(x) for x in json.loads(path.read_text())] if path.exists() else []


def _save_history(workdir: Path, history: list) -> None:
    if jax.process_index() == 0:
        (workdir / "history.json").write_text(json.dumps(history))
