"""A method's objective: the weighted sum of its loss terms over the views' embeddings.

A loss term is ``{"a": view, "b": view, "loss": name, "weight": w, "kwargs": {...}}`` (see
``config_base.term``); the loss functions are those of :mod:`mmssl_jax.losses`, found by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mmssl_jax import losses

LOSS_FNS: dict[str, Callable[..., jax.Array]] = {
    "nt_xent": losses.nt_xent,
    "info_nce": losses.info_nce,
    "clip": losses.clip,
    "siglip": losses.siglip,
    "barlow_twins": losses.barlow_twins,
    "vicreg": losses.vicreg,
}
"""Loss names a config's ``loss_terms`` may use."""

CONTRASTIVE = {"nt_xent", "info_nce", "clip", "siglip"}
MOMENTUM_SUFFIX = "@momentum"  # "image2@momentum": the view through the momentum encoder


def term_name(term: Mapping[str, Any]) -> str:
    return f"{term['loss']}/{term['a']}-{term['b']}"


def method_loss(
    z: Mapping[str, jax.Array],
    scalars: Mapping[str, jax.Array],
    terms: Sequence[Mapping[str, Any]],
    queue: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of a method's loss terms, and the metrics to log.

    Args:
      z: view name -> embeddings ``[B, dim]`` (momentum views under ``"view@momentum"``).
      scalars: learnable scalars (``logit_scale``, ``logit_bias``) by name.
      terms: each ``{"a", "b", "loss", "weight", "kwargs"}``; a kwarg value ``"learned:NAME"``
        is replaced by the learnable scalar NAME, ``"queue"`` by the MoCo queue.
      queue: the MoCo queue ``[K, dim]`` if the method has one.
    """
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for term in terms:
        kwargs = {}
        for key, value in dict(term.get("kwargs", {})).items():
            if isinstance(value, str) and value.startswith("learned:"):
                value = scalars[value.split(":", 1)[1]]
            elif isinstance(value, str) and value == "queue":
                value = jax.lax.stop_gradient(queue)
            kwargs[key] = value
        a, b = z[term["a"]], z[term["b"]]
        value = LOSS_FNS[term["loss"]](a, b, **kwargs)
        name = term_name(term)
        metrics[f"loss/{name}"] = value
        if term["loss"] in CONTRASTIVE:
            metrics[f"accuracy/{name}"] = losses.positive_pair_accuracy(a, b)
        total = total + term.get("weight", 1.0) * value
    metrics["loss"] = total
    for name, value in scalars.items():
        metrics[f"scalar/{name}"] = value
        if name == "logit_scale":
            metrics["scalar/temperature"] = jnp.exp(-value)
    return total, metrics
