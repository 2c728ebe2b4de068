"""Specification of mmssl_jax.models: the image encoders, the heads and their registry.

Full-size models are checked with ``jax.eval_shape`` (shapes and parameter counts, no memory
used); numerics run on tiny widths and images. The BatchNorm sync test runs over the 8 simulated
CPU devices that tests/conftest.py requests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mmssl_jax import sharding
from mmssl_jax.models import ENCODERS, HEADS, build_encoder, build_head

AXIS = sharding.DATA_AXIS
# Parameter values do not matter to these tests; XLA:CPU compiles an init drawing from "rbg" keys
# several times faster than from the default threefry keys.
KEY = jax.random.key(0, impl="rbg")


def abstract_variables(model, shape):
    """The variables ``model.init`` would make for an input of ``shape``, as shapes only."""
    return jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape), train=False))


def num_params(variables) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def abstract_intermediates(model, shape):
    """Shapes of every submodule's output, ``{module: {...: {"__call__": (out,)}}}``."""
    variables = abstract_variables(model, shape)
    _, state = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros(shape), train=False, capture_intermediates=True, mutable=["intermediates"]),
        variables,
    )
    return state["intermediates"]


def images(batch: int, size: int, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3))


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        # torchvision's resnet18 / resnet34 / resnet50 and timm's vit_*_patch16_224, 1000 classes.
        ("resnet18", {}, 11_689_512),
        ("resnet34", {}, 21_797_672),
        ("resnet50", {}, 25_557_032),
        ("vit_ti", {"patch_size": 16}, 5_717_416),
        ("vit_s", {"patch_size": 16}, 22_050_664),
        ("vit_b", {"patch_size": 16}, 86_567_656),
    ],
)
def test_parameter_counts_match_the_reference_implementations(name, kwargs, expected):
    model = build_encoder(name, num_classes=1000, **kwargs)
    assert num_params(abstract_variables(model, (1, 224, 224, 3))) == expected


@pytest.mark.parametrize(
    "name, size, features",
    [("resnet18", 64, 512), ("resnet34", 64, 512), ("resnet50", 64, 2048),
     ("vit_ti", 32, 192), ("vit_s", 32, 384), ("vit_b", 32, 768)],
)
def test_encoders_map_images_to_pooled_features_or_logits(name, size, features):
    model = build_encoder(name)
    x = jnp.zeros((3, size, size, 3))
    variables = abstract_variables(model, x.shape)
    assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (3, features)
    classifier = build_encoder(name, num_classes=10)
    variables = abstract_variables(classifier, x.shape)
    assert jax.eval_shape(lambda v: classifier.apply(v, x, train=False), variables).shape == (3, 10)


def test_cifar_stem_is_a_stride_1_3x3_conv_without_max_pool():
    cifar = abstract_intermediates(build_encoder("resnet18", cifar_stem=True), (2, 32, 32, 3))
    imagenet = abstract_intermediates(build_encoder("resnet18"), (2, 32, 32, 3))
    assert cifar["stem_conv"]["__call__"][0].shape == (2, 32, 32, 64)
    assert imagenet["stem_conv"]["__call__"][0].shape == (2, 16, 16, 64)
    # The last stage works on 4x4 maps at 32 px (ImageNet stem: 1x1), pooled to [batch, 512].
    assert cifar["stage4_block2"]["__call__"][0].shape == (2, 4, 4, 512)
    assert imagenet["stage4_block2"]["__call__"][0].shape == (2, 1, 1, 512)
    kernel = abstract_variables(build_encoder("resnet18", cifar_stem=True), (1, 32, 32, 3))["params"]["stem_conv"]
    assert kernel["kernel"].shape == (3, 3, 3, 64)


def test_resnet50_is_v1_5_stride_on_the_3x3_conv():
    inter = abstract_intermediates(build_encoder("resnet50"), (1, 64, 64, 3))
    block = inter["stage2_block1"]  # input 16x16x256 -> output 8x8x512
    assert block["conv1"]["__call__"][0].shape == (1, 16, 16, 128)  # 1x1, stride 1
    assert block["conv2"]["__call__"][0].shape == (1, 8, 8, 128)  # 3x3, stride 2
    assert block["conv3"]["__call__"][0].shape == (1, 8, 8, 512)
    assert block["proj_conv"]["__call__"][0].shape == (1, 8, 8, 512)


