"""The recipe card: what a run will do, read from what the trainer built (not from the config).

Printed at the start of every run and written to ``workdir/recipe.md``: the method, batch and
batch per update, steps and epochs, warmup, the learning rate of every parameter group at the
end of warmup and at the last update, which groups get weight decay and LARS adaptation, the
loss terms and their settings, the augmentation objects of every view, the target branch (EMA)
and queue. ``--dry_run`` adds the compiled step's per-device memory and FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mmssl_jax import optim
from mmssl_jax.data import augment, inputs
from mmssl_jax.objectives import branch_views, parse_side, term_name

_AUGMENT_DEFAULTS = augment.AugmentConfig()


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _g(x: float) -> str:
    return f"{x:.4g}"


def group_rows(config: ml_collections.ConfigDict, optimizer: optim.Optimizer, params) -> list[dict[str, Any]]:
    """One row per parameter group as built: sizes, learning rates, decay and adaptation."""
    plan = optimizer.plan
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    labels = jax.tree.leaves(optimizer.labels)
    rows = []
    for group in sorted(set(labels)):
        members = [(optim.path_str(p), x) for (p, x), lab in zip(leaves, labels) if lab == group]
        decayed = [n for n, x in members if optim.decays(config, n, x)]
        row = {"group": group, "tensors": len(members), "parameters": int(sum(np.prod(x.shape) for _, x in members)),
               "decayed": len(decayed)}
        if group != "frozen":
            schedule = optimizer.schedules[group]
            row.update(lr_first=float(schedule(0)), lr_peak=float(schedule(plan.warmup_updates)),
                       lr_last=float(schedule(plan.total_updates - 1)), lr_end=float(schedule(plan.total_updates)))
        rows.append(row)
    return rows


def _augment_line(cfg: augment.AugmentConfig) -> str:
    """The fields of a view's augmentation that differ from SimCLR's ImageNet defaults, plus the core ones."""
    core = ("size", "crop_scale", "flip_p", "jitter_p", "brightness", "contrast", "saturation", "hue",
            "grayscale_p", "blur_p", "solarize_p")
    off = set()
    if cfg.jitter_p == 0:  # strengths of an operation that never runs say nothing
        off |= {"brightness", "contrast", "saturation", "hue", "brightness_mode"}
    if cfg.blur_p == 0:
        off |= {"blur_sigma", "blur_kernel_fraction"}
    if cfg.solarize_p == 0:
        off.add("solarize_threshold")
    shown = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in off
             and (f.name in core or getattr(cfg, f.name) != getattr(_AUGMENT_DEFAULTS, f.name))}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def recipe_card(config: ml_collections.ConfigDict, optimizer: optim.Optimizer, params) -> str:
    """The card as Markdown (see the module docstring)."""
    plan, opt = optimizer.plan, config.optimizer
    lines = [f"# Recipe: {config.get('method') or 'training'}", ""]
    lines += _table(["what", "value"], [
        ("training examples", f"{plan.num_examples:,} ({config.input.name}, split {config.input.split})"),
        ("global batch per micro-step / per update", f"{plan.batch_size:,} / {plan.batch_per_update:,} "
                                                      f"(accumulation {_accumulation(plan)})"),
        ("optimizer updates", f"{plan.total_updates:,} = {plan.epochs:.4g} epochs of {plan.updates_per_epoch:,}"),
        ("warmup", f"{plan.warmup_updates:,} updates ({plan.warmup_updates / plan.updates_per_epoch:.3g} epochs)"),
        ("LR schedule", f"linear warmup from 0, cosine to {float(opt.get('end_lr_fraction', 0.0)):g} x peak"
                        + (", held per epoch" if opt.get("step_lr_per_epoch") else "")),
        ("optimizer", _optimizer_line(opt)),
        ("compute dtype", config.get("dtype", "float32")),
        ("input reading", _reading_line(config)),
    ])
    lines += ["", "## Parameter groups (learning rate at update 0 / end of warmup / last update / after it)", ""]
    rows = []
    for r in group_rows(config, optimizer, params):
        lrs = (" / ".join(_g(r[k]) for k in ("lr_first", "lr_peak", "lr_last", "lr_end")) if "lr_peak" in r
               else "not trained")
        rows.append((r["group"], r["tensors"], f"{r['parameters']:,}", lrs, f"{r['decayed']} of {r['tensors']}"))
    adapted = "weight decay and LARS trust ratio" if opt.name == "lars" else "weight decay"
    lines += _table(["group", "tensors", "parameters", "learning rate", f"tensors with {adapted}"], rows)
    lines += ["", "## Model and loss", ""]
    online, target = branch_views(config.loss_terms)
    model_rows = [(f"encoder ({m})", _module_line(spec)) for m, spec in config.encoders.items()]
    model_rows += [(f"head ({m})", _module_line(spec)) for m, spec in config.heads.items()]
    model_rows += [(f"predictor ({m}, online only)", _module_line(spec))
                   for m, spec in dict(config.get("predictors") or {}).items()]
    model_rows += [(f"loss term x{t['weight']:g}", f"{t['loss']}({t['a']}, {t['b']}"
                    + "".join(f", {k}={v}" for k, v in dict(t.get("kwargs", {})).items()) + ")")
                   for t in config.loss_terms]
    model_rows.append(("loss computation", _loss_line(config, plan)))
    model_rows.append(("views computed", f"online: {', '.join(online)}; target: {', '.join(target) or '-'}"))
    for name, value in dict(config.get("learned_scalars", {})).items():
        clamp = float(config.get("max_logit_scale", math.inf)) if name == "logit_scale" else math.inf
        model_rows.append((f"learned {name}", f"init {value:.4g}"
                           + (f", clamped at {clamp:.4g}" if math.isfinite(clamp) else ", no clamp")))
    if config.get("ema") is not None:
        model_rows.append(("target branch (EMA)", f"momentum {config.ema.momentum:g}, {config.ema.get('schedule', 'constant')}"
                           + (" (rising to 1 at the last update)" if config.ema.get("schedule") == "cosine" else "")))
    if config.get("moco") is not None and config.moco.get("queue_size"):
        model_rows.append(("queue", f"{config.moco.queue_size:,} keys of {config.moco.key_view}@momentum"))
    if inputs.partially_paired(config):
        model_rows.append(("partially paired", _partial_line(config)))
    lines += _table(["part", "setting"], model_rows)
    lines += ["", "## Augmentations (as built)", ""]
    lines += _table(["view", "augmentation"], [(v, _augment_line(a)) for v, a in inputs.augment_configs(config).items()])
    return "\n".join(lines) + "\n"


def card_summary(config: ml_collections.ConfigDict, optimizer: optim.Optimizer, params, path) -> str:
    """The card in three console lines (the whole card is in ``path``)."""
    plan, opt = optimizer.plan, config.optimizer
    groups = " | ".join(f"{r['group']} {_g(r['lr_peak'])} -> {_g(r['lr_last'])}" if "lr_peak" in r
                        else f"{r['group']} frozen" for r in group_rows(config, optimizer, params))
    terms = " + ".join(f"{t['weight']:g} {t['loss']}({t['a']}, {t['b']})" for t in config.loss_terms)
    extra = ""
    if config.get("ema") is not None:
        extra = f"; EMA {config.ema.momentum:g} {config.ema.get('schedule', 'constant')}"
    if _chunk_size(config):
        extra += f"; chunk_size {_chunk_size(config)} on the device ring"
    return "\n".join([
        f"Recipe {config.get('method') or 'training'}: {plan.total_updates:,} updates ({plan.epochs:.3g} epochs) "
        f"at batch {plan.batch_per_update:,}, warmup {plan.warmup_updates:,}; {opt.name} "
        f"{opt.learning_rate:g} ({opt.get('lr_scaling', 'none')}), weight decay {opt.weight_decay:g}",
        f"  LR (end of warmup -> last update): {groups}; loss {terms}{extra}",
        f"  Full recipe card: {path}",
    ])


def _accumulation(plan: optim.RunPlan) -> str:
    """``accumulation_steps`` and, past 1, what ``accumulation_mode`` makes of it."""
    k = plan.accumulation_steps
    if k == 1:
        return "1"
    if plan.exact:
        return (f"{k}, exact: one loss over the whole batch per update, gradients by micro-batch (GradCache); "
                "BatchNorm per micro-batch")
    return f"{k}, averaged gradients: negatives and BatchNorm per micro-batch"


def _chunk_size(config: ml_collections.ConfigDict) -> int:
    return int(config.get("loss", {}).get("chunk_size", 0) or 0)


def _loss_line(config: ml_collections.ConfigDict, plan: optim.RunPlan) -> str:
    """How the loss terms meet the other devices' embeddings (``config.loss.chunk_size``)."""
    devices = jax.device_count()
    chunk = _chunk_size(config)
    batch = plan.batch_per_update if plan.exact else plan.batch_size  # the batch one loss sees
    if not chunk:
        return (f"jit on the global batch over {devices} devices (XLA gathers the embeddings: each device "
                f"holds a {batch // devices:,} x {batch:,} block of logits); config.loss.chunk_size=0")
    return (f"device ring: shard_map over the data axis, {devices} devices x {batch // devices:,} rows; "
            f"contrastive terms and accuracy in tiles of at most {chunk:,} x {chunk:,} logits, columns passed "
            f"around a ppermute ring (config.loss.chunk_size={chunk})")


