"""ResNet-18/34/50 (v1.5) as Flax linen modules, with an optional CIFAR stem.

v1.5: in bottleneck blocks the stride sits on the 3x3 convolution (as torchvision). BatchNorm
can average its batch statistics across devices (``bn_axis_name``) inside ``shard_map``/``pmap``;
under ``jit`` on a sharded global batch the statistics are global already.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BasicBlock(nn.Module):
    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype, axis_name=self.bn_axis_name)
        residual = x
        y = nn.relu(norm()(conv(self.filters, (3, 3), self.strides, padding=1)(x)))
        y = norm(scale_init=nn.initializers.zeros)(conv(self.filters, (3, 3), padding=1)(y))
        if residual.shape != y.shape:
            residual = norm()(conv(self.filters, (1, 1), self.strides)(residual))
        return nn.relu(residual + y)


class Bottleneck(nn.Module):
    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype, axis_name=self.bn_axis_name)
        residual = x
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.filters, (3, 3), self.strides, padding=1)(y)))  # v1.5
        y = norm(scale_init=nn.initializers.zeros)(conv(self.filters * self.expansion, (1, 1))(y))
        if residual.shape != y.shape:
            residual = norm()(conv(self.filters * self.expansion, (1, 1), self.strides)(residual))
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """``x: [B, H, W, 3] -> h: [B, features]`` (or logits ``[B, num_classes]`` with a head).

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: ``"basic"`` or ``"bottleneck"``.
      width: channels of the first stage (64 in the paper; smaller for quick CPU runs).
      cifar_stem: 3x3 stride-1 first convolution and no max-pool (SimCLR on 32 px images).
      num_classes: add a linear classifier; ``None`` returns the pooled features.
      dtype: computation dtype (parameters stay float32).
      bn_axis_name: mapped axis to average BatchNorm statistics over (``shard_map``/``pmap``).
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    width: int = 64
    cifar_stem: bool = False
    num_classes: int | None = None
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = True) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNet expects images [batch, height, width, 3], got shape {x.shape}")
        x = jnp.asarray(x, self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype, axis_name=self.bn_axis_name)
        if self.cifar_stem:
            x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        else:
            x = nn.Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
        for stage, blocks in enumerate(self.stage_sizes):
            for b in range(blocks):
                strides = 2 if stage > 0 and b == 0 else 1
                x = block_cls(self.width * 2**stage, strides, dtype=self.dtype, bn_axis_name=self.bn_axis_name)(
                    x, train=train
                )
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return x


STAGES = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
}


def resnet(name: str, **kwargs) -> ResNet:
    stages, block = STAGES[name]
    return ResNet(stage_sizes=stages, block=block, **kwargs)
