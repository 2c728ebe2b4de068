"""Specification of mmssl_jax.losses.

Every loss is held to an independent float64 NumPy reference written from its paper
(tests/reference_losses.py): values, finite-difference gradients, bfloat16 inputs, and the
sharded paths over 8 simulated CPU devices (shard_map, pmap, jit on a sharded global array).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from jax.sharding import PartitionSpec as P

import reference_losses as ref
from mmssl_jax import losses, sharding, streaming

AXIS = sharding.DATA_AXIS
DEVICES = 8


@dataclasses.dataclass(frozen=True)
class Case:
    """One loss with fixed hyper-parameters: its JAX call and its NumPy reference."""

    name: str
    fn: Callable[..., jax.Array]  # fn(z1, z2, axis_name=...) -> scalar
    reference: Callable[..., float]  # reference(z1, z2) -> float
    normalized: bool  # invariant to rescaling each embedding
    stops_target_gradient: bool = False  # the second argument goes through stop_gradient


_NEGATIVES = np.random.default_rng(123).normal(size=(5, 6))

CASES = [
    Case(
        "nt_xent",
        lambda a, b, axis_name=None: losses.nt_xent(a, b, temperature=0.2, axis_name=axis_name),
        lambda a, b: ref.nt_xent(a, b, 0.2),
        normalized=True,
    ),
    Case(
        "info_nce",
        lambda a, b, axis_name=None: losses.info_nce(a, b, temperature=0.3, axis_name=axis_name),
        lambda a, b: ref.info_nce(a, b, 0.3),
        normalized=True,
    ),
    Case(
        "info_nce_queue",
        lambda a, b, axis_name=None: losses.info_nce(
            a, b, temperature=0.3, negatives=jnp.asarray(_NEGATIVES, jnp.float32), axis_name=axis_name
        ),
        lambda a, b: ref.info_nce(a, b, 0.3, negatives=_NEGATIVES),
        normalized=True,
    ),
    Case(
        "clip",
        lambda a, b, axis_name=None: losses.clip(a, b, logit_scale=1.5, axis_name=axis_name),
        lambda a, b: ref.clip(a, b, 1.5),
        normalized=True,
    ),
    Case(
        "siglip",
        lambda a, b, axis_name=None: losses.siglip(
            a, b, logit_scale=1.2, logit_bias=-2.0, axis_name=axis_name
        ),
        lambda a, b: ref.siglip(a, b, 1.2, -2.0),
        normalized=True,
    ),
    Case(
        "barlow_twins",
        lambda a, b, axis_name=None: losses.barlow_twins(a, b, lambda_=0.05, axis_name=axis_name),
        lambda a, b: ref.barlow_twins(a, b, 0.05),
        normalized=False,
    ),
    Case(
        "vicreg",
        lambda a, b, axis_name=None: losses.vicreg(
            a, b, sim_weight=2.0, var_weight=3.0, cov_weight=0.5, axis_name=axis_name
        ),
        lambda a, b: ref.vicreg(a, b, 2.0, 3.0, 0.5),
        normalized=False,
    ),
    Case(
        "byol",
        lambda a, b, axis_name=None: losses.byol(a, b, axis_name=axis_name),
        ref.byol,
        normalized=True,
        stops_target_gradient=True,
    ),
    Case(
        "negative_cosine",
        lambda a, b, axis_name=None: losses.negative_cosine(a, b, axis_name=axis_name),
        ref.negative_cosine,
        normalized=True,
        stops_target_gradient=True,
    ),
]
CASE_IDS = [c.name for c in CASES]


def pair(batch: int = 16, dim: int = 6, seed: int = 0, correlation: float = 0.5):
    """Two float32 views whose rows are partly correlated, so losses are in a typical range."""
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(batch, dim))
    z2 = correlation * z1 + (1 - correlation) * rng.normal(size=(batch, dim))
    return z1.astype(np.float32), z2.astype(np.float32)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_value_matches_numpy_reference(case):
    z1, z2 = pair()
    value = case.fn(z1, z2)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), case.reference(z1, z2), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("temperature", [0.01, 0.1, 0.5, 1.0])
def test_nt_xent_across_temperatures(temperature):
    z1, z2 = pair(batch=8, seed=3)
    got = losses.nt_xent(z1, z2, temperature=temperature)
    np.testing.assert_allclose(float(got), ref.nt_xent(z1, z2, temperature), rtol=2e-5)


def test_info_nce_without_queue_is_one_direction_of_clip():
    z1, z2 = pair(seed=4)
    t = 0.25
    forward = losses.info_nce(z1, z2, temperature=t)
    backward = losses.info_nce(z2, z1, temperature=t)
    symmetric = losses.clip(z1, z2, logit_scale=math.log(1 / t))
    np.testing.assert_allclose(float((forward + backward) / 2), float(symmetric), rtol=1e-6)


def test_barlow_twins_and_vicreg_terms_add_up():
    z1, z2 = pair(seed=5)
    bt = losses.barlow_twins_terms(z1, z2)
    np.testing.assert_allclose(
        float(losses.barlow_twins(z1, z2, lambda_=0.1)),
        float(bt["on_diagonal"] + 0.1 * bt["off_diagonal"]),
        rtol=1e-6,
    )
    vr = losses.vicreg_terms(z1, z2)
    np.testing.assert_allclose(
        float(losses.vicreg(z1, z2)),
        float(25 * vr["invariance"] + 25 * vr["variance"] + vr["covariance"]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(float(vr["invariance"]), ref.vicreg(z1, z2, 1, 0, 0), rtol=1e-6)
    np.testing.assert_allclose(float(vr["variance"]), ref.vicreg(z1, z2, 0, 1, 0), rtol=1e-5)
    np.testing.assert_allclose(float(vr["covariance"]), ref.vicreg(z1, z2, 0, 0, 1), rtol=1e-5)


@pytest.mark.parametrize("fn, identical", [(losses.byol, 0.0), (losses.negative_cosine, -1.0)], ids=["byol", "negative_cosine"])
def test_prediction_equal_to_target_is_the_minimum(fn, identical):
    z, _ = pair(seed=20)
    np.testing.assert_allclose(float(fn(z, z)), identical, atol=1e-6)
    # Each row rescaled: only directions count.
    scales = np.random.default_rng(2).uniform(0.1, 50.0, size=(z.shape[0], 1)).astype(np.float32)
    np.testing.assert_allclose(float(fn(z * scales, z)), identical, atol=1e-6)


def test_byol_is_two_plus_twice_negative_cosine():
    z1, z2 = pair(seed=21)
    np.testing.assert_allclose(
        float(losses.byol(z1, z2)), float(2 + 2 * losses.negative_cosine(z1, z2)), rtol=1e-6
    )


def test_positive_pair_accuracy_on_a_hand_made_case():
    query = np.eye(4, dtype=np.float32)
    key = np.eye(4, dtype=np.float32)[[0, 1, 3, 2]]  # rows 2 and 3 swapped: half are right
    assert float(losses.positive_pair_accuracy(query, key)) == 0.5
    z1, z2 = pair(seed=6, correlation=0.7)
    np.testing.assert_allclose(
        float(losses.positive_pair_accuracy(z1, z2)), ref.positive_pair_accuracy(z1, z2)
    )


# ----------------------------------------------------------------------------- gradients


def _fd_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of a float64 function, element by element."""
    grad = np.zeros_like(x, dtype=np.float64)
    for index in np.ndindex(x.shape):
        plus, minus = x.astype(np.float64), x.astype(np.float64)
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (f(plus) - f(minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_finite_differences_of_the_reference(case):
    z1, z2 = pair(batch=5, dim=4, seed=7)
    if case.name == "info_nce_queue":
        z1, z2 = pair(batch=5, dim=6, seed=7)
    g1, g2 = jax.grad(case.fn, argnums=(0, 1))(z1, z2)
    fd1 = _fd_gradient(lambda x: case.reference(x, z2), z1)
    np.testing.assert_allclose(np.asarray(g1), fd1, rtol=1e-3, atol=2e-5)
    if case.stops_target_gradient:  # BYOL's target network / SimSiam's stop-gradient branch
        assert np.all(np.asarray(g2) == 0.0)
        return
    fd2 = _fd_gradient(lambda x: case.reference(z1, x), z2)
    np.testing.assert_allclose(np.asarray(g2), fd2, rtol=1e-3, atol=2e-5)


def test_gradients_of_learnable_scalars():
    z1, z2 = pair(batch=6, dim=4, seed=8)

    def fd(f, x, eps=1e-6):
        return (f(x + eps) - f(x - eps)) / (2 * eps)

    g_scale = jax.grad(lambda s: losses.clip(z1, z2, logit_scale=s))(1.5)
    np.testing.assert_allclose(float(g_scale), fd(lambda s: ref.clip(z1, z2, s), 1.5), rtol=1e-3)
    g_scale, g_bias = jax.grad(
        lambda s, b: losses.siglip(z1, z2, logit_scale=s, logit_bias=b), argnums=(0, 1)
    )(1.2, -2.0)
    np.testing.assert_allclose(float(g_scale), fd(lambda s: ref.siglip(z1, z2, s, -2.0), 1.2), rtol=1e-3)
    np.testing.assert_allclose(float(g_bias), fd(lambda b: ref.siglip(z1, z2, 1.2, b), -2.0), rtol=1e-3)
    g_t = jax.grad(lambda t: losses.nt_xent(z1, z2, temperature=t))(0.3)
    np.testing.assert_allclose(float(g_t), fd(lambda t: ref.nt_xent(z1, z2, t), 0.3), rtol=1e-3)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bfloat16_inputs_give_float32_math(case):
    z1, z2 = pair(seed=9)
    b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
    value, (g1, g2) = jax.value_and_grad(case.fn, argnums=(0, 1))(b1, b2)
    assert value.dtype == jnp.float32
    assert g1.dtype == jnp.bfloat16 and g2.dtype == jnp.bfloat16
    # The math runs in float32 on the bf16-rounded inputs: it matches the reference on exactly
    # those inputs to float32 accuracy, not bf16's 3 digits.
    rounded1, rounded2 = np.asarray(b1, np.float64), np.asarray(b2, np.float64)
    np.testing.assert_allclose(float(value), case.reference(rounded1, rounded2), rtol=2e-5, atol=2e-5)
    # And its gradient is the float32 gradient rounded to bf16.
    f1, f2 = jax.grad(case.fn, argnums=(0, 1))(rounded1.astype(np.float32), rounded2.astype(np.float32))
    np.testing.assert_allclose(np.asarray(g1, np.float32), np.asarray(f1), rtol=1e-2, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g2, np.float32), np.asarray(f2), rtol=1e-2, atol=1e-4)


# ----------------------------------------------------------------------------- sharding


def _mesh():
    assert jax.device_count() >= DEVICES, "tests/conftest.py asks for 8 simulated CPU devices"
    return sharding.make_mesh(jax.devices()[:DEVICES])


def _shard(mesh, *arrays):
    return [jax.device_put(jnp.asarray(a), sharding.batch_sharding(mesh)) for a in arrays]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_shard_map_with_axis_name_equals_unsharded(case):
    z1, z2 = pair(batch=32, seed=10)
    value, grads = jax.value_and_grad(case.fn, argnums=(0, 1))(z1, z2)
    mesh = _mesh()
    per_device = jax.value_and_grad(lambda a, b: case.fn(a, b, axis_name=AXIS), argnums=(0, 1))
    sharded = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(), (P(AXIS), P(AXIS))))
    )
    s_value, s_grads = sharded(*_shard(mesh, z1, z2))
    np.testing.assert_allclose(float(s_value), float(value), rtol=1e-5)
    for got, want in zip(s_grads, grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pmap_with_axis_name_equals_unsharded(case):
    z1, z2 = pair(batch=32, seed=11)
    value, grads = jax.value_and_grad(case.fn, argnums=(0, 1))(z1, z2)
    per_device = jax.value_and_grad(lambda a, b: case.fn(a, b, axis_name=AXIS), argnums=(0, 1))
    split = lambda x: x.reshape(DEVICES, -1, x.shape[-1])
    p_value, p_grads = jax.pmap(per_device, axis_name=AXIS, devices=jax.devices()[:DEVICES])(
        split(z1), split(z2)
    )
    np.testing.assert_allclose(np.asarray(p_value), float(value), rtol=1e-5)
    for got, want in zip(p_grads, grads):
        np.testing.assert_allclose(np.asarray(got).reshape(want.shape), np.asarray(want), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jit_on_a_sharded_global_batch_equals_unsharded(case):
    z1, z2 = pair(batch=32, seed=12)
    value, grads = jax.value_and_grad(case.fn, argnums=(0, 1))(z1, z2)
    mesh = _mesh()
    s_value, s_grads = jax.jit(jax.value_and_grad(case.fn, argnums=(0, 1)))(*_shard(mesh, z1, z2))
    np.testing.assert_allclose(float(s_value), float(value), rtol=1e-5)
    for got, want in zip(s_grads, grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-7)


def test_replicated_learnable_scalars_get_the_global_gradient_under_shard_map():
    z1, z2 = pair(batch=32, seed=13)
    mesh = _mesh()
    loss = lambda a, b, s, t, axis_name=None: losses.siglip(a, b, logit_scale=s, logit_bias=t, axis_name=axis_name)
    want = jax.grad(loss, argnums=(2, 3))(z1, z2, 1.0, -1.0)
    per_device = jax.grad(lambda a, b, s, t: loss(a, b, s, t, axis_name=AXIS), argnums=(2, 3))
    got = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(), P()), out_specs=(P(), P()))
    )(*_shard(mesh, z1, z2), jnp.float32(1.0), jnp.float32(-1.0))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def test_positive_pair_accuracy_sharded_equals_unsharded():
    z1, z2 = pair(batch=32, seed=14, correlation=0.6)
    mesh = _mesh()
    fn = jax.shard_map(
        lambda a, b: losses.positive_pair_accuracy(a, b, axis_name=AXIS),
        mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=P(),
    )
    assert float(jax.jit(fn)(*_shard(mesh, z1, z2))) == float(losses.positive_pair_accuracy(z1, z2))


