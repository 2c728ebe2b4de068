"""ResNet-18/34/50 (v1.5) image encoders, Flax linen.

``x: [batch, H, W, 3] -> h: [batch, features]`` (512 for ResNet-18/34, 2048 for ResNet-50 at
the paper's width), or logits ``[batch, num_classes]`` with a classification head.

- v1.5 (as torchvision and the MLPerf reference): in a bottleneck block the stride sits on the
  3x3 convolution, not on the first 1x1.
- Padding is explicit and symmetric, as in PyTorch (XLA's ``"SAME"`` pads stride-2 convolutions
  on one side only), so weights ported from torchvision give the same features.
- ``cifar_stem=True``: a 3x3 stride-1 first convolution and no max-pool, for 32 px images
  (SimCLR's CIFAR-10 setting): the last stage then works on 4x4 maps instead of 1x1.
- BatchNorm: ``train=True`` normalizes with the batch's statistics and updates the running
  averages in the ``batch_stats`` collection (apply with ``mutable=["batch_stats"]``);
  ``train=False`` uses the running averages. ``axis_name`` averages the batch statistics over
  the devices of that mapped axis inside ``shard_map``/``pmap`` (SimCLR's global BatchNorm);
  under ``jit`` on a global batch sharded over a mesh the statistics are global already, so
  leave it ``None`` there.
- The last BatchNorm of each residual branch starts at zero scale (Goyal et al., SimCLR's
  reference code), so each block starts as the identity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# He initialization, fan-out, as torchvision's ResNet.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_PAD3 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34): ``x: [batch, H, W, C] -> [batch, H/s, W/s, filters]``."""

    filters: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    zero_init_residual: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.conv(self.filters, (3, 3), self.strides, padding=_PAD3, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), padding=_PAD3, name="conv2")(y)
        y = self.norm(scale_init=last_scale, name="bn2")(y)
        if x.shape != y.shape:
            x = self.conv(self.filters, (1, 1), self.strides, name="proj_conv")(x)
            x = self.norm(name="proj_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided: v1.5), 1x1 convolutions (ResNet-50):
    ``x: [batch, H, W, C] -> [batch, H/s, W/s, 4 * filters]``."""

    filters: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    zero_init_residual: bool = True
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = nn.relu(self.norm(name="bn1")(self.conv(self.filters, (1, 1), name="conv1")(x)))
        y = self.conv(self.filters, (3, 3), self.strides, padding=_PAD3, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.filters * self.expansion, (1, 1), name="conv3")(y)
        y = self.norm(scale_init=last_scale, name="bn3")(y)
        if x.shape != y.shape:
            x = self.conv(self.filters * self.expansion, (1, 1), self.strides, name="proj_conv")(x)
            x = self.norm(name="proj_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet v1.5 encoder: ``x: [batch, H, W, 3] -> h: [batch, features]``.

    Call as ``model.apply(variables, x, train=...)``; with ``train=True`` also pass
    ``mutable=["batch_stats"]`` and take the updated statistics from the second output.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50).
      width: channels of the stem and the first stage (64 in the paper; smaller for quick runs).
        Stage ``i`` has ``width * 2**i`` filters (times 4 out of a bottleneck).
      cifar_stem: 3x3 stride-1 stem without max-pool (32 px images) instead of the 7x7
        stride-2 stem and 3x3 stride-2 max-pool.
      num_classes: add a linear classifier and return logits; ``None`` returns the pooled
        features ``h``.
      dtype: computation dtype, e.g. ``jnp.bfloat16``; parameters and BatchNorm statistics stay
        ``param_dtype`` (float32) and BatchNorm reduces in float32.
      param_dtype: dtype of the parameters.
      axis_name: mapped axis (``shard_map``/``pmap``) to average BatchNorm statistics over.
      bn_momentum: decay of BatchNorm's running averages (0.9, as SimCLR; PyTorch's 0.1).
      bn_epsilon: BatchNorm's epsilon.
      zero_init_residual: start the last BatchNorm scale of every block at zero.
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    width: int = 64
    cifar_stem: bool = False
    num_classes: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    zero_init_residual: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """``x: [batch, H, W, 3]`` -> ``[batch, features]`` (or ``[batch, num_classes]``)."""
        if x.ndim != 4:
            raise ValueError(f"ResNet expects images x: [batch, height, width, channels], got shape {x.shape}")
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if self.block not in blocks:
            raise ValueError(f"ResNet block must be one of {sorted(blocks)}, got {self.block!r}")
        conv = functools.partial(
            nn.Conv, use_bias=False, padding="VALID", kernel_init=_CONV_INIT,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
        )

        x = jnp.asarray(x, self.dtype)
        if self.cifar_stem:
            x = conv(self.width, (3, 3), padding=_PAD3, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        else:
            x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD3)

        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = blocks[self.block](
                    filters=self.width * 2**stage,
                    strides=2 if stage > 0 and i == 0 else 1,
                    conv=conv,
                    norm=norm,
                    zero_init_residual=self.zero_init_residual,
                    name=f"stage{stage + 1}_block{i + 1}",
                )(x)

        x = jnp.mean(x, axis=(1, 2))  # global average pool: [batch, features]
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(x)
        return x


ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
}
"""The named depths: ``ResNet(**ARCHS[name], ...)``; ``build_encoder(name)`` is the usual way."""
