r"""The modality experiment (issue 14, item 4): how partially paired training and caption dropout
change what an image+caption model learns, and how robust it is to missing, swapped or noisy
captions and to corrupted images.

The image+caption method (``configs/bert_simclr.py``: SimCLR on two image views plus CLIP
between a third view and the caption embedding) is trained on the same images with

* ``input.caption_fraction`` in 100%, 50%, 20%, 5%: only that seeded share of the images keeps
  its captions (the others train the image terms only; partially paired training);
* ``modality_dropout.text`` in 0, 0.3, 0.6: a fresh share of the captions is dropped at every step;

every combination (``--fractions`` x ``--dropouts``; or the pairs ``--runs=1:0,0.2:0,1:0.6``, e.g.
one factor at a time), with the same encoder, views, batch, steps and optimizer. A third field,
``--runs=0.05:0:share``, scales the image-text term's weight by the caption share
(:data:`WEIGHTINGS`): the masked term is a mean over the captioned samples, so at 5% captioned its
few pairs carry the weight all 128 carry at 100%. Each checkpoint is then evaluated
(``config.eval.robustness``) with:

* clean scores: linear probe and kNN on the frozen image encoder (CIFAR-10 for ``flickr8k``),
  image<->text retrieval R@1/5 on the held-out captioned split (Flickr8k dev);
* robustness curves along the corruption rate (``--rates``, default 0, 0.1, ..., 1): captions
  missing / swapped / noise on the retrieval split (retrieval R@1, and the fused probe and kNN
  where the split has labels), image noise / blur / occlusion on the probe's test images (probe
  and kNN top-1) and on the retrieval split (retrieval R@1);
* MultiBench's summary scores per curve: relative robustness (area under the curve over the
  normalized rate) and effective robustness against the reference run (100% captioned, no
  dropout), i.e. the summed gain over the reference's curve shifted to the same clean score.

Usage::

    # Smoke run on the embedded data (prepared on first use; probe: the shapes' shape label).
    python benchmarks/modality_experiment.py --data=embedded --steps=20 --rates=0,0.5,1 \
        --runs=1:0,0.2:0.6 --batch_size=32 --image_size=16 --width=4 --max_train=500 \
        --max_test=200 --probe_iters=50 --workdir=/tmp/modality_smoke --out=/tmp/modality_smoke
    # The experiment: Flickr8k train images + captions; CIFAR-10 probe; Flickr8k dev retrieval.
    # Prepare first (D: a tfds data dir; DATA: ../shared/data):
    python -m mmssl_jax.data.prepare flickr8k_embedded --manual_dir=DATA/flickr8k --data_dir=D
    python -m mmssl_jax.data.prepare cifar10_npz --manual_dir=DATA/cifar10 --data_dir=D
    python benchmarks/modality_experiment.py --data=flickr8k --data_dir=D --steps=600 --seeds=0,1,2 \
        --workdir=/tmp/modality_experiment

The second is 12 runs a seed; each image corruption costs a pass over the test images per
rate (``--max_test`` and ``--rates=0,0.2,0.4,0.6,0.8,1`` cut the evaluation time). The script is
resumable: each finished run (trained and evaluated) leaves ``result.json`` in its workdir and
is skipped the next time (with other settings for the same workdir it refuses: use another
``--workdir``).

Results: ``<out>/modality_experiment_<data>.{json,md,png}`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import load_config, machine_line, write_report  # noqa: E402  (benchmarks/ is on sys.path)

CAPTION = ("caption_missing", "caption_swapped", "caption_noise")
IMAGE = ("image_noise", "image_blur", "image_occlusion")
RETRIEVAL = "retrieval"  # metric prefix of the retrieval split
PROBE = "probe"  # metric prefix of the probe set


def data_settings(data: str) -> dict:
    """Training set, probe set ``(label, dataset, label_key)`` and the retrieval split."""
    if data == "embedded":
        return dict(train="mmssl_shapes", probe=("shape", "mmssl_shapes", "label"), retrieval=("mmssl_shapes", "test"),
                    probe_train="train", probe_test="test")
    if data == "flickr8k":
        return dict(train="flickr8k_embedded", probe=("CIFAR-10", "cifar10_npz", "label"),
                    retrieval=("flickr8k_embedded", "dev"), probe_train="train", probe_test="test")
    raise ValueError(f"--data must be 'embedded' or 'flickr8k', got {data!r}")


WEIGHTINGS = ("fixed", "share")
"""How the image-text terms are weighted: ``fixed`` (the config's weight; each term is the mean over
the captioned samples, so its weight does not shrink with the share captioned and every captioned
sample weighs 1/share as much as an image-only sample in the image terms), or ``share`` (the
weight times the expected caption share, fraction x (1 - dropout): as if the term were averaged
over the whole batch, each captioned sample weighing what it does at 100%)."""


def run_name(fraction: float, dropout: float, weighting: str = "fixed") -> str:
    name = f"captions{round(100 * fraction):03d}_drop{round(100 * dropout):02d}"
    return name if weighting == "fixed" else f"{name}_w{weighting}"


def warmup_steps(steps: int) -> int:
    """bert_simclr's 20 warmup updates, fewer in a run too short for them (a tenth of it)."""
    return min(20, max(1, steps // 10))


def train_config(args, settings: dict, fraction: float, dropout: float, seed: int, weighting: str = "fixed"):
    """BERTSimCLR with the run's caption fraction, caption dropout and caption-term weighting
    (:data:`WEIGHTINGS`); all else shared."""
    from mmssl_jax import config_base as cb
    from mmssl_jax.objectives import parse_side

    config = load_config("bert_simclr")
    config.input.name = settings["train"]
    config.input.split = args.train_split
    config.input.data_dir = args.data_dir
    config.input.batch_size = args.batch_size
    config.input.image_size = args.image_size
    config.input.caption_fraction = fraction
    config.modality_dropout = {"text": dropout} if dropout > 0 else {}
    config.num_steps = args.steps
    cb.set_warmup(config, steps=warmup_steps(args.steps))
    config.seed = seed
    config.log_every = max(args.steps // 20, 1)
    config.checkpoint_every = args.steps
    config.encoders.image.kwargs.width = args.width
    config.eval.protocols = ()  # evaluated below, the same way for every run
    if weighting == "share":
        # The terms that read the caption view: the ones its mask (objectives.term_mask) reaches.
        text_terms = [t for t in config.loss_terms if "text" in (parse_side(t["a"])[0], parse_side(t["b"])[0])]
        if not text_terms:
            raise ValueError("weighting 'share' needs image-text terms in bert_simclr's loss_terms")
        for t in text_terms:
            t["weight"] = t["weight"] * fraction * (1.0 - dropout)
    elif weighting != "fixed":
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return config


def eval_config(args, settings: dict, workdir: Path):
    """The evaluation of one checkpoint: probe, kNN, retrieval and every robustness curve."""
    from mmssl_jax import config_base

    label, dataset, label_key = settings["probe"]
    ec = load_config("linear_probe")
    ec.checkpoint_dir = str(workdir)
    ec.eval = config_base.eval_config(("linear_probe", "knn", "retrieval"))
    ec.eval.image_size = args.image_size
    ec.eval.probe_iters = args.probe_iters
    cc = ec.eval.classification
    cc.dataset, cc.data_dir, cc.label_key, cc.name = dataset, args.data_dir, label_key, PROBE
    cc.train_split = settings["probe_train"]
    cc.test_split = settings["probe_test"] + (f"[:{args.max_test}]" if args.max_test else "")
    cc.max_train = args.max_train
    rc = ec.eval.retrieval
    rc.dataset, rc.data_dir, rc.name = settings["retrieval"][0], args.data_dir, RETRIEVAL
    rc.split = settings["retrieval"][1] + (f"[:{args.max_test}]" if args.max_test else "")
    ec.eval.robustness.corruptions = CAPTION + IMAGE
    ec.eval.robustness.rates = tuple(args.rates)
    return ec


def settings_key(args) -> dict:
    """What a finished run's result depends on (a workdir holding other settings is refused)."""
    keys = ("data", "data_dir", "train_split", "steps", "batch_size", "image_size", "width", "rates",
            "max_train", "max_test", "probe_iters")
    return {k: getattr(args, k) for k in keys}


def run_one(args, settings: dict, fraction: float, dropout: float, weighting: str, seed: int) -> dict:
    """Trains and evaluates one run, or loads its ``result.json`` when it has finished before."""
    from mmssl_jax import evaluation, train

    workdir = Path(args.workdir) / args.data / run_name(fraction, dropout, weighting) / f"seed{seed}"
    done = workdir / "result.json"
    key = settings_key(args)
    if done.exists():
        result = json.loads(done.read_text())
        if result["settings"] != key:
            raise ValueError(f"{workdir} holds a run with other settings ({result['settings']}, not {key}); "
                             f"use another --workdir")
        print(f"{workdir}: finished before, skipped", flush=True)
        return result
    t = time.time()
    train.train_and_evaluate(train_config(args, settings, fraction, dropout, seed, weighting), workdir)
    history = json.loads((workdir / "history.json").read_text())
    # Training time from the run's own logged throughput (right for a resumed run too).
    steps = [0] + [s for s, _ in history]
    train_seconds = sum((b - a) * args.batch_size / m["examples_per_second"] for a, (b, m) in zip(steps, history))
    shares = [m["input/caption_fraction"] for _, m in history if "input/caption_fraction" in m]
    metrics = evaluation.evaluate_checkpoint(eval_config(args, settings, workdir), workdir / "eval")
    result = {"settings": key, "fraction": fraction, "dropout": dropout, "weighting": weighting, "seed": seed,
              "train_seconds": train_seconds, "wall_seconds": time.time() - t, "final_loss": history[-1][1]["loss"],
              # The logged share of each batch whose captions the image-text terms saw (fraction x (1 - dropout)).
              "caption_share": sum(shares) / len(shares) if shares else 1.0,
              "metrics": {k: float(v) for k, v in metrics.items()}}
    done.write_text(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- aggregation


def headline_curves(metrics: dict, rates) -> dict[str, dict[str, list[float]]]:
    """``{corruption: {metric: [value at each rate]}}`` of the headline metrics: retrieval R@1 (mean
    of both directions) for every corruption on the retrieval split, probe and kNN top-1 for the
    image corruptions on the probe set, the fused probe top-1 where the retrieval split has labels."""
    from mmssl_jax import reporting

    curves = reporting.robustness_curves(metrics)
    out: dict[str, dict[str, list[float]]] = {}
    for mode in CAPTION + IMAGE:
        ret = curves.get(RETRIEVAL, {}).get(mode, {})
        got = {}
        if "i2t_r@1" in ret:
            got["R@1"] = [(ret["i2t_r@1"][r] + ret["t2i_r@1"][r]) / 2 for r in rates]
        if "fused_probe_top1" in ret:
            got["fused probe"] = [ret["fused_probe_top1"][r] for r in rates]
        probe = curves.get(PROBE, {}).get(mode, {})
        if "probe_top1" in probe:
            got["probe"] = [probe["probe_top1"][r] for r in rates]
        knn = [k for k in probe if k.startswith("knn")]
        if knn:
            got["kNN"] = [probe[knn[0]][r] for r in rates]
        out[mode] = got
    return out


def _mean_std(values) -> list:
    """``[mean, sample std]`` over seeds (axis 0) of scalars or curves; std 0 for one seed."""
    import numpy as np

    a = np.asarray(values, np.float64)
    std = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros_like(a[0])
    return [a.mean(axis=0).tolist(), std.tolist()]


CLEAN = {  # table column -> metric key (without eval/)
    "probe top-1": f"{PROBE}/linear_probe/top1",
    "kNN-20 top-1": f"{PROBE}/knn/k20_top1",
    "i2t R@1": f"{RETRIEVAL}/retrieval/i2t_r@1",
    "t2i R@1": f"{RETRIEVAL}/retrieval/t2i_r@1",
    "i2t R@5": f"{RETRIEVAL}/retrieval/i2t_r@5",
    "t2i R@5": f"{RETRIEVAL}/retrieval/t2i_r@5",
}


def aggregate(results: list[dict], rates) -> dict:
    """Mean and sample std over seeds: clean scores, headline curves and relative robustness."""
    from mmssl_jax.evaluation import robustness

    out = {"train_seconds": _mean_std([r["train_seconds"] for r in results]),
           "final_loss": _mean_std([r["final_loss"] for r in results]),
           "caption_share": _mean_std([r["caption_share"] for r in results]),
           "clean": {col: _mean_std([r["metrics"][f"eval/{key}"] for r in results]) for col, key in CLEAN.items()},
           "curves": {}, "relative": {}}
    per_seed = [headline_curves(r["metrics"], rates) for r in results]
    for mode in CAPTION + IMAGE:
        for metric in per_seed[0][mode]:
            values = [c[mode][metric] for c in per_seed]
            out["curves"].setdefault(mode, {})[metric] = _mean_std(values)
            out["relative"].setdefault(mode, {})[metric] = _mean_std(
                [robustness.relative_robustness(rates, v) for v in values])
    return out


def add_effective(report: dict) -> None:
    """Effective robustness of every run's mean curves against the reference run's (MultiBench)."""
    from mmssl_jax.evaluation import robustness

    ref = report["runs"][report["reference"]]["aggregate"]["curves"]
    for run in report["runs"].values():
        agg = run["aggregate"]
        agg["effective"] = {mode: {m: robustness.effective_robustness(v[0], ref[mode][m][0]) for m, v in by.items()}
                            for mode, by in agg["curves"].items()}


def headline(mode: str) -> str:
    """The metric the table reports for a corruption: retrieval R@1 (captions), probe top-1 (images)."""
    return "R@1" if mode in CAPTION else "probe"


def markdown(report: dict) -> str:
    args, s = report["args"], report["settings"]
    seeds = args["seeds"]
    pm = lambda st, scale=100.0, d=1: f"{scale * st[0]:.{d}f} ± {scale * st[1]:.{d}f}"  # noqa: E731
    lines = [f"# Modality experiment on {report['data']} data", "",
             f"Command: `{report['command']}`  ",
             f"Machine: {report['machine']}; {report['seconds'] / 60:.1f} min of training and evaluation, summed over runs. Per run: {args['steps']} steps x "
             f"batch {args['batch_size']} at {args['image_size']} px, BERTSimCLR (ResNet-18 CIFAR stem width "
             f"{args['width']}, {report['optimizer']}, warmup {warmup_steps(args['steps'])} updates); trained on `{s['train']}` ({args['train_split']} split); "
             f"seeds {seeds} (mean ± sample std over seeds).", "",
             "Runs: `captions<P>_drop<D>` = P% of the images keep their captions (`input.caption_fraction`), "
             "D% of the kept captions dropped at each step (`modality_dropout.text`); `_wshare`: the image-text "
             "term's weight times the caption share (otherwise it is the mean over the captioned samples at "
             "weight 1, whatever their share). Caption share: the logged "
             "share of the batch the image-text terms saw. Probe: linear probe and kNN-20 on the frozen image "
             f"encoder, `{s['probe'][1]}` ({s['probe'][0]}), top-1 %. Retrieval: image<->text on "
             f"`{'/'.join(s['retrieval'])}`, recall %.", "",
             "## Clean scores", "",
             "| run | caption share | train s | final loss | " + " | ".join(CLEAN) + " |",
             "|---" + "|---:" * (3 + len(CLEAN)) + "|"]
    for name, run in report["runs"].items():
        a = run["aggregate"]
        lines.append(f"| {name} | {100 * a['caption_share'][0]:.0f}% | {a['train_seconds'][0]:.0f} | "
                     f"{pm(a['final_loss'], 1.0, 3)} | " + " | ".join(pm(a["clean"][c]) for c in CLEAN) + " |")
    rates = ", ".join(f"{r:g}" for r in args["rates"])
    lines += ["", "## Robustness", "",
              f"Rates {rates}. Caption corruptions (a share r of the retrieval images lose / swap / get noise for "
              "their captions): retrieval R@1, mean of both directions. Image corruptions (every probe test image "
              "at severity r): probe top-1. Relative robustness: the area under the curve over the normalized "
              "rate (the mean score over the rates), %. Effective robustness: the summed gain over the reference "
              f"run's (`{report['reference']}`) curve shifted to the same clean score, percentage points summed "
              "over the rates (> 0: degrades more slowly than the reference).", "",
              "| run | " + " | ".join(f"{m} relative | {m} effective" for m in CAPTION + IMAGE) + " |",
              "|---" + "|---:" * (2 * len(CAPTION + IMAGE)) + "|"]
    for name, run in report["runs"].items():
        a = run["aggregate"]
        cells = []
        for mode in CAPTION + IMAGE:
            metric = headline(mode)
            if metric in a["relative"].get(mode, {}):
                cells += [pm(a["relative"][mode][metric]), f"{100 * a['effective'][mode][metric]:+.1f}"]
            else:
                cells += ["-", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Reading", "", *report["reading"], ""]
    if args.get("note"):
        lines += ["## Notes", "", *(f"- {n}" for n in args["note"]), ""]
    return "\n".join(lines)


def reading(report: dict) -> list[str]:
    """Plain statements of which settings help, from the numbers (mean over seeds; with one
    seed, differences smaller than run-to-run noise say nothing)."""
    runs, ref = report["runs"], report["reference"]
    base = runs[ref]["aggregate"]
    out = []
    for col in ("probe top-1", "i2t R@1"):
        best = max(runs, key=lambda r: runs[r]["aggregate"]["clean"][col][0])
        worst = min(runs, key=lambda r: runs[r]["aggregate"]["clean"][col][0])
        out.append(f"- Clean {col}: best {best} ({100 * runs[best]['aggregate']['clean'][col][0]:.1f}%), worst "
                   f"{worst} ({100 * runs[worst]['aggregate']['clean'][col][0]:.1f}%), reference {ref} "
                   f"({100 * base['clean'][col][0]:.1f}%).")
    for mode in CAPTION + IMAGE:
        metric = headline(mode)
        scored = {r: runs[r]["aggregate"]["relative"].get(mode, {}).get(metric) for r in runs}
        scored = {r: v for r, v in scored.items() if v is not None}
        if not scored:
            continue
        better = [r for r in scored if r != ref and runs[r]["aggregate"]["effective"][mode][metric] > 0]
        best = max(scored, key=lambda r: scored[r][0])
        out.append(f"- {mode} ({metric}): highest relative robustness {best} ({100 * scored[best][0]:.1f}%); "
                   f"positive effective robustness against {ref}: {', '.join(better) if better else 'none'}.")
    ends = []  # each corruption's score at the highest rate, lowest and highest over the runs
    for mode in CAPTION + IMAGE:
        metric = headline(mode)
        last = [r["aggregate"]["curves"][mode][metric][0][-1] for r in runs.values()
                if metric in r["aggregate"]["curves"].get(mode, {})]
        if last:
            ends.append(f"{mode} {100 * min(last):.1f}-{100 * max(last):.1f}%")
    out.append(f"- Effective robustness is taken against {ref}'s curve shifted to each run's clean score. Where "
               "every curve ends at the same floor (here, at rate "
               f"{report['args']['rates'][-1]:g}, over the runs: {'; '.join(ends)}), a run with a lower clean score "
               "has less to lose and scores positive by construction: read it beside the clean scores, not as a "
               "gain on its own.")
    if len(report["args"]["seeds"]) < 2:
        out.append("- One seed: no error bars; treat differences of a few points as noise.")
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    args = report["args"]
    rates = args["rates"]
    grid = [(r["fraction"], r["dropout"], r.get("weighting", "fixed")) for r in report["runs"].values()]
    fractions, dropouts = sorted({g[0] for g in grid}, reverse=True), sorted({g[1] for g in grid})
    colours = {f: plt.cm.viridis(i / max(len(fractions) - 1, 1)) for i, f in enumerate(fractions)}
    styles = dict(zip(dropouts, ["-", "--", ":", "-."] * 4))
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    panels = list(CAPTION) + ["clean"] + list(IMAGE) + ["clean_probe"]
    for ax, mode in zip(axes.flat, panels):
        if mode.startswith("clean"):
            col = "probe top-1" if mode == "clean_probe" else "i2t R@1"
            for w in WEIGHTINGS:
                for d in dropouts:
                    fs = [f for f in fractions if (f, d, w) in grid]
                    if not fs:
                        continue
                    ys = [report["runs"][run_name(f, d, w)]["aggregate"]["clean"][col] for f in fs]
                    ax.errorbar([100 * f for f in fs], [100 * m for m, _ in ys], yerr=[100 * sd for _, sd in ys],
                                ls=styles[d], marker="o" if w == "fixed" else "x", color="k" if w == "fixed" else "C3",
                                capsize=3, label=f"text dropout {d:g}" + ("" if w == "fixed" else f", weight x {w}"))
            ax.set_xscale("log")
            ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g}%" for f in fractions])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("images captioned")
            ax.set_title(f"clean {col}", fontsize=10)
            ax.legend(fontsize=7)
        else:
            metric = headline(mode)
            for f, d, w in grid:
                curve = report["runs"][run_name(f, d, w)]["aggregate"]["curves"].get(mode, {}).get(metric)
                if curve:
                    ax.plot(rates, [100 * v for v in curve[0]], ls=styles[d], color=colours[f],
                            marker="." if w == "fixed" else "x",
                            label=f"{100 * f:g}% captioned, drop {d:g}" + ("" if w == "fixed" else f", weight x {w}"))
            ax.set_xlabel("corruption rate" if mode in CAPTION else "severity")
            ax.set_title(f"{mode}: {'retrieval R@1' if metric == 'R@1' else 'probe top-1'}", fontsize=10)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, ncol=1)
    fig.suptitle(f"BERTSimCLR, partially paired and caption dropout ({report['data']}, {args['steps']} steps, "
                 f"{len(args['seeds'])} seed(s))", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _floats(text: str, name: str, parser) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--{name} must be comma-separated numbers, got {text!r}")
    if not values:
        parser.error(f"--{name} is empty")
    return values


def main(argv=None) -> None:
    from mmssl_jax import xla_cpu

    xla_cpu.add_cpu_flags()  # as python -m mmssl_jax.main does; XLA_FLAGS set by the caller wins
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="embedded", choices=["embedded", "flickr8k"])
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--train_split", default="train", help="e.g. train+unsplit (Flickr8k's 91 unlisted images)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 is the standard)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2")
    parser.add_argument("--fractions", default="1,0.5,0.2,0.05", help="input.caption_fraction values")
    parser.add_argument("--dropouts", default="0,0.3,0.6", help="modality_dropout.text values")
    parser.add_argument("--runs", default="", help="fraction:dropout pairs instead of the grid, e.g. 1:0,0.2:0.6; "
                        "fraction:dropout:share weights the image-text terms by the caption share (see WEIGHTINGS)")
    parser.add_argument("--rates", default=",".join(f"{0.1 * i:.1f}" for i in range(11)), help="corruption rates")
    parser.add_argument("--max_train", type=int, default=10_000, help="probe training images (0: all)")
    parser.add_argument("--max_test", type=int, default=0, help="first N images of the probe test and retrieval "
                        "splits (0: all)")
    parser.add_argument("--probe_iters", type=int, default=300)
    parser.add_argument("--workdir", default="/tmp/modality_experiment")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--note", action="append", default=[], help="a line for the report's Notes (provenance, "
                        "e.g. a run whose checkpoint came from another experiment); repeatable")
    args = parser.parse_args(argv)
    args.seeds = [int(x) for x in _floats(args.seeds, "seeds", parser)]
    args.fractions = _floats(args.fractions, "fractions", parser)
    args.dropouts = _floats(args.dropouts, "dropouts", parser)
    args.rates = _floats(args.rates, "rates", parser)

    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()

    from mmssl_jax.evaluation import robustness

    args.rates = list(robustness.check_rates(args.rates))
    settings = data_settings(args.data)
    start = time.time()
    opt = load_config("bert_simclr").optimizer
    report = {"data": args.data, "args": vars(args), "settings": settings, "runs": {},
              "command": "python benchmarks/modality_experiment.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_line(),
              "optimizer": f"{opt.name.upper()} {opt.learning_rate}"}
    grid = [(f, d, "fixed") for f in args.fractions for d in args.dropouts]
    if args.runs:
        grid = []
        for run in (r.strip() for r in args.runs.split(",") if r.strip()):
            parts = run.split(":")
            try:
                if len(parts) not in (2, 3):
                    raise ValueError(run)
                grid.append((float(parts[0]), float(parts[1]), parts[2] if len(parts) == 3 else "fixed"))
            except ValueError:
                parser.error(f"--runs must be fraction:dropout[:weighting] items, e.g. 1:0,0.2:0.6,0.05:0:share; "
                             f"got {run!r}")
    if not all(0 < f <= 1 and 0 <= d < 1 for f, d, _ in grid):
        parser.error("caption fractions must be in (0, 1] and dropouts in [0, 1)")
    if not all(w in WEIGHTINGS for _, _, w in grid):
        parser.error(f"--runs: the weighting must be one of {WEIGHTINGS}")
    ref = (1.0, 0.0, "fixed") if (1.0, 0.0, "fixed") in grid else grid[0]
    report["reference"] = run_name(*ref)
    for fraction, dropout, weighting in sorted(grid, key=lambda g: g != ref):  # the reference first
        results = [run_one(args, settings, fraction, dropout, weighting, seed) for seed in args.seeds]
        report["runs"][run_name(fraction, dropout, weighting)] = {
            "fraction": fraction, "dropout": dropout, "weighting": weighting,
            "seeds": {str(r["seed"]): r for r in results}, "aggregate": aggregate(results, args.rates)}
    report["runs"] = {run_name(*g): report["runs"][run_name(*g)] for g in grid}  # table order
    add_effective(report)
    report["reading"] = reading(report)
    # Summed over the runs' own training + evaluation (a re-run that only reports costs nothing).
    report["seconds"] = sum(r["wall_seconds"] for run in report["runs"].values() for r in run["seeds"].values())
    report["report_seconds"] = time.time() - start
    write_report(args.out, f"modality_experiment_{args.data}", report, markdown, plot)


if __name__ == "__main__":
    main()