@pytest.mark.parametrize(
    "pool, patch_size, tokens",
    [("cls", 16, 197), ("cls", 32, 50), ("gap", 16, 196)],
)
def test_vit_tokens_follow_patch_size_and_pooling(pool, patch_size, tokens):
    params = abstract_variables(build_encoder("vit_b", pool=pool, patch_size=patch_size), (1, 224, 224, 3))["params"]
    assert params["pos_embedding"].shape == (1, tokens, 768)
    assert params["patch_embed"]["kernel"].shape == (patch_size, patch_size, 3, 768)
    assert ("cls_token" in params) == (pool == "cls")


def test_vit_rejects_images_that_do_not_split_into_patches_and_unknown_pooling():
    with pytest.raises(ValueError, match="patch_size=16"):
        abstract_variables(build_encoder("vit_ti"), (1, 40, 40, 3))
    with pytest.raises(ValueError, match="pool"):
        abstract_variables(build_encoder("vit_ti", pool="max"), (1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        abstract_variables(build_encoder("resnet18"), (32, 32, 3))


# ----------------------------------------------------------------------------- heads


def head_shapes(name: str, in_dim: int, **kwargs):
    head = build_head(name, **kwargs)
    variables = abstract_variables(head, (4, in_dim))
    out = jax.eval_shape(lambda v: head.apply(v, jnp.zeros((4, in_dim)), train=False), variables)
    params = jax.tree.map(lambda p: p.shape, variables["params"])
    return out.shape, params, "batch_stats" in variables


def test_simclr_mlp_is_three_dense_bn_layers_out_128():
    out, params, has_bn = head_shapes("simclr_mlp", 2048)
    assert out == (4, 128) and has_bn
    assert params == {
        "dense1": {"kernel": (2048, 2048)}, "bn1": {"scale": (2048,), "bias": (2048,)},
        "dense2": {"kernel": (2048, 2048)}, "bn2": {"scale": (2048,), "bias": (2048,)},
        "dense3": {"kernel": (2048, 128)}, "bn3": {"scale": (128,)},  # no shift, no ReLU after
    }
    # Depth and widths are configurable (SimCLR's small-batch advice: 2 layers, 64-d).
    out, params, _ = head_shapes("simclr_mlp", 512, hidden_dim=256, out_dim=64, num_layers=2)
    assert out == (4, 64) and sorted(params) == ["bn1", "bn2", "dense1", "dense2"]


def test_barlow_projector_is_8192_wide_with_a_plain_last_layer():
    out, params, _ = head_shapes("barlow_projector", 2048)
    assert out == (4, 8192)
    assert params == {
        "dense1": {"kernel": (2048, 8192)}, "bn1": {"scale": (8192,), "bias": (8192,)},
        "dense2": {"kernel": (8192, 8192)}, "bn2": {"scale": (8192,), "bias": (8192,)},
        "dense3": {"kernel": (8192, 8192)},
    }


def test_moco_predictor_is_a_two_layer_mlp_with_bn():
    out, params, _ = head_shapes("moco_predictor", 256)
    assert out == (4, 256)
    assert params == {"dense1": {"kernel": (256, 4096)}, "bn1": {"scale": (4096,), "bias": (4096,)},
                      "dense2": {"kernel": (4096, 256)}}
    _, params, _ = head_shapes("moco_predictor", 256, last_bn=True)  # MoCo v3's ViT recipe
    assert "bn2" not in params  # its output BatchNorm is affine-free: statistics only


def test_text_mlp_maps_a_sentence_embedding_into_the_joint_space_without_batchnorm():
    out, params, has_bn = head_shapes("text_mlp", 384, hidden_dim=512, out_dim=256)
    assert out == (4, 256) and not has_bn
    assert params == {"dense1": {"kernel": (384, 512), "bias": (512,)}, "ln1": {"scale": (512,), "bias": (512,)},
                      "dense2": {"kernel": (512, 256)}}
    out, params, _ = head_shapes("text_mlp", 384, num_layers=3, norm=None)
    assert out == (4, 128) and sorted(params) == ["dense1", "dense2", "dense3"]
    # No BatchNorm: a caption's embedding does not depend on its batch, even in training.
    head = build_head("text_mlp", hidden_dim=32, out_dim=16)
    h = jax.random.normal(KEY, (6, 384))
    variables = head.init(KEY, h, train=True)
    np.testing.assert_allclose(head.apply(variables, h, train=True)[:2], head.apply(variables, h[:2], train=True),
                               rtol=1e-6, atol=1e-6)


def test_linear_projection_is_one_bias_free_dense():
    out, params, has_bn = head_shapes("linear_projection", 768)
    assert out == (4, 512) and not has_bn and params == {"dense1": {"kernel": (768, 512)}}


def test_heads_reject_inputs_that_are_not_batch_by_features():
    with pytest.raises(ValueError, match=r"\[batch, features\]"):
        abstract_variables(build_head("simclr_mlp"), (4, 7, 7, 2048))
    with pytest.raises(ValueError, match="norm"):
        abstract_variables(build_head("text_mlp", norm="group"), (4, 384))


# ----------------------------------------------------------------------------- BatchNorm and train


def tiny_resnet(**kwargs):
    return build_encoder("resnet18", cifar_stem=True, width=4, **kwargs)


def test_train_uses_batch_statistics_and_updates_them_eval_uses_the_running_averages():
    model = tiny_resnet()
    x = images(6, 8)
    variables = model.init(KEY, x, train=False)
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))
    # Training: the first two images' features depend on the rest of the batch.
    assert not np.allclose(out[:2], model.apply(variables, x[:2], train=True, mutable=["batch_stats"])[0])
    # Evaluation: no mutable state, and each image is encoded on its own.
    eval_out = model.apply(variables, x, train=False)
    np.testing.assert_allclose(eval_out[:2], model.apply(variables, x[:2], train=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, build, shape",
    [
        ("resnet18 (cifar stem)", lambda **kw: tiny_resnet(zero_init_residual=False, **kw), (16, 8, 8, 3)),
        ("simclr_mlp", lambda **kw: build_head("simclr_mlp", hidden_dim=16, out_dim=8, **kw), (16, 12)),
    ],
)
def test_batchnorm_synced_over_8_devices_equals_batchnorm_on_the_global_batch(name, build, shape):
    """SimCLR's global BatchNorm: with axis_name, every device normalizes its 2 rows with the
    statistics of all 16, and the running averages are those of the global batch."""
    assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
    single, synced = build(), build(axis_name=AXIS)
    x = jax.random.normal(jax.random.key(1), shape) + 0.5
    variables = single.init(KEY, x, train=False)
    out, state = single.apply(variables, x, train=True, mutable=["batch_stats"])

    mesh = sharding.make_mesh()
    sharded_apply = jax.jit(jax.shard_map(
        lambda v, local_x: synced.apply(v, local_x, train=True, mutable=["batch_stats"]),
        mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(AXIS), P()),
    ))
    out8, state8 = sharded_apply(variables, jax.device_put(x, sharding.batch_sharding(mesh)))

    np.testing.assert_allclose(out8, out, rtol=1e-4, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 state8["batch_stats"], state["batch_stats"])
    # Without the sync a device's statistics are those of its own 2 rows: not the same.
    _, local_state = single.apply(variables, x[:2], train=True, mutable=["batch_stats"])
    assert not all(jax.tree.leaves(jax.tree.map(
        lambda a, b: np.allclose(a, b, rtol=1e-4), local_state["batch_stats"], state["batch_stats"])))


