"""Optimizers: the run's length, the learning-rate schedules, parameter groups and the optax chain.

Everything is counted in **optimizer updates**: with ``accumulation_steps = k`` one update
takes ``k`` micro-batches of ``input.batch_size``, the batch per update is ``k x batch_size``,
the learning rate scales with that batch, and warmup and decay are counted in updates (what
``optax.MultiSteps`` advances the inner schedule by). Accumulation gives the larger batch's
*gradient* only for losses that are a mean of per-sample terms: a contrastive loss still draws
its negatives from one micro-batch, and BatchNorm still normalizes over one micro-batch.
``accumulation_mode="exact"`` (GradCache) gives the contrastive loss the whole batch per update;
the trainer then takes one step per update and no ``MultiSteps`` wrapper is built.

Which parameters decay, which get LARS's trust ratio, which learn at another rate and which
are frozen are config rules (``config.optimizer``), applied here as optax masks and labels,
never in the loss. A rule that selects no parameter, or a warmup that does not fit in the run,
is a :class:`~mmssl_jax.config_base.ConfigError`, never silently clamped.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import optax

from mmssl_jax.config_base import ConfigError

RANK1 = "rank<=1"
"""Group selector: every parameter of rank 0 or 1 (biases, norm scales and shifts, learned scalars)."""

# ----------------------------------------------------------------------------- the run's length


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """How long a run is and in which units (all counts are optimizer updates unless named)."""

    num_examples: int  # training examples in one epoch
    batch_size: int  # global batch of one micro-step
    accumulation_steps: int
    updates_per_epoch: int
    total_updates: int
    warmup_updates: int
    exact: bool = False  # accumulation_mode "exact": one step per update takes all its micro-batches

    @property
    def batch_per_update(self) -> int:
        return self.batch_size * self.accumulation_steps

    @property
    def steps_per_update(self) -> int:
        """Trainer steps per optimizer update: ``accumulation_steps``, or 1 with exact accumulation."""
        return 1 if self.exact else self.accumulation_steps

    @property
    def batch_per_step(self) -> int:
        """Global batch the loop draws per step (exact accumulation: the whole batch per update)."""
        return self.batch_per_update if self.exact else self.batch_size

    @property
    def total_micro_steps(self) -> int:
        """Batches the loop draws (``state.step`` counts these): ``steps_per_update`` per update."""
        return self.total_updates * self.steps_per_update

    @property
    def epochs(self) -> float:
        return self.total_updates / self.updates_per_epoch


def plan_run(config: ml_collections.ConfigDict, num_examples: int) -> RunPlan:
    """The run a config describes on ``num_examples`` training examples.

    ``num_steps`` counts optimizer updates (0: ``num_epochs`` epochs). Warmup is given in one
    unit: ``optimizer.warmup_epochs``, ``optimizer.warmup_fraction`` (of the run) or
    ``optimizer.warmup_steps`` (updates); it must end before the run does.
    """
    opt = config.optimizer
    k = int(config.get("accumulation_steps", 1))
    if k < 1:
        raise ConfigError(f"config.accumulation_steps must be >= 1, got {k}")
    mode = config.get("accumulation_mode", "average")
    if mode not in ("average", "exact"):
        raise ConfigError(f"config.accumulation_mode must be 'average' or 'exact', got {mode!r}")
    batch = int(config.input.batch_size)
    per_update = batch * k
    updates_per_epoch = num_examples // per_update
    if updates_per_epoch < 1:
        raise ConfigError(
            f"the training split has {num_examples} examples, fewer than one batch per update "
            f"(config.input.batch_size={batch} x config.accumulation_steps={k} = {per_update})"
        )
    if config.get("num_steps"):
        total = int(config.num_steps)
    elif config.get("num_epochs"):
        total = int(round(config.num_epochs * updates_per_epoch))
    else:
        raise ConfigError("set config.num_steps or config.num_epochs (> 0)")
    if total < 1:
        raise ConfigError(f"the run has {total} optimizer updates; set config.num_steps or config.num_epochs")

    given = {key: float(opt.get(key, 0) or 0) for key in ("warmup_steps", "warmup_epochs", "warmup_fraction")}
    set_keys = [key for key, value in given.items() if value]
    if len(set_keys) > 1:
        raise ConfigError(f"warmup is given twice: {', '.join(f'config.optimizer.{k}={given[k]:g}' for k in set_keys)}; "
                          "set one of them")
    if any(value < 0 for value in given.values()):
        raise ConfigError(f"warmup must be >= 0: {given}")
    if given["warmup_fraction"] >= 1:
        raise ConfigError(f"config.optimizer.warmup_fraction={given['warmup_fraction']:g} must be < 1")
    warmup = int(round(given["warmup_steps"] + given["warmup_epochs"] * updates_per_epoch
                       + given["warmup_fraction"] * total))
    if warmup >= total:
        what = set_keys[0]
        raise ConfigError(
            f"config.optimizer.{what}={given[what]:g} is {warmup} optimizer updates, but the run has only "
            f"{total} ({total / updates_per_epoch:.3g} epochs of {updates_per_epoch} updates); the warmup must "
            "end before the run does"
        )
    return RunPlan(num_examples=num_examples, batch_size=batch, accumulation_steps=k,
                   updates_per_epoch=updates_per_epoch, total_updates=total, warmup_updates=warmup,
                   exact=mode == "exact")


# ----------------------------------------------------------------------------- schedules


def peak_learning_rate(config: ml_collections.ConfigDict, batch_per_update: int) -> float:
    """``optimizer.learning_rate`` scaled with the batch per update as ``lr_scaling`` says."""
    opt = config.optimizer
    scaling = opt.get("lr_scaling", "none")
    if scaling == "linear":
        return opt.learning_rate * batch_per_update / 256
    if scaling == "sqrt":
        return opt.learning_rate * math.sqrt(batch_per_update)
    if scaling == "none":
        return float(opt.learning_rate)
    raise ConfigError(f"config.optimizer.lr_scaling must be 'linear', 'sqrt' or 'none', got {scaling!r}")


def warmup_cosine(peak: float, warmup: int, total: int, end_fraction: float = 0.0) -> optax.Schedule:
    """Linear from 0 to ``peak`` over ``warmup`` updates, then cosine to ``end_fraction x peak``
    at update ``total`` (Barlow Twins ends at 0.001 x peak; the others at 0)."""
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=peak * end_fraction)


def _per_epoch(schedule: optax.Schedule, updates_per_epoch: int) -> optax.Schedule:
    """The schedule held constant within an epoch (its value at the epoch's first update)."""
    return lambda count: schedule((count // updates_per_epoch) * updates_per_epoch)


def group_schedules(config: ml_collections.ConfigDict, plan: RunPlan, labels: set[str]) -> dict[str, optax.Schedule]:
    """Group name -> its learning-rate schedule (``"default"``: the recipe's schedule)."""
    opt = config.optimizer
    peak = peak_learning_rate(config, plan.batch_per_update)
    end = float(opt.get("end_lr_fraction", 0.0))
    if not 0 <= end < 1:
        raise ConfigError(f"config.optimizer.end_lr_fraction={end:g} must be in [0, 1)")
    groups = dict(opt.get("groups") or {})
    out = {}
    for label in sorted(labels - {"frozen"}):
        spec = groups.get(label) or {}
        mult = float(spec.get("lr_multiplier", 1.0))
        if mult <= 0:
            raise ConfigError(f"config.optimizer.groups.{label}.lr_multiplier={mult:g} must be > 0")
        if spec.get("constant_lr", False):
            schedule = optax.constant_schedule(peak * mult)
        else:
            schedule = warmup_cosine(peak * mult, plan.warmup_updates, plan.total_updates, end)
            if opt.get("step_lr_per_epoch", False):
                schedule = _per_epoch(schedule, plan.updates_per_epoch)
        out[label] = schedule
    return out


def ema_momentum(config: ml_collections.ConfigDict, plan: RunPlan) -> optax.Schedule:
    """The target network's EMA decay per update: constant, or BYOL's cosine
    ``1 - (1 - base) (cos(pi k / K) + 1) / 2`` rising from ``base`` to 1 at the last update."""
    ema = config.ema
    base = float(ema.momentum)
    if not 0 <= base < 1:
        raise ConfigError(f"config.ema.momentum={base:g} must be in [0, 1)")
    kind = ema.get("schedule", "constant")
    if kind == "constant":
        return optax.constant_schedule(base)
    if kind == "cosine":
        total = plan.total_updates
        return lambda k: 1.0 - (1.0 - base) * (jax.numpy.cos(jax.numpy.pi * k / total) + 1.0) / 2.0
    raise ConfigError(f"config.ema.schedule must be 'constant' or 'cosine', got {kind!r}")


# ----------------------------------------------------------------------------- parameter groups


def path_str(path) -> str:
    """``("encoders_image", "conv1", "kernel")`` as ``"encoders_image/conv1/kernel"``."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _selects(selector: str, name: str, x) -> bool:
    return x.ndim <= 1 if selector == RANK1 else re.search(selector, name) is not None


def param_labels(config: ml_collections.ConfigDict, params) -> Any:
    """Each parameter's group: ``"frozen"`` (``optimizer.freeze``), the first group of
    ``optimizer.groups`` whose selector matches, else ``"default"``."""
    opt = config.optimizer
    freeze = list(opt.get("freeze", ()))
    groups = {name: dict(spec) for name, spec in dict(opt.get("groups") or {}).items()}
    for name, spec in groups.items():
        if name in ("default", "frozen"):
            raise ConfigError(f"config.optimizer.groups.{name}: that group name is reserved")
        selector = spec.get("select", "")
        if not selector:
            raise ConfigError(f"config.optimizer.groups.{name}.select is empty; use {RANK1!r} or a regex")
        if selector != RANK1:
            try:
                re.compile(selector)
            except re.error as e:
                raise ConfigError(f"config.optimizer.groups.{name}.select={selector!r} is not a regex: {e}") from e

    def label(path, x) -> str:
        name = path_str(path)
        if any(re.search(p, name) for p in freeze):
            return "frozen"
        for group, spec in groups.items():
            if _selects(spec["select"], name, x):
                return group
        return "default"

    labels = jax.tree_util.tree_map_with_path(label, params)
    used = set(jax.tree.leaves(labels))
    for group in groups:
        if group not in used:
            raise ConfigError(f"config.optimizer.groups.{group} (select={groups[group]['select']!r}) selects no "
                              "parameter that is not frozen or in an earlier group")
    for pattern in freeze:
        if not any(re.search(pattern, path_str(p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]):
            raise ConfigError(f"config.optimizer.freeze: {pattern!r} matches no parameter")
    return labels


def decays(config: ml_collections.ConfigDict, name: str, x) -> bool:
    """Whether a parameter gets weight decay (and, with LARS, the trust ratio): rank >= 2 unless
    ``optimizer.decay_rank1`` (MoCo v2 and SimSiam decay every parameter), and no ``no_decay`` match."""
    opt = config.optimizer
    if x.ndim <= 1 and not opt.get("decay_rank1", False):
        return False
    return not any(re.search(p, name) for p in opt.get("no_decay", ()))


def decay_mask(config: ml_collections.ConfigDict) -> Callable[[Any], Any]:
    """The decay / LARS-adaptation mask as a function of the (possibly masked) parameter tree."""
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, x: decays(config, path_str(p), x), params)


# ----------------------------------------------------------------------------- the optax chain


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """What :func:`make_optimizer` builds: the transformation and what it was built from."""

    tx: optax.GradientTransformation
    plan: RunPlan
    schedules: Mapping[str, optax.Schedule]  # group -> learning rate per update
    labels: Any  # parameter tree of group names

    @property
    def schedule(self) -> optax.Schedule:
        """The ``default`` group's schedule (the one the console and TensorBoard show)."""
        return self.schedules.get("default") or next(iter(self.schedules.values()))


def _base(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    opt = config.optimizer
    mask = decay_mask(config)
    name = opt.name
    if name == "lars":  # L2 added to the gradient, then the trust ratio (both masked), lr, momentum
        return optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=mask,
                          trust_coefficient=opt.get("trust_coefficient", 1e-3), eps=0.0,
                          trust_ratio_mask=mask, momentum=opt.get("momentum", 0.9),
                          nesterov=opt.get("nesterov", False))
    if name == "adamw":  # decoupled decay, scaled by the learning rate (as torch.optim.AdamW)
        return optax.adamw(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), eps=opt.get("eps", 1e-8),
                           weight_decay=opt.weight_decay, mask=mask)
    if name == "sgd":  # L2 added to the gradient (torch.optim.SGD's weight_decay), then momentum
        return optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=mask),
            optax.sgd(schedule, momentum=opt.get("momentum", 0.9), nesterov=opt.get("nesterov", False)),
        )
    raise ConfigError(f"config.optimizer.name must be one of 'lars', 'adamw', 'sgd', got {name!r}")


