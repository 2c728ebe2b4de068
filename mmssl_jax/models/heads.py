"""Projection heads: SimCLR's MLP, the Barlow Twins/VICReg projector, MoCo v3's predictor,
a linear projection (CLIP), and the text head on precomputed sentence embeddings."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPHead(nn.Module):
    """``h: [B, d] -> z: [B, out_dim]``: ``num_layers`` Dense layers.

    Hidden layers are Dense (+ BatchNorm) + ReLU; the last is Dense (+ BatchNorm without a
    learned scale/shift when ``last_bn``, as SimCLR v2 and MoCo v3 do).

    Attributes:
      hidden_dim, out_dim, num_layers: sizes (num_layers=1 is a linear projection).
      batch_norm: BatchNorm after hidden layers; last_bn: BatchNorm (no affine) on the output.
      layer_norm: LayerNorm instead, for heads on precomputed text embeddings.
      bn_axis_name: mapped axis for cross-device BatchNorm statistics.
    """

    hidden_dim: int = 2048
    out_dim: int = 128
    num_layers: int = 3
    batch_norm: bool = True
    last_bn: bool = True
    layer_norm: bool = False
    use_bias: bool = True
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool = True) -> jax.Array:
        if h.ndim != 2:
            raise ValueError(f"heads take [batch, features], got shape {h.shape}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype, axis_name=self.bn_axis_name)
        x = jnp.asarray(h, self.dtype)
        for i in range(self.num_layers - 1):
            x = nn.Dense(self.hidden_dim, use_bias=not self.batch_norm and self.use_bias, dtype=self.dtype)(x)
            if self.batch_norm:
                x = norm()(x)
            elif self.layer_norm:
                x = nn.LayerNorm(dtype=self.dtype)(x)
            x = nn.relu(x)
        x = nn.Dense(self.out_dim, use_bias=not self.last_bn and self.use_bias, dtype=self.dtype)(x)
        if self.last_bn:
            x = norm(use_scale=False, use_bias=False)(x)
        return x


def simclr_mlp(hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 3, **kw) -> MLPHead:
    """SimCLR v2's projection head: 3 Dense+BN layers, ReLU except the last, output 128."""
    return MLPHead(hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers, **kw)


def barlow_projector(hidden_dim: int = 8192, out_dim: int = 8192, num_layers: int = 3, **kw) -> MLPHead:
    """Barlow Twins / VICReg projector: 8192-8192-8192, BN+ReLU; the output goes unnormalized
    into the loss (which standardizes it itself)."""
    return MLPHead(hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers, last_bn=False, **kw)


def moco_predictor(hidden_dim: int = 4096, out_dim: int = 256, num_layers: int = 2, **kw) -> MLPHead:
    """MoCo v3's predictor: 2 layers, BN+ReLU hidden, BN (no affine) on the output."""
    return MLPHead(hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers, **kw)


def linear_projection(out_dim: int = 512, **kw) -> MLPHead:
    """CLIP's projection: one Dense layer without bias."""
    return MLPHead(out_dim=out_dim, num_layers=1, last_bn=False, use_bias=False, batch_norm=False, **kw)


def text_mlp(hidden_dim: int = 1024, out_dim: int = 128, num_layers: int = 2, **kw) -> MLPHead:
    """The text head: an MLP from a precomputed sentence embedding (e.g. 384-d MiniLM) into the
    joint space; LayerNorm rather than BatchNorm, so a caption's embedding does not depend on
    the other captions in its batch."""
    kw.setdefault("batch_norm", False)
    kw.setdefault("layer_norm", True)
    return MLPHead(hidden_dim=hidden_dim, out_dim=out_dim, num_layers=num_layers, last_bn=False, **kw)
