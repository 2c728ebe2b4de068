"""One registry of encoders and heads: configs name them, the trainer builds them."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from mmssl_jax.models import heads, resnet, vit

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    **{name: (lambda n: lambda **kw: resnet.resnet(n, **kw))(name) for name in resnet.STAGES},
    **{name: (lambda n: lambda **kw: vit.vit(n, **kw))(name) for name in vit.SIZES},
}
HEADS: dict[str, Callable[..., nn.Module]] = {
    "simclr_mlp": heads.simclr_mlp,
    "barlow_projector": heads.barlow_projector,
    "moco_predictor": heads.moco_predictor,
    "linear_projection": heads.linear_projection,
    "text_mlp": heads.text_mlp,
}


def build_encoder(name: str, **kwargs) -> nn.Module:
    """An image encoder by name (``resnet18``, ``vit_s``...); kwargs go to its constructor."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {sorted(ENCODERS)}")
    try:
        return ENCODERS[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"encoder {name!r}: {e}") from e


def build_head(name: str, **kwargs) -> nn.Module:
    """A projection head by name (``simclr_mlp``, ``text_mlp``...); kwargs go to its constructor."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {sorted(HEADS)}")
    try:
        return HEADS[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"head {name!r}: {e}") from e
