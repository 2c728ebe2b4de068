"""A Flax BERT encoder and a loader for Hugging Face BERT-family checkpoints.

The module mirrors Hugging Face's ``BertModel`` (post-LayerNorm Transformer encoder, exact erf
GELU, absolute position embeddings), and its parameter tree mirrors the checkpoint's names, so a
checkpoint maps onto it one tensor at a time::

    embeddings/{word,position,token_type}_embeddings/embedding, embeddings/LayerNorm/{scale,bias}
    encoder/layer_{i}/attention/self/{query,key,value}/{kernel,bias}
    encoder/layer_{i}/attention/output/{dense,LayerNorm}/...
    encoder/layer_{i}/intermediate/dense/...   encoder/layer_{i}/output/{dense,LayerNorm}/...
    pooler/dense/...                            (only when the checkpoint has a pooler)

:func:`load_bert` reads a checkpoint directory (``config.json`` + ``model.safetensors``, never a
pickle) or, when the machine is online, a Hugging Face Hub id. RoBERTa-style checkpoints
(``roberta``, ``xlm-roberta``, ``camembert``) share the architecture and differ only in where
position ids start; they load too.

Inputs are right-padded: real tokens first, then padding, with ``attention_mask`` 1 on real tokens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "camembert")
"""``model_type`` values of ``config.json`` that :func:`load_bert` accepts."""

_ROBERTA_STYLE = ("roberta", "xlm-roberta", "camembert")

_ACTIVATIONS = {
    # BERT's "gelu" is the exact erf form; the tanh approximation has its own names.
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}

HUB_ALLOW_PATTERNS = (
    "*.json",
    "*.safetensors",
    "vocab.txt",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)
"""Files fetched for a Hub id: configs, safetensors weights and tokenizer files (no pickles)."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture, as read from a Hugging Face ``config.json``.

    ``position_offset`` is where position ids start: 0 for BERT, ``pad_token_id + 1`` for
    RoBERTa-style models (their first two position rows are reserved).
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    position_offset: int = 0
    add_pooling_layer: bool = True
    model_type: str = "bert"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; known: {sorted(_ACTIVATIONS)}")

    @property
    def max_length(self) -> int:
        """The longest input (in tokens, special tokens included) the position table allows."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], source: str = "config.json") -> BertConfig:
        """Builds the config from a parsed Hugging Face ``config.json``.

        Raises:
          ValueError: naming ``source`` if ``model_type`` is not in :data:`BERT_FAMILY`, a required
            field is missing, or the position embeddings are not absolute.
        """
        model_type = hf.get("model_type")
        if model_type not in BERT_FAMILY:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported; load_bert reads BERT-family "
                f"checkpoints only ({', '.join(BERT_FAMILY)})."
            )
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"{source}: position_embedding_type {position_type!r} is not supported (only 'absolute')."
            )
        required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing} for model_type {model_type!r}.")
        pad = int(hf.get("pad_token_id", 1 if model_type in _ROBERTA_STYLE else 0) or 0)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: hf[k] for k in fields if k in hf and k not in ("pad_token_id", "position_offset")}
        return cls(
            **kwargs,
            pad_token_id=pad,
            position_offset=pad + 1 if model_type in _ROBERTA_STYLE else 0,
        )

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` fields Hugging Face needs to rebuild this architecture."""
        out = dataclasses.asdict(self)
        del out["position_offset"], out["add_pooling_layer"]
        out["architectures"] = ["RobertaModel" if self.model_type in _ROBERTA_STYLE else "BertModel"]
        out["position_embedding_type"] = "absolute"
        return out


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, token_type_ids: jax.Array, position_ids: jax.Array, *, deterministic: bool
    ) -> jax.Array:
        """``input_ids, token_type_ids, position_ids: [B, L]`` int -> ``[B, L, hidden]``."""
        cfg = self.config

        def embed(name: str, rows: int) -> nn.Embed:
            return nn.Embed(
                rows,
                cfg.hidden_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                embedding_init=_INIT,
                name=name,
            )

        x = (
            embed("word_embeddings", cfg.vocab_size)(input_ids)
            + embed("position_embeddings", cfg.max_position_embeddings)(position_ids)
            + embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids)
        )
        x = _layer_norm(cfg, self.dtype, self.param_dtype)(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention; the softmax runs in float32 whatever ``dtype``."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, *, deterministic: bool) -> jax.Array:
        """``x: [B, L, hidden]``, ``mask_bias: [B, 1, 1, L]`` (0 or very negative) -> ``[B, L, hidden]``."""
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads

        def project(name: str) -> jax.Array:
            y = _dense(cfg.hidden_size, self.dtype, self.param_dtype, name)(x)
            return y.reshape(*x.shape[:-1], heads, head_dim).transpose(0, 2, 1, 3)  # [B, heads, L, head_dim]

        # Heads-major layout, batch dimensions leading: XLA:CPU runs these batched matmuls ~2x
        # faster than the [B, L, heads, head_dim] einsum at sequence length 32 and up.
        query, key, value = project("query"), project("key"), project("value")
        scores = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores / np.sqrt(head_dim) + mask_bias, axis=-1)  # [B, heads, L, L] float32
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(self.dtype), value)  # [B, heads, L, head_dim]
        return context.transpose(0, 2, 1, 3).reshape(x.shape)


