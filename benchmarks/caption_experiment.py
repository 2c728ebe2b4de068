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
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RUNS = ("simclr", "bert_simclr_first", "bert_simclr_random")
PUBLISHED = {  # top-1 linear probe, pretraining on 20% of MS-COCO (the report this project started from)
    "simclr": {"CIFAR-10": 48.8, "CIFAR-100": 17.4},
    "bert_simclr_first": {"CIFAR-10": 60.8, "CIFAR-100": 26.4},
    "bert_simclr_random": {"CIFAR-10": 61.6, "CIFAR-100": 28.7},
}


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


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


def run_config(run: str, args, settings: dict):
    """The config of one run: every run shares encoder, views, batch, steps and optimizer."""
    config = load_config("bert_simclr" if run.startswith("bert_simclr") else "simclr")
    config.input.name = settings["train"]
    config.input.data_dir = args.data_dir
    config.input.batch_size = args.batch_size
    config.input.image_size = args.image_size
    config.num_steps = args.steps
    config.seed = args.seed
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


def evaluate_run(workdir: Path, settings: dict, args, has_text: bool) -> dict:
    from mmssl_jax import config_base, evaluation

    results = {}
    for label, dataset, label_key in settings["probes"]:
        ec = load_config("linear_probe")
        ec.checkpoint_dir = str(workdir)
        ec.eval = config_base.eval_config(("linear_probe", "knn"))
        ec.eval.classification.dataset = dataset
        ec.eval.classification.data_dir = args.data_dir
        ec.eval.classification.label_key = label_key
        ec.eval.classification.train_split = settings["probe_train"]
        ec.eval.classification.test_split = settings["probe_test"]
        ec.eval.classification.max_train = settings["max_train"]
        ec.eval.classification.name = label
        ec.eval.image_size = args.image_size
        metrics = evaluation.evaluate_checkpoint(ec, workdir / f"eval_{label}")
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
        metrics = evaluation.evaluate_checkpoint(ec, workdir / "eval_retrieval")
        results["retrieval"] = {k.split("eval/retrieval/", 1)[1]: v for k, v in metrics.items()
                                if k.startswith("eval/retrieval/")}
    return results


