"""Specification of the counterfactual modality contribution (mmssl_jax.evaluation.counterfactual).

Constructed features whose answers are known: a fused probe that can only use the caption (the
image features are noise) depends on the caption alone, and the reverse; a text branch that
ignores its input contributes nothing. The class-mean and swap counterfactuals are recomputed
here in plain NumPy, one sample at a time, from their definitions.
"""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from mmssl_jax import config_base
from mmssl_jax.evaluation import counterfactual as cf
from mmssl_jax.evaluation import evaluators, fit_linear_probe

N, DIM, CLASSES = 160, 8, 4


def _features(informative: str, seed: int = 0):
    """``(h, z, t, labels)``: for the probe, the ``informative`` modality ("image" ``h`` or
    "caption" ``t``) carries the class (well separated centres), the other is noise; for
    retrieval, each image's ``z`` is its caption ``t`` plus a little noise (pairs that find each
    other)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % CLASSES
    centres = 3 * rng.standard_normal((CLASSES, DIM))
    signal = (centres[labels] + rng.standard_normal((N, DIM))).astype(np.float32)
    noise = lambda: rng.standard_normal((N, DIM)).astype(np.float32)  # noqa: E731
    h, t = (signal, noise()) if informative == "image" else (noise(), signal)
    return h, t + 0.05 * noise(), t, labels


def _run(h, z, t, labels, **kw):
    split = np.random.default_rng(1).permutation(len(labels))
    kw = {"train": split[: N // 2], "test": split[N // 2:], "removed_image_h": np.zeros(h.shape[1]),
          "removed_image_z": np.zeros(z.shape[1]),
          "removed_text_z": np.zeros(t.shape[1]), "probe_iters": 40, **kw}
    return cf.contributions(h, z, t, labels, **kw)


@pytest.mark.parametrize("informative", ["caption", "image"])
def test_only_the_informative_modality_contributes(informative):
    result = _run(*_features(informative))
    overall = cf.summarize(result)["overall"]
    clean = overall["clean"]
    assert clean["accuracy"] > 0.9 and clean["r@1_i2t"] > 0.9 and clean["r@1_t2i"] > 0.9
    other = "image" if informative == "caption" else "caption"
    for kind in cf.KINDS:
        used, unused = overall[f"{informative}/{kind}"], overall[f"{other}/{kind}"]
        # The probe's other half is noise: replacing it moves nothing (the class prototype of
        # noise shifts p(true) a little, through what the probe fit of that noise on the same rows).
        assert abs(unused["p_drop"]) < (0.06 if kind == "class_mean" else 0.01), (kind, unused)
        assert unused["flip_rate"] == 0.0, (kind, unused)
        if kind == "class_mean":  # the prototype of the true class: the probe keeps it, or grows more certain
            assert used["p_drop"] < 0.05 and used["flip_rate"] == 0.0, used
        else:  # back to chance (1/4): p(true) falls by about half its clean value, most answers flip
            assert used["p_drop"] > 0.4 * clean["p_true"] and used["flip_rate"] > 0.6, (kind, used)
        # Retrieval reads both modalities: any counterfactual of either loses the true partner.
        for stats in (used, unused):
            assert stats["rank_i2t_change"] > 1 and stats["rank_t2i_change"] > 1, (kind, stats)
    top = cf.top_dependent(result, informative, 5)
    drops = [r["dependence"] for r in top]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0.4 * clean["p_true"]
    assert set(top[0]) >= {"index", "label", "p_true", "removed", "swapped", "class_mean"}


def test_a_model_that_ignores_captions_has_zero_caption_deltas():
    h, z, _, labels = _features("image")
    t = np.ones((N, DIM), np.float32)  # the text branch's output whatever the caption
    result = _run(h, z, t, labels, removed_text_z=np.ones(DIM), modalities=("caption",))
    for kind in cf.KINDS:
        r = result[f"caption/{kind}"]
        np.testing.assert_allclose(r["p_drop"], 0.0, atol=1e-6)
        assert not r["flip"].any() and not r["fix"].any()
        assert not r["rank_i2t_change"].any() and not r["rank_t2i_change"].any()
    assert set(result) == {"clean", "caption/removed", "caption/swapped", "caption/class_mean"}


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rank(query, gallery, own):
    """1-based rank of gallery item ``own`` for ``query`` (ties within 1e-6 count against it)."""
    sims = np.array([np.dot(query, g) for g in gallery])
    return 1 + sum(1 for j, s in enumerate(sims) if j != own and s >= sims[own] - 1e-6)


@pytest.mark.parametrize("kind", ["class_mean", "swapped"])
@pytest.mark.parametrize("modality", ["caption", "image"])
def test_class_mean_and_swap_match_a_plain_numpy_computation(kind, modality):
    rng = np.random.default_rng(5)
    n, classes = 40, 3
    labels = rng.integers(0, classes, n)
    h, z, t = (rng.standard_normal((n, d)).astype(np.float32) for d in (6, 5, 5))
    train, test = np.arange(0, n, 2), np.arange(1, n, 2)
    result = cf.contributions(h, z, t, labels, train=train, test=test, removed_image_h=np.ones(6),
                              removed_image_z=np.ones(5), removed_text_z=np.ones(5), modalities=(modality,),
                              kinds=(kind,), seed=7, probe_iters=20)
    r = result[f"{modality}/{kind}"]
    probe = fit_linear_probe(np.concatenate([_unit(h), _unit(t)], 1)[train], labels[train], num_classes=classes,
                             iters=20, seed=7)
    donor = cf.derangement(len(test), 7)
    assert sorted(donor) == list(range(len(test))) and all(donor != np.arange(len(test)))

    def replaced(x, i):  # sample test[i]'s counterfactual of the features x, from the definition
        if kind == "swapped":
            return _unit(x[test[donor[i]]])
        same = [j for j in train if labels[j] == labels[test[i]]]
        return _unit(np.mean([_unit(x[j]) for j in same], axis=0))

    for i, s in enumerate(test):
        hi, ti, zi = _unit(h[s]), _unit(t[s]), _unit(z[s])
        texts, images = _unit(t[test]), _unit(z[test])
        if modality == "caption":
            ti = replaced(t, i)
            texts[i] = ti
        else:
            hi, zi = replaced(h, i), replaced(z, i)
            images[i] = zi
        logits = probe.scores(np.concatenate([hi, ti])[None])[0].astype(np.float64)
        p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert r["p_true"][i] == pytest.approx(p[labels[s]], abs=1e-5)
        assert r["correct"][i] == (p.argmax() == labels[s])
        assert r["rank_i2t"][i] == _rank(zi, texts, i)
        assert r["rank_t2i"][i] == _rank(texts[i], images, i)
    clean = result["clean"]
    np.testing.assert_allclose(r["p_drop"], clean["p_true"] - r["p_true"])
    assert np.array_equal(r["flip"], clean["correct"] & ~r["correct"])


def test_removed_is_the_missing_input_for_every_sample_and_reports_are_tabulated():
    h, z, t, labels = _features("caption")
    result = _run(h, z, t, labels, kinds=("removed",), removed_text_z=np.full(DIM, 2.0))
    # Every caption replaced by the same (missing) one: image->text finds it at the same place
    # for no one in particular, and the probe's caption half is one constant.
    rep = cf.report(result, k=3, class_names=["a", "b", "c", "d"])
    assert set(rep["per_class"]) == {"a", "b", "c", "d"} and len(rep["top"]["caption"]) == 3
    assert len(rep["samples"]["caption/removed"]["p_drop"]) == N // 2
    text = cf.markdown(rep)
    assert "| caption/removed |" in text and "## Samples that depend most on the image" in text


@pytest.mark.parametrize("change, match", [
    (dict(kinds=("blur",)), "kinds of"),
    (dict(modalities=("audio",)), "modalities must be"),
    (dict(train=np.arange(0, 100), test=np.arange(50, 160)), "disjoint"),
    (dict(removed_text_z=np.zeros(3)), "removed features have 3 dims"),
    (dict(labels=np.zeros(N, np.float32)), "1-D integer"),
    (dict(h=np.full((N, DIM), np.nan, np.float32)), "image_h has non-finite"),
    (dict(t=np.zeros((N, DIM + 1), np.float32)), "share the joint space"),
])
def test_bad_inputs_are_refused(change, match):
    h, z, t, labels = _features("caption")
    arrays = {"h": h, "z": z, "t": t, "labels": labels}
    arrays.update({k: change.pop(k) for k in list(change) if k in arrays})
    with pytest.raises(ValueError, match=match):
        _run(arrays["h"], arrays["z"], arrays["t"], arrays["labels"], **change)


def test_stratified_halves_put_every_class_in_training():
    labels = np.array([0] * 5 + [1] * 2 + [2] + [3] * 4)
    train, test = cf.stratified_halves(labels, seed=2)
    assert sorted(np.r_[train, test]) == list(range(len(labels)))
    assert [int((labels[train] == c).sum()) for c in range(4)] == [3, 1, 1, 2]
    assert [int((labels[test] == c).sum()) for c in range(4)] == [2, 1, 0, 2]
    assert not np.array_equal(train, cf.stratified_halves(labels, seed=3)[0])


def test_class_mean_needs_every_test_class_in_training():
    h, z, t, labels = _features("caption")
    labels = labels.copy()
    labels[1::2] = 3  # the odd samples (the test half below) hold class 3, no even one does
    labels[0::2] %= 3
    with pytest.raises(ValueError, match=r"classes \[3\] have test samples but no training sample"):
        cf.contributions(h, z, t, labels, train=np.arange(0, N, 2), test=np.arange(1, N, 2),
                         removed_image_h=np.zeros(DIM), removed_image_z=np.zeros(DIM), removed_text_z=np.zeros(DIM),
                         kinds=("class_mean",), probe_iters=5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        cf.derangement(1, 0)


def _cc(**kw):
    cc = config_base.eval_config().counterfactual
    cc.modalities = ("image", "caption")
    for k, v in kw.items():
        cc[k] = v
    return cc


@pytest.mark.parametrize("change, modalities, protocols, match", [
    (dict(modalities=("image", "audio")), {"image", "text"}, ("knn",), r"modalities: unknown \['audio'\]"),
    (dict(kinds=()), {"image", "text"}, ("knn",), "kinds must be a non-empty tuple"),
    (dict(top_k=0), {"image", "text"}, ("knn",), "top_k must be an int >= 1"),
    ({}, {"image"}, ("knn",), "needs an image\\+caption model"),
    ({}, {"image", "text"}, (), "config.eval.protocols is empty"),
])
def test_bad_config_is_a_config_error(change, modalities, protocols, match):
    with pytest.raises(config_base.ConfigError, match=f"config.eval.counterfactual.*{match}|{match}"):
        evaluators.check_counterfactual(_cc(**change), modalities, protocols)
    assert evaluators.check_counterfactual(_cc(), {"image", "text"}, ("knn",))
    assert not evaluators.check_counterfactual(config_base.eval_config().counterfactual, set(), ())
    assert not evaluators.check_counterfactual(ml_collections.ConfigDict({"modalities": ()}), set(), ())


def test_validation_refuses_counterfactuals_of_a_model_without_captions():
    from mmssl_jax import validation
    from tests.test_train import load_config

    config = load_config("simclr")
    config.eval.counterfactual.modalities = ("image",)
    with pytest.raises(config_base.ConfigError, match=r"counterfactual needs an image\+caption model"):
        validation.validate_config(config)
    config = load_config("clip")
    config.eval.counterfactual.modalities = ("caption",)
    config.eval.counterfactual.kinds = ("removed", "shuffled")
    with pytest.raises(config_base.ConfigError, match=r"counterfactual.kinds: unknown \['shuffled'\]"):
        validation.validate_config(config)
    config.eval.counterfactual.kinds = ("removed",)
    validation.validate_config(config)
