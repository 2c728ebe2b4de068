"""What a run tells people: the console line, TensorBoard, curves, history and summaries.

The console stays quiet: one short line per log step (step, loss, the method's accuracy,
examples/s, ETA) and one summary line at the end; every metric goes to TensorBoard, to
``history.json`` and ``summary.json`` in the workdir, and to the log at DEBUG level
(``--verbosity=1`` shows it). Only process 0 writes files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

_log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- writers


def make_writer(workdir: str | Path):
    """TensorBoard scalars in ``workdir`` on process 0 (a writer that drops them elsewhere).

    No logging writer: the console gets :func:`console_line` instead of every scalar.
    """
    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()
    from clu import metric_writers

    if jax.process_index() != 0:
        return metric_writers.MultiWriter([])
    return metric_writers.SummaryWriter(str(workdir))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (config dicts as hyperparameters)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_hparams(writer, config) -> None:
    scalars = {k: v for k, v in flatten(config.to_dict()).items() if isinstance(v, (int, float, str, bool))}
    writer.write_hparams(scalars)


# ----------------------------------------------------------------------------- the console


def _duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def console_line(step: int, total_steps: int, metrics: Mapping[str, float], *, examples_per_second: float,
                 eta_seconds: float, accuracy_key: str | None = None) -> str:
    """``step 120/300  loss 1.234  acc 45.3%  512 ex/s  ETA 3:12``: what a person watching needs."""
    width = len(str(total_steps))
    parts = [f"step {step:>{width}}/{total_steps}", f"loss {metrics.get('loss', float('nan')):.4g}"]
    if accuracy_key and accuracy_key in metrics:
        parts.append(f"acc {100 * metrics[accuracy_key]:.1f}%")
    parts.append(f"{examples_per_second:,.0f} ex/s")
    parts.append(f"ETA {_duration(eta_seconds)}")
    return "  ".join(parts)


def log_step(writer, step: int, total_steps: int, metrics: Mapping[str, float], *, examples_per_second: float,
             eta_seconds: float, accuracy_key: str | None = None) -> None:
    """Every metric to TensorBoard and the DEBUG log; the short line to the console (process 0)."""
    writer.write_scalars(step, dict(metrics))
    _log.debug("step %d: %s", step, ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    if jax.process_index() == 0:
        print(console_line(step, total_steps, metrics, examples_per_second=examples_per_second,
                           eta_seconds=eta_seconds, accuracy_key=accuracy_key), flush=True)


HEADLINE = (
    ("linear_probe/top1", "probe"),
    ("knn/k20_top1", "kNN-20"),
    ("zero_shot/top1", "zero-shot"),
    ("retrieval/i2t_r@1", "i2t R@1"),
    ("retrieval/t2i_r@1", "t2i R@1"),
)
"""The evaluation results a summary line shows (every result is in the JSON files)."""


def eval_headline(metrics: Mapping[str, float]) -> str:
    """``cifar10: probe 91.2%, kNN-20 88.0% | coco: i2t R@1 30.1%, t2i R@1 21.4%`` from ``eval/`` keys."""
    by_prefix: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("eval/"):
            prefix, _, rest = key.removeprefix("eval/").partition("/")
            by_prefix.setdefault(prefix, {})[rest] = value
    parts = {}
    for prefix in sorted(by_prefix):
        shown = [f"{label} {100 * by_prefix[prefix][key]:.1f}%" for key, label in HEADLINE if key in by_prefix[prefix]]
        if shown:
            parts[prefix] = shown
    return " | ".join(f"{prefix}: {', '.join(shown)}" for prefix, shown in parts.items())


def format_eval_summary(title: str, metrics: Mapping[str, float]) -> str:
    """One short line of evaluation results (the full set is in ``eval_summary.json``)."""
    return f"{title}: {eval_headline(metrics) or 'no headline metric'}"


def final_line(method: str, step: int, metrics: Mapping[str, float], workdir: Path, *,
               accuracy_key: str | None = None) -> str:
    """``Finished clip at step 300: loss 0.80, acc 72.1% | shapes: probe 42.6% ... Workdir: runs/...``"""
    parts = [f"loss {metrics['loss']:.4g}"] if "loss" in metrics else []
    if accuracy_key and accuracy_key in metrics:
        parts.append(f"acc {100 * metrics[accuracy_key]:.1f}%")
    head = ", ".join(parts)
    evals = eval_headline(metrics)
    body = " | ".join(x for x in (head, evals) if x)
    return f"Finished {method} at step {step}: {body}. All metrics: {Path(workdir) / 'summary.json'}"


# ----------------------------------------------------------------------------- files


def write_eval_metrics(workdir: str | Path, step: int, metrics: Mapping[str, float], writer=None) -> None:
    """TensorBoard scalars (through ``writer``, default a new one in ``workdir``) and
    ``eval_summary.json`` (one entry per evaluated step)."""
    if jax.process_index() != 0:
        return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if writer is None:
        writer = make_writer(workdir)
    writer.write_scalars(step, dict(metrics))
    writer.flush()
    path = workdir / "eval_summary.json"
    history = json.loads(path.read_text()) if path.exists() else {}
    history[str(step)] = {k: float(v) for k, v in metrics.items()}
    path.write_text(json.dumps(history, indent=1, sort_keys=True))


def load_history(workdir: Path) -> list[tuple[int, dict[str, float]]]:
    """``history.json``: ``(step, metrics)`` of every logged step (evaluation steps included)."""
    path = Path(workdir) / "history.json"
    return [tuple(x) for x in json.loads(path.read_text())] if path.exists() else []


def save_history(workdir: Path, history: list) -> None:
    if jax.process_index() == 0:
        (Path(workdir) / "history.json").write_text(json.dumps(history))


def write_text(path: Path, text: str) -> None:
    """A text file in the workdir (process 0 only)."""
    if jax.process_index() == 0:
        Path(path).write_text(text)


def write_summary(workdir: Path, summary: Mapping[str, Any]) -> None:
    if jax.process_index() == 0:
        (Path(workdir) / "summary.json").write_text(json.dumps(dict(summary), indent=1))


def write_curves(history: list[tuple[int, dict[str, float]]], path: Path) -> None:
    """``curves.png``: loss, accuracies and temperature against the step (process 0)."""
    if not history or jax.process_index() != 0:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for _, m in history for k in m if k.startswith(("loss", "accuracy", "scalar/temperature"))},
                  key=lambda k: (not k == "loss", k))[:8]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(s, m[key]) for s, m in history if key in m]
        ax.plot([s for s, _ in points], [v for _, v in points])
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def robustness_curves(metrics: Mapping[str, float]) -> dict[str, dict[str, dict[str, dict[float, float]]]]:
    """``eval/<dataset>/robustness/<corruption>/<metric>@<rate>`` keys (``eval.robustness``) as
    ``{dataset: {corruption: {metric: {rate: value}}}}``."""
    out: dict[str, dict[str, dict[str, dict[float, float]]]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 5 and parts[0] == "eval" and parts[2] == "robustness" and "@" in parts[4]:
            metric, _, rate = parts[4].rpartition("@")  # metric names may hold "@" (i2t_r@1)
            out.setdefault(parts[1], {}).setdefault(parts[3], {}).setdefault(metric, {})[float(rate)] = float(value)
    return out


def write_robustness_curves(metrics: Mapping[str, float], path: Path) -> bool:
    """``robustness.png``: each metric against the corruption rate, one panel per dataset and
    corruption, the relative robustness in the legend (process 0). Returns whether it wrote one."""
    curves = robustness_curves(metrics)
    if not curves or jax.process_index() != 0:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(prefix, mode, by_metric) for prefix, by_mode in sorted(curves.items())
              for mode, by_metric in sorted(by_mode.items())]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.2), squeeze=False)
    for ax, (prefix, mode, by_metric) in zip(axes[0], panels):
        for metric, points in sorted(by_metric.items()):
            rates = sorted(points)
            relative = metrics.get(f"eval/{prefix}/robustness/{mode}/{metric}/relative")
            label = metric if relative is None else f"{metric} ({relative:.2f})"
            ax.plot(rates, [points[r] for r in rates], marker="o", markersize=3, label=label)
        ax.set_title(f"{prefix}: {mode}", fontsize=9)
        ax.set_xlabel("corruption rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