def _partial_line(config: ml_collections.ConfigDict) -> str:
    """Which samples lack a caption, and what the loss terms do about it."""
    masked = [term_name(t) for t in config.loss_terms
              if {parse_side(t["a"])[0], parse_side(t["b"])[0]} & set(inputs.text_views(config))]
    parts = []
    if config.input.get("caption_fraction", 1.0) < 1.0:
        parts.append(f"{config.input.caption_fraction:.0%} of the images keep their captions (seeded, fixed)")
    if config.input.get("missing_captions", "skip") == "mask":
        parts.append("stored images without captions kept")
    rate = dict(config.get("modality_dropout", {})).get("text", 0.0)
    if rate > 0:
        parts.append(f"{rate:.0%} of the captions dropped at each step")
    return "; ".join(parts) + f"; caption-less samples leave {', '.join(masked)}"


def _reading_line(config: ml_collections.ConfigDict) -> str:
    workers = config.input.get("worker_count", 0)
    ro = inputs.read_options(config)
    where = f"{workers} grain worker processes, each with" if workers else "in the training process:"
    threads = (f"{ro.num_threads} reader threads, prefetch buffer {ro.prefetch_buffer_size} elements"
               if ro.num_threads else "no reader threads (read on demand)")
    return f"{where} {threads}"


