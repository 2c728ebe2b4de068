"""Optimizers: the optax chain a config asks for, its learning-rate schedule and parameter masks.

Which parameters decay, which get LARS adaptation and which are frozen are config rules
(``config.optimizer``), applied here as optax masks, never in the loss.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import jax
import ml_collections
import optax


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
