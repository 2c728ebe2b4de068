"""Specification of the evaluation protocols: probe, kNN, zero-shot, retrieval, ablations, checkpoints.

Protocol tests use hand-made features with known answers; the model tests use a tiny trained
checkpoint on the embedded dataset prepared at a tiny size.
"""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest
from PIL import Image

from mmssl_jax import evaluation, sharding
from mmssl_jax.data import augment
from mmssl_jax.models.multiview import MultiViewModel

# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_is_near_perfect_on_linearly_separable_features():
    rng = np.random.default_rng(0)
    # Labels from a linear function: separable, so the weakly regularized fit is right on
    # (almost) every training row.
    w = rng.standard_normal((20, 4))
    x = rng.standard_normal((600, 20)).astype(np.float32)
    y = (x @ w).argmax(1)
    out = evaluation.linear_probe(x, y, x, y, l2_grid=(1e-6,), iters=300)
    assert out["top1"] >= 0.99, out
    # Separated clusters: held-out rows too; the chosen strength is from the grid.
    centers = 4 * rng.standard_normal((5, 20))
    y = rng.integers(0, 5, 1000)
    x = (centers[y] + rng.standard_normal((1000, 20))).astype(np.float32)
    out = evaluation.linear_probe(x[:700], y[:700], x[700:], y[700:], iters=200)
    assert out["top1"] >= 0.99 and out["val_top1"] >= 0.99, out
    assert np.isclose(out["l2"], evaluation.DEFAULT_L2_GRID).any()


def test_linear_probe_is_at_chance_on_random_labels():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1600, 32)).astype(np.float32)
    y = rng.integers(0, 4, 1600)
    out = evaluation.linear_probe(x[:800], y[:800], x[800:], y[800:], iters=100)
    assert abs(out["top1"] - 0.25) < 0.07, out  # chance is 1/4; 800 test rows: std 0.015


def test_linear_probe_reports_top5_only_with_more_than_five_classes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    assert "top5" not in evaluation.linear_probe(x[:200], rng.integers(0, 3, 200), x[200:], rng.integers(0, 3, 100),
                                               iters=20)
    out = evaluation.linear_probe(x[:200], rng.integers(0, 8, 200), x[200:], rng.integers(0, 8, 100), iters=20)
    assert out["top5"] >= out["top1"]


@pytest.mark.parametrize("bad, match", [
    (dict(train_x=np.zeros((5, 3))), "train_x has 5 rows"),
    (dict(test_x=np.zeros((4, 4))), "dim"),
    (dict(train_y=np.zeros(10, np.float32)), "integer"),
    (dict(train_x=np.full((10, 3), np.nan)), "non-finite"),
    (dict(test_x=np.zeros((0, 3)), test_y=np.zeros(0, int)), "non-empty"),
])
def test_protocols_refuse_bad_input_naming_it(bad, match):
    args = dict(train_x=np.ones((10, 3)), train_y=np.arange(10) % 2, test_x=np.ones((4, 3)), test_y=np.arange(4) % 2)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        evaluation.linear_probe(**args, iters=2)
    with pytest.raises(ValueError, match=match):
        evaluation.knn_classify(**args)


# ----------------------------------------------------------------------------- kNN

# Three training points on the unit circle and one query (0.96, 0.28): cosine similarities
# 0.96 to a (class 0), 0.936 to b and 0.8 to c (class 1).
TRAIN = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]], np.float32)
TRAIN_Y = np.array([0, 1, 1])
QUERY = np.array([[0.96, 0.28]], np.float32)


@pytest.mark.parametrize("k, temperature, predicted", [
    (1, 0.07, 0),  # the nearest neighbour is class 0
    # k=3, T=0.07: class 0 gets e^(0.96/0.07) = e^13.71; class 1 gets e^13.37 + e^11.43 = e^13.51.
    (3, 0.07, 0),
    # k=3, T=1: class 0 gets e^0.96 = 2.61; class 1 gets e^0.936 + e^0.8 = 4.78.
    (3, 1.0, 1),
    (2, 1.0, 0),  # 2.61 vs e^0.936 = 2.55
])
def test_knn_matches_the_hand_computed_weighted_vote(k, temperature, predicted):
    for label, expected in ((predicted, 1.0), (1 - predicted, 0.0)):
        out = evaluation.knn_classify(TRAIN, TRAIN_Y, QUERY, np.array([label]), ks=(k,), temperature=temperature)
        assert out[f"k{k}_top1"] == expected


