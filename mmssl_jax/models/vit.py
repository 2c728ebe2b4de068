"""Vision Transformer (ViT-Ti/S/B) image encoders, Flax linen.

``x: [batch, H, W, 3] -> h: [batch, width]`` (192 / 384 / 768), or logits
``[batch, num_classes]`` with a classification head.

As in Dosovitskiy et al. and big_vision: non-overlapping ``patch_size`` patches embedded by a
strided convolution, learned position embeddings, pre-LayerNorm blocks (multi-head
self-attention, then a GELU MLP), a final LayerNorm, and either the class token (``pool="cls"``)
or the mean of the patch tokens (``pool="gap"``, no class token) as the representation. No
dropout: ``train`` is accepted for a uniform encoder interface and changes nothing.

The position embedding has one row per token, so its shape is fixed by the image size at
``init``: initialize with the image size you train on.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_DENSE_INIT = nn.initializers.xavier_uniform()


class MlpBlock(nn.Module):
    """``x: [batch, tokens, width] -> [batch, tokens, width]`` through a ``mlp_dim`` GELU layer."""

    mlp_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(
            nn.Dense, kernel_init=_DENSE_INIT, bias_init=nn.initializers.normal(1e-6),
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        y = nn.gelu(dense(self.mlp_dim, name="fc1")(x), approximate=False)
        return dense(x.shape[-1], name="fc2")(y)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x: [batch, tokens, width] -> [batch, tokens, width]``."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype)
        y = norm(name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=_DENSE_INIT, force_fp32_for_softmax=True,
            dtype=self.dtype, param_dtype=self.param_dtype, name="attention",
        )(y)
        x = x + y
        y = MlpBlock(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(norm(name="norm2")(x))
        return x + y


class ViT(nn.Module):
    """A Vision Transformer encoder: ``x: [batch, H, W, 3] -> h: [batch, width]``.

    Attributes:
      width: token (hidden) dimension.
      depth: number of transformer blocks.
      num_heads: attention heads (``width`` must divide by it).
      mlp_dim: hidden width of each block's MLP.
      patch_size: side of the square patches; ``H`` and ``W`` must be multiples of it.
      pool: ``"cls"`` (a learned class token, its final state is ``h``) or ``"gap"`` (no class
        token, ``h`` is the mean of the patch tokens).
      num_classes: add a linear classifier (zero-initialized, as big_vision) and return logits;
        ``None`` returns ``h``.
      dtype: computation dtype, e.g. ``jnp.bfloat16`` (LayerNorm and the attention softmax
        compute in float32); parameters stay ``param_dtype``.
      param_dtype: dtype of the parameters.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 16
    pool: str = "cls"
    num_classes: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``x: [batch, H, W, 3]`` -> ``[batch, width]`` (or ``[batch, num_classes]``)."""
        del train  # no dropout, no BatchNorm
        if x.ndim != 4:
            raise ValueError(f"ViT expects images x: [batch, height, width, channels], got shape {x.shape}")
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"ViT: image size {tuple(x.shape[1:3])} is not a multiple of patch_size={p}")
        if self.pool not in ("cls", "gap"):
            raise ValueError(f"ViT: pool must be 'cls' or 'gap', got {self.pool!r}")

        x = jnp.asarray(x, self.dtype)
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                    dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embed")(x)
        batch, h, w, _ = x.shape
        x = x.reshape(batch, h * w, self.width)  # [batch, patches, width]
        if self.pool == "cls":
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.width)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.width), self.param_dtype)
        x = x + pos.astype(x.dtype)

        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=f"block{i + 1}")(x)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)  # [batch, width]

        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="classifier")(x)
        return x


ARCHS: dict[str, dict[str, Any]] = {
    "vit_ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "vit_s": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "vit_b": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}
"""The named sizes: ``ViT(**ARCHS[name], patch_size=...)``; ``build_encoder(name)`` is the usual way."""
