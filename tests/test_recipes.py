"""Every published recipe does what its paper did: values transcribed from the papers and their
reference code, checked against what the trainer builds from the config (the run plan, the
optimizer's schedules, parameter groups and masks, a first optimizer update, the model's
parameter tree, the augmentation objects, the objective and the EMA schedule). Never the config
against itself.

Sources (read from the reference repositories at the commits named in the closing note of the
recipes issue): SimCLR tf2 (run.py, model.py, README commands), CLIP (paper, open_clip
params.py), SigLIP (paper; open_clip --siglip init), Barlow Twins (main.py), VICReg (paper),
MoCo v2 (main_moco.py --mlp --moco-t 0.2 --aug-plus --cos), BYOL (configs/byol.py 1000-epoch
preset, utils/augmentations.py), SimSiam (main_simsiam.py --fix-pred-lr), MoCo v3
(main_moco.py, CONFIG.md ResNet-50 100 epochs).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmssl_jax import objectives, optim
from mmssl_jax.data import inputs
from mmssl_jax.models import build_model
from tests import reference_losses as ref
from tests.test_train import load_config

IMAGENET, CIFAR10, COCO = 1_281_167, 50_000, 118_287
TEXT_DIM = 384  # MiniLM caption embeddings

SIMCLR_JITTER_1 = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, brightness_mode="multiplicative")
SIMCLR_JITTER_05 = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, brightness_mode="multiplicative")
BYOL_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, brightness_mode="additive")
TORCHVISION_BYOL_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, brightness_mode="multiplicative")


def view(crop=(0.08, 1.0), jitter_p=0.8, jitter=SIMCLR_JITTER_1, gray=0.2, blur=0.5, solarize=0.0,
         sigma=(0.1, 2.0)):
    return dict(crop_scale=crop, jitter_p=jitter_p, **jitter, grayscale_p=gray, blur_p=blur, solarize_p=solarize,
                blur_sigma=sigma, flip_p=0.5)


@dataclasses.dataclass
class Recipe:
    """A published recipe as its paper / reference code states it."""

    examples: int
    batch: int
    epochs: float
    optimizer: str
    peak_lr: dict[str, float]  # group -> peak learning rate after batch scaling
    warmup_epochs: float
    weight_decay: float
    decay_everything: bool  # weight decay (LARS: and adaptation) on biases and norms too
    end_lr_fraction: float = 0.0
    lr_per_epoch: bool = False
    constant_groups: tuple[str, ...] = ()
    momentum: float = 0.9
    adam: tuple[float, float, float] | None = None  # b1, b2, eps
    warmup_fraction: float | None = None  # instead of warmup_epochs
    kernels: dict[str, list[tuple[int, ...]]] = dataclasses.field(default_factory=dict)  # module -> Dense kernels
    no_out_bias: tuple[str, ...] = ()  # modules whose last Dense has no bias
    out_bn: dict[str, str] = dataclasses.field(default_factory=dict)  # module -> "scale" / "none" (affine-free)
    views: dict[str, dict] = dataclasses.field(default_factory=dict)
    objective: tuple = ()  # (loss name, kwargs, weight) per term, checked by value
    ema: tuple[float, str] | None = None  # base momentum, schedule
    logit_scale: tuple[float, float | None] | None = None  # init, clamp
    queue: int = 0


RECIPES = {
    ("simclr", "cifar"): Recipe(
        examples=CIFAR10, batch=512, epochs=1000, optimizer="lars", peak_lr={"default": 1.0 * 512 / 256},
        warmup_epochs=10, weight_decay=1e-4, decay_everything=False,
        kernels={"heads_image": [(512, 512), (512, 512), (512, 128)]}, out_bn={"heads_image": "scale"},
        views={v: view(jitter=SIMCLR_JITTER_05, blur=0.0) for v in ("image1", "image2")},
        objective=(("nt_xent", {"temperature": 0.5}, 1.0),),
    ),
    ("simclr", "imagenet"): Recipe(
        examples=IMAGENET, batch=4096, epochs=100, optimizer="lars", peak_lr={"default": 0.3 * 4096 / 256},
        warmup_epochs=10, weight_decay=1e-6, decay_everything=False,
        kernels={"heads_image": [(2048, 2048), (2048, 2048), (2048, 128)]}, out_bn={"heads_image": "scale"},
        views={v: view() for v in ("image1", "image2")},
        objective=(("nt_xent", {"temperature": 0.1}, 1.0),),
    ),
    ("clip", "coco"): Recipe(
        examples=COCO, batch=4096, epochs=32, optimizer="adamw", peak_lr={"default": 5e-4}, warmup_epochs=0,
        warmup_fraction=2000 / 390_625, weight_decay=0.2, decay_everything=False, adam=(0.9, 0.98, 1e-6),
        kernels={"heads_image": [(768, 512)]}, logit_scale=(math.log(1 / 0.07), math.log(100)),
        objective=(("clip", {}, 1.0),),
    ),
    ("siglip", "coco"): Recipe(
        examples=COCO, batch=4096, epochs=32, optimizer="adamw", peak_lr={"default": 5e-4}, warmup_epochs=0,
        warmup_fraction=2000 / 390_625, weight_decay=0.2, decay_everything=False, adam=(0.9, 0.98, 1e-6),
        logit_scale=(math.log(10), None), objective=(("siglip", {}, 1.0),),
    ),
    ("barlow_twins", "imagenet"): Recipe(
        examples=IMAGENET, batch=2048, epochs=1000, optimizer="lars",
        peak_lr={"default": 0.2 * 2048 / 256, "biases_and_norms": 0.0048 * 2048 / 256},
        warmup_epochs=10, end_lr_fraction=0.001, weight_decay=1.5e-6, decay_everything=False,
        kernels={"heads_image": [(2048, 8192), (8192, 8192), (8192, 8192)]}, no_out_bias=("heads_image",),
        views={"image1": view(jitter=TORCHVISION_BYOL_JITTER, blur=1.0),
               "image2": view(jitter=TORCHVISION_BYOL_JITTER, blur=0.1, solarize=0.2)},
        objective=(("barlow_twins", {"lambda_": 0.0051}, 1.0),),
    ),
    ("vicreg", "imagenet"): Recipe(
        examples=IMAGENET, batch=2048, epochs=1000, optimizer="lars", peak_lr={"default": 0.2 * 2048 / 256},
        warmup_epochs=10, weight_decay=1e-6, decay_everything=False,
        kernels={"heads_image": [(2048, 8192), (8192, 8192), (8192, 8192)]},
        objective=(("vicreg", {"sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0}, 1.0),),
    ),
    ("moco", "imagenet"): Recipe(
        examples=IMAGENET, batch=256, epochs=200, optimizer="sgd", peak_lr={"default": 0.03}, warmup_epochs=0,
        weight_decay=1e-4, decay_everything=True, lr_per_epoch=True,
        kernels={"heads_image": [(2048, 2048), (2048, 128)]},
        views={v: view(crop=(0.2, 1.0), jitter=SIMCLR_JITTER_05) for v in ("image1", "image2")},
        objective=(("info_nce", {"temperature": 0.2, "negatives": "queue"}, 1.0),), ema=(0.999, "constant"),
        queue=65536,
    ),
    ("byol", "imagenet"): Recipe(
        examples=IMAGENET, batch=4096, epochs=1000, optimizer="lars", peak_lr={"default": 0.2 * 4096 / 256},
        warmup_epochs=10, weight_decay=1.5e-6, decay_everything=False,
        kernels={"heads_image": [(2048, 4096), (4096, 256)], "predictors_image": [(256, 4096), (4096, 256)]},
        no_out_bias=("heads_image", "predictors_image"),
        views={"image1": view(jitter=BYOL_JITTER, blur=1.0), "image2": view(jitter=BYOL_JITTER, blur=0.1, solarize=0.2)},
        objective=(("byol", {}, 1.0), ("byol", {}, 1.0)), ema=(0.996, "cosine"),
    ),
    ("simsiam", "imagenet"): Recipe(
        examples=IMAGENET, batch=512, epochs=100, optimizer="sgd",
        peak_lr={"default": 0.05 * 512 / 256, "predictor": 0.05 * 512 / 256}, constant_groups=("predictor",),
        warmup_epochs=0, weight_decay=1e-4, decay_everything=True, lr_per_epoch=True,
        kernels={"heads_image": [(2048, 2048), (2048, 2048), (2048, 2048)], "predictors_image": [(2048, 512), (512, 2048)]},
        out_bn={"heads_image": "none"},
        views={v: view(crop=(0.2, 1.0), jitter=SIMCLR_JITTER_05) for v in ("image1", "image2")},
        objective=(("negative_cosine", {}, 0.5), ("negative_cosine", {}, 0.5)),
    ),
    ("moco_v3", "imagenet"): Recipe(
        examples=IMAGENET, batch=4096, epochs=100, optimizer="lars", peak_lr={"default": 0.6 * 4096 / 256},
        warmup_epochs=10, weight_decay=1e-6, decay_everything=False,
        kernels={"heads_image": [(2048, 4096), (4096, 256)], "predictors_image": [(256, 4096), (4096, 256)]},
        out_bn={"heads_image": "none"}, no_out_bias=("predictors_image",),
        views={"image1": view(crop=(0.2, 1.0), jitter=TORCHVISION_BYOL_JITTER, blur=1.0),
               "image2": view(crop=(0.2, 1.0), jitter=TORCHVISION_BYOL_JITTER, blur=0.1, solarize=0.2)},
        objective=(("info_nce", {"temperature": 1.0}, 2.0), ("info_nce", {"temperature": 1.0}, 2.0)),
        ema=(0.99, "cosine"),
    ),
}


def example_batch(config) -> dict[str, jax.Array]:
    size = config.input.image_size
    return {name: jnp.zeros((2, size, size, 3)) if v.modality == "image" else jnp.zeros((2, TEXT_DIM))
            for name, v in config.views.items()}


@pytest.fixture(scope="module", params=sorted(RECIPES), ids=lambda k: f"{k[0]}:{k[1]}")
def built(request):
    """What the trainer builds for a recipe: the plan, the model's parameters, the optimizer."""
    name, arg = request.param
    config = load_config(name, arg)
    recipe = RECIPES[request.param]
    model = build_model(config)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), example_batch(config), train=False))["params"]
    plan = optim.plan_run(config, recipe.examples)
    return recipe, config, params, plan, optim.make_optimizer(config, params, plan)