# ----------------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    "model, shape",
    [
        (tiny_resnet(dtype=jnp.bfloat16), (2, 8, 8, 3)),
        (build_encoder("vit_ti", depth=1, patch_size=4, dtype=jnp.bfloat16), (2, 8, 8, 3)),
        (build_head("simclr_mlp", hidden_dim=16, out_dim=8, dtype=jnp.bfloat16), (2, 12)),
        (build_head("text_mlp", hidden_dim=16, out_dim=8, dtype=jnp.bfloat16), (2, 12)),
    ],
    ids=["resnet18", "vit_ti", "simclr_mlp", "text_mlp"],
)
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters(model, shape):
    x = jax.random.normal(KEY, shape)
    variables = model.init(KEY, x, train=False)
    out, state = model.apply(variables, x, train=True, capture_intermediates=True,
                             mutable=["batch_stats", "intermediates"])
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
    assert {a.dtype for a in jax.tree.leaves(state["intermediates"])} == {jnp.dtype(jnp.bfloat16)}
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert {s.dtype for s in jax.tree.leaves(state.get("batch_stats", {}))} <= {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    "model, size",
    [(build_encoder("resnet50", width=4), 32), (build_encoder("vit_s", depth=2, patch_size=8), 16)],
    ids=["resnet50", "vit_s"],
)
def test_encoders_train_with_finite_gradients_for_every_parameter(model, size):
    x = images(4, size)
    variables = model.init(KEY, x, train=False)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(out**2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)) > 0


