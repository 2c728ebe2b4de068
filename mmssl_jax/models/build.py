"""The multi-view model a config describes: encoders and heads found by name in the registry."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from mmssl_jax.models.multiview import MultiViewModel
from mmssl_jax.models.registry import build_encoder, build_head


def build_model(config: ml_collections.ConfigDict) -> MultiViewModel:
    """``config.encoders`` / ``config.heads`` / ``config.predictors`` (modality -> ``{name,
    kwargs}``; name ``"none"``: identity), ``config.views`` and ``config.learned_scalars`` as a
    :class:`MultiViewModel`."""
    dtype = jnp.dtype(config.get("dtype", "float32"))
    encoders, heads, predictors = {}, {}, {}
    for modality, spec in config.encoders.items():
        if spec.name not in (None, "", "none"):
            encoders[modality] = build_encoder(spec.name, dtype=dtype, **dict(spec.get("kwargs", {})))
    for modality, spec in config.heads.items():
        if spec.name not in (None, "", "none"):
            heads[modality] = build_head(spec.name, dtype=dtype, **dict(spec.get("kwargs", {})))
    for modality, spec in dict(config.get("predictors") or {}).items():
        if spec.name not in (None, "", "none"):
            predictors[modality] = build_head(spec.name, dtype=dtype, **dict(spec.get("kwargs", {})))
    view_modality = tuple((name, view.modality) for name, view in sorted(config.views.items()))
    scalars = tuple(sorted(dict(config.get("learned_scalars", {})).items()))
    return MultiViewModel(view_modality=view_modality, encoders=encoders, heads=heads,
                          predictors=predictors or None, scalars=scalars)
