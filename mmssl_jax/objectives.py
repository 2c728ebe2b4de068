"""A method's objective: the weighted sum of its loss terms over the views' embeddings.

A loss term is ``{"a": side, "b": side, "loss": name, "weight": w, "kwargs": {...}}`` (see
``config_base.term``); the loss functions are those of :mod:`mmssl_jax.losses`, found by name.

A side names a view and where its embedding comes from: ``"image1"`` is the head's output ``z``
of the online branch, ``"image1:p"`` its predictor's output (BYOL, SimSiam, MoCo v3) and
``"image2@momentum"`` the head's output of the target branch (the EMA copy: MoCo, BYOL). The
trainer computes exactly the views and branches the terms name (:func:`branch_views`).

With ``config.loss.chunk_size`` the trainer computes the objective on the device ring
(:func:`ring_method_loss`): inside ``shard_map`` over the data axis, each device holds its own
rows of every embedding, and every contrastive term (and its accuracy metric) streams the other
devices' columns around a ``ppermute`` ring in ``chunk_size`` tiles (:mod:`mmssl_jax.streaming`).
The values and gradients are those of the global-batch objective, to float32 rounding.

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
from jax.sharding import Mesh, PartitionSpec

from mmssl_jax import losses, sharding, streaming

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
    *,
    chunk_size: int | None = None,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of a method's loss terms, and the metrics to log.

    Args:
      z: side name -> embeddings ``[B, dim]`` (:func:`side_embeddings`); with ``axis_name``,
        this device's rows.
      scalars: learnable scalars (``logit_scale``, ``logit_bias``) by name.
      terms: each ``{"a", "b", "loss", "weight", "kwargs"}``; a kwarg value ``"learned:NAME"``
        is replaced by the learnable scalar NAME, ``"queue"`` by the MoCo queue.
      queue: the MoCo queue ``[K, dim]`` if the method has one.
      where: view name -> bool ``[B]``, the samples that have that view (``{"text": has_text}``
        in a partially paired batch); a term reading such a view trains on those samples only.
      chunk_size: streams every contrastive term and its accuracy in tiles of this size.
      axis_name: the data axis inside ``shard_map`` (every loss then sees the global batch).
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
        contrastive = term["loss"] in CONTRASTIVE
        if contrastive and chunk_size:
            kwargs["chunk_size"] = chunk_size
        a, b = z[term["a"]], z[term["b"]]
        mask = term_mask(term, where)
        if mask is not None:
            kwargs["where"] = mask
        value = LOSS_FNS[term["loss"]](a, b, axis_name=axis_name, **kwargs)
        name = term_name(term)
        metrics[f"loss/{name}"] = value
        if contrastive and chunk_size:
            hits = streaming.positive_pair_hits(a, b, chunk_size=chunk_size, axis_name=axis_name, where=mask)
            if mask is None:  # every row of every device
                count = a.shape[0] * sharding.axis_index_and_size(axis_name)[1]
            else:  # the valid rows of every device (0 valid: accuracy 0, as positive_pair_accuracy)
                count = jnp.maximum(sharding.global_sum(jnp.sum(mask.astype(jnp.float32)), axis_name), 1.0)
            metrics[f"accuracy/{name}"] = sharding.global_sum(hits, axis_name) / count
        elif contrastive:
            metrics[f"accuracy/{name}"] = losses.positive_pair_accuracy(a, b, axis_name=axis_name, where=mask)
        total = total + term.get("weight", 1.0) * value
    metrics["loss"] = total
    for name, value in scalars.items():
        metrics[f"scalar/{name}"] = value
        if name == "logit_scale":
            metrics["scalar/temperature"] = jnp.exp(-value)
    return total, metrics


def ring_method_loss(
    terms: Sequence[Mapping[str, Any]], *, chunk_size: int, mesh: Mesh, axis_name: str = sharding.DATA_AXIS,
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """:func:`method_loss` on the device ring: ``(z, scalars, queue, where) -> (loss, metrics)``.

    ``z``'s global ``[B, dim]`` arrays and the ``where`` masks ``[B]`` enter ``shard_map`` split
    over ``axis_name`` (each device its ``B / devices`` rows, no gather); the scalars and the
    queue enter replicated. Inside,
    every contrastive term runs with ``axis_name`` and ``chunk_size`` (its columns travel the
    ring, its logits stay in ``chunk_size`` tiles); the other terms with ``axis_name`` alone
    (their batch statistics or per-sample terms summed over devices). The loss and metrics come
    out replicated; the gradient with respect to ``z`` comes back split like ``z``, and the
    scalars' gradient summed over devices (``shard_map``'s typed ``psum``).
    """
    streaming.check_chunk_size("ring_method_loss", chunk_size)
    spec = PartitionSpec(axis_name)

    def local(z, scalars, queue, where):
        return method_loss(z, scalars, terms, queue, where, chunk_size=chunk_size, axis_name=axis_name)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, PartitionSpec(), PartitionSpec(), spec),
                         out_specs=PartitionSpec())