class BertAddNorm(nn.Module):
    """``LayerNorm(residual + dropout(dense(y)))``: the output block after attention and the MLP."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, y: jax.Array, residual: jax.Array, *, deterministic: bool) -> jax.Array:
        """``y: [B, L, any]``, ``residual: [B, L, hidden]`` -> ``[B, L, hidden]``."""
        cfg = self.config
        y = _dense(cfg.hidden_size, self.dtype, self.param_dtype, "dense")(y)
        y = nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=deterministic)
        return _layer_norm(cfg, self.dtype, self.param_dtype)(residual + y)


class BertAttention(nn.Module):
    """Self-attention and its add-and-norm output block."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, *, deterministic: bool) -> jax.Array:
        """``x: [B, L, hidden]`` -> ``[B, L, hidden]``."""
        args = (self.config, self.dtype, self.param_dtype)
        context = BertSelfAttention(*args, name="self")(x, mask_bias, deterministic=deterministic)
        return BertAddNorm(*args, name="output")(context, x, deterministic=deterministic)


class BertIntermediate(nn.Module):
    """The MLP's expansion: ``act(dense(x))`` to ``intermediate_size``."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, L, hidden]`` -> ``[B, L, intermediate]``."""
        cfg = self.config
        return _ACTIVATIONS[cfg.hidden_act](
            _dense(cfg.intermediate_size, self.dtype, self.param_dtype, "dense")(x)
        )


class BertLayer(nn.Module):
    """One post-LayerNorm encoder layer: ``h = LN(x + attn(x))``, then ``LN(h + mlp(h))``."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, *, deterministic: bool) -> jax.Array:
        """``x: [B, L, hidden]``, ``mask_bias: [B, 1, 1, L]`` -> ``[B, L, hidden]``."""
        args = (self.config, self.dtype, self.param_dtype)
        h = BertAttention(*args, name="attention")(x, mask_bias, deterministic=deterministic)
        inner = BertIntermediate(*args, name="intermediate")(h)
        return BertAddNorm(*args, name="output")(inner, h, deterministic=deterministic)


class BertEncoder(nn.Module):
    """``num_hidden_layers`` :class:`BertLayer` s, named ``layer_0`` ... like the checkpoint's."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask_bias: jax.Array, *, deterministic: bool) -> jax.Array:
        """``x: [B, L, hidden]`` -> ``[B, L, hidden]``."""
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, self.dtype, self.param_dtype, name=f"layer_{i}")(
                x, mask_bias, deterministic=deterministic
            )
        return x


class BertPooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: BERT's next-sentence pooler on the first token."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, L, hidden]`` -> ``[B, hidden]``."""
        return jnp.tanh(_dense(self.config.hidden_size, self.dtype, self.param_dtype, "dense")(x[:, 0]))


class BertModel(nn.Module):
    """BERT: embeddings, ``num_hidden_layers`` encoder layers, and the optional tanh pooler.

    Attributes:
      config: the architecture.
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision); the attention softmax and the
        LayerNorm statistics stay in float32.
      param_dtype: parameter dtype (float32 by default, also under bf16 compute).
    """

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Encodes right-padded token ids.

        Args:
          input_ids: ``[B, L]`` int token ids.
          attention_mask: ``[B, L]``, 1 on real tokens and 0 on padding (default: all ones).
          token_type_ids: ``[B, L]`` segment ids (default: zeros).
          position_ids: ``[B, L]`` (default: ``arange(L) + config.position_offset``).
          deterministic: False enables dropout (needs a ``"dropout"`` rng).

        Returns:
          ``(sequence_output [B, L, hidden], pooled_output [B, hidden] or None)`` in ``dtype``;
          ``pooled_output`` is :class:`BertPooler`'s when ``config.add_pooling_layer``, else None.
        """
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        length = input_ids.shape[1]
        if length > cfg.max_length:
            raise ValueError(f"input length {length} exceeds the model's {cfg.max_length} positions")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length) + cfg.position_offset, input_ids.shape)

        args = (cfg, self.dtype, self.param_dtype)
        x = BertEmbeddings(*args, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic=deterministic
        )
        # Additive mask on the keys: 0 where attended, the float32 minimum on padding (as in HF).
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        x = BertEncoder(*args, name="encoder")(x, mask_bias, deterministic=deterministic)
        pooled = BertPooler(*args, name="pooler")(x) if cfg.add_pooling_layer else None
        return x, pooled


_INIT = nn.initializers.normal(stddev=0.02)


def _dense(features: int, dtype: jnp.dtype, param_dtype: jnp.dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, kernel_init=_INIT, name=name)


def _layer_norm(config: BertConfig, dtype: jnp.dtype, param_dtype: jnp.dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="LayerNorm")


# ----------------------------------------------------------------------------- parameter names


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


_HF_KEY = re.compile(r"^(?:[A-Za-z_][\w-]*\.)?((?:embeddings|encoder|pooler)\..+)$")
_LEAF_NAMES = {"gamma": "scale", "beta": "bias", "bias": "bias"}


def hf_name_to_path(name: str) -> tuple[str, ...] | None:
    """A checkpoint tensor name -> its path in the nested params tree (None: not ours).

    Accepts names with or without the model prefix (``bert.``, ``roberta.``); task heads
    (``cls.``, ``lm_head.``, ``classifier.``) and buffers (``embeddings.position_ids``) give None.
    ``weight`` becomes ``kernel`` (dense), ``scale`` (LayerNorm) or ``embedding`` (embeddings);
    legacy ``gamma``/``beta`` become ``scale``/``bias``.
    """
    match = _HF_KEY.match(name)
    if match is None or match.group(1).endswith("position_ids"):
        return None
    parts = match.group(1).split(".")
    if parts[:2] == ["encoder", "layer"] and len(parts) > 2:
        parts = ["encoder", f"layer_{parts[2]}"] + parts[3:]
    leaf, parent = parts[-1], parts[-2]
    if leaf == "weight":
        if parent == "LayerNorm":
            leaf = "scale"
        elif parent.endswith("_embeddings"):
            leaf = "embedding"
        else:
            leaf = "kernel"
    elif leaf in _LEAF_NAMES:
        leaf = _LEAF_NAMES[leaf]
    else:
        return None
    return tuple(parts[:-1]) + (leaf,)


def path_to_hf_name(path: tuple[str, ...], prefix: str = "") -> str:
    """Inverse of :func:`hf_name_to_path` (``prefix`` e.g. ``"bert."``)."""
    parts = list(path)
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[parts[-1]]
    if parts[0] == "encoder":
        parts = ["encoder", "layer", parts[1].removeprefix("layer_")] + parts[2:]
    return prefix + ".".join(parts[:-1] + [leaf])


# ----------------------------------------------------------------------------- loading


def resolve_checkpoint_dir(
    name_or_path: str | os.PathLike, allow_patterns: tuple[str, ...] = HUB_ALLOW_PATTERNS
) -> Path:
    """A local checkpoint directory for ``name_or_path``.

    An existing directory is returned as is. Anything else is taken as a Hugging Face Hub id and
    fetched with ``huggingface_hub.snapshot_download`` (only ``allow_patterns``: configs,
    safetensors, tokenizer files). With ``HF_HUB_OFFLINE=1`` only the local Hub cache is used.

    Raises:
      FileNotFoundError: ``name_or_path`` is a file, a missing local path, or a Hub id that cannot
        be fetched (offline, unknown repo, no network); the message names it and why.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists():
        raise FileNotFoundError(
            f"{text} is a file; expected a checkpoint directory (config.json + model.safetensors)."
        )
    if text.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):  # not "org/name"
        raise FileNotFoundError(
            f"checkpoint directory {text} does not exist (and it is not a Hugging Face Hub id)."
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - transformers depends on huggingface_hub
        raise FileNotFoundError(f"{text} is not a local directory and huggingface_hub is not installed.") from e
    try:
        return Path(snapshot_download(text, allow_patterns=list(allow_patterns), local_files_only=offline))
    except Exception as e:  # network errors, unknown repos, offline cache misses: one clear message
        how = (
            "HF_HUB_OFFLINE is set and it is not in the local Hub cache" if offline else "the Hub download failed"
        )
        raise FileNotFoundError(
            f"{text} is not a local directory, and as a Hugging Face Hub id it could not be loaded: {how} "
            f"({type(e).__name__}: {e}). Pass the path of a downloaded checkpoint directory instead."
        ) from e


def read_bert_config(checkpoint_dir: str | os.PathLike) -> BertConfig:
    """Parses ``checkpoint_dir/config.json`` (model_type checked; pooler assumed present)."""
    config_file = Path(checkpoint_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; a BERT checkpoint directory needs config.json.")
    with open(config_file, encoding="utf-8") as f:
        hf = json.load(f)
    return BertConfig.from_hf(hf, source=str(config_file))


def load_bert(
    name_or_path: str | os.PathLike, *, dtype: jnp.dtype = jnp.float32
) -> tuple[BertModel, dict[str, Any], BertConfig]:
    """Loads a Hugging Face BERT-family checkpoint into a Flax :class:`BertModel`.

    Args:
      name_or_path: a directory with ``config.json`` and ``model.safetensors`` (or sharded
        ``model-0000x-of-0000n.safetensors`` with its index), or a Hub id when online.
      dtype: compute dtype of the returned module; parameters are float32 either way.

    Returns:
      ``(module, params, config)``: ``module.apply({"params": params}, input_ids, attention_mask)``
      gives ``(sequence_output [B, L, hidden], pooled_output [B, hidden] or None)``. ``params``
      follows the Hugging Face names (see the module docstring) and holds NumPy float32 arrays.

    Raises:
      FileNotFoundError: missing directory, ``config.json`` or safetensors weights (a directory
        with only ``pytorch_model.bin`` is refused: pickles are never loaded).
      ValueError: ``model_type`` outside :data:`BERT_FAMILY`, or tensors that do not match the
        config (missing, unexpected, or of the wrong shape), naming them.
    """
    checkpoint_dir = resolve_checkpoint_dir(name_or_path)
    config = read_bert_config(checkpoint_dir)
    tensors = _read_safetensors(checkpoint_dir)

    loaded: dict[tuple[str, ...], np.ndarray] = {}
    for name, array in tensors.items():
        path = hf_name_to_path(name)
        if path is None:
            continue
        if path in loaded:
            raise ValueError(f"{checkpoint_dir}: two tensors map to {'/'.join(path)} (e.g. {name}).")
        array = np.asarray(array, dtype=np.float32)
        loaded[path] = array.T if path[-1] == "kernel" else array

    has_pooler = any(p[0] == "pooler" for p in loaded)
    config = dataclasses.replace(config, add_pooling_layer=has_pooler)
    module = BertModel(config, dtype=dtype)
    expected = {path: leaf.shape for path, leaf in _flatten(init_shapes(config)).items()}
    missing = sorted("/".join(p) for p in expected.keys() - loaded.keys())
    unexpected = sorted("/".join(p) for p in loaded.keys() - expected.keys())
    wrong = sorted(
        f"{'/'.join(p)}: checkpoint {loaded[p].shape} vs config {expected[p]}"
        for p in expected.keys() & loaded.keys()
        if loaded[p].shape != expected[p]
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{checkpoint_dir}: the weights do not match config.json. "
            f"missing: {missing[:8]}{'...' if len(missing) > 8 else ''}; "
            f"unexpected: {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}; wrong shape: {wrong[:8]}"
        )
    return module, _unflatten(loaded), config


def init_shapes(config: BertConfig) -> dict[str, Any]:
    """Shapes and dtypes of :class:`BertModel`'s params, without allocating them."""
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    variables = jax.eval_shape(lambda: BertModel(config).init(jax.random.key(0), jnp.zeros(ids.shape, ids.dtype)))
    return variables["params"]


def init_bert(
    config: BertConfig, rng: jax.Array, *, dtype: jnp.dtype = jnp.float32
) -> tuple[BertModel, dict[str, Any]]:
    """A randomly initialised ``(module, params)``, with BERT's initialiser (normal, stddev 0.02)."""
    module = BertModel(config, dtype=dtype)
    return module, module.init(rng, jnp.zeros((1, 2), jnp.int32))["params"]


def save_bert(path: str | os.PathLike, params: Mapping[str, Any], config: BertConfig, *, prefix: str = "") -> Path:
    """Writes ``config.json`` + ``model.safetensors`` that Hugging Face and :func:`load_bert` read.

    Args:
      path: the directory to write (created if needed).
      params: the nested params tree (as :func:`load_bert` / :func:`init_bert` return it).
      config: the architecture.
      prefix: prepended to every tensor name, e.g. ``"bert."``.
    """
    from safetensors.numpy import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for p, leaf in _flatten(params).items():
        array = np.asarray(leaf, dtype=np.float32)
        tensors[path_to_hf_name(p, prefix)] = np.ascontiguousarray(array.T if p[-1] == "kernel" else array)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with open(out / "config.json", "w", encoding="utf-8") as f:
        json.dump(config.to_hf(), f, indent=2)
    return out


def _read_safetensors(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` (or of a sharded set listed in its index)."""
    from safetensors.numpy import load_file

    single = checkpoint_dir / "model.safetensors"
    index = checkpoint_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(str(checkpoint_dir / shard)))
        return tensors
    pickles = sorted(p.name for p in checkpoint_dir.glob("*.bin")) + sorted(
        p.name for p in checkpoint_dir.glob("*.pt")
    )
    if pickles:
        raise FileNotFoundError(
            f"{checkpoint_dir} has no model.safetensors, only {pickles}: PyTorch pickle checkpoints are "
            f"refused (loading them can run arbitrary code). Convert it to safetensors first."
        )
    raise FileNotFoundError(
        f"{checkpoint_dir} has no model.safetensors (nor a sharded model.safetensors.index.json)."
    )