def test_batch_length_and_warmup(built):
    recipe, config, params, plan, opt = built
    updates_per_epoch = recipe.examples // recipe.batch
    assert plan.batch_per_update == recipe.batch
    assert plan.total_updates == round(recipe.epochs * updates_per_epoch)
    warmup = (round(recipe.warmup_fraction * plan.total_updates) if recipe.warmup_fraction is not None
              else round(recipe.warmup_epochs * updates_per_epoch))
    assert plan.warmup_updates == warmup
    assert 0 <= plan.warmup_updates < plan.total_updates


def test_learning_rate_of_every_group(built):
    recipe, config, params, plan, opt = built
    assert set(opt.schedules) == set(recipe.peak_lr)
    for group, peak in recipe.peak_lr.items():
        schedule = opt.schedules[group]
        w, total = plan.warmup_updates, plan.total_updates
        if group in recipe.constant_groups:
            for count in (0, w, total // 2, total - 1):
                assert float(schedule(count)) == pytest.approx(peak, rel=1e-6)
            continue
        assert float(schedule(w)) == pytest.approx(peak, rel=1e-5), group
        assert float(schedule(0)) == pytest.approx(0.0 if w else peak, abs=1e-6 * peak), group
        end = recipe.end_lr_fraction * peak
        if recipe.lr_per_epoch:  # held within an epoch: the last epoch runs at its first update's value
            last_epoch = (total // plan.updates_per_epoch - 1) * plan.updates_per_epoch
            expected = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (last_epoch - w) / (total - w)))
            assert float(schedule(total - 1)) == pytest.approx(expected, rel=1e-4, abs=1e-6 * peak)
            assert float(schedule(last_epoch)) == float(schedule(total - 1))
        else:
            assert float(schedule(total)) == pytest.approx(end, abs=1e-9 + 1e-6 * peak), group
            for k in (w + (total - w) // 3, w + (total - w) // 2):  # the cosine in between
                cosine = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (k - w) / (total - w)))
                assert float(schedule(k)) == pytest.approx(cosine, rel=1e-4), group