def test_streamed_positive_pair_hits_equal_the_accuracy_ties_included():
    """The ring's tile-by-tile count (what the trainer logs with config.loss.chunk_size) is
    positive_pair_accuracy's: ties go to the lower key index, as argmax does."""
    e = np.eye(3, dtype=np.float32)
    query, key = e[[0, 0, 1, 2]], e[[0, 0, 1, 1]]  # row 1 ties with key 0 (a miss), row 3 ties all (a miss)
    assert float(losses.positive_pair_accuracy(query, key)) == 0.5
    for chunk in (1, 3):
        assert float(streaming.positive_pair_hits(query, key, chunk_size=chunk, axis_name=None)) == 2.0
    z1, z2 = pair(batch=6 * DEVICES, seed=14, correlation=0.6)
    want = float(losses.positive_pair_accuracy(z1, z2))
    assert 0.2 < want < 0.9 and want == pytest.approx(ref.positive_pair_accuracy(z1, z2))
    mesh = _mesh()
    for chunk in (4, 6):  # a padded tile; one tile per device block
        fn = jax.shard_map(
            lambda a, b: sharding.global_sum(streaming.positive_pair_hits(a, b, chunk_size=chunk, axis_name=AXIS),
                                             AXIS),
            mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=P())
        assert float(jax.jit(fn)(*_shard(mesh, z1, z2))) == round(want * z1.shape[0])


