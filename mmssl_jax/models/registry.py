"""One registry of encoders and heads: configs name them, ``build_encoder``/``build_head`` build them.

Every entry is a Flax module class and the settings its name stands for; keyword arguments
override those settings or set any other field of the module (``dtype``, ``axis_name``,
``cifar_stem``, ``patch_size``...). Encoders are called ``encoder.apply(variables, x, train=...)``
with ``x: [batch, H, W, 3]``, heads ``head.apply(variables, h, train=...)`` with ``h: [batch, d]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from mmssl_jax.models import heads, resnet, vit

ENCODERS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    **{name: (resnet.ResNet, arch) for name, arch in resnet.ARCHS.items()},
    **{name: (vit.ViT, arch) for name, arch in vit.ARCHS.items()},
}
HEADS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    name: (heads.MLPHead, settings) for name, settings in heads.RECIPES.items()
}


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    """The image encoder called ``name`` (``"resnet50"``, ``"vit_b"``...), ``kwargs`` overriding its settings.

    Raises:
      ValueError: ``name`` is not registered (the message lists the known names).
      TypeError: a keyword is not a field of the module (the message lists the fields).
    """
    return _build("encoder", ENCODERS, name, kwargs)


def build_head(name: str, **kwargs: Any) -> nn.Module:
    """The head called ``name`` (``"simclr_mlp"``, ``"text_mlp"``...), ``kwargs`` overriding its settings.

    Raises:
      ValueError: ``name`` is not registered (the message lists the known names).
      TypeError: a keyword is not a field of the module (the message lists the fields).
    """
    return _build("head", HEADS, name, kwargs)


def _build(kind: str, table: Mapping[str, tuple[type[nn.Module], dict[str, Any]]], name: str,
           kwargs: dict[str, Any]) -> nn.Module:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}")
    cls, settings = table[name]
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise TypeError(f"{kind} {name!r} ({cls.__name__}) has no field {unknown}; its fields: {', '.join(fields)}")
    return cls(**{**settings, **kwargs})