def test_knn_is_scale_invariant_and_clips_k_to_the_training_set():
    out = evaluation.knn_classify(TRAIN * 5, TRAIN_Y, QUERY * 0.1, np.array([0]), ks=(1, 200), temperature=0.07)
    assert out == {"k1_top1": 1.0, "k200_top1": 1.0}


# ----------------------------------------------------------------------------- retrieval

IMAGES = np.eye(3, dtype=np.float32)
TEXTS = np.array([[1, 0, 0], [0, 0.6, 0.8], [0.6, 0.8, 0], [0.8, 0, 0.6]], np.float32)
OWNER = np.array([0, 0, 1, 2])


def test_retrieval_recall_matches_hand_computed_rankings():
    # text -> image: t0 ranks image 0 first; t1 (of image 0) sees images 2 (0.8) and 1 (0.6) above
    # image 0 (0.0): rank 2; t2 ranks image 1 first; t3 sees image 0 (0.8) above image 2 (0.6): rank 1.
    # image -> text: image 0 finds t0 (1.0) first; image 1 finds t2 (0.8) first; image 2's t3 (0.6)
    # is beaten by t1 (0.8): rank 1.
    out = evaluation.retrieval_recall(IMAGES, TEXTS, OWNER, ks=(1, 2, 3))
    assert out == {"i2t_r@1": 2 / 3, "t2i_r@1": 2 / 4, "i2t_r@2": 1.0, "t2i_r@2": 3 / 4,
                   "i2t_r@3": 1.0, "t2i_r@3": 1.0}


def test_retrieval_counts_ties_against_the_query():
    same = np.ones((4, 3), np.float32)  # every caption identical: nothing can be retrieved
    out = evaluation.retrieval_recall(IMAGES, same, OWNER, ks=(1,))
    assert out == {"i2t_r@1": 0.0, "t2i_r@1": 0.0}


def test_retrieval_refuses_captions_of_missing_images():
    with pytest.raises(ValueError, match="image 5 of 3"):
        evaluation.retrieval_recall(IMAGES, TEXTS, np.array([0, 1, 2, 5]))


# ----------------------------------------------------------------------------- zero-shot


def test_zero_shot_picks_the_nearest_class_embedding():
    classes = np.eye(4, dtype=np.float32)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    images = classes[labels] * 3 + 0.1 * rng.standard_normal((50, 4)).astype(np.float32)
    assert evaluation.zero_shot_classify(images, classes, labels) == {"top1": 1.0}
    assert evaluation.zero_shot_classify(images, classes, (labels + 1) % 4) == {"top1": 0.0}


@pytest.fixture(scope="module")
def minilm():
    from mmssl_jax.text import SentenceEncoder

    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")


def test_zero_shot_with_real_prompts_through_the_text_branch(minilm):
    """Captions embedded by MiniLM stand in for perfect image embeddings; the prompts
    ("a photo of a {}.", ...) go through the model's text branch (identity here), ensembled."""
    names = ["cat", "airplane", "bicycle", "pizza"]
    captions = ["a cat sleeps on a sofa", "a jet airliner taking off from the runway",
                "a man rides his bike down the street", "a slice of pepperoni pizza on a plate"]
    prompts = evaluation.class_prompt_embeddings(names, minilm)
    assert prompts.shape == (4, len(evaluation.ZERO_SHOT_TEMPLATES), 384)
    model = MultiViewModel(view_modality=(("text", "text"),), encoders={}, heads={})
    frozen = evaluation.FrozenModel(model, sharding.make_mesh())
    classes = evaluation.class_embeddings(frozen, {"params": {}}, prompts)
    np.testing.assert_allclose(np.linalg.norm(classes, axis=1), 1.0, rtol=1e-5)
    images = minilm.encode(captions)
    assert evaluation.zero_shot_classify(images, classes, np.arange(4))["top1"] == 1.0


