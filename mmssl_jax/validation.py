"""Config checks: a config that cannot train fails before the first step, naming the key."""

from __future__ import annotations

import jax
import ml_collections

from mmssl_jax import evaluation
from mmssl_jax.config_base import ConfigError
from mmssl_jax.data import inputs
from mmssl_jax.models import build_model
from mmssl_jax.data import pipeline
from mmssl_jax.objectives import CONTRASTIVE, LOSS_FNS, MASKABLE, parse_side


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
            if key in ("chunk_size", "axis_name"):
                raise ConfigError(
                    f"{where}.kwargs.{key}: the trainer sets it; use config.loss.chunk_size, which streams every "
                    "contrastive term on the device ring (shard_map over the data axis)")
            if isinstance(value, str) and value.startswith("learned:") and value[8:] not in scalars:
                raise ConfigError(f"{where}.kwargs.{key}={value!r}: no such entry in config.learned_scalars {sorted(scalars)}")
            if value == "queue" and queue_size <= 0:
                raise ConfigError(
                    f"{where}.kwargs.{key}='queue' needs a queue, but config.moco.queue_size={queue_size}; "
                    "set it > 0 (MoCo v2), or drop negatives='queue' for in-batch negatives (MoCo v3)")
    _check_chunk_size(config)
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
    _check_partial_pairing(config, views)
    ec = config.get("eval")
    if ec is not None:
        unknown = sorted(set(ec.protocols) - set(evaluation.PROTOCOLS))
        if unknown:
            raise ConfigError(f"config.eval.protocols: unknown {unknown}; known: {list(evaluation.PROTOCOLS)}")
        if set(ec.protocols) & set(evaluation.TEXT_PROTOCOLS) and "text" not in modalities:
            raise ConfigError(f"config.eval.protocols {list(ec.protocols)}: zero_shot and retrieval need a text view")
        if ec.every < 0:
            raise ConfigError(f"config.eval.every must be >= 0, got {ec.every}")
        _check_robustness(ec, modalities)
        evaluation.check_counterfactual(ec.get("counterfactual"), modalities, tuple(ec.protocols))
    try:
        inputs.augment_configs(config)
        inputs.read_options(config)
        build_model(config)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    if config.get("accumulation_steps", 1) < 1:
        raise ConfigError(f"config.accumulation_steps must be >= 1, got {config.accumulation_steps}")
    mode = config.get("accumulation_mode", "average")
    if mode not in ("average", "exact"):
        raise ConfigError(f"config.accumulation_mode must be 'average' or 'exact', got {mode!r}")
    if mode == "exact" and ema is not None:
        raise ConfigError(
            "config.accumulation_mode='exact' recomputes the online branch micro-batch by micro-batch; "
            "a target branch (config.ema, VIEW@momentum terms: BYOL, MoCo and its queue) is not supported "
            "there. Use accumulation_mode='average' (per-micro-batch negatives) or a larger batch with "
            "config.loss.chunk_size")


def _check_chunk_size(config: ml_collections.ConfigDict) -> None:
    """``config.loss.chunk_size``: 0, or a positive int for a method with a contrastive term."""
    chunk = config.get("loss", {}).get("chunk_size", 0)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ConfigError(f"config.loss.chunk_size must be an int >= 0 (0: off), got {chunk!r}")
    if not chunk:
        return
    losses = [term["loss"] for term in config.loss_terms]
    if not set(losses) & CONTRASTIVE:
        raise ConfigError(
            f"config.loss.chunk_size={chunk} streams the contrastive terms ({', '.join(sorted(CONTRASTIVE))}), "
            f"but this method's loss terms are {losses}: their memory does not grow with the batch "
            "squared; set config.loss.chunk_size=0")


def _check_partial_pairing(config: ml_collections.ConfigDict, views: dict) -> None:
    """Caption-less samples need a text view and, on every term reading it, a loss that takes a mask."""
    fraction = config.input.get("caption_fraction", 1.0)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"config.input.caption_fraction={fraction} must be in [0, 1]")
    missing = config.input.get("missing_captions", "skip")
    if missing not in pipeline.MISSING_CAPTIONS:
        raise ConfigError(f"config.input.missing_captions={missing!r} must be one of {pipeline.MISSING_CAPTIONS}")
    text = {name for name, view in views.items() if view.modality == "text"}
    if (fraction < 1.0 or missing == "mask") and not text:
        raise ConfigError("config.input.caption_fraction < 1 / missing_captions='mask' hide captions, but no view "
                          "is a text view")
    if not inputs.partially_paired(config):
        return
    for i, term in enumerate(config.loss_terms):
        read = {parse_side(term[side])[0] for side in ("a", "b")}
        if read & text and term["loss"] not in MASKABLE:
            raise ConfigError(
                f"config.loss_terms[{i}]: {term['loss']} on a text view, but some samples have no caption "
                f"(input.caption_fraction, input.missing_captions or modality_dropout.text) and {term['loss']} "
                f"takes no per-sample mask; use one of {sorted(MASKABLE)}")


def _check_robustness(ec: ml_collections.ConfigDict, modalities: set) -> None:
    """eval.robustness: known corruptions and metrics, valid rates, and data for every curve."""
    from mmssl_jax.evaluation import robustness

    rc = ec.get("robustness")
    if rc is None or not rc.corruptions:
        return
    unknown = sorted(set(rc.corruptions) - set(robustness.CORRUPTIONS))
    if unknown:
        raise ConfigError(f"config.eval.robustness.corruptions: unknown {unknown}; known: {list(robustness.CORRUPTIONS)}")
    unknown = sorted(set(rc.get("metrics") or ()) - set(robustness.METRICS))
    if unknown:
        raise ConfigError(f"config.eval.robustness.metrics: unknown {unknown}; known: {list(robustness.METRICS)}")
    try:
        robustness.check_rates(rc.rates)
    except ValueError as e:
        raise ConfigError(f"config.eval.robustness.{e}") from e
    if set(rc.corruptions) & set(robustness.CAPTION_CORRUPTIONS) and "text" not in modalities:
        raise ConfigError(f"config.eval.robustness.corruptions {list(rc.corruptions)}: caption corruptions need a "
                          "text view")
    if set(rc.corruptions) & set(robustness.IMAGE_CORRUPTIONS) and not set(ec.protocols) & {
            "linear_probe", "knn", "zero_shot", "retrieval"}:
        raise ConfigError("config.eval.robustness: image corruptions follow the linear_probe, knn, zero_shot or "
                          "retrieval metrics; add one to config.eval.protocols")
