r"""The image+caption experiment: does pretraining with captions (and caption augmentation) give
better image features than SimCLR at the same budget?

Three runs with the same image encoder, views, batch, steps and optimizer:

* ``simclr``: two augmented image views, NT-Xent (``configs/simclr.py``);
* ``bert_simclr_first``: the same plus CLIP terms between each image view and the caption
  embedding (``configs/bert_simclr.py``), always the first caption (no caption augmentation);
* ``bert_simclr_random``: the same, each step drawing one of the image's captions (caption
  augmentation).

Then the frozen encoder of each is evaluated: linear probe (top-1/top-5) and kNN on each probe
set, and for the caption runs image-text retrieval on a held-out captioned split.

The original report (pretraining on 20% of MS-COCO, probing CIFAR-10 / CIFAR-100) found top-1
61.6% / 28.7% with caption augmentation, 60.8% / 26.4% without, and 48.8% / 17.4% for SimCLR.

Usage::

    # Embedded data (prepared on first use); probe: shape and colour of the test images.
    python benchmarks/caption_experiment.py --data=embedded --steps=300
    # Real data: Flickr8k train images + captions; probe CIFAR-10 and flowers; retrieval on
    # Flickr8k dev. Prepare first (python -m mmssl_jax.data.prepare --list):
    python -m mmssl_jax.data.prepare flickr8k_embedded --manual_dir=DATA/flickr8k --data_dir=D
    python -m mmssl_jax.data.prepare cifar10_npz --manual_dir=DATA/cifar10 --data_dir=D
    python -m mmssl_jax.data.prepare image_folder_classification --manual_dir=DATA/flowers --data_dir=D
    python benchmarks/caption_experiment.py --data=flickr8k --data_dir=D --steps=600

Results: ``benchmarks/results/caption_experiment_<data>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import load_config, machine_line, write_report  # noqa: E402  (benchmarks/ is on sys.path)

RUNS = ("simclr", "bert_simclr_first", "bert_simclr_random")
PUBLISHED = {  # top-1 linear probe, pretraining on 20% of MS-COCO (the report this project started from)
    "simclr": {"CIFAR-10": 48.8, "CIFAR-100": 17.4},
    "bert_simclr_first": {"CIFAR-10": 60.8, "CIFAR-100": 26.4},
    "bert_simclr_random": {"CIFAR-10": 61.6, "CIFAR-100": 28.7},
}


def data_settings(data: str, data_dir: str) -> dict:
    """Training set, probe sets ``(label, dataset, label_key)`` and the retrieval split."""
    if data == "embedded":
        return dict(train="mmssl_shapes", probes=[("shape", "mmssl_shapes", "label"), ("colour", "mmssl_shapes", "color")],
                    retrieval=("mmssl_shapes", "test"), probe_train="train", probe_test="test", max_train=4000)
    if data == "flickr8k":
        from mmssl_jax.data import builders

        flowers = [b for b in _prepared(data_dir) if b.startswith("image_folder_classification/")]
        probes = [("CIFAR-10", "cifar10_npz", "label")]
        if flowers:
            probes.append(("flowers", flowers[0], "label"))
        del builders
        return dict(train="flickr8k_embedded", probes=probes, retrieval=("flickr8k_embedded", "dev"),
                    probe_train="train", probe_test="test", max_train=10_000)
    raise ValueError(f"--data must be 'embedded' or 'flickr8k', got {data!r}")


def _prepared(data_dir: str) -> list[str]:
    root = Path(data_dir).expanduser()
    out = []
    for base in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        for cfg in sorted(p for p in base.iterdir() if p.is_dir()):
            if any(cfg.rglob("dataset_info.json")):
                out.append(f"{base.name}/{cfg.name}")
    return out


def run_config(run: str, args, settings: dict, seed: int):
    """The config of one run: every run shares encoder, views, batch, steps and optimizer."""
    config = load_config("bert_simclr" if run.startswith("bert_simclr") else "simclr")
    config.input.name = settings["train"]
    config.input.data_dir = args.data_dir
    config.input.batch_size = args.batch_size
    config.input.image_size = args.image_size
    config.num_steps = args.steps
    config.seed = seed
    config.log_every = max(args.steps // 20, 1)
    config.checkpoint_every = args.steps
    config.encoders.image.kwargs.width = args.width
    # The same image head, optimizer and temperature for all three (bert_simclr's own settings).
    reference = load_config("bert_simclr")
    config.heads.image = reference.heads.image
    config.optimizer = reference.optimizer
    config.loss_terms[0] = reference.loss_terms[0]
    if run == "bert_simclr_first":
        config.input.caption_mode = "first"
    config.eval.protocols = ()  # evaluated below, the same way for all three
    return config


def _evaluate(ec, out: Path, step: int) -> dict:
    """``evaluation.evaluate_checkpoint``, or the metrics an earlier call already wrote for this
    step (a re-run of an interrupted or shortened experiment does not evaluate twice)."""
    from mmssl_jax import evaluation

    summary = out / "eval_summary.json"
    if summary.exists():
        done = json.loads(summary.read_text()).get(str(step))
        if done:
            return done
    return evaluation.evaluate_checkpoint(ec, out)


def evaluate_run(workdir: Path, settings: dict, args, has_text: bool) -> dict:
    from mmssl_jax import config_base

    step = json.loads((workdir / "history.json").read_text())[-1][0]
    results = {}
    for label, dataset, label_key in settings["probes"]:
        ec = probe_config(label, dataset, label_key, settings, args)
        ec.checkpoint_dir = str(workdir)
        metrics = _evaluate(ec, workdir / f"eval_{label}", step)
        results[label] = {k.split(f"eval/{label}/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"eval/{label}/")}
    if has_text:
        dataset, split = settings["retrieval"]
        ec = load_config("linear_probe")
        ec.checkpoint_dir = str(workdir)
        ec.eval = config_base.eval_config(("retrieval",))
        ec.eval.retrieval.dataset = dataset
        ec.eval.retrieval.data_dir = args.data_dir
        ec.eval.retrieval.split = split
        ec.eval.retrieval.name = "retrieval"
        ec.eval.ablations = args.data == "embedded"
        ec.eval.classification.label_key = "label"
        ec.eval.image_size = args.image_size
        metrics = _evaluate(ec, workdir / "eval_retrieval", step)
        results["retrieval"] = {k.split("eval/retrieval/", 1)[1]: v for k, v in metrics.items()
                                if k.startswith("eval/retrieval/")}
    return results


def probe_config(label: str, dataset: str, label_key: str, settings: dict, args):
    """The probe-only config of one probe set (the same for every run and for the floor)."""
    from mmssl_jax import config_base

    ec = load_config("linear_probe")
    ec.eval = config_base.eval_config(("linear_probe", "knn"))
    ec.eval.classification.dataset = dataset
    ec.eval.classification.data_dir = args.data_dir
    ec.eval.classification.label_key = label_key
    ec.eval.classification.train_split = settings["probe_train"]
    ec.eval.classification.test_split = settings["probe_test"]
    ec.eval.classification.max_train = settings["max_train"]
    ec.eval.classification.name = label
    ec.eval.image_size = args.image_size
    return ec


def pixel_floor(settings: dict, args) -> dict:
    """The raw-pixel floor: the same probe and kNN on the evaluation pipeline's pixels
    (flattened, the probe standardizes them), the same training subset and test set. With
    ``--floor=knn`` the probe is left out (on 10,000 x 3,072-d pixels its L-BFGS search ran over
    30 CPU-minutes on 2 cores) and the report says so."""
    import numpy as np

    from mmssl_jax.evaluation import evaluators, features, protocols

    out = {}
    for label, dataset, label_key in settings["probes"]:
        ec = probe_config(label, dataset, label_key, settings, args).eval
        cc = ec.classification
        pixels = {}
        for split in (cc.train_split, cc.test_split):
            source = evaluators._load(dataset, split, args.data_dir or None, labelled=label_key)
            if split == cc.train_split and cc.max_train and len(source) > cc.max_train:
                source = features.Subset(source, features.stratified_sample(source.labels(), cc.max_train, seed=0))
            images = features.ImageSet(source, image_size=args.image_size, batch_size=512, keep=("label",),
                                       center_crop_fraction=ec.center_crop_fraction)
            xs, ys = [], []
            for batch in images.batches():
                keep = batch["mask"].astype(bool)
                xs.append(batch["image"][keep].reshape(keep.sum(), -1))
                ys.append(batch["label"][keep])
            pixels[split] = (np.concatenate(xs).astype(np.float32), np.concatenate(ys))
        (tx, ty), (vx, vy) = pixels[cc.train_split], pixels[cc.test_split]
        metrics = {}
        if args.floor == "full":
            metrics.update({f"linear_probe/{k}": v for k, v in protocols.linear_probe(tx, ty, vx, vy, seed=0).items()})
        knn = protocols.knn_classify(tx, ty, vx, vy, ks=(20, 200), temperature=0.07)
        metrics.update({f"knn/{k}": v for k, v in knn.items()})
        out[label] = metrics
    return out


def cached_pixel_floor(root: Path, settings: dict, args) -> dict:
    """The pixel floor, computed once per probe setting and kept in the workdir: it does not
    depend on the runs or the seeds, and its probe on 3,072-d pixels is the slowest evaluation."""
    key = {"probes": [list(p) for p in settings["probes"]], "max_train": settings["max_train"],
           "image_size": args.image_size, "data_dir": args.data_dir, "probe": args.floor == "full"}
    path = root / "pixel_floor.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["floor"]
    floor = pixel_floor(settings, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "floor": floor}, indent=1))
    return floor


def caption_training_accuracy(workdir: Path) -> float | None:
    """The last logged in-batch image-to-caption top-1 of the caption terms (mean over terms)."""
    history = json.loads((workdir / "history.json").read_text())
    accs = [v for k, v in history[-1][1].items() if k.startswith("accuracy/clip/")]
    return sum(accs) / len(accs) if accs else None


def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(per_seed: dict) -> dict:
    """Mean and sample standard deviation over seeds of every scalar metric."""
    seeds = list(per_seed.values())
    out = {"train_seconds": _stats([r["train_seconds"] for r in seeds]),
           "final_loss": _stats([r["final_loss"] for r in seeds])}
    if seeds[0].get("caption_accuracy") is not None:
        out["caption_accuracy"] = _stats([r["caption_accuracy"] for r in seeds])
    for group, metrics in seeds[0]["eval"].items():
        for key in metrics:
            out[f"{group}/{key}"] = _stats([r["eval"][group][key] for r in seeds])
    return out


def _pm(stat, scale: float = 100.0, digits: int = 1) -> str:
    mean, std = stat
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def difference(report: dict, run: str, metric: str, base: str = "simclr") -> tuple[float, float, int]:
    """``run``'s mean ``metric`` minus ``base``'s, the standard error of that difference (unequal
    variances), and how many of ``run``'s seeds score above ``base``'s mean."""
    probe, key = metric.split("/", 1)
    (m1, s1), (m0, s0) = (report["runs"][r]["aggregate"][metric] for r in (run, base))  # aggregate()'s
    seeds = {r: [s["eval"][probe][key] for s in report["runs"][r]["seeds"].values()] for r in (run, base)}
    se = (s1 ** 2 / len(seeds[run]) + s0 ** 2 / len(seeds[base])) ** 0.5
    return m1 - m0, se, sum(v > m0 for v in seeds[run])


def markdown(report: dict) -> str:
    args = report["args"]
    probes = [p[0] for p in report["settings"]["probes"]]
    seeds = args["seeds"]
    opt = report.get("optimizer", "")
    lines = [f"# Image+caption experiment on {report['data']} data", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}; this invocation {report['seconds'] / 60:.1f} min "
             "(finished runs are resumed and their evaluations reused; each run's training time is in the table). "
             f"Budget per run: {args['steps']} steps x batch {args['batch_size']} at "
             f"{args['image_size']} px, ResNet-18 (CIFAR stem) width {args['width']}, {opt}; "
             f"seeds {seeds} (mean ± sample standard deviation over the {len(seeds)} seeds). "
             f"Trained on `{report['settings']['train']}` (train split).", "",
             "Linear probe (L2 chosen on a held-out 20% of the probe's training split, refit on all of it) "
             "and weighted kNN (T=0.07) on the frozen encoder output, top-1 in %. The raw-pixel row runs the "
             "same probe and kNN on the evaluation pipeline's pixels (`--floor=knn`: kNN only, the probe on "
             "3,072-d pixels is not run). Caption acc: the last logged in-batch "
             "image-to-caption top-1 of the caption terms during training (chance 1/batch).", ""]
    head = "| run | train s | final loss | caption acc | " + " | ".join(
        f"{p} probe top-1 | {p} kNN-20 | {p} kNN-200" for p in probes)
    lines += [head + " |", "|---" + "|---:" * (3 + 3 * len(probes)) + "|"]
    floor = report.get("floor")
    if floor:
        cells = ["raw pixels", "", "", ""]
        for p in probes:
            m = floor[p]
            probe = f"{100 * m['linear_probe/top1']:.1f}" if "linear_probe/top1" in m else "not run"
            cells += [probe, f"{100 * m['knn/k20_top1']:.1f}",
                      f"{100 * m['knn/k200_top1']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for run in RUNS:
        a = report["runs"][run]["aggregate"]
        cap = _pm(a["caption_accuracy"]) if "caption_accuracy" in a else "-"
        cells = [run, f"{a['train_seconds'][0]:.0f}", _pm(a["final_loss"], 1.0, 3), cap]
        for p in probes:
            cells += [_pm(a[f"{p}/linear_probe/top1"]), _pm(a[f"{p}/knn/k20_top1"]), _pm(a[f"{p}/knn/k200_top1"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Image-text retrieval on the held-out captioned split "
              f"(`{'/'.join(report['settings']['retrieval'])}`), recall in % (chance R@1: 1 / split size):", "",
              "| run | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for run in RUNS[1:]:
        a = report["runs"][run]["aggregate"]
        lines.append(f"| {run} | " + " | ".join(_pm(a[f"retrieval/retrieval/{d}_r@{k}"]) for d in ("i2t", "t2i")
                                                for k in (1, 5, 10)) + " |")
    lines += ["", "Per seed (first probe set, probe top-1 / kNN-200 top-1 %):", "",
              "| run | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" + "|---:" * len(seeds) + "|"]
    first = probes[0]
    for run in RUNS:
        per = report["runs"][run]["seeds"]
        lines.append(f"| {run} | " + " | ".join(
            f"{100 * per[str(s)]['eval'][first]['linear_probe/top1']:.1f} / {100 * per[str(s)]['eval'][first]['knn/k200_top1']:.1f}"
            for s in seeds) + " |")
    if len(seeds) > 1:
        lines += ["", "Against SimCLR (first probe set): difference of the means ± its standard error "
                  "sqrt(s1^2/n1 + s2^2/n2), in points, and the seeds of the run above SimCLR's mean:", "",
                  "| run | probe top-1 | kNN-200 top-1 |", "|---|---:|---:|"]
        for run in RUNS[1:]:
            cells = []
            for key in ("linear_probe/top1", "knn/k200_top1"):
                d, se, above = difference(report, run, f"{first}/{key}")
                cells.append(f"{100 * d:+.1f} ± {100 * se:.1f} ({above}/{len(seeds)})")
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", "Published (20% of MS-COCO, ResNet-50-scale budget), linear-probe top-1 %: "
              + "; ".join(f"{run}: CIFAR-10 {v['CIFAR-10']}, CIFAR-100 {v['CIFAR-100']}" for run, v in PUBLISHED.items()),
              "", f"Ordering (first probe set, mean probe top-1): {report['ordering']}", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = [p[0] for p in report["settings"]["probes"]]
    fig, axes = plt.subplots(1, len(probes), figsize=(4.2 * len(probes), 3.4), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        xs = range(len(RUNS))
        for offset, key, label in ((-0.2, "linear_probe/top1", "linear probe top-1"), (0.2, "knn/k200_top1", "kNN-200 top-1")):
            stats = [report["runs"][r]["aggregate"][f"{probe}/{key}"] for r in RUNS]
            ax.bar([x + offset for x in xs], [100 * m for m, _ in stats], 0.4, yerr=[100 * sd for _, sd in stats],
                   capsize=3, label=label)
        floor = (report.get("floor") or {}).get(probe)
        if floor and "linear_probe/top1" in floor:
            ax.axhline(100 * floor["linear_probe/top1"], color="k", ls="--", lw=1, label="raw-pixel probe")
        if floor:
            ax.axhline(100 * floor["knn/k200_top1"], color="k", ls=":", lw=1, label="raw-pixel kNN-200")
        ax.set_xticks(list(xs), ["SimCLR", "+captions\n(first)", "+captions\n(random)"])
        ax.set_title(f"{probe} ({report['data']} pretraining, {len(report['args']['seeds'])} seeds)", fontsize=10)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from mmssl_jax import xla_cpu

    xla_cpu.add_cpu_flags()  # as python -m mmssl_jax.main does; XLA_FLAGS set by the caller wins
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="embedded", choices=["embedded", "flickr8k"])
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 is the standard)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2")
    parser.add_argument("--workdir", default="/tmp/caption_experiment")
    parser.add_argument("--floor", default="full", choices=["full", "knn", "none"],
                        help="the raw-pixel floor: kNN and probe (full), kNN only, or none")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        parser.error("--seeds is empty")

    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()

    from mmssl_jax import train

    settings = data_settings(args.data, args.data_dir)
    start = time.time()
    reference = load_config("bert_simclr").optimizer
    report = {"data": args.data, "args": vars(args), "settings": settings, "runs": {},
              "command": "python benchmarks/caption_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_line(),
              "optimizer": f"{reference.name.upper()} {reference.learning_rate} ({reference.lr_scaling} scaling)"}
    root = Path(args.workdir) / args.data
    report["runs"] = {run: {"seeds": {}} for run in RUNS}
    # Seed-major: every run's seed 0 first, so a stopped experiment has whole seeds of all runs.
    for seed in args.seeds:
        for run in RUNS:
            workdir = root / run / f"seed{seed}"
            config = run_config(run, args, settings, seed)
            t = time.time()
            train.train_and_evaluate(config, workdir)
            seconds = time.time() - t
            # A finished run in the workdir is resumed at its last step (nothing to train), so an
            # interrupted experiment re-run only evaluates; the loss comes from the run's history.
            history = json.loads((workdir / "history.json").read_text())
            # Training time from the run's own logged throughput (also right for a resumed run).
            steps = [0] + [s for s, _ in history]
            logged = sum((b - a) * args.batch_size / m["examples_per_second"] for a, (b, m) in zip(steps, history))
            report["runs"][run]["seeds"][str(seed)] = {
                "train_seconds": logged, "wall_seconds_this_call": seconds, "final_loss": history[-1][1]["loss"],
                "caption_accuracy": caption_training_accuracy(workdir),
                "eval": evaluate_run(workdir, settings, args, has_text=run != "simclr")}
    for run in RUNS:
        report["runs"][run]["aggregate"] = aggregate(report["runs"][run]["seeds"])
    report["floor"] = cached_pixel_floor(root, settings, args) if args.floor != "none" else None
    report["seconds"] = time.time() - start
    first = settings["probes"][0][0]
    top1 = {r: report["runs"][r]["aggregate"][f"{first}/linear_probe/top1"][0] for r in RUNS}
    order = sorted(RUNS, key=lambda r: -top1[r])
    report["ordering"] = " > ".join(f"{r} ({100 * top1[r]:.1f}%)" for r in order) + (
        "; the published ordering (random > first > simclr) holds" if order == list(RUNS[::-1])
        else "; the published ordering (random > first > simclr) does NOT hold")
    write_report(args.out, f"caption_experiment_{args.data}", report, markdown, plot)


if __name__ == "__main__":
    main()