def test_parameter_groups_decay_and_adaptation(built):
    """Rank >= 2 tensors get weight decay (and LARS's trust ratio); biases and norm parameters
    get neither, unless the reference's SGD decays every parameter. Groups as the reference."""
    recipe, config, params, plan, opt = built
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    labels = jax.tree.leaves(opt.labels)
    for (path, x), label in zip(leaves, labels):
        name = optim.path_str(path)
        assert optim.decays(config, name, x) == (recipe.decay_everything or x.ndim > 1), name
        if "biases_and_norms" in recipe.peak_lr:
            assert label == ("biases_and_norms" if x.ndim <= 1 else "default"), name
        elif "predictor" in recipe.peak_lr:
            assert label == ("predictor" if name.startswith("predictors_") else "default"), name
        else:
            assert label == "default", name


def _probe_params(config):
    params = {"encoders_image": {"kernel": jnp.linspace(0.5, 1.5, 12).reshape(3, 4),
                                 "bias": jnp.linspace(-1.0, 1.0, 4)}}
    if config.get("predictors"):
        params["predictors_image"] = {"kernel": jnp.linspace(1.0, 2.0, 8).reshape(2, 4)}
    return params


def _reference_first_update(recipe, w, g, lr, decayed):
    """The reference optimizers' first step from zero state (NumPy, float64)."""
    w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
    wd = recipe.weight_decay if decayed else 0.0
    if recipe.optimizer == "sgd":  # torch SGD: d = g + wd w; buf = d; w -= lr buf
        return -lr * (g + wd * w)
    if recipe.optimizer == "lars":  # d = g + wd w; trust 1e-3 ||w|| / ||d|| (adapted only); mu = d; w -= lr mu
        d = g + wd * w
        trust = 1e-3 * np.linalg.norm(w) / np.linalg.norm(d) if decayed else 1.0
        return -lr * trust * d
    b1, b2, eps = recipe.adam  # AdamW step 1: m_hat = g, v_hat = g^2; decoupled decay lr * wd * w
    return -lr * (g / (np.sqrt(g * g) + eps) + wd * w)


