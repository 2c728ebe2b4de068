"""Specification of mmssl_jax.optim: the run plan, schedules in optimizer updates, parameter
groups and masks, and the rules a config may not break (refused, never clamped)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmssl_jax import config_base as cb
from mmssl_jax import optim
from mmssl_jax.config_base import ConfigError
from tests.test_train import load_config


def small_config(name="sgd", **optimizer):
    c = cb.base_config()
    c.input.batch_size = 8
    c.num_steps = 10
    cb.set_warmup(c, steps=2)
    c.optimizer.name = name
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.0
    c.optimizer.weight_decay = 0.0
    for key, value in optimizer.items():
        c.optimizer[key] = value
    return c


PARAMS = {
    "encoders_image": {"conv": {"kernel": jnp.ones((2, 3))}, "bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}},
    "heads_image": {"dense1": {"kernel": jnp.ones((3, 2))}},
    "predictors_image": {"dense1": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}},
}


def test_a_warmup_longer_than_the_run_is_refused_naming_both_numbers():
    config = load_config("clip", "coco")
    cb.set_warmup(config, steps=2000)  # the old recipe: 2000 warmup steps in a 896-update run
    with pytest.raises(ConfigError, match=r"warmup_steps=2000 is 2000 optimizer updates, but the run has only 896"):
        optim.plan_run(config, 118_287)
    config.optimizer.warmup_epochs = 1.0
    with pytest.raises(ConfigError, match="warmup is given twice"):
        optim.plan_run(config, 118_287)
    cb.set_warmup(config, fraction=1.0)
    with pytest.raises(ConfigError, match="warmup_fraction=1 must be < 1"):
        optim.plan_run(config, 118_287)


def test_the_plan_counts_optimizer_updates():
    config = small_config()
    config.num_steps = 0
    config.num_epochs = 3
    config.accumulation_steps = 2
    cb.set_warmup(config, epochs=0.5)
    plan = optim.plan_run(config, 100)  # 100 // 16 = 6 updates per epoch
    assert (plan.batch_per_update, plan.updates_per_epoch, plan.total_updates, plan.warmup_updates) == (16, 6, 18, 3)
    assert plan.total_micro_steps == 36
    with pytest.raises(ConfigError, match="fewer than one batch per update"):
        optim.plan_run(config, 15)


def _applied_learning_rates(config, plan, steps):
    """The learning rate each micro-step applies (SGD without momentum: -update / grad)."""
    params = {"w": jnp.ones((2, 2))}
    opt = optim.make_optimizer(config, params, plan)
    state = opt.tx.init(params)
    rates = []
    for _ in range(steps):
        updates, state = opt.tx.update({"w": jnp.ones((2, 2))}, state, params)
        rates.append(-float(updates["w"][0, 0]))
    return opt, rates


def test_accumulation_runs_the_schedule_once_per_update():
    """k micro-steps make one update at schedule(update index): warmup and decay in updates,
    the last update near the end of the cosine (not halfway, as a micro-step schedule would)."""
    config = small_config()
    config.num_steps = 4
    config.accumulation_steps = 2
    cb.set_warmup(config, steps=1)
    plan = optim.plan_run(config, 64)
    opt, rates = _applied_learning_rates(config, plan, plan.total_micro_steps)
    expected = [float(opt.schedule(u)) for u in range(4)]
    assert rates[0::2] == [0.0] * 4  # the first micro-step of each update applies nothing
    np.testing.assert_allclose(rates[1::2], expected, rtol=1e-6)
    np.testing.assert_allclose(expected, [0.0, 0.1, 0.075, 0.025], rtol=1e-6, atol=1e-9)
    # The learning rate scales with the batch per update.
    config.optimizer.lr_scaling = "linear"
    assert optim.peak_learning_rate(config, plan.batch_per_update) == pytest.approx(0.1 * 16 / 256)


def test_groups_freeze_and_decay_masks():
    config = small_config(weight_decay=0.5, groups={"biases": cb.param_group("rank<=1", lr_multiplier=0.1),
                                                     "predictor": cb.param_group("^predictors_", constant_lr=True)},
                          freeze=("heads_image",))
    plan = optim.plan_run(config, 80)
    opt = optim.make_optimizer(config, PARAMS, plan)
    labels = {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(opt.labels)[0]}
    assert labels == {
        "encoders_image/bn/bias": "biases", "encoders_image/bn/scale": "biases", "encoders_image/conv/kernel": "default",
        "heads_image/dense1/kernel": "frozen", "predictors_image/dense1/bias": "biases",
        "predictors_image/dense1/kernel": "predictor",
    }
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    state = opt.tx.init(PARAMS)
    for _ in range(2):  # to the end of warmup (update 2 runs at the peak)
        _, state = opt.tx.update(grads, state, PARAMS)
    updates, _ = opt.tx.update(grads, state, PARAMS)
    u = {optim.path_str(p): float(x.reshape(-1)[0]) for p, x in jax.tree_util.tree_flatten_with_path(updates)[0]}
    assert u["heads_image/dense1/kernel"] == 0.0  # frozen
    assert u["encoders_image/conv/kernel"] == pytest.approx(-0.1 * (1 + 0.5))  # peak LR, grad + L2
    assert u["encoders_image/bn/scale"] == pytest.approx(-0.01 * 1)  # 0.1 x LR, no decay on rank 1
    assert u["predictors_image/dense1/kernel"] == pytest.approx(-0.1 * 1.5)  # constant LR
    # The predictor's LR stays at the peak through warmup and decay.
    assert [float(opt.schedules["predictor"](k)) for k in (0, 5, 10)] == pytest.approx([0.1] * 3)
    # decay_rank1: every parameter decays (MoCo v2, SimSiam).
    config.optimizer.decay_rank1 = True
    assert optim.decays(config, "encoders_image/bn/bias", PARAMS["encoders_image"]["bn"]["bias"])


def test_rules_that_select_nothing_are_refused():
    plan = optim.plan_run(small_config(), 80)
    with pytest.raises(ConfigError, match=r"groups.predictor \(select='\^predictor_'\) selects no parameter"):
        optim.make_optimizer(small_config(groups={"predictor": cb.param_group("^predictor_")}), PARAMS, plan)
    with pytest.raises(ConfigError, match="freeze: 'text_tower' matches no parameter"):
        optim.make_optimizer(small_config(freeze=("text_tower",)), PARAMS, plan)
    with pytest.raises(ConfigError, match="is not a regex"):
        optim.make_optimizer(small_config(groups={"x": cb.param_group("(")}), PARAMS, plan)


def test_ema_momentum_schedules():
    config = small_config()
    config.ema = cb.ema_config(0.996, "cosine")
    plan = optim.plan_run(config, 80)
    m = optim.ema_momentum(config, plan)
    assert [float(m(k)) for k in (0, 5, 10)] == pytest.approx([0.996, 0.998, 1.0])
    config.ema = cb.ema_config(0.99)
    assert float(optim.ema_momentum(config, plan)(7)) == pytest.approx(0.99)


def test_a_learned_scalar_under_lars_needs_its_own_rate():
    """LARS gives a rank-0 parameter no trust ratio: a learned temperature in the default group
    would move by the full learning rate each update (it went 0.07 -> 0.74 in 60 updates in the
    shipped BERTSimCLR), so the config must give it a rate; with a group, its updates are that
    group's multiplier times the default's."""
    params = dict(PARAMS, logit_scale=jnp.asarray(2.0))
    config = small_config("lars", weight_decay=1e-6)
    cb.set_warmup(config)  # no warmup: the first update is at the peak rate
    config.learned_scalars = {"logit_scale": 2.0}
    plan = optim.plan_run(config, 80)
    with pytest.raises(ConfigError, match=r"learned_scalars.logit_scale would train under LARS at the full"):
        optim.make_optimizer(config, params, plan)
    config.optimizer.groups = {"scalars": cb.param_group("^logit_scale$", lr_multiplier=0.01)}
    opt = optim.make_optimizer(config, params, plan)
    assert opt.labels["logit_scale"] == "scalars"
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
    bias_update = float(updates["encoders_image"]["bn"]["bias"][0])  # rank 1: no trust ratio either
    assert float(updates["logit_scale"]) == pytest.approx(0.01 * bias_update, rel=1e-6)
    assert bias_update != 0
    config.optimizer.name = "adamw"  # adaptive per parameter: no refusal
    config.optimizer.groups = {}
    optim.make_optimizer(config, params, plan)