def markdown(report: dict) -> str:
    probes = [p[0] for p in report["settings"]["probes"]]
    lines = [f"# Image+caption experiment on {report['data']} data", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}; total {report['seconds'] / 60:.1f} min. "
             f"Budget per run: {report['args']['steps']} steps x batch {report['args']['batch_size']} at "
             f"{report['args']['image_size']} px, ResNet-18 (CIFAR stem) width {report['args']['width']}, "
             f"LARS, seed {report['args']['seed']}. Trained on `{report['settings']['train']}` (train split).", "",
             "Linear probe (L2 chosen on a held-out 20% of the probe's training split, refit on all of it) "
             "and weighted kNN (k=20, T=0.07) on the frozen encoder output; top-1 / top-5 in %.", ""]
    head = "| run | train s | final loss | " + " | ".join(f"{p} probe top-1 | {p} probe top-5 | {p} kNN-20 top-1" for p in probes)
    lines += [head + " |", "|---" + "|---:" * (2 + 3 * len(probes)) + "|"]
    for run in RUNS:
        r = report["runs"][run]
        cells = [run, f"{r['train_seconds']:.0f}", f"{r['final_loss']:.3f}"]
        for p in probes:
            m = r["eval"][p]
            cells += [f"{100 * m['linear_probe/top1']:.1f}", f"{100 * m.get('linear_probe/top5', float('nan')):.1f}",
                      f"{100 * m['knn/k20_top1']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Image-text retrieval on the held-out captioned split "
              f"(`{'/'.join(report['settings']['retrieval'])}`), recall in %:", "",
              "| run | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for run in RUNS[1:]:
        m = report["runs"][run]["eval"]["retrieval"]
        lines.append(f"| {run} | " + " | ".join(f"{100 * m[f'retrieval/{d}_r@{k}']:.1f}" for d in ("i2t", "t2i")
                                                for k in (1, 5, 10)) + " |")
    ablation = {run: report["runs"][run]["eval"]["retrieval"] for run in RUNS[1:]}
    if any("ablation/captions/fused_probe_top1" in m for m in ablation.values()):
        lines += ["", "Caption ablations (fused probe: `[h_image, z_caption]` of each test image, probe on half, "
                  "scored on the other half; top-1 %):", "",
                  "| run | image only | + captions | + removed | + shuffled | + noise | t2i R@1 shuffled |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for run, m in ablation.items():
            lines.append(f"| {run} | {100 * m['ablation/image_only/probe_top1']:.1f} | "
                         + " | ".join(f"{100 * m[f'ablation/{mode}/fused_probe_top1']:.1f}"
                                      for mode in ("captions", "removed", "shuffled", "noise"))
                         + f" | {100 * m['ablation/shuffled/retrieval/t2i_r@1']:.1f} |")
    lines += ["", "Published (20% of MS-COCO, ResNet-50-scale budget), linear-probe top-1 %: "
              + "; ".join(f"{run}: CIFAR-10 {v['CIFAR-10']}, CIFAR-100 {v['CIFAR-100']}" for run, v in PUBLISHED.items()),
              "", f"Ordering (first probe set, top-1): {report['ordering']}", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = [p[0] for p in report["settings"]["probes"]]
    fig, axes = plt.subplots(1, len(probes), figsize=(4.2 * len(probes), 3.4), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        top1 = [100 * report["runs"][r]["eval"][probe]["linear_probe/top1"] for r in RUNS]
        knn = [100 * report["runs"][r]["eval"][probe]["knn/k20_top1"] for r in RUNS]
        xs = range(len(RUNS))
        ax.bar([x - 0.2 for x in xs], top1, 0.4, label="linear probe top-1")
        ax.bar([x + 0.2 for x in xs], knn, 0.4, label="kNN-20 top-1")
        ax.set_xticks(list(xs), ["SimCLR", "+captions\n(first)", "+captions\n(random)"])
        ax.set_title(f"{probe} ({report['data']} pretraining)", fontsize=10)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="embedded", choices=["embedded", "flickr8k"])
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 is the standard)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/caption_experiment")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()
    import jax

    from mmssl_jax import train

    settings = data_settings(args.data, args.data_dir)
    start = time.time()
    report = {"data": args.data, "args": vars(args), "settings": settings, "runs": {},
              "command": "python benchmarks/caption_experiment.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s), {platform.node()}"}
    root = Path(args.workdir) / args.data
    for run in RUNS:
        workdir = root / run
        config = run_config(run, args, settings)
        t = time.time()
        summary = train.train_and_evaluate(config, workdir)
        seconds = time.time() - t
        # A finished run in the workdir is resumed at its last step (nothing to train), so an
        # interrupted experiment re-run only evaluates; the loss comes from the run's history.
        history = json.loads((workdir / "history.json").read_text())
        # Training time from the run's own logged throughput (also right for a resumed run).
        steps = [0] + [s for s, _ in history]
        logged = sum((b - a) * args.batch_size / m["examples_per_second"] for a, (b, m) in zip(steps, history))
        report["runs"][run] = {"train_seconds": logged, "wall_seconds_this_call": seconds,
                               "final_loss": history[-1][1]["loss"],
                               "eval": evaluate_run(workdir, settings, args, has_text=run != "simclr")}
    report["seconds"] = time.time() - start
    first = settings["probes"][0][0]
    top1 = {r: report["runs"][r]["eval"][first]["linear_probe/top1"] for r in RUNS}
    order = sorted(RUNS, key=lambda r: -top1[r])
    report["ordering"] = " > ".join(f"{r} ({100 * top1[r]:.1f}%)" for r in order) + (
        "; the published ordering (random > first > simclr) holds" if order == list(RUNS[::-1])
        else "; the published ordering (random > first > simclr) does NOT hold")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"caption_experiment_{args.data}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