def _all_avals(jaxpr) -> list:
    """Every intermediate value's abstract shape in a jaxpr, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        found += [v.aval for v in eqn.outvars]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax_core.Jaxpr):
                    found += _all_avals(inner)
    return found


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("nt_xent", "info_nce", "clip", "siglip")], ids=lambda c: c.name)
def test_axis_name_memory_is_local_times_global(case):
    """Per device, no intermediate of the loss or its gradient grows as global x global."""
    local, dim = 4, 6
    global_batch = local * DEVICES
    mesh = _mesh()
    per_device = jax.value_and_grad(lambda a, b: case.fn(a, b, axis_name=AXIS), argnums=(0, 1))
    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(), (P(AXIS), P(AXIS))))
    z = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32)
    outer = jax.make_jaxpr(fn)(z, z).jaxpr
    body = [e for e in outer.eqns if e.primitive.name == "shard_map"]
    assert body, "expected a shard_map in the traced program"
    sizes = [math.prod(a.shape) for a in _all_avals(body[0].params["jaxpr"]) if hasattr(a, "shape")]
    # nt_xent holds both views: (2 local) x (2 global) is its local-by-global block.
    assert max(sizes) <= (2 * local) * (2 * global_batch)
    assert max(sizes) < global_batch * global_batch


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_invariant_to_permuting_the_batch(case):
    z1, z2 = pair(seed=15)
    perm = np.random.default_rng(0).permutation(z1.shape[0])
    np.testing.assert_allclose(float(case.fn(z1[perm], z2[perm])), float(case.fn(z1, z2)), rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c.normalized], ids=lambda c: c.name)
def test_normalized_losses_ignore_embedding_scale(case):
    z1, z2 = pair(seed=16)
    scales = np.random.default_rng(1).uniform(0.1, 50.0, size=(z1.shape[0], 1)).astype(np.float32)
    np.testing.assert_allclose(float(case.fn(z1 * scales, z2 * 3.0)), float(case.fn(z1, z2)), rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_aligned_pairs_cost_less_than_random_pairs(case):
    rng = np.random.default_rng(17)
    z1 = rng.normal(size=(32, 6)).astype(np.float32)
    aligned = z1 + 0.05 * rng.normal(size=z1.shape).astype(np.float32)
    unrelated = rng.normal(size=z1.shape).astype(np.float32)
    assert float(case.fn(z1, aligned)) < float(case.fn(z1, unrelated))


def test_stable_at_extreme_temperature_and_scale():
    rng = np.random.default_rng(18)
    z1 = rng.normal(size=(16, 8)).astype(np.float32)
    for z2 in (z1, rng.normal(size=z1.shape).astype(np.float32), -z1):
        for value, reference in [
            (losses.nt_xent(z1, z2, temperature=0.01), ref.nt_xent(z1, z2, 0.01)),
            (losses.info_nce(z1, z2, temperature=0.01), ref.info_nce(z1, z2, 0.01)),
            (losses.clip(z1, z2, logit_scale=math.log(100)), ref.clip(z1, z2, math.log(100))),
            (losses.siglip(z1, z2, logit_scale=math.log(100), logit_bias=-10.0), ref.siglip(z1, z2, math.log(100), -10.0)),
        ]:
            assert np.isfinite(float(value))
            np.testing.assert_allclose(float(value), reference, rtol=1e-4, atol=1e-4)
        grads = jax.grad(lambda a, b: losses.nt_xent(a, b, temperature=0.01), argnums=(0, 1))(z1, z2)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
        grads = jax.grad(lambda a, b: losses.clip(a, b, logit_scale=math.log(100)), argnums=(0, 1))(z1, z2)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_finite_for_zero_and_huge_embeddings(case):
    z1, z2 = pair(seed=19)
    z1 = z1.copy()
    z1[0] = 0.0  # a dead unit's output
    z2 = z2 * 1e4
    value, grads = jax.value_and_grad(case.fn, argnums=(0, 1))(z1, z2)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize(
    "shape1, shape2, message",
    [
        ((8,), (8,), "rank 2"),
        ((2, 4, 6), (2, 4, 6), "rank 2"),
        ((8, 6), (7, 6), "same shape"),
        ((8, 6), (8, 5), "same shape"),
        ((0, 6), (0, 6), "empty"),
    ],
)
def test_bad_shapes_raise_value_error_naming_the_argument(case, shape1, shape2, message):
    with pytest.raises(ValueError, match=message) as info:
        case.fn(jnp.zeros(shape1), jnp.zeros(shape2))
    assert str(shape1) in str(info.value) or str(shape2) in str(info.value)


def test_errors_name_the_argument_and_raise_at_trace_time():
    with pytest.raises(ValueError, match=r"`image_emb`.*\(4, 3, 2\)"):
        jax.jit(lambda a, b: losses.clip(a, b, logit_scale=1.0)).lower(jnp.zeros((4, 3, 2)), jnp.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match=r"`text_emb`.*\(4,\)"):
        losses.siglip(jnp.zeros((4, 3)), jnp.zeros((4,)), logit_scale=1.0, logit_bias=0.0)
    with pytest.raises(ValueError, match=r"`negatives`.*\(10, 5\)"):
        losses.info_nce(jnp.ones((4, 3)), jnp.ones((4, 3)), negatives=jnp.ones((10, 5)))
    with pytest.raises(ValueError, match=r"`negatives` is empty"):
        losses.info_nce(jnp.ones((4, 3)), jnp.ones((4, 3)), negatives=jnp.ones((0, 3)))
    with pytest.raises(ValueError, match=r"`logit_scale` must be a scalar"):
        losses.clip(jnp.ones((4, 3)), jnp.ones((4, 3)), logit_scale=jnp.ones((2,)))
    with pytest.raises(ValueError, match=r"`temperature` must be > 0"):
        losses.nt_xent(jnp.ones((4, 3)), jnp.ones((4, 3)), temperature=0.0)
    with pytest.raises(ValueError, match=r"at least 2"):
        losses.vicreg(jnp.ones((1, 3)), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"byol: `target`.*\(4, 3, 1\)"):
        jax.jit(losses.byol).lower(jnp.zeros((4, 3)), jnp.zeros((4, 3, 1)))
    with pytest.raises(ValueError, match=r"negative_cosine: `prediction`.*\(3,\)"):
        losses.negative_cosine(jnp.zeros((3,)), jnp.zeros((4, 3)))
    with pytest.raises(TypeError, match=r"`z1`.*int32"):
        losses.barlow_twins(jnp.ones((4, 3), jnp.int32), jnp.ones((4, 3), jnp.int32))


# ----------------------------------------------------------------------------- chunk_size


STREAMED = [c for c in CASES if c.name in ("nt_xent", "info_nce", "info_nce_queue", "clip", "siglip")]

_QUEUE = np.random.default_rng(321).normal(size=(11, 6))  # 11 columns: no chunk size below divides it

CHUNKED_CALLS = {  # name -> fn(z1, z2, axis_name=None, chunk_size=None, **hyper)
    "nt_xent": lambda a, b, t=0.2, **kw: losses.nt_xent(a, b, temperature=t, **kw),
    "info_nce": lambda a, b, t=0.3, **kw: losses.info_nce(a, b, temperature=t, **kw),
    "info_nce_queue": lambda a, b, t=0.3, queue=None, **kw: losses.info_nce(
        a, b, temperature=t, negatives=jnp.asarray(_QUEUE if queue is None else queue, jnp.float32), **kw),
    "clip": lambda a, b, t=1 / np.exp(1.5), **kw: losses.clip(a, b, logit_scale=-jnp.log(t), **kw),
    "siglip": lambda a, b, t=1 / np.exp(1.2), **kw: losses.siglip(a, b, logit_scale=-jnp.log(t), logit_bias=-2.0, **kw),
}
CHUNKED_REFERENCES = {
    "nt_xent": lambda a, b, t=0.2: ref.nt_xent(a, b, t),
    "info_nce": lambda a, b, t=0.3: ref.info_nce(a, b, t),
    "info_nce_queue": lambda a, b, t=0.3: ref.info_nce(a, b, t, negatives=_QUEUE),
    "clip": lambda a, b, t=1 / np.exp(1.5): ref.clip(a, b, -np.log(t)),
    "siglip": lambda a, b, t=1 / np.exp(1.2): ref.siglip(a, b, -np.log(t), -2.0),
}
STREAMED_NAMES = list(CHUNKED_CALLS)


def _value_and_grads(fn, **kw):
    """Jitted value and gradients with respect to both embeddings."""
    return jax.jit(jax.value_and_grad(lambda a, b: fn(a, b, **kw), argnums=(0, 1)))


def _assert_same_value_and_grads(got, want, rtol=1e-5, atol=1e-7):
    (g_value, g_grads), (w_value, w_grads) = got, want
    np.testing.assert_allclose(np.asarray(g_value), float(w_value), rtol=rtol, atol=atol)
    for g, w in zip(g_grads, w_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32).reshape(w.shape), np.asarray(w, np.float32), rtol=10 * rtol, atol=atol)


@pytest.mark.parametrize("chunk_size", [3, 64], ids=["3-does-not-divide-16", "64-exceeds-16"])
@pytest.mark.parametrize("name", STREAMED_NAMES)
def test_chunked_equals_unchunked_and_the_reference(name, chunk_size):
    fn = CHUNKED_CALLS[name]
    z1, z2 = pair(batch=16, seed=30)
    want = _value_and_grads(fn)(z1, z2)
    got = _value_and_grads(fn, chunk_size=chunk_size)(z1, z2)
    _assert_same_value_and_grads(got, want)
    np.testing.assert_allclose(float(got[0]), CHUNKED_REFERENCES[name](z1, z2), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", STREAMED_NAMES)
def test_chunked_gradients_match_finite_differences_of_the_reference(name):
    z1, z2 = pair(batch=5, dim=6, seed=31)
    fn, reference = CHUNKED_CALLS[name], CHUNKED_REFERENCES[name]
    _, (g1, g2) = _value_and_grads(fn, chunk_size=2)(z1, z2)
    np.testing.assert_allclose(np.asarray(g1), _fd_gradient(lambda x: reference(x, z2), z1), rtol=1e-3, atol=2e-5)
    np.testing.assert_allclose(np.asarray(g2), _fd_gradient(lambda x: reference(z1, x), z2), rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("name", STREAMED_NAMES)
def test_chunked_gradient_of_the_temperature_equals_unchunked(name):
    """The learnable temperature / logit_scale (and SigLIP's bias) flow through the custom_vjp."""
    z1, z2 = pair(batch=9, seed=32)
    fn = CHUNKED_CALLS[name]
    want = jax.jit(jax.grad(lambda t: fn(z1, z2, t=t)))(0.25)
    got = jax.jit(jax.grad(lambda t: fn(z1, z2, t=t, chunk_size=4)))(0.25)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    if name == "siglip":
        bias = lambda b, **kw: losses.siglip(z1, z2, logit_scale=1.0, logit_bias=b, **kw)  # noqa: E731
        np.testing.assert_allclose(float(jax.jit(jax.grad(lambda b: bias(b, chunk_size=4)))(-3.0)),
                                   float(jax.jit(jax.grad(bias))(-3.0)), rtol=1e-5)


@pytest.mark.parametrize("name", STREAMED_NAMES)
def test_chunked_is_stable_at_temperature_0_01(name):
    """At t = 0.01 logits reach +-100: the running max must rescale every partial sum."""
    rng = np.random.default_rng(33)
    z1 = rng.normal(size=(16, 8)).astype(np.float32)
    queue = rng.normal(size=(11, 8))
    fn = functools.partial(CHUNKED_CALLS[name], t=0.01, **({"queue": queue} if name == "info_nce_queue" else {}))
    plain, chunked = _value_and_grads(fn), _value_and_grads(fn, chunk_size=5)
    for z2 in (z1, rng.normal(size=z1.shape).astype(np.float32), -z1):  # aligned, random, opposite
        got = chunked(z1, z2)
        assert np.isfinite(float(got[0])) and all(np.all(np.isfinite(np.asarray(g))) for g in got[1])
        # A few float32 spacings of the largest logit (1/t = 100: 7.6e-6) apart: the two sum in
        # different orders (the aligned pair's loss is ~0, so its tolerance is absolute).
        _assert_same_value_and_grads(got, plain(z1, z2), rtol=2e-5, atol=8 * float(np.spacing(np.float32(100))))


@pytest.mark.parametrize("name", STREAMED_NAMES)
def test_chunked_bfloat16_inputs_give_float32_math(name):
    z1, z2 = pair(seed=34)
    b1, b2 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
    fn = CHUNKED_CALLS[name]
    value, grads = _value_and_grads(fn, chunk_size=3)(b1, b2)
    assert value.dtype == jnp.float32 and all(g.dtype == jnp.bfloat16 for g in grads)
    want = _value_and_grads(fn)(b1, b2)
    _assert_same_value_and_grads((value, grads), want, rtol=1e-5, atol=1e-6)
    rounded = [np.asarray(b, np.float64) for b in (b1, b2)]
    np.testing.assert_allclose(float(value), CHUNKED_REFERENCES[name](*rounded), rtol=2e-5, atol=2e-5)


def _sharded_value_and_grad(fn, mesh, z1, z2, **kw):
    per_device = jax.value_and_grad(lambda a, b: fn(a, b, axis_name=AXIS, **kw), argnums=(0, 1))
    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)),
                                 out_specs=(P(), (P(AXIS), P(AXIS)))))(*_shard(mesh, z1, z2))


