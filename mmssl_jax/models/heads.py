"""Heads: MLPs from a representation ``h: [batch, d]`` to the embedding ``z: [batch, out_dim]``.

One module, :class:`MLPHead`, and the published recipes as its settings (``RECIPES``; build them
with ``mmssl_jax.models.build_head(name, **overrides)``):

- ``simclr_mlp`` (SimCLR v2): 3 layers, each Dense + BatchNorm, ReLU except the last; the last
  BatchNorm learns a scale but no shift; output 128.
- ``barlow_projector`` (Barlow Twins, VICReg): 8192-8192-8192, Dense + BN + ReLU hidden layers,
  a plain bias-free last Dense (the loss standardizes the output itself).
- ``moco_v2_mlp`` (MoCo v2): Dense 2048 (with bias) -> ReLU -> Dense 128 (with bias), no norm.
- ``moco_v3_projector`` (MoCo v3, ResNet-50): 2 layers, 4096 hidden, out 256, BN + ReLU hidden,
  an affine-free BatchNorm on the output (its ViT projector has 3 layers).
- ``moco_predictor`` (MoCo v3): 2 layers, 4096 hidden, out 256, Dense + BN + ReLU then Dense;
  ``last_bn=True`` adds MoCo v3's affine-free output BatchNorm (its ViT recipe).
- ``byol_mlp`` (BYOL projector and predictor): 4096 hidden with BN + ReLU, a bias-free Dense 256.
- ``simsiam_projector`` (SimSiam): 3 x 2048, BN + ReLU hidden, an affine-free output BatchNorm.
- ``simsiam_predictor`` (SimSiam): 2048 -> 512 (BN, ReLU) -> 2048 with a bias, no output norm.
- ``linear_projection`` (CLIP): one bias-free Dense.
- ``text_mlp``: the text head, from a precomputed sentence embedding (e.g. 384-d MiniLM) into
  the joint space; 2 layers, LayerNorm rather than BatchNorm by default, so a caption's
  embedding does not depend on the other captions in its batch.

Dense layers followed by BatchNorm carry no bias (BatchNorm's shift makes it redundant).
``train`` and ``axis_name`` mean what they mean for the ResNet (see ``resnet.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "layer", None)


class MLPHead(nn.Module):
    """``h: [batch, d] -> z: [batch, out_dim]``: ``num_layers`` Dense layers.

    Hidden layers: Dense (``hidden_dim``) -> ``norm`` -> ReLU. Last layer: Dense (``out_dim``),
    then BatchNorm if ``last_bn`` (no shift; a learned scale if ``last_bn_scale``); no ReLU.

    Attributes:
      hidden_dim: width of the hidden layers.
      out_dim: width of the output ``z``.
      num_layers: Dense layers in all (1 is a linear projection).
      norm: after each hidden Dense: ``"batch"`` (BatchNorm), ``"layer"`` (LayerNorm) or ``None``.
      last_bn: BatchNorm on the output (SimCLR v2; MoCo v3's projector).
      last_bn_scale: that BatchNorm learns a scale (SimCLR v2) or is affine-free (MoCo v3).
      out_bias: a bias on the last Dense when no BatchNorm follows it.
      dtype: computation dtype; parameters and BatchNorm statistics stay ``param_dtype``.
      param_dtype: dtype of the parameters.
      axis_name: mapped axis (``shard_map``/``pmap``) to average BatchNorm statistics over.
      bn_momentum: decay of BatchNorm's running averages.
      bn_epsilon: BatchNorm's epsilon.
    """

    hidden_dim: int = 2048
    out_dim: int = 128
    num_layers: int = 3
    norm: str | None = "batch"
    last_bn: bool = True
    last_bn_scale: bool = True
    out_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, h: jax.Array, *, train: bool) -> jax.Array:
        """``h: [batch, d]`` -> ``z: [batch, out_dim]``."""
        if h.ndim != 2:
            raise ValueError(f"MLPHead expects h: [batch, features], got shape {h.shape}")
        if self.num_layers < 1:
            raise ValueError(f"MLPHead: num_layers must be >= 1, got {self.num_layers}")
        if self.norm not in NORMS:
            raise ValueError(f"MLPHead: norm must be one of {NORMS}, got {self.norm!r}")
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        batch_norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
        )

        x = jnp.asarray(h, self.dtype)
        for i in range(1, self.num_layers):
            x = dense(self.hidden_dim, use_bias=self.norm != "batch", name=f"dense{i}")(x)
            if self.norm == "batch":
                x = batch_norm(name=f"bn{i}")(x)
            elif self.norm == "layer":
                x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"ln{i}")(x)
            x = nn.relu(x)
        last = self.num_layers
        x = dense(self.out_dim, use_bias=self.out_bias and not self.last_bn, name=f"dense{last}")(x)
        if self.last_bn:
            x = batch_norm(use_bias=False, use_scale=self.last_bn_scale, name=f"bn{last}")(x)
        return x


RECIPES: dict[str, dict[str, Any]] = {
    "simclr_mlp": dict(hidden_dim=2048, out_dim=128, num_layers=3, norm="batch", last_bn=True, last_bn_scale=True),
    "barlow_projector": dict(hidden_dim=8192, out_dim=8192, num_layers=3, norm="batch", last_bn=False),
    "moco_v2_mlp": dict(hidden_dim=2048, out_dim=128, num_layers=2, norm=None, last_bn=False, out_bias=True),
    "moco_v3_projector": dict(hidden_dim=4096, out_dim=256, num_layers=2, norm="batch", last_bn=True,
                              last_bn_scale=False),
    "moco_predictor": dict(hidden_dim=4096, out_dim=256, num_layers=2, norm="batch", last_bn=False,
                           last_bn_scale=False),
    "byol_mlp": dict(hidden_dim=4096, out_dim=256, num_layers=2, norm="batch", last_bn=False),
    "simsiam_projector": dict(hidden_dim=2048, out_dim=2048, num_layers=3, norm="batch", last_bn=True,
                              last_bn_scale=False),
    "simsiam_predictor": dict(hidden_dim=512, out_dim=2048, num_layers=2, norm="batch", last_bn=False,
                              out_bias=True),
    "linear_projection": dict(out_dim=512, num_layers=1, norm=None, last_bn=False),
    "text_mlp": dict(hidden_dim=1024, out_dim=128, num_layers=2, norm="layer", last_bn=False),
}
"""The published heads as :class:`MLPHead` settings (see the module docstring)."""