def test_first_update_matches_the_reference_optimizer(built):
    """The built optax chain (with the run's warmup skipped, so the step runs at the peak LR)
    against the reference optimizer's update rule, on a probe tree with the trainer's paths."""
    recipe, config, params, plan, _ = built
    probe = _probe_params(config)
    opt = optim.make_optimizer(config, probe, dataclasses.replace(plan, warmup_updates=0))
    grads = jax.tree.map(lambda x: 0.1 * jnp.cos(3.0 * x), probe)
    updates, _ = opt.tx.update(grads, opt.tx.init(probe), probe)
    for (path, w), g, u, label in zip(jax.tree_util.tree_flatten_with_path(probe)[0], jax.tree.leaves(grads),
                                      jax.tree.leaves(updates), jax.tree.leaves(opt.labels)):
        name = optim.path_str(path)
        lr = recipe.peak_lr[label]
        expected = _reference_first_update(recipe, w, g, lr, optim.decays(config, name, w))
        np.testing.assert_allclose(np.asarray(u), expected, rtol=2e-5, atol=1e-9, err_msg=name)


def _find(tree, prefix):
    return {optim.path_str(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if optim.path_str(p).startswith(prefix)}


def test_model_parameter_tree(built):
    recipe, config, params, plan, opt = built
    for module, kernels in recipe.kernels.items():
        shapes = _find(params, module + "/")
        dense = sorted((k for k in shapes if k.endswith("/kernel") and "/dense" in k),
                       key=lambda k: int(k.split("/dense")[1].split("/")[0]))
        assert [shapes[k] for k in dense] == kernels, (module, shapes)
        last = dense[-1].rsplit("/", 1)[0]
        if module in recipe.no_out_bias:
            assert f"{last}/bias" not in shapes, shapes
        bn = f"{module}/bn{len(dense)}"
        if module in recipe.out_bn:
            has_scale, has_bias = f"{bn}/scale" in shapes, f"{bn}/bias" in shapes
            assert (has_scale, has_bias) == ((True, False) if recipe.out_bn[module] == "scale" else (False, False))
            assert f"{last}/bias" not in shapes


def test_augmentation_objects(built):
    recipe, config, params, plan, opt = built
    built_views = inputs.augment_configs(config)
    for view_name, expected in recipe.views.items():
        cfg = built_views[view_name]
        for field, value in expected.items():
            got = getattr(cfg, field)
            if isinstance(value, tuple):
                np.testing.assert_allclose(got, value, err_msg=f"{view_name}.{field}")
            elif isinstance(value, float):
                assert got == pytest.approx(value), f"{view_name}.{field}"
            else:
                assert got == value, f"{view_name}.{field}"


def test_objective_value(built):
    """The built objective on random embeddings equals the paper's loss at the paper's settings."""
    recipe, config, params, plan, opt = built
    rng = np.random.default_rng(0)
    terms = [dict(t) for t in config.loss_terms]
    assert len(terms) == len(recipe.objective)
    sides = {side for t in terms for side in (t["a"], t["b"])}
    z = {side: jnp.asarray(rng.standard_normal((16, 8)), jnp.float32) for side in sides}
    scalars = {k: jnp.float32(v) for k, v in dict(config.get("learned_scalars", {})).items()}
    queue = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
    total, _ = objectives.method_loss(z, scalars, terms, queue)
    expected = 0.0
    for term, (loss, kwargs, weight) in zip(terms, recipe.objective):
        a, b = np.asarray(z[term["a"]]), np.asarray(z[term["b"]])
        assert term["loss"] == loss
        kwargs = dict(kwargs)
        if kwargs.get("negatives") == "queue":
            kwargs["negatives"] = np.asarray(queue)
        if loss in ("clip", "siglip"):
            kwargs = {k: float(v) for k, v in scalars.items()}
        expected += weight * getattr(ref, loss)(a, b, **kwargs)
    assert float(total) == pytest.approx(expected, rel=1e-4)
    if recipe.logit_scale is not None:
        init, clamp = recipe.logit_scale
        assert params["logit_scale"].shape == ()
        assert dict(build_model(config).scalars)["logit_scale"] == pytest.approx(init)
        assert config.max_logit_scale == (pytest.approx(clamp) if clamp is not None else math.inf)


def test_target_branch_and_queue(built):
    recipe, config, params, plan, opt = built
    online, target = objectives.branch_views([dict(t) for t in config.loss_terms])
    if recipe.ema is None:
        assert config.get("ema") is None and not target
        return
    base, kind = recipe.ema
    momentum = optim.ema_momentum(config, plan)
    assert float(momentum(0)) == pytest.approx(base)
    assert float(momentum(plan.total_updates)) == pytest.approx(1.0 if kind == "cosine" else base)
    if kind == "cosine":  # BYOL: 1 - (1 - base)(cos(pi k / K) + 1) / 2
        k = plan.total_updates // 3
        assert float(momentum(k)) == pytest.approx(
            1 - (1 - base) * (math.cos(math.pi * k / plan.total_updates) + 1) / 2, rel=1e-6)
    queue = config.moco.queue_size if config.get("moco") is not None else 0
    assert queue == recipe.queue
    if recipe.optimizer == "sgd" and recipe.queue:  # MoCo v2: the query sees only its view
        assert online == ("image1",) and target == ("image2",)


def test_linear_scaling_follows_the_batch_per_update():
    """With accumulation the LR scales with the batch per update and warmup counts updates."""
    config = load_config("simclr", "imagenet")
    config.input.batch_size = 1024
    config.accumulation_steps = 4
    plan = optim.plan_run(config, IMAGENET)
    assert plan.batch_per_update == 4096 and plan.total_updates == 100 * (IMAGENET // 4096)
    assert plan.warmup_updates == 10 * (IMAGENET // 4096) and plan.total_micro_steps == 4 * plan.total_updates