# ----------------------------------------------------------------------------- registry


def test_registry_knows_every_published_encoder_and_head():
    assert set(ENCODERS) == {"resnet18", "resnet34", "resnet50", "vit_ti", "vit_s", "vit_b"}
    assert set(HEADS) == {"simclr_mlp", "barlow_projector", "moco_predictor", "linear_projection", "text_mlp",
                          "moco_v2_mlp", "moco_v3_projector", "byol_mlp", "simsiam_projector", "simsiam_predictor"}


def test_unknown_names_raise_value_error_listing_the_known_names():
    with pytest.raises(ValueError, match="unknown encoder 'resnet19'") as err:
        build_encoder("resnet19")
    assert all(name in str(err.value) for name in ENCODERS)
    with pytest.raises(ValueError, match="unknown head 'simclr'") as err:
        build_head("simclr")
    assert all(name in str(err.value) for name in HEADS)


def test_unknown_keywords_raise_type_error_listing_the_fields():
    with pytest.raises(TypeError, match=r"encoder 'vit_s' \(ViT\) has no field \['cifar_stem'\].*patch_size"):
        build_encoder("vit_s", cifar_stem=True)
    with pytest.raises(TypeError, match=r"head 'text_mlp' \(MLPHead\) has no field \['width'\].*hidden_dim"):
        build_head("text_mlp", width=8)


def test_multiview_model_computes_only_the_views_asked_for_and_predicts_on_the_online_branch():
    """MoCo's query branch sees only the query view (and its BatchNorm only those samples); the
    target branch (predict=False) has no predictor output."""
    from mmssl_jax.models import MultiViewModel

    model = MultiViewModel(
        view_modality=(("image1", "image"), ("image2", "image")),
        encoders={"image": build_encoder("resnet18", cifar_stem=True, width=4)},
        heads={"image": build_head("byol_mlp", hidden_dim=8, out_dim=4)},
        predictors={"image": build_head("byol_mlp", hidden_dim=8, out_dim=4)},
    )
    rng = np.random.default_rng(0)
    batch = {v: jnp.asarray(rng.random((4, 8, 8, 3)), jnp.float32) for v in ("image1", "image2")}
    variables = model.init(KEY, batch, train=False)
    assert "predictors_image" in variables["params"]
    out, _ = model.apply(variables, {"image1": batch["image1"]}, train=True, views=["image1"], mutable=["batch_stats"])
    assert sorted(out["z"]) == sorted(out["p"]) == ["image1"] and out["p"]["image1"].shape == (4, 4)
    alone = model.apply(variables, {"image1": batch["image1"]}, train=False, views=["image1"], predict=False)
    both = model.apply(variables, batch, train=False, predict=False)
    assert alone["p"] == {} and both["p"] == {}
    np.testing.assert_allclose(alone["z"]["image1"], both["z"]["image1"], rtol=1e-5, atol=1e-6)  # eval mode
    with pytest.raises(KeyError, match="no view"):
        model.apply(variables, batch, train=False, views=["image3"])


def test_the_recipe_heads_have_the_published_shapes():
    shapes = lambda name, d: {k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(  # noqa: E731
        abstract_variables(build_head(name), (2, d))["params"])}
    moco_v2 = abstract_variables(build_head("moco_v2_mlp"), (2, 2048))["params"]
    assert moco_v2["dense1"]["kernel"].shape == (2048, 2048) and moco_v2["dense1"]["bias"].shape == (2048,)
    assert moco_v2["dense2"]["kernel"].shape == (2048, 128) and moco_v2["dense2"]["bias"].shape == (128,)
    simsiam = abstract_variables(build_head("simsiam_predictor"), (2, 2048))["params"]
    assert simsiam["dense1"]["kernel"].shape == (2048, 512) and "bias" not in simsiam["dense1"]
    assert simsiam["dense2"]["kernel"].shape == (512, 2048) and simsiam["dense2"]["bias"].shape == (2048,)
    assert len(shapes("byol_mlp", 2048)) == 4  # dense1 kernel, bn1 scale + bias, dense2 kernel (no bias)
