"""A method's objective: the weighted sum of its loss terms over the views' embeddings.

A loss term is ``{"a": side, "b": side, "loss": name, "weight": w, "kwargs": {...}}`` (see
``config_base.term``); the loss functions are those of :mod:`mmssl_jax.losses`, found by name.

A side names a view and where its embedding comes from: ``"image1"`` is the head's output ``z``
of the online branch, ``"image1:p"`` its predictor's output (BYOL, SimSiam, MoCo v3) and
``"image2@momentum"`` the head's output of the target branch (the EMA copy: MoCo, BYOL). The
trainer computes exactly the views and branches the terms name (:func:`branch_views`).

Partially paired batches (DESIGN.md's "partially paired image+caption"): a per-view sample mask
(``where={"text": has_text}``) reaches every term that reads a masked view, so the image-text
terms train on the captioned samples and the image terms on every sample. Only the
:data:`MASKABLE` losses take a mask.
"""

from __future__ import annotations

import functools
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
MASKABLE = CONTRASTIVE
"""Losses that take a per-sample ``where=`` mask (the batch statistics of Barlow Twins and VICReg
and the target regressions of BYOL and SimSiam have none yet)."""
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


def term_mask(term: Mapping[str, Any], where: Mapping[str, jax.Array] | None) -> jax.Array | None:
    """The samples a term trains on: the AND of the masks of the views its sides read (``None``:
    every sample). A mask reaching a loss outside :data:`MASKABLE` is refused."""
    masks = [where[view] for view in {parse_side(term["a"])[0], parse_side(term["b"])[0]} if view in (where or {})]
    if not masks:
        return None
    if term["loss"] not in MASKABLE:
        raise ValueError(f"loss term {term_name(term)} reads a partially present view, but {term['loss']} takes "
                         f"no per-sample mask; use one of {sorted(MASKABLE)}")
    return functools.reduce(jnp.logical_and, masks)


def method_loss(
    z: Mapping[str, jax.Array],
    scalars: Mapping[str, jax.Array],
    terms: Sequence[Mapping[str, Any]],
    queue: jax.Array | None = None,
    where: Mapping[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of a method's loss terms, and the metrics to log.

    Args:
      z: side name -> embeddings ``[B, dim]`` (:func:`side_embeddings`).
      scalars: learnable scalars (``logit_scale``, ``logit_bias``) by name.
      terms: each ``{"a", "b", "loss", "weight", "kwargs"}``; a kwarg value ``"learned:NAME"``
        is replaced by the learnable scalar NAME, ``"queue"`` by the MoCo queue.
      queue: the MoCo queue ``[K, dim]`` if the method has one.
      where: view name -> bool ``[B]``, the samples that have that view (``{"text": has_text}``
        in a partially paired batch); a term reading such a view trains on those samples only.
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
        mask = term_mask(term, where)
        if mask is not None:
            kwargs["where"] = mask
        value = LOSS_FNS[term["loss"]](a, b, **kwargs)
        name = term_name(term)
        metrics[f"loss/{name}"] = value
        if term["loss"] in CONTRASTIVE:
            metrics[f"accuracy/{name}"] = losses.positive_pair_accuracy(a, b, where=mask)
        total = total + term.get("weight", 1.0) * value
    metrics["loss"] = total
    for name, value in scalars.items():
        metrics[f"scalar/{name}"] = value
        if name == "logit_scale":
            metrics["scalar/temperature"] = jnp.exp(-value)
    return total, metrics
