"""Vision Transformer (ViT-Ti/S/B) as a Flax linen module, patch size configurable."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SIZES = {  # hidden, depth, heads, mlp
    "vit_ti": (192, 12, 3, 768),
    "vit_s": (384, 12, 6, 1536),
    "vit_b": (768, 12, 12, 3072),
}


class EncoderBlock(nn.Module):
    hidden: int
    heads: int
    mlp: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype)(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
        y = nn.Dense(self.mlp, dtype=self.dtype)(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(self.hidden, dtype=self.dtype)(y)
        return x + y


class ViT(nn.Module):
    """``x: [B, H, W, 3] -> h: [B, hidden]`` (or logits with ``num_classes``).

    Attributes:
      hidden, depth, heads, mlp: the transformer's size.
      patch_size: side of the square patches (16 for ViT-B/16).
      pool: ``"cls"`` (class token) or ``"gap"`` (mean of the patch tokens).
      num_classes: add a linear classifier; ``None`` returns the pooled representation.
    """

    hidden: int
    depth: int
    heads: int
    mlp: int
    patch_size: int = 16
    pool: str = "cls"
    num_classes: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = True) -> jax.Array:
        del train  # no dropout or BatchNorm
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ViT expects images [batch, height, width, 3], got shape {x.shape}")
        if x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
            raise ValueError(f"image size {x.shape[1:3]} is not a multiple of patch_size={self.patch_size}")
        if self.pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
        x = jnp.asarray(x, self.dtype)
        p = self.patch_size
        x = nn.Conv(self.hidden, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed")(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if self.pool == "cls":
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, c))
            x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)).astype(x.dtype), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], c))
        x = x + pos.astype(x.dtype)
        for i in range(self.depth):
            x = EncoderBlock(self.hidden, self.heads, self.mlp, dtype=self.dtype, name=f"block{i}")(x)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="final_norm")(x)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x[:, :], axis=1)
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return x


def vit(name: str, **kwargs) -> ViT:
    hidden, depth, heads, mlp = SIZES[name]
    return ViT(hidden=hidden, depth=depth, heads=heads, mlp=mlp, **kwargs)
