"""Counterfactual modality contribution: per sample, what changes when one modality is replaced.

Pure functions of arrays, like :mod:`~mmssl_jax.evaluation.robustness` (no Flax, no config).
A sample ``i`` of an image+caption model has image features ``h_i`` (encoder output) and ``z_i``
(joint space) and caption features ``t_i`` (the text head's output for its first caption). Two
downstream readings are followed:

- the **fused probe**: a linear probe (:func:`~mmssl_jax.evaluation.protocols.fit_linear_probe`)
  on ``[normalize(h), normalize(t)]``, fit once on clean training rows (as
  :func:`~mmssl_jax.evaluation.robustness.caption_curves`); read as the softmax probability of the
  true class and whether the arg-max is the true class;
- **retrieval**: the 1-based rank of the true partner (image i's caption ``t_i``, caption i's image
  ``z_i``) among the test samples, by cosine similarity.

Then one modality of sample ``i`` alone is replaced by a counterfactual (every other sample kept
clean), :data:`KINDS`:

- ``removed``: the features of the missing input: for the caption, the zero sentence embedding (what
  a caption-less image feeds the text branch: ``caption_missing``, ``input.caption_fraction``); for
  the image, the all-zero (black) image (what ``modality_dropout`` feeds the image encoder). The
  caller computes them with the model and passes one row each.
- ``swapped``: another test sample's features, by a seeded derangement (:func:`derangement`: a single
  random cycle, so no sample keeps its own).
- ``class_mean``: the prototype of the sample's class: the mean of the L2-normalized features of the
  training samples of that class, normalized again (per feature: ``h`` and ``z`` for the image,
  ``t`` for the caption).

Per sample (:func:`contributions`): ``p_drop = p_true(clean) - p_true(counterfactual)``, ``flip``
(correct -> wrong), ``fix`` (wrong -> correct), and the rank changes ``rank_i2t_change``,
``rank_t2i_change`` (counterfactual minus clean: positive means the true partner fell). Aggregates
(:func:`summarize`): their means over all test samples and per class (the sample's true class);
:func:`top_dependent` lists the samples that depend most on each modality; :func:`markdown` writes
the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmssl_jax.evaluation.protocols import fit_linear_probe

MODALITIES = ("image", "caption")
KINDS = ("removed", "swapped", "class_mean")
STATS = ("p_drop", "flip_rate", "fix_rate", "accuracy", "rank_i2t_change", "rank_t2i_change")
"""Aggregates of each counterfactual (:func:`summarize`)."""
RANK_TOLERANCE = 1e-6
"""Similarities within this of the true pair's are ties (float noise between identical features
must not move a rank); ties count against the partner."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def derangement(n: int, seed: int) -> np.ndarray:
    """``donor [n]``: a seeded permutation without fixed points (``donor[i] != i``), one random cycle
    (Sattolo): sample i receives sample ``donor[i]``'s modality. Needs ``n >= 2``."""
    if n < 2:
        raise ValueError(f"a swap needs at least 2 samples, got {n}")
    order = np.random.default_rng([seed, n, 4]).permutation(n)
    donor = np.empty(n, np.int64)
    donor[order] = np.roll(order, -1)
    return donor


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` sorted index arrays: each class's samples in a seeded order, the first
    ``ceil(count / 2)`` to ``train``, the rest to ``test``; so every class with a test sample has a
    training sample (its prototype and the probe see it)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 3])
    train, test = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cut = -(-len(rows) // 2)
        train.append(rows[:cut])
        test.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def class_prototypes(x: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, d]``: per class the mean of the L2-normalized rows of ``x`` with that label,
    normalized again; a class without rows is NaN (:func:`counterfactual_rows` refuses it)."""
    x, labels = _unit(x), np.asarray(labels)
    out = np.full((num_classes, x.shape[1]), np.nan)
    for c in np.unique(labels):
        out[c] = x[labels == c].mean(0)
    present = ~np.isnan(out[:, 0])
    out[present] = _unit(out[present])
    return out


def counterfactual_rows(x: np.ndarray, kind: str, *, labels: np.ndarray, train_x: np.ndarray,
                        train_labels: np.ndarray, removed: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """The L2-normalized counterfactual of each row of ``x [n, d]`` (test samples with ``labels``):
    ``removed`` (one row, broadcast), ``swapped`` (``x[derangement(n, seed)]``) or ``class_mean``
    (the prototype of ``train_x`` rows of the same label, :func:`class_prototypes`)."""
    x = np.asarray(x)
    if kind == "removed":
        removed = np.asarray(removed, np.float64).reshape(-1)
        if removed.shape != (x.shape[1],):
            raise ValueError(f"the removed features have {removed.shape[0]} dims, the samples {x.shape[1]}")
        return np.broadcast_to(_unit(removed), x.shape).copy()
    if kind == "swapped":
        return _unit(x)[derangement(len(x), seed)]
    if kind == "class_mean":
        protos = class_prototypes(train_x, train_labels, num_classes)
        absent = sorted(set(np.unique(labels).tolist()) - set(np.unique(train_labels).tolist()))
        if absent:
            raise ValueError(f"class_mean: classes {absent} have test samples but no training sample")
        return protos[np.asarray(labels)]
    raise ValueError(f"unknown counterfactual {kind!r}; known: {KINDS}")


def partner_ranks(image: np.ndarray, text: np.ndarray, *, image_cf: np.ndarray | None = None,
                  text_cf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks ``(i2t [n], t2i [n])`` of each sample's true partner, one sample replaced at a
    time: for sample ``i`` its image is ``image_cf[i]`` (else ``image[i]``) and its caption
    ``text_cf[i]`` (else ``text[i]``), every other sample clean. ``i2t``: sample i's image queries
    the captions; ``t2i``: its caption queries the images. All rows L2-normalized here. A tie
    counts against the partner (as :func:`~mmssl_jax.evaluation.protocols.retrieval_recall`): a
    rival ranks ahead unless less similar than the pair by more than :data:`RANK_TOLERANCE`, so a
    constant (missing) input is never found first by accident."""
    image, text = _unit(image), _unit(text)
    a = image if image_cf is None else _unit(image_cf)
    b = text if text_cf is None else _unit(text_cf)
    own = np.sum(a * b, axis=1)
    off = ~np.eye(len(image), dtype=bool)
    i2t = 1 + np.sum(((a @ text.T) >= own[:, None] - RANK_TOLERANCE) & off, axis=1)
    t2i = 1 + np.sum(((b @ image.T) >= own[:, None] - RANK_TOLERANCE) & off, axis=1)
    return i2t, t2i


def _softmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def contributions(
    image_h: np.ndarray,
    image_z: np.ndarray,
    text_z: np.ndarray,
    labels: np.ndarray,
    *,
    train: np.ndarray,
    test: np.ndarray,
    removed_image_h: np.ndarray,
    removed_image_z: np.ndarray,
    removed_text_z: np.ndarray,
    modalities: Sequence[str] = MODALITIES,
    kinds: Sequence[str] = KINDS,
    num_classes: int | None = None,
    seed: int = 0,
    probe_iters: int = 100,
) -> dict[str, dict[str, np.ndarray]]:
    """Per test sample, the clean readings and each counterfactual's.

    Args:
      image_h, image_z, text_z: ``[n, *]`` features of every sample (``text_z``: its first caption
        through the text head); ``labels [n]`` integer classes.
      train, test: disjoint index arrays: the probe and the class prototypes are fit on ``train``
        (clean); ``test`` samples are read, and are the retrieval gallery.
      removed_image_h, removed_image_z, removed_text_z: one row each, the features of the missing
        input (the black image, the zero caption embedding).

    Returns:
      ``{"clean": {...}, "<modality>/<kind>": {...}}`` of ``[len(test)]`` arrays: ``clean`` has
      ``index`` (into the ``n`` samples), ``label``, ``p_true``, ``correct``, ``rank_i2t``,
      ``rank_t2i``; each counterfactual has ``p_true``, ``correct``, ``rank_i2t``, ``rank_t2i`` and
      ``p_drop``, ``flip``, ``fix``, ``rank_i2t_change``, ``rank_t2i_change`` (module docstring).
    """
    image_h, image_z, text_z = (np.asarray(a, np.float32) for a in (image_h, image_z, text_z))
    labels = np.asarray(labels)
    n = len(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    for name, a in (("image_h", image_h), ("image_z", image_z), ("text_z", text_z)):
        if a.ndim != 2 or len(a) != n:
            raise ValueError(f"{name} must be [{n}, dim] like the labels, got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite values")
    if image_z.shape[1] != text_z.shape[1]:
        raise ValueError(f"image_z ({image_z.shape[1]} dims) and text_z ({text_z.shape[1]}) must share the joint space")
    train, test = np.asarray(train, np.int64), np.asarray(test, np.int64)
    if len(train) < 2 or len(test) < 2 or np.intersect1d(train, test).size or min(train.min(), test.min()) < 0 \
            or max(train.max(), test.max()) >= n:
        raise ValueError(f"train ({len(train)}) and test ({len(test)}) must be disjoint index sets of >= 2 of the "
                         f"{n} samples")
    bad = sorted(set(modalities) - set(MODALITIES)) or sorted(set(kinds) - set(KINDS))
    if bad or not modalities or not kinds:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES} and kinds of {KINDS}, got "
                         f"{tuple(modalities)} and {tuple(kinds)}")
    num_classes = int(num_classes or labels.max() + 1)
    fused = np.concatenate([_unit(image_h), _unit(text_z)], axis=1)
    probe = fit_linear_probe(fused[train], labels[train], num_classes=num_classes, iters=probe_iters, seed=seed)

    def read(h, t, z_image=None, z_text=None):
        p = _softmax(probe.scores(np.concatenate([_unit(h), _unit(t)], axis=1)))
        y = labels[test]
        i2t, t2i = partner_ranks(image_z[test], text_z[test], image_cf=z_image, text_cf=z_text)
        return {"p_true": p[np.arange(len(test)), y], "correct": p.argmax(1) == y, "rank_i2t": i2t, "rank_t2i": t2i}

    clean = read(image_h[test], text_z[test])
    out = {"clean": {"index": test, "label": labels[test], **clean}}
    feats = {"image": {"h": (image_h, removed_image_h), "z": (image_z, removed_image_z)},
             "caption": {"t": (text_z, removed_text_z)}}
    for modality in modalities:
        for kind in kinds:
            cf = {name: counterfactual_rows(x[test], kind, labels=labels[test], train_x=x[train],
                                            train_labels=labels[train], removed=removed, num_classes=num_classes,
                                            seed=seed)
                  for name, (x, removed) in feats[modality].items()}
            if modality == "image":
                r = read(cf["h"], text_z[test], z_image=cf["z"])
            else:
                r = read(image_h[test], cf["t"], z_text=cf["t"])
            r["p_drop"] = clean["p_true"] - r["p_true"]
            r["flip"] = clean["correct"] & ~r["correct"]
            r["fix"] = ~clean["correct"] & r["correct"]
            r["rank_i2t_change"] = r["rank_i2t"] - clean["rank_i2t"]
            r["rank_t2i_change"] = r["rank_t2i"] - clean["rank_t2i"]
            out[f"{modality}/{kind}"] = r
    return out


def _stats(r: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    return {"p_drop": float(np.mean(r["p_drop"][rows])), "flip_rate": float(np.mean(r["flip"][rows])),
            "fix_rate": float(np.mean(r["fix"][rows])), "accuracy": float(np.mean(r["correct"][rows])),
            "rank_i2t_change": float(np.mean(r["rank_i2t_change"][rows])),
            "rank_t2i_change": float(np.mean(r["rank_t2i_change"][rows]))}


def summarize(result: Mapping[str, Mapping[str, np.ndarray]],
              class_names: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``{"overall": {name: stats}, "per_class": {class: {name: stats}}}``: the means of
    :data:`STATS` over the test samples (``flip_rate``, ``fix_rate``: the fraction of all of them),
    overall and over those of each true class; ``name`` is ``clean`` (its ``accuracy``, ``p_true``,
    ``rank_i2t``, ``rank_t2i``, ``r@1_i2t``, ``r@1_t2i``) or ``<modality>/<kind>``."""
    clean = result["clean"]
    labels = clean["label"]

    def block(rows):
        out = {"clean": {"accuracy": float(np.mean(clean["correct"][rows])),
                         "p_true": float(np.mean(clean["p_true"][rows])),
                         "rank_i2t": float(np.mean(clean["rank_i2t"][rows])),
                         "rank_t2i": float(np.mean(clean["rank_t2i"][rows])),
                         "r@1_i2t": float(np.mean(clean["rank_i2t"][rows] == 1)),
                         "r@1_t2i": float(np.mean(clean["rank_t2i"][rows] == 1))}}
        out.update({name: _stats(r, rows) for name, r in result.items() if name != "clean"})
        return out

    name = (lambda c: str(class_names[c])) if class_names is not None else str  # noqa: E731
    return {"overall": block(np.ones(len(labels), bool)),
            "per_class": {name(int(c)): block(labels == c) for c in np.unique(labels)}}


def top_dependent(result: Mapping[str, Mapping[str, np.ndarray]], modality: str, k: int,
                  class_names: Sequence[str] | None = None) -> list[dict]:
    """The ``k`` test samples that depend most on ``modality``: ranked by ``dependence``, the mean
    ``p_drop`` over the counterfactuals of that modality in ``result`` (ties: lower position first);
    each row has the sample's ``index``, ``label``, clean ``p_true`` and ranks, and per counterfactual
    its ``p_true``, ``flip`` and rank changes."""
    names = [n for n in result if n.startswith(f"{modality}/")]
    if not names:
        raise ValueError(f"no {modality!r} counterfactuals in the result; it has {sorted(result)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    clean = result["clean"]
    dependence = np.mean([result[n]["p_drop"] for n in names], axis=0)
    rows = []
    for i in np.argsort(-dependence, kind="stable")[:k]:
        label = int(clean["label"][i])
        row = {"index": int(clean["index"][i]), "label": str(class_names[label]) if class_names is not None else label,
               "dependence": float(dependence[i]), "p_true": float(clean["p_true"][i]),
               "rank_i2t": int(clean["rank_i2t"][i]), "rank_t2i": int(clean["rank_t2i"][i])}
        for n in names:
            r, kind = result[n], n.split("/", 1)[1]
            row[kind] = {"p_true": float(r["p_true"][i]), "flip": bool(r["flip"][i]),
                         "rank_i2t_change": int(r["rank_i2t_change"][i]),
                         "rank_t2i_change": int(r["rank_t2i_change"][i])}
        rows.append(row)
    return rows


def report(result: Mapping[str, Mapping[str, np.ndarray]], *, k: int = 10,
           class_names: Sequence[str] | None = None) -> dict:
    """Everything written to ``counterfactual.json``: the summary (:func:`summarize`), the top-``k``
    tables (:func:`top_dependent`) and every test sample's deltas."""
    modalities = sorted({n.split("/")[0] for n in result if n != "clean"}, key=MODALITIES.index)
    samples = {name: {key: np.asarray(v).tolist() for key, v in r.items()} for name, r in result.items()}
    return {**summarize(result, class_names),
            "top": {m: top_dependent(result, m, min(k, len(result["clean"]["label"])), class_names)
                    for m in modalities},
            "samples": samples}


def markdown(rep: Mapping, title: str = "Counterfactual modality contribution") -> str:
    """The summary, per-class and top-k tables of a :func:`report` as Markdown."""
    lines = [f"# {title}", ""]
    clean = rep["overall"]["clean"]
    lines += [f"Clean: fused probe top-1 {clean['accuracy']:.3f}, mean p(true) {clean['p_true']:.3f}, "
              f"R@1 i2t {clean['r@1_i2t']:.3f}, t2i {clean['r@1_t2i']:.3f}.", "",
              "| counterfactual | " + " | ".join(STATS) + " |", "|---" * (len(STATS) + 1) + "|"]
    for name, s in rep["overall"].items():
        if name != "clean":
            lines.append(f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k in STATS) + " |")
    names = [n for n in rep["overall"] if n != "clean"]
    lines += ["", "## p_drop per class", "", "| class | clean acc | " + " | ".join(names) + " |",
              "|---" * (len(names) + 2) + "|"]
    for cls, block in rep["per_class"].items():
        lines.append(f"| {cls} | {block['clean']['accuracy']:.3f} | "
                     + " | ".join(f"{block[n]['p_drop']:.3f}" for n in names) + " |")
    for modality, rows in rep["top"].items():
        kinds = [k for k in KINDS if rows and k in rows[0]]
        lines += ["", f"## Samples that depend most on the {modality}", "",
                  "| index | label | dependence | p(true) | " + " | ".join(f"p(true) {k}" for k in kinds)
                  + " | " + " | ".join(f"rank i2t change {k}" for k in kinds) + " |",
                  "|---" * (4 + 2 * len(kinds)) + "|"]
        for row in rows:
            lines.append(f"| {row['index']} | {row['label']} | {row['dependence']:.3f} | {row['p_true']:.3f} | "
                         + " | ".join(f"{row[k]['p_true']:.3f}{' (flip)' if row[k]['flip'] else ''}" for k in kinds)
                         + " | " + " | ".join(f"{row[k]['rank_i2t_change']:+d}" for k in kinds) + " |")
    return "\n".join(lines) + "\n"
