"""The multi-view model: every view through its modality's encoder and head.

A method is data (see the design notes): views name their modality, views of one modality share
one encoder and one head, and the loss terms pair the resulting embeddings. Views of one
modality are concatenated into a single forward pass, so BatchNorm sees all of them at once, as
SimCLR's reference implementation does.

Branches: the *online* branch is encoder -> head -> predictor (when the modality has a
predictor: BYOL, SimSiam, MoCo v3); a *target* branch (an EMA copy of the parameters, run by the
trainer) is the same model called with ``predict=False``, so it has its own, shorter head stack.
A call computes only the views it is asked for (``views=``): MoCo's query branch sees only the
query view, and its BatchNorm statistics only that view's samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MultiViewModel(nn.Module):
    """Views -> representations ``h`` and embeddings ``z``.

    Attributes:
      view_modality: ``(view, modality)`` pairs, e.g. ``(("image1", "image"), ("text", "text"))``.
      encoders: modality -> encoder module (``x -> h``); a modality without one (precomputed
        sentence embeddings) passes its input through as ``h``.
      heads: modality -> head module (``h -> z``); a modality without one uses ``z = h``.
      predictors: modality -> predictor (``z -> p``) of the online branch; none: no ``p``.
      scalars: learnable scalars and their initial values, e.g. ``(("logit_scale", 2.66),)``.
    """

    view_modality: Sequence[tuple[str, str]]
    encoders: Mapping[str, nn.Module]
    heads: Mapping[str, nn.Module]
    predictors: Mapping[str, nn.Module] | None = None
    scalars: Sequence[tuple[str, float]] = ()

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool, views: Sequence[str] | None = None,
                 predict: bool = True) -> dict[str, Any]:
        """``batch[view]: [B, ...]`` -> ``{"h": {view: [B, d_h]}, "z": {view: [B, dim]},
        "p": {view: [B, dim]}, "scalars": {...}}`` for ``views`` (default: every view).

        ``p`` (the predictor's output) is there for views whose modality has a predictor, when
        ``predict``; the target branch calls with ``predict=False``.
        """
        wanted = [v for v, _ in self.view_modality] if views is None else list(views)
        unknown = sorted(set(wanted) - {v for v, _ in self.view_modality})
        if unknown:
            raise KeyError(f"the model has no view {unknown}; it has {[v for v, _ in self.view_modality]}")
        predictors = self.predictors or {}
        z, h, p = {}, {}, {}
        modalities = sorted({m for v, m in self.view_modality if v in wanted})
        for modality in modalities:
            names = [v for v, m in self.view_modality if m == modality and v in wanted]
            missing = [v for v in names if v not in batch]
            if missing:
                raise KeyError(f"the batch has no view {missing}; it has {sorted(batch)}")
            x = jnp.concatenate([batch[v] for v in names]) if len(names) > 1 else batch[names[0]]
            encoder = self.encoders.get(modality)
            features = encoder(x, train=train) if encoder is not None else x
            head = self.heads.get(modality)
            out = head(features, train=train) if head is not None else features
            for name, hi, zi in zip(names, jnp.split(features, len(names)), jnp.split(out, len(names))):
                h[name], z[name] = hi, zi
            predictor = predictors.get(modality)
            if predictor is not None and predict:
                for name, pi in zip(names, jnp.split(predictor(out, train=train), len(names))):
                    p[name] = pi
        scalars = {
            name: self.param(name, nn.initializers.constant(value), (), jnp.float32)
            for name, value in self.scalars
        }
        return {"z": z, "h": h, "p": p, "scalars": scalars}

    def encode(self, x: jax.Array, modality: str) -> jax.Array:
        """The frozen representation ``h`` of one modality (for probes and retrieval), eval mode."""
        encoder = self.encoders.get(modality)
        return encoder(x, train=False) if encoder is not None else x

    def represent(self, x: jax.Array, modality: str) -> tuple[jax.Array, jax.Array]:
        """Eval mode ``(h, z)`` of one modality: the encoder's representation (linear probe, kNN)
        and the head's embedding in the joint space (zero-shot, retrieval)."""
        h = self.encode(x, modality)
        head = self.heads.get(modality)
        return h, (head(h, train=False) if head is not None else h)