@pytest.mark.parametrize("name", STREAMED_NAMES)
def test_chunked_ring_over_8_devices_equals_unsharded(name):
    """Local batch 6 per device: chunk 4 leaves a padded tile, chunk 3 divides, 6 is one tile."""
    z1, z2 = pair(batch=6 * DEVICES, seed=35)
    fn = CHUNKED_CALLS[name]
    want = _value_and_grads(fn)(z1, z2)
    mesh = _mesh()
    for chunk_size in (4, 3):
        _assert_same_value_and_grads(_sharded_value_and_grad(fn, mesh, z1, z2, chunk_size=chunk_size), want, atol=1e-6)


def test_chunked_under_pmap_equals_unsharded():
    z1, z2 = pair(batch=4 * DEVICES, seed=36)
    fn = CHUNKED_CALLS["clip"]
    want = jax.value_and_grad(fn, argnums=(0, 1))(z1, z2)
    per_device = jax.value_and_grad(lambda a, b: fn(a, b, axis_name=AXIS, chunk_size=3), argnums=(0, 1))
    split = lambda x: x.reshape(DEVICES, -1, x.shape[-1])  # noqa: E731
    value, grads = jax.pmap(per_device, axis_name=AXIS, devices=jax.devices()[:DEVICES])(split(z1), split(z2))
    _assert_same_value_and_grads((value[0], grads), want, atol=1e-6)


