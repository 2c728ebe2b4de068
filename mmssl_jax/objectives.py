"""A method's objective: the weighted sum of its loss terms over the views' embeddings.

A loss term is ``{"a": side, "b": side, "loss": name, "weight": w, "kwargs": {...}}`` (see
``config_base.term``); the loss functions are those of :mod:`mmssl_jax.losses`, found by name.

A side names a view and where its embedding comes from: ``"image1"`` is the head's output ``z``
of the online branch, ``"image1:p"`` its predictor's output (BYOL, SimSiam, MoCo v3) and
``"image2@momentum"`` the head's output of the target branch (the EMA copy: MoCo, BYOL). The
trainer computes exactly the views and branches the terms name (:func:`branch_views`).
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
    "byol": losses.byol,
    "negative_cosine": losses.negative_cosine,
}
"""Loss names a config's ``loss_terms`` may use."""

CONTRASTIVE = {"nt_xent", "info_nce", "clip", "siglip"}
MOMENTUM_SUFFIX = "@momentum"  # "image2@momentum": the view through the target (EMA) branch
PREDICTION_SUFFIX = ":p"  # "image1:p": the online branch's predictor output


def parse_side(side: str) -> tuple[str, str, str]:
    """``"image1:p"`` -> ``("image1", "online", "p")``; ``"image2@momentum"`` -> ``("image2", "target", "z")``."""
    output = "z"
    if side.endswith(PREDICTION_SUFFIX):
        side, output = side[: -len(PREDICTION_SUFFIX)], "p"
    if side.endswith(MOMENTUM_SUFFIX):
        if output == "p":
            raise ValueError(f"{side}{PREDICTION_SUFFIX}: the target branch has no predictor")
        return side[: -len(MOMENTUM_SUFFIX)], "target", output
    return side, "online", output


def branch_views(terms: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The views the online and the target branch must compute for these terms (sorted)."""
    online, target = set(), set()
    for term in terms:
        for side in (term["a"], term["b"]):
            view, branch, _ = parse_side(side)
            (online if branch == "online" else target).add(view)
    return tuple(sorted(online)), tuple(sorted(target))


def side_embeddings(online: Mapping[str, Any], target: Mapping[str, Any] | None) -> dict[str, jax.Array]:
    """Side name -> embedding from the branches' outputs (``{"z": {...}, "p": {...}}``)."""
    out = dict(online["z"])
    out.update({f"{view}{PREDICTION_SUFFIX}": p for view, p in online.get("p", {}).items()})
    if target is not None:
        out.update({f"{view}{MOMENTUM_SUFFIX}": jax.lax.stop_gradient(z) for view, z in target["z"].items()})
    return out


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
      z: side name -> embeddings ``[B, dim]`` (:func:`side_embeddings`).
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
