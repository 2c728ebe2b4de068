"""Config checks: a config that cannot train fails before the first step, naming the key."""

from __future__ import annotations

import jax
import ml_collections

from mmssl_jax import evaluation
from mmssl_jax.config_base import ConfigError
from mmssl_jax.data import inputs
from mmssl_jax.models import build_model
from mmssl_jax.objectives import LOSS_FNS, parse_side


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
    ema = config.get("ema")
    queue_size = int(moco.get("queue_size", 0)) if moco is not None else 0
    scalars = dict(config.get("learned_scalars", {}))
    predictor_modalities = {m for m, spec in dict(config.get("predictors") or {}).items()
                            if spec.name not in (None, "", "none")}
    target_views = set()
    for i, term in enumerate(config.loss_terms):
        where = f"config.loss_terms[{i}]"
        if term.get("loss") not in LOSS_FNS:
            raise ConfigError(f"{where}.loss={term.get('loss')!r} is not one of {sorted(LOSS_FNS)}")
        for side in ("a", "b"):
            name = term.get(side, "")
            try:
                view, branch, output = parse_side(name)
            except ValueError as e:
                raise ConfigError(f"{where}.{side}: {e}") from e
            if view not in views:
                raise ConfigError(f"{where}.{side}={name!r} names no view; views are {sorted(views)}")
            if branch == "target":
                target_views.add(view)
                if ema is None:
                    raise ConfigError(f"{where}.{side}={name!r} reads the target branch: set config.ema "
                                      "(config_base.ema_config(momentum, schedule))")
            if output == "p" and views[view].modality not in predictor_modalities:
                raise ConfigError(f"{where}.{side}={name!r} reads a predictor, but config.predictors has none "
                                  f"for modality {views[view].modality!r}")
        for key, value in dict(term.get("kwargs", {})).items():
            if isinstance(value, str) and value.startswith("learned:") and value[8:] not in scalars:
                raise ConfigError(f"{where}.kwargs.{key}={value!r}: no such entry in config.learned_scalars {sorted(scalars)}")
            if value == "queue" and queue_size <= 0:
                raise ConfigError(
                    f"{where}.kwargs.{key}='queue' needs a queue, but config.moco.queue_size={queue_size}; "
                    "set it > 0 (MoCo v2), or drop negatives='queue' for in-batch negatives (MoCo v3)")
    if ema is not None:
        if not 0.0 <= float(ema.get("momentum", -1)) < 1.0:
            raise ConfigError(f"config.ema.momentum={ema.get('momentum')} must be in [0, 1)")
        if ema.get("schedule", "constant") not in ("constant", "cosine"):
            raise ConfigError(f"config.ema.schedule={ema.get('schedule')!r} must be 'constant' or 'cosine'")
        if not target_views:
            raise ConfigError("config.ema is set but no loss term reads the target branch (VIEW@momentum)")
    if queue_size < 0:
        raise ConfigError(f"config.moco.queue_size={queue_size} must be >= 0")
    if queue_size:
        if queue_size % batch:
            raise ConfigError(f"config.moco.queue_size={queue_size} must be a multiple of the batch size {batch}")
        if moco.get("key_view") not in target_views:
            raise ConfigError(f"config.moco.key_view={moco.get('key_view')!r} must be a view the loss terms read "
                              f"from the target branch ({sorted(target_views)})")
    for modality in predictor_modalities - {v.modality for v in views.values()}:
        raise ConfigError(f"config.predictors.{modality}: no view has that modality")
    modalities = {view.modality for view in views.values()}
    for modality, rate in dict(config.get("modality_dropout", {})).items():
        if modality not in modalities:
            raise ConfigError(f"config.modality_dropout.{modality}: no view has that modality; modalities: {sorted(modalities)}")
        if not 0.0 <= float(rate) < 1.0:
            raise ConfigError(f"config.modality_dropout.{modality}={rate} must be in [0, 1)")
    ec = config.get("eval")
    if ec is not None:
        unknown = sorted(set(ec.protocols) - set(evaluation.PROTOCOLS))
        if unknown:
            raise ConfigError(f"config.eval.protocols: unknown {unknown}; known: {list(evaluation.PROTOCOLS)}")
        if set(ec.protocols) & set(evaluation.TEXT_PROTOCOLS) and "text" not in modalities:
            raise ConfigError(f"config.eval.protocols {list(ec.protocols)}: zero_shot and retrieval need a text view")
        if ec.every < 0:
            raise ConfigError(f"config.eval.every must be >= 0, got {ec.every}")
    try:
        inputs.augment_configs(config)
        inputs.read_options(config)
        build_model(config)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    if config.get("accumulation_steps", 1) < 1:
        raise ConfigError(f"config.accumulation_steps must be >= 1, got {config.accumulation_steps}")