def test_chunked_ring_gives_replicated_scalars_and_the_queue_their_global_gradient():
    """Under shard_map a replicated logit_scale / bias / MoCo queue gets the full gradient."""
    z1, z2 = pair(batch=4 * DEVICES, seed=37)
    mesh = _mesh()
    shard = lambda f, n: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(AXIS), P(AXIS)) + (P(),) * n,  # noqa: E731
                                               out_specs=(P(),) * n))
    siglip = lambda a, b, s, t, **kw: losses.siglip(a, b, logit_scale=s, logit_bias=t, **kw)  # noqa: E731
    want = jax.grad(siglip, argnums=(2, 3))(z1, z2, 1.0, -1.0)
    got = shard(jax.grad(lambda a, b, s, t: siglip(a, b, s, t, axis_name=AXIS, chunk_size=3), argnums=(2, 3)), 2)(
        *_shard(mesh, z1, z2), jnp.float32(1.0), jnp.float32(-1.0))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    queue = jnp.asarray(_QUEUE, jnp.float32)
    moco = lambda a, b, q, **kw: losses.info_nce(a, b, temperature=0.2, negatives=q, **kw)  # noqa: E731
    want = jax.grad(moco, argnums=2)(z1, z2, queue)
    got = shard(jax.grad(lambda a, b, q: moco(a, b, q, axis_name=AXIS, chunk_size=4), argnums=(2,)), 1)(
        *_shard(mesh, z1, z2), queue)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", STREAMED_NAMES)