def _check_lars_scalars(config: ml_collections.ConfigDict, labels) -> None:
    """LARS gives a parameter of rank 0 no trust ratio, so a learned temperature or bias left in
    the default group moves by the full peak learning rate (with momentum) every update: at
    SimCLR's 0.3 x B/256 a CLIP temperature goes from 0.07 to 0.7 within 60 updates and the
    image-text terms stop learning. Refused, so the config says what the scalar should do."""
    if config.optimizer.name != "lars":
        return
    for name in dict(config.get("learned_scalars") or {}):
        if isinstance(labels, Mapping) and labels.get(name) == "default":
            raise ConfigError(
                f"config.learned_scalars.{name} would train under LARS at the full learning rate: a scalar gets "
                "no trust ratio. Give it its own rate, e.g. config.optimizer.groups = {'scalars': "
                f"config_base.param_group('^{name}$', lr_multiplier=0.01)}}, or freeze it (optimizer.freeze)")


def make_optimizer(config: ml_collections.ConfigDict, params, plan: RunPlan) -> Optimizer:
    """The optax chain a config asks for over ``params`` (a tree of arrays or shapes)."""
    labels = param_labels(config, params)
    _check_lars_scalars(config, labels)
    used = set(jax.tree.leaves(labels))
    schedules = group_schedules(config, plan, used)
    if used == {"default"}:
        tx = _base(config, schedules["default"])
    else:
        transforms = {g: _base(config, s) for g, s in schedules.items()}
        if "frozen" in used:
            transforms["frozen"] = optax.set_to_zero()
        tx = optax.multi_transform(transforms, labels)
    clip = config.optimizer.get("grad_clip_norm", 0.0)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    if plan.steps_per_update > 1:  # "average" accumulation; "exact" hands the update the whole batch's gradient
        tx = optax.MultiSteps(tx, every_k_schedule=plan.steps_per_update)
    return Optimizer(tx=tx, plan=plan, schedules=schedules, labels=labels)