# ----------------------------------------------------------------------------- ablations


def test_caption_ablations():
    rng = np.random.default_rng(12345)
    emb = rng.standard_normal((50, 16)).astype(np.float32) * 2
    np.testing.assert_array_equal(evaluation.ablate_captions(emb, "captions"), emb)
    assert not evaluation.ablate_captions(emb, "removed").any()
    shuffled = evaluation.ablate_captions(emb, "shuffled", seed=3)
    assert not (shuffled == emb).all(1).any()  # no image keeps its caption
    np.testing.assert_array_equal(np.sort(shuffled, axis=0), np.sort(emb, axis=0))  # same captions
    noise = evaluation.ablate_captions(emb, "noise")
    np.testing.assert_allclose(np.linalg.norm(noise, axis=1), np.linalg.norm(emb, axis=1), rtol=1e-5)
    cosine = np.sum(noise * emb, 1) / np.linalg.norm(emb, axis=1) ** 2
    assert abs(cosine.mean()) < 0.15  # unrelated to the captions (std of the mean: 0.035)
    with pytest.raises(ValueError, match="unknown caption ablation 'blur'"):
        evaluation.ablate_captions(emb, "blur")


def test_drop_modality_zeroes_whole_samples_at_the_rate():
    x = jax.numpy.ones((4000, 3, 2))
    assert augment.drop_modality(x, jax.random.key(0), 0.0) is x
    dropped = np.asarray(augment.drop_modality(x, jax.random.key(0), 0.3))
    per_sample = dropped.reshape(4000, -1)
    assert set(np.unique(per_sample.sum(1))) <= {0.0, 6.0}  # all or nothing per sample
    assert abs((per_sample.sum(1) == 0).mean() - 0.3) < 0.03