def test_chunked_ring_memory_is_a_tile_not_local_times_global(name):
    """Per device: no all_gather, columns come by ppermute, and no intermediate of the loss or its
    gradient is larger than the (two-view) local embeddings or one chunk x chunk tile."""
    local, dim, chunk = 16, 6, 4
    global_batch = local * DEVICES
    mesh = _mesh()
    per_device = jax.value_and_grad(lambda a, b: CHUNKED_CALLS[name](a, b, axis_name=AXIS, chunk_size=chunk), argnums=(0, 1))
    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(), (P(AXIS), P(AXIS))))
    z = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32)
    outer = jax.make_jaxpr(fn)(z, z).jaxpr
    body = [e for e in outer.eqns if e.primitive.name == "shard_map"][0].params["jaxpr"]
    text = str(body)
    assert "all_gather" not in text
    if name != "info_nce_queue":
        assert "ppermute" in text
    sizes = [math.prod(a.shape) for a in _all_avals(body) if hasattr(a, "shape")]
    assert max(sizes) <= max(2 * local * dim, chunk * chunk, _QUEUE.size)
    assert max(sizes) < local * global_batch


@pytest.mark.parametrize("name", STREAMED_NAMES)
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_bad_chunk_size_raises_value_error_naming_it(name, bad):
    z1, z2 = pair(batch=4)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        CHUNKED_CALLS[name](z1, z2, chunk_size=bad)