def _optimizer_line(opt: ml_collections.ConfigDict) -> str:
    parts = [f"{opt.name}, base LR {opt.learning_rate:g} ({opt.get('lr_scaling', 'none')} scaling)",
             f"weight decay {opt.weight_decay:g}" + (" on every parameter" if opt.get("decay_rank1") else "")]
    if opt.name in ("lars", "sgd"):
        parts.append(f"momentum {opt.get('momentum', 0.9):g}" + (" nesterov" if opt.get("nesterov") else ""))
    if opt.name == "lars":
        parts.append(f"trust coefficient {opt.get('trust_coefficient', 1e-3):g}")
    if opt.name == "adamw":
        parts.append(f"b1 {opt.get('b1', 0.9):g}, b2 {opt.get('b2', 0.999):g}, eps {opt.get('eps', 1e-8):g}")
    if opt.get("grad_clip_norm"):
        parts.append(f"clip global norm {opt.grad_clip_norm:g}")
    return "; ".join(parts)


def _module_line(spec: Mapping[str, Any]) -> str:
    kwargs = dict(spec.get("kwargs", {}))
    return spec["name"] + (f" ({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")


# ----------------------------------------------------------------------------- the compiled step


def compiled_figures(compiled, plan: optim.RunPlan) -> dict[str, float]:
    """XLA's per-device memory (bytes) and FLOPs of one compiled micro-step."""
    out: dict[str, float] = {"devices": float(jax.device_count()), "batch": float(plan.batch_size)}
    memory = compiled.memory_analysis()
    if memory is not None:
        for key in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                    "temp_size_in_bytes", "generated_code_size_in_bytes"):
            out[key] = float(getattr(memory, key, 0) or 0)
        # Donated state aliases its output: the peak is arguments + temporaries + new outputs.
        out["peak_bytes_per_device"] = (out["argument_size_in_bytes"] + out["temp_size_in_bytes"]
                                        + out["output_size_in_bytes"] - out["alias_size_in_bytes"])
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    if cost:
        out["flops_per_device"] = float(cost.get("flops", 0.0))
    return out


def figures_markdown(figures: Mapping[str, float]) -> str:
    gib = lambda b: f"{b / 2**30:.3g} GiB"  # noqa: E731
    rows = [("devices", int(figures["devices"])), ("global batch per micro-step", int(figures["batch"]))]
    if "peak_bytes_per_device" in figures:
        rows += [("memory per device: arguments (state + batch)", gib(figures["argument_size_in_bytes"])),
                 ("memory per device: temporaries", gib(figures["temp_size_in_bytes"])),
                 ("memory per device: peak (arguments + temporaries + new outputs)",
                  gib(figures["peak_bytes_per_device"]))]
    if "flops_per_device" in figures:
        rows.append(("FLOPs per device per micro-step", f"{figures['flops_per_device']:.4g}"))
    return "\n".join(["## Compiled step (--dry_run)", "", *_table(["what", "value"], rows)]) + "\n"