# ----------------------------------------------------------------------------- features from a model


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_image_features_are_sharded_padded_and_in_order():
    """8 devices, a batch that does not divide the set, one corrupt image: the features equal a
    plain forward pass, row for row, with the corrupt record dropped and named by ``index``."""
    from mmssl_jax.models import build_encoder, build_head

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)
    records = [{"image": _png(im), "label": np.int64(i % 3)} for i, im in enumerate(images)]
    records[5] = {"image": b"not an image", "label": np.int64(2)}
    model = MultiViewModel(view_modality=(("image", "image"),),
                           encoders={"image": build_encoder("resnet18", cifar_stem=True, width=2)},
                           heads={"image": build_head("linear_projection", out_dim=4)})
    variables = model.init(jax.random.key(0), {"image": images[:2].astype(np.float32)}, train=False)
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    frozen = evaluation.FrozenModel(model, mesh)
    feats = evaluation.ImageSet(records, image_size=8, batch_size=16, keep=("label",)).features(frozen, variables)
    expected_rows = np.delete(np.arange(37), 5)
    np.testing.assert_array_equal(feats["index"], expected_rows)
    np.testing.assert_array_equal(feats["label"], expected_rows % 3)
    h, z = model.apply(variables, images[expected_rows].astype(np.float32) / 255.0, "image", method=model.represent)
    np.testing.assert_allclose(feats["h"], h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["z"], z, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- trained checkpoints


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mmssl_jax.data import builders

    path = tmp_path_factory.mktemp("tfds")
    builders.prepare_embedded(data_dir=str(path), num_train=128, num_test=48)
    return str(path)


@pytest.fixture(scope="module")
def clip_run(data_dir, tmp_path_factory):
    """A 3-step CLIP run that evaluates every protocol (and the ablations) at steps 2 and 3; it logs
    at step 3 only, so the evaluation of step 2 is not on a log step."""
    from mmssl_jax import train
    from tests.test_train import load_config, tiny

    config = tiny(load_config("clip"), data_dir, steps=3)
    config.log_every = 3
    config.checkpoint_every = 2
    config.modality_dropout = {"text": 0.25}
    config.eval.protocols = ("linear_probe", "knn", "zero_shot", "retrieval")
    config.eval.every = 2
    config.eval.ablations = True
    config.eval.robustness.corruptions = ("caption_missing", "caption_swapped", "image_noise")
    config.eval.robustness.rates = (0.0, 0.5, 1.0)
    config.eval.counterfactual.modalities = ("image", "caption")
    config.eval.counterfactual.top_k = 3
    config.eval.probe_iters = 30
    config.eval.classification.max_train = 96
    workdir = tmp_path_factory.mktemp("clip_run")
    return workdir, train.train_and_evaluate(config, workdir)


@pytest.mark.xdist_group("trained_checkpoint")
def test_training_evaluates_every_protocol_and_the_ablations(clip_run):
    workdir, summary = clip_run
    history = json.loads((workdir / "eval_summary.json").read_text())
    assert sorted(history) == ["2", "3"]
    metrics = history["3"]
    for key in ("linear_probe/top1", "linear_probe/top5", "knn/k20_top1", "knn/k200_top1", "zero_shot/top1",
                "retrieval/i2t_r@1", "retrieval/t2i_r@10", "ablation/shuffled/retrieval/t2i_r@1",
                "ablation/removed/fused_probe_top1", "ablation/noise/fused_knn20_top1",
                "ablation/image_only/probe_top1"):
        assert 0.0 <= metrics[f"eval/mmssl_shapes/{key}"] <= 1.0, key
    assert summary["eval/mmssl_shapes/knn/k20_top1"] == metrics["eval/mmssl_shapes/knn/k20_top1"]
    # Removed captions are one constant input: image->text retrieval finds nothing.
    assert metrics["eval/mmssl_shapes/ablation/removed/retrieval/i2t_r@1"] == 0.0
    # history.json: each row holds its own step's values, an evaluation off a log step its own row.
    rows = json.loads((workdir / "history.json").read_text())
    assert [step for step, _ in rows] == [2, 3]
    assert "loss" not in rows[0][1] and rows[0][1]["eval/mmssl_shapes/knn/k20_top1"] == history["2"][
        "eval/mmssl_shapes/knn/k20_top1"]
    assert "loss" in rows[1][1] and rows[1][1]["eval/mmssl_shapes/knn/k20_top1"] == metrics["eval/mmssl_shapes/knn/k20_top1"]


@pytest.mark.xdist_group("trained_checkpoint")
def test_training_evaluates_robustness_curves(clip_run):
    """eval.robustness: every metric at each rate, the scores, and robustness.png; a curve's clean
    point is the clean evaluation's value (the same probe, neighbours and retrieval)."""
    workdir, _ = clip_run
    metrics = {k.removeprefix("eval/mmssl_shapes/"): v
               for k, v in json.loads((workdir / "eval_summary.json").read_text())["3"].items()}
    curve = lambda mode, metric: [metrics[f"robustness/{mode}/{metric}@{r}"] for r in ("0", "0.5", "1")]  # noqa: E731
    for mode in ("caption_missing", "caption_swapped"):
        for metric in ("i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "fused_probe_top1", "fused_knn20_top1"):
            assert all(0.0 <= v <= 1.0 for v in curve(mode, metric)), (mode, metric)
            assert metrics[f"robustness/{mode}/{metric}/relative"] == pytest.approx(
                evaluation.relative_robustness((0, 0.5, 1), curve(mode, metric)))
    assert curve("caption_missing", "i2t_r@1")[0] == metrics["retrieval/i2t_r@1"]
    assert curve("caption_missing", "i2t_r@1")[2] == 0.0  # every caption gone: nothing is found
    for metric, clean in (("i2t_r@1", "retrieval/i2t_r@1"), ("probe_top1", "linear_probe/top1"),
                          ("knn20_top1", "knn/k20_top1"), ("zero_shot_top1", "zero_shot/top1")):
        assert curve("image_noise", metric)[0] == metrics[clean], metric
        assert metrics[f"robustness/image_noise/{metric}/effective"] == pytest.approx(
            sum(v - curve("image_noise", metric)[0] for v in curve("image_noise", metric)))
    assert (workdir / "robustness.png").stat().st_size > 10_000


@pytest.mark.xdist_group("trained_checkpoint")
def test_training_evaluates_counterfactual_contributions(clip_run):
    """eval.counterfactual: the means of every counterfactual in the metrics, consistent with the
    per-sample table of counterfactual.json; counterfactual.md holds the tables."""
    from mmssl_jax.data import shapes

    workdir, _ = clip_run
    metrics = json.loads((workdir / "eval_summary.json").read_text())["3"]
    key = "eval/mmssl_shapes/counterfactual"
    report = json.loads((workdir / "counterfactual.json").read_text())
    assert report["step"] == 3
    samples = report["samples"]
    clean = metrics[f"{key}/clean/accuracy"]
    assert clean == pytest.approx(np.mean(samples["clean"]["correct"]))
    assert 0 <= metrics[f"{key}/clean/r@1_i2t"] <= 1
    for modality in ("image", "caption"):
        for kind in ("removed", "swapped", "class_mean"):
            name = f"{modality}/{kind}"
            s = samples[name]
            assert metrics[f"{key}/{name}/p_drop"] == pytest.approx(np.mean(s["p_drop"]))
            np.testing.assert_allclose(s["p_drop"], np.subtract(samples["clean"]["p_true"], s["p_true"]), atol=1e-6)
            assert metrics[f"{key}/{name}/accuracy"] == pytest.approx(
                clean - metrics[f"{key}/{name}/flip_rate"] + metrics[f"{key}/{name}/fix_rate"])
            assert metrics[f"{key}/{name}/rank_i2t_change"] == pytest.approx(
                np.mean(np.subtract(s["rank_i2t"], samples["clean"]["rank_i2t"])))
        assert len(report["top"][modality]) == 3
    # A removed caption is one constant input: no image finds its own caption first any more.
    assert not np.any(np.equal(samples["caption/removed"]["rank_i2t"], 1))
    assert report["per_class"] and set(report["per_class"]) <= set(shapes.SHAPES)  # by class name
    text = (workdir / "counterfactual.md").read_text()
    assert "| caption/swapped |" in text and "Samples that depend most on the image" in text


@pytest.mark.xdist_group("trained_checkpoint")
def test_a_checkpoint_evaluates_on_its_own(clip_run, data_dir, tmp_path):
    from tests.test_train import load_config

    workdir, summary = clip_run
    config = load_config("linear_probe")
    config.checkpoint_dir = str(workdir)
    config.eval.protocols = ("knn",)
    config.eval.classification.max_train = 96
    config.eval.robustness.corruptions = ("image_noise",)
    config.eval.robustness.rates = (0.0, 0.5, 1.0)
    config.eval.robustness.baseline = str(workdir)  # effective robustness against the training run's curves
    metrics = evaluation.evaluate_checkpoint(config, tmp_path)
    # The same parameters and data as the in-training evaluation of the last step.
    assert metrics["eval/mmssl_shapes/knn/k20_top1"] == summary["eval/mmssl_shapes/knn/k20_top1"]
    assert "3" in json.loads((tmp_path / "eval_summary.json").read_text())
    key = "eval/mmssl_shapes/robustness/image_noise/knn20_top1"
    assert [metrics[f"{key}@{r}"] for r in ("0", "0.5", "1")] == [summary[f"{key}@{r}"] for r in ("0", "0.5", "1")]
    assert metrics[f"{key}/effective"] == 0.0 and (tmp_path / "robustness.png").exists()
    config.eval.robustness.rates = (0.0, 0.25)
    with pytest.raises(ValueError, match=r"baseline has no eval/mmssl_shapes/robustness/image_noise/knn20_top1 at rates \[0.25\]"):
        evaluation.evaluate_checkpoint(config, tmp_path)


@pytest.mark.xdist_group("trained_checkpoint")
def test_a_checkpoint_of_another_model_fails_naming_the_difference(clip_run, tmp_path):
    from tests.test_train import load_config

    workdir, _ = clip_run
    config = load_config("linear_probe", "simclr")
    config.checkpoint_dir = str(workdir)
    differ = r"different model .*simclr.*differ in encoders, heads, learned_scalars, views: "
    with pytest.raises(evaluation.CheckpointMismatchError, match=differ):
        evaluation.evaluate_checkpoint(config, tmp_path)
    config.checkpoint_dir = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        evaluation.evaluate_checkpoint(config, tmp_path)
    config = load_config("linear_probe")
    config.checkpoint_dir = str(workdir)
    config.step = 1
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 1; it has \[2, 3\]"):
        evaluation.evaluate_checkpoint(config, tmp_path)


@pytest.mark.xdist_group("trained_checkpoint")
def test_bad_eval_settings_fail_before_training(data_dir, tmp_path):
    from mmssl_jax import train
    from tests.test_train import load_config, tiny

    config = tiny(load_config("simclr"), data_dir)
    config.eval.protocols = ("zero_shot",)
    with pytest.raises(train.ConfigError, match="need a text view"):
        train.train_and_evaluate(config, tmp_path)
    config.eval.protocols = ("probe",)
    with pytest.raises(train.ConfigError, match=r"unknown \['probe'\]"):
        train.train_and_evaluate(config, tmp_path)
    config.eval.protocols = ("knn",)
    config.modality_dropout = {"text": 0.5}
    with pytest.raises(train.ConfigError, match="modality_dropout.text: no view has that modality"):
        train.train_and_evaluate(config, tmp_path)
    config.modality_dropout = {}
    config.eval.classification.dataset = "cifar10_npz"
    with pytest.raises(Exception, match="prepare"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_stratified_sample_keeps_every_class_share():
    labels = np.repeat(np.arange(5), [400, 300, 200, 80, 20])  # stored sorted by class, as an image folder
    picked = evaluation.features.stratified_sample(labels, 100, seed=0)
    assert len(picked) == 100 and len(set(picked)) == 100 and np.all(np.diff(picked) > 0)
    assert np.bincount(labels[picked]).tolist() == [40, 30, 20, 8, 2]
    assert not np.array_equal(picked, evaluation.features.stratified_sample(labels, 100, seed=1))
    np.testing.assert_array_equal(picked, evaluation.features.stratified_sample(labels, 100, seed=0))
    # Shares that do not divide: the largest remainders get the extra rows, the total is exact.
    assert np.bincount(labels[evaluation.features.stratified_sample(labels, 7)]).sum() == 7
    with pytest.raises(ValueError, match="n=2000"):
        evaluation.features.stratified_sample(labels, 2000)


def test_a_probe_subset_of_a_class_sorted_folder_covers_every_class(tmp_path):
    """eval.classification.max_train draws from every class, not the folder's first classes."""
    from mmssl_jax.data import builders
    from mmssl_jax.evaluation.evaluators import ClassificationEval

    for split, n in (("train", 12), ("test", 2)):
        for c, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
    source = builders.load_classification(str(tmp_path), "train")
    assert source.labels().tolist() == [0] * 12 + [1] * 12 + [2] * 12
    from tests.test_train import load_config

    ec = load_config("linear_probe").eval.classification
    ec.unlock()
    for key, value in dict(dataset=str(tmp_path), data_dir="", batch_size=8, cache_mb=16, max_train=6,
                           center_crop_fraction=1.0, name="").items():
        ec[key] = value
    frozen = evaluation.FrozenModel(MultiViewModel(view_modality=(("image", "image"),), encoders={}, heads={}),
                                    sharding.make_mesh())
    evaluator = ClassificationEval(ec, frozen, protocols=("knn",), image_size=8, text_model="")
    assert evaluator.prefix == tmp_path.name
    assert sorted(evaluator.train.source[i]["label"] for i in range(6)) == [0, 0, 1, 1, 2, 2]


def test_metric_prefixes_name_the_dataset():
    from mmssl_jax.evaluation.evaluators import dataset_prefix

    assert dataset_prefix("mmssl_shapes/all-minilm-l6-v2:1.0.0") == "mmssl_shapes"
    assert dataset_prefix("coco_captions_embedded/all-minilm-l6-v2") == "coco_captions_embedded"
    assert dataset_prefix("image_folder_classification/flowers") == "flowers"
    assert dataset_prefix("/data/cifar10.npz") == "cifar10" and dataset_prefix("cifar10_npz") == "cifar10_npz"
