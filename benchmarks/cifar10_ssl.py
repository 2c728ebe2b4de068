r"""CIFAR-10 self-supervised benchmark: our trainer side by side with the PyTorch peer (lightly).

Five methods of ours (SimCLR, MoCo v2, BYOL, Barlow Twins, VICReg: each ``configs/<method>.py``
default recipe) pretrain a ResNet-18 with the CIFAR stem on the CIFAR-10 training images at
32 px, prepared with our own builder (``cifar10_npz``). At evaluation points during training the
frozen encoder output ``h`` is scored by weighted kNN (k=200, T=0.07, cosine; InstDisc) on the
test set with the training images as the bank; at the end the linear probe (L2 chosen on a
held-out 20%, refit). The peer (``cifar10_ssl_peer.py``: lightly 1.6.0 on PyTorch CPU) runs
SimCLR and BYOL with the same architecture, views, optimizer, schedule, batch, steps and loss;
its features are scored by the same mmssl_jax protocol functions. Floors: the same kNN and
probe on raw pixels.

Budgets (``--budget``; every value can be overridden by its own flag):

* ``full``: width 16, batch 256, 3 epochs (585 updates), kNN and probe every epoch with all
  50,000 training images; about 15 minutes of training per method (ours alone on the 2-core
  machine: ~1.5 s per update at batch 256, measured earlier: 1,000 updates in 25 minutes).
* ``one_epoch``: width 16, batch 256, 1 epoch (195 updates), kNN and probe at half and full
  epoch with all 50,000 training images: 13-20 minutes per run on an otherwise idle 2-core CPU
  (5-9 of training, 4-6 per evaluation), so about 1 hour per seed of SimCLR and BYOL, both
  implementations.
* ``session``: width 16, batch 256, 60 updates (0.31 epoch; the configs' 20 warmup updates
  kept), kNN and probe at updates 30 and 60 with a stratified 10,000-image bank: what fitted one
  session on a 2-core CPU shared with four other jobs (load average ~10).

Usage::

    python -m mmssl_jax.data.prepare cifar10_npz --manual_dir=DATA/cifar10 --data_dir=D
    python benchmarks/cifar10_ssl.py --data_dir=D --budget=full --seeds=0,1 \
        --peer_python=/path/to/torchvenv/bin/python

Results: ``benchmarks/results/cifar10_ssl_<budget>.{json,md,png}``; runs already in the JSON
(same budget) are not run again, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_config  # noqa: E402

OURS = ("simclr", "moco", "byol", "barlow_twins", "vicreg")
PEER = ("simclr", "byol")
BUDGETS = {
    "full": dict(width=16, batch_size=256, epochs=3.0, eval_every=1.0, bank=0),
    "one_epoch": dict(width=16, batch_size=256, epochs=1.0, eval_every=0.5, bank=0),
    "session": dict(width=16, batch_size=256, epochs=60 / 195, eval_every=30 / 195, bank=10_000),
}
KNN_K, KNN_T = 200, 0.07


NOTES = [
    "What is the same in both implementations: ResNet-18 with the CIFAR stem (the torch mirror "
    "reproduces our encoder's features to 1.2e-7 with our weights ported: same layers, padding, "
    "strides, shortcuts; 700,176 parameters at width 16), zero-initialised last BN of each block, "
    "He fan-out conv init and flax's Dense init; the config's heads (lightly's SimCLRProjectionHead / "
    "BYOLProjectionHead / BYOLPredictionHead at our sizes, the parameters ours lacks held at 0); both "
    "views in one encoder pass (BatchNorm over 2B), BYOL's target too, in train mode; LARS (momentum "
    "0.9, trust 1e-3, decay and trust ratio on rank >= 2 only), peak LR x B/256, linear warmup from 0 "
    "over the config's 20 updates then cosine to 0, per update; NT-Xent (T from the config) / BYOL's "
    "2 - 2 cos both ways with our cosine EMA schedule; the views' parameters (crop 0.08-1, ratio 3/4-4/3, "
    "flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, no blur, pixels in [0, 1]); the "
    "decoded training pixels (exported from our cifar10_npz); kNN and probe: the same mmssl_jax "
    "functions on each implementation's features, same bank and test set.",
    "Not aligned (known differences): (1) crop resize: ours bicubic (PIL, antialiased), torchvision's "
    "RandomResizedCrop bilinear (antialiased); ours tries 100 boxes before the centred fallback, "
    "torchvision 10. (2) colour jitter: ours follows TF (contrast about each channel's mean, TF's HSV "
    "for saturation and hue via dm-pix) on the device in the jitted step; torchvision's contrast blends "
    "with the grayscale image's mean and has its own HSV code, in the loader workers. (3) LARS: optax "
    "applies the LR inside the momentum (buffer of lr x update) and divides by ||g + wd w||; lightly "
    "multiplies the buffer by the current LR and divides by ||g|| + wd ||w||: the second is negligible "
    "at wd 1e-6, the first changes the steps while the LR moves (warmup, cosine), i.e. throughout a "
    "short run. (4) BatchNorm running variance: torch keeps the unbiased estimate, flax the biased one "
    "(a factor 1 + 1/(2B x H x W - 1)). (5) Random streams (init, shuffling, views) differ: seed s of "
    "ours and seed s of the peer are not the same draw.",
    "Wall time: the training loop only (evaluations taken out), end to end with its data loading "
    "(2 loader processes each; ours: grain workers doing crop + flip, colour on the device; the peer: "
    "torch DataLoader workers doing all of the views, torch.set_num_threads(2)); ours includes the "
    "step's XLA compilation in its first interval. 's / update (median)' leaves out the first interval "
    "(ours: compile) and any interval with an evaluation in it.",
]


def plan(args) -> dict:
    """Updates per epoch, total updates, evaluation steps (shared by ours and the peer)."""
    per_epoch = 50_000 // args.batch_size
    total = int(round(args.epochs * per_epoch))
    every = max(1, int(round(args.eval_every * per_epoch)))
    evals = sorted(set(range(every, total + 1, every)) | {total})
    log_every = max(d for d in range(1, 21) if every % d == 0)
    return dict(per_epoch=per_epoch, total=total, eval_every=every, eval_steps=evals, log_every=log_every)


def run_config(method: str, args, seed: int, p: dict):
    c = load_config(method)
    c.input.name = "cifar10_npz"
    c.input.data_dir = args.data_dir
    c.input.batch_size = args.batch_size
    c.input.image_size = 32
    c.input.worker_count = args.loader_workers
    c.encoders.image.kwargs.width = args.width
    c.num_steps = p["total"]
    c.seed = seed
    c.log_every = p["log_every"]
    c.checkpoint_every = p["total"]
    c.eval.protocols = ("linear_probe", "knn")
    c.eval.every = p["eval_every"]
    c.eval.knn_k = (KNN_K,)
    c.eval.knn_temperature = KNN_T
    c.eval.classification.max_train = args.bank
    c.eval.batch_size = 1000
    return c


def export_data(args, path: Path) -> dict:
    """The decoded training/test images of our prepared cifar10_npz (the peer trains on the same
    pixels) and the kNN bank indices (ours: evaluation.features.stratified_sample)."""
    from mmssl_jax.data import builders
    from mmssl_jax.evaluation.features import stratified_sample

    if not path.exists():
        arrays = {}
        for split in ("train", "test"):
            s = builders.load_classification("cifar10_npz", split, data_dir=args.data_dir, label_key="label")
            items = [s[i] for i in range(len(s))]
            arrays[f"{split}_x"] = np.stack([it["image"] for it in items])
            arrays[f"{split}_y"] = np.asarray([it["label"] for it in items], np.int32)
        n = len(arrays["train_y"])
        arrays["bank_index"] = (stratified_sample(arrays["train_y"], args.bank, seed=0)
                                if args.bank and args.bank < n else np.arange(n))
        np.savez(path, **arrays)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def knn_and_probe(bank_x, bank_y, test_x, test_y, probe: bool) -> dict:
    from mmssl_jax.evaluation.protocols import knn_classify, linear_probe

    out = {"knn_top1": knn_classify(bank_x, bank_y, test_x, test_y, ks=(KNN_K,), temperature=KNN_T,
                                    num_classes=10)[f"k{KNN_K}_top1"]}
    if probe:
        out["probe_top1"] = linear_probe(bank_x, bank_y, test_x, test_y, num_classes=10)["top1"]
    return out


def run_ours(method: str, seed: int, args, p: dict, workdir: Path) -> dict:
    from mmssl_jax import train

    config = run_config(method, args, seed, p)
    train.train_and_evaluate(config, workdir)
    history = json.loads((workdir / "history.json").read_text())
    # Training time from the logged intervals (they hold the evaluations between them: taken out).
    steps = [0] + [s for s, _ in history]
    elapsed, curve, step_seconds = 0.0, [], []
    for a, (b, row) in zip(steps, history):
        interval = (b - a) / row["steps_per_second"]
        evals_inside = sum(r.get("eval/seconds", 0.0) for s, r in history if a <= s < b and s != p["total"])
        elapsed += interval - evals_inside
        if a > 0 and not evals_inside:
            step_seconds.append(interval / (b - a))
        key = f"eval/cifar10_npz/knn/k{KNN_K}_top1"
        if key in row:
            curve.append({"step": b, "epoch": b / p["per_epoch"], "train_seconds": elapsed, "knn_top1": row[key],
                          "probe_top1": row["eval/cifar10_npz/linear_probe/top1"], "eval_seconds": row["eval/seconds"]})
    if not curve or curve[-1]["step"] != p["total"]:
        raise RuntimeError(f"{workdir}: no evaluation at the last step {p['total']}")
    return {"curve": curve, "train_seconds": elapsed, "steady_step_seconds": float(np.median(step_seconds)),
            "final_loss": history[-1][1]["loss"], "knn_top1": curve[-1]["knn_top1"],
            "probe_top1": curve[-1]["probe_top1"]}


def peer_recipe(method: str, seed: int, args, p: dict) -> dict:
    """The values of our config the peer mirrors (read from the config, not retyped)."""
    c = run_config(method, args, seed, p)
    head = c.heads.image.kwargs
    opt = c.optimizer
    if opt.name != "lars" or opt.lr_scaling != "linear" or opt.get("groups"):
        raise ValueError(f"the peer mirrors LARS with linear LR scaling and one group; {method} has {opt}")
    if opt.warmup_epochs or opt.warmup_fraction or opt.end_lr_fraction or opt.step_lr_per_epoch or opt.nesterov:
        raise ValueError(f"the peer mirrors a warmup in steps and a cosine to 0; {method} has {opt}")
    if any(v.augment != "simclr_cifar" for v in c.views.values()) or c.encoders.image.kwargs.get("cifar_stem") is not True:
        raise ValueError(f"the peer mirrors simclr_cifar views and the CIFAR stem; {method} has {c.views}")
    r = dict(seed=seed, width=args.width, batch_size=args.batch_size, total_steps=p["total"],
             warmup_steps=int(opt.warmup_steps), eval_steps=p["eval_steps"], log_every=p["log_every"],
             peak_lr=opt.learning_rate * args.batch_size / 256, weight_decay=opt.weight_decay,
             momentum=opt.momentum, trust_coefficient=opt.trust_coefficient,
             loader_workers=args.loader_workers, threads=args.threads,
             head_hidden=head.hidden_dim, head_out=head.out_dim)
    if method == "simclr":
        if c.heads.image.name != "simclr_mlp":
            raise ValueError(f"simclr head {c.heads.image.name}")
        r.update(head_layers=head.num_layers, temperature=c.loss_terms[0]["kwargs"]["temperature"])
    else:
        if c.heads.image.name != "byol_mlp" or c.predictors.image.name != "byol_mlp" or c.ema.schedule != "cosine":
            raise ValueError("byol: the peer mirrors byol_mlp heads and the cosine EMA")
        r.update(pred_hidden=c.predictors.image.kwargs.hidden_dim, pred_out=c.predictors.image.kwargs.out_dim,
                 ema_base=c.ema.momentum)
    return r


def run_peer(method: str, seed: int, args, p: dict, workdir: Path, data_path: Path, data: dict) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = workdir / "recipe.json"
    recipe.write_text(json.dumps(peer_recipe(method, seed, args, p)))
    cmd = [args.peer_python, str(Path(__file__).with_name("cifar10_ssl_peer.py")), "--method", method,
           "--recipe", str(recipe), "--data", str(data_path), "--out", str(workdir)]
    # cwd: not /tmp (a stray /tmp/timeit.py there would shadow the standard library).
    if not (workdir / "peer.json").exists():  # a finished peer run is only scored again
        subprocess.run(cmd, check=True, cwd=workdir)
    res = json.loads((workdir / "peer.json").read_text())
    bank_y, test_y = data["train_y"][data["bank_index"]], data["test_y"]
    curve = []
    for e in res["evals"]:
        t = time.perf_counter()
        with np.load(workdir / f"features_{e['step']}.npz") as f:
            m = knn_and_probe(f["bank"], bank_y, f["test"], test_y, probe=True)
        curve.append({"step": e["step"], "epoch": e["step"] / p["per_epoch"], "train_seconds": e["train_seconds"],
                      **m, "eval_seconds": e["eval_seconds"] + time.perf_counter() - t})
    if not curve or curve[-1]["step"] != p["total"]:
        raise RuntimeError(f"{workdir}: no evaluation at the last step {p['total']}")
    steps = res["step_seconds"][1:]  # the first holds the loader's start-up
    return {"curve": curve, "train_seconds": res["train_seconds"], "steady_step_seconds": float(np.median(steps)),
            "final_loss": res["history"][-1][1]["loss"], "knn_top1": curve[-1]["knn_top1"],
            "probe_top1": curve[-1]["probe_top1"]}


def floors(data: dict, probe: bool) -> dict:
    """kNN (and the probe if ``probe``) on raw pixels in [0, 1] (3,072-d), the same bank and test set."""
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
    bank = data["bank_index"]
    return knn_and_probe(flat(data["train_x"][bank]), data["train_y"][bank], flat(data["test_x"]), data["test_y"],
                         probe=probe)


def machine() -> dict:
    from bench_common import device_description

    keep = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "JAX_PLATFORMS", "TF_ENABLE_ONEDNN_OPTS",
            "MMSSL_DATA_DIR", "CUDA_VISIBLE_DEVICES")
    return {**device_description(), "env": {k: os.environ[k] for k in keep if k in os.environ},
            "load_average_at_end": os.getloadavg(), "node": os.uname().nodename}


def command_lines(report: dict) -> list:
    """The command of each invocation that made runs in the report, with the runs it made (each run
    keeps its command; the report accumulates over invocations), in the order the runs finished."""
    made: dict = {}
    for key, r in sorted(report["runs"].items(), key=lambda kv: kv[1].get("finished_utc", "")):
        made.setdefault(r.get("command", report["command"]), []).append(key)
    lines = [f"Command: `{c}` (runs {', '.join(keys)})  " for c, keys in made.items()]
    if report["command"] not in made:
        lines.append(f"Report written by: `{report['command']}`  ")
    return lines + [f"Runs merged from: `{c}`  " for c in report.get("merged_commands", [])]


def markdown(report: dict) -> str:
    a, p = report["args"], report["plan"]
    lines = [
        "# CIFAR-10 self-supervised benchmark: mmssl_jax vs lightly (PyTorch CPU)", "",
        *command_lines(report),
        f"Budget `{a['budget']}`: ResNet-18 (CIFAR stem) width {a['width']}, batch {a['batch_size']}, "
        f"{a['epochs']:g} epoch(s) = {p['total']} updates on all 50,000 training images at 32 px; "
        f"kNN-{KNN_K} (T={KNN_T}, cosine, weighted) and linear probe at steps {p['eval_steps']} with "
        + (f"{a['bank']} training images (stratified)" if a["bank"] else "all 50,000 training images")
        + " as the kNN bank and the probe's training set, "
        "scored on the 10,000 test images; "
        f"seeds {','.join(sorted({k.split('/')[2] for k in report['runs']}))}. Data: our `cifar10_npz` builder (the peer trains on the same decoded pixels).  ",
        f"Machine: {report['machine']['cpu_model']}, {report['machine']['cpu_count']} cores"
        + (f", XLA_FLAGS={report['machine']['env']['XLA_FLAGS']}" if "XLA_FLAGS" in report["machine"]["env"] else "")
        + f"; load average at the end {report['machine']['load_average_at_end'][0]:.1f} (above the core count "
        "means other jobs shared the CPU and the wall times carry that noise); runs were made one after "
        f"another, {'ours then the peer, per method and seed' if a.get('order', 'interleaved') == 'interleaved' else 'ours first'}.", "",
        "| method | impl | seed | kNN-200 top-1 % | probe top-1 % | train min | s / update (median) | final loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in sorted(report["runs"].items()):
        method, impl, seed = key.split("/")
        lines.append(f"| {method} | {impl} | {seed} | {100 * r['knn_top1']:.2f} | {100 * r['probe_top1']:.2f} | "
                     f"{r['train_seconds'] / 60:.1f} | {r['steady_step_seconds']:.2f} | {r['final_loss']:.4f} |")
    if report.get("floors"):
        f = report["floors"]
        probe = f"{100 * f['probe_top1']:.2f}" if "probe_top1" in f else "not run"
        lines.append(f"| raw pixels (floor) | - | - | {100 * f['knn_top1']:.2f} | {probe} | - | - | - |")
    lines += ["", "Ours vs the peer (per method; seeds averaged, spread = max - min over seeds):", "",
              "| method | seeds | ours kNN % | peer kNN % | ours - peer kNN (pts) | spread ours / peer | "
              "ours - peer probe (pts) | wall ours / peer | s-per-update ours / peer |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, c in report["comparison"].items():
        lines.append(f"| {m} | {c['seeds']} | {100 * c['ours_knn']:.2f} | {100 * c['peer_knn']:.2f} | "
                     f"{100 * c['knn_diff']:+.2f} | "
                     + (f"{100 * c['ours_spread']:.2f} / {100 * c['peer_spread']:.2f}" if "," in c["seeds"]
                        else "n/a (1 seed)") + " | "
                     f"{100 * c['probe_diff']:+.2f} | {c['wall_ratio']:.2f} | {c['step_ratio']:.2f} |")
    lines += ["", "Goals: ours - peer kNN >= 0 within the spread of 2 seeds; wall ours / peer <= 1.0.", ""]
    lines += [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def comparison(runs: dict) -> dict:
    out = {}
    for m in PEER:
        seeds = sorted({k.split("/")[2] for k in runs if k.startswith(f"{m}/ours/")}
                       & {k.split("/")[2] for k in runs if k.startswith(f"{m}/peer/")})
        if not seeds:
            continue
        get = lambda impl, f: [runs[f"{m}/{impl}/{s}"][f] for s in seeds]  # noqa: E731
        out[m] = {"seeds": ",".join(seeds),
                  "ours_knn": float(np.mean(get("ours", "knn_top1"))), "peer_knn": float(np.mean(get("peer", "knn_top1"))),
                  "ours_spread": float(np.ptp(get("ours", "knn_top1"))), "peer_spread": float(np.ptp(get("peer", "knn_top1"))),
                  "knn_diff": float(np.mean(get("ours", "knn_top1")) - np.mean(get("peer", "knn_top1"))),
                  "probe_diff": float(np.mean(get("ours", "probe_top1")) - np.mean(get("peer", "probe_top1"))),
                  "wall_ratio": float(np.sum(get("ours", "train_seconds")) / np.sum(get("peer", "train_seconds"))),
                  "step_ratio": float(np.mean(get("ours", "steady_step_seconds")) / np.mean(get("peer", "steady_step_seconds")))}
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = dict(zip(OURS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for key, r in sorted(report["runs"].items()):
        method, impl, seed = key.split("/")
        style = dict(color=colours[method], ls="-" if impl == "ours" else "--", marker="o" if impl == "ours" else "s",
                     ms=3, label=f"{method} {impl} s{seed}")
        for ax, x in zip(axes, ("epoch", "train_seconds")):
            xs = [c[x] / (60 if x == "train_seconds" else 1) for c in r["curve"]]
            ax.plot(xs, [100 * c["knn_top1"] for c in r["curve"]], **style)
    for ax, label in zip(axes, ("epochs", f"training wall-clock minutes ({report['machine']['cpu_count']}-core CPU)")):
        if report.get("floors"):
            ax.axhline(100 * report["floors"]["knn_top1"], color="grey", lw=0.8, ls=":", label="raw-pixel kNN")
        ax.set_xlabel(label)
        ax.set_ylabel(f"kNN-{KNN_K} top-1 % (bank: {report['args']['bank'] or 50000})")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle("CIFAR-10, ResNet-18 CIFAR stem: mmssl_jax (solid) vs lightly/PyTorch (dashed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    from mmssl_jax import xla_cpu

    xla_cpu.add_cpu_flags()  # as python -m mmssl_jax.main does; XLA_FLAGS set by the caller wins
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="full", choices=sorted(BUDGETS))
    parser.add_argument("--width", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--eval_every", type=float, help="epochs between kNN evaluations")
    parser.add_argument("--bank", type=int, help="training images (stratified) the kNN and the probe use (0: all)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default=",".join(OURS), help="ours")
    parser.add_argument("--peer_methods", default=",".join(PEER))
    parser.add_argument("--order", default="interleaved", choices=["interleaved", "ours_first"],
                        help="interleaved: per method and seed, ours then the peer")
    parser.add_argument("--peer_python", default="/work/torchvenv/bin/python")
    parser.add_argument("--loader_workers", type=int, default=2, help="data-loader processes (both impls)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                        help="the raw-pixel floors (kNN, and the probe unless --no-floor_probe)")
    parser.add_argument("--floor_probe", action=argparse.BooleanOptionalAction, default=True,
                        help="the probe on 3,072-d raw pixels: its L-BFGS search takes over 30 CPU-minutes at a "
                        "10,000-image bank on 2 cores, about 5x that with all 50,000")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (what this run left out)")
    parser.add_argument("--merge", default="", help="comma-separated result JSONs of the same budget to take runs from "
                        "(several invocations run side by side on a shared machine)")
    parser.add_argument("--data_dir", default=os.environ.get("MMSSL_DATA_DIR", ""))
    parser.add_argument("--workdir", default="/tmp/cifar10_ssl")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    for k, v in BUDGETS[args.budget].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.methods = ",".join(m for m in args.methods.split(",") if m)  # "" runs none of ours
    args.peer_methods = ",".join(m for m in args.peer_methods.split(",") if m)
    unknown = sorted(set(args.methods.split(",")) - set(OURS) - {""}) + sorted(
        set(args.peer_methods.split(",")) - set(PEER) - {""})
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; ours: {OURS}, peer: {PEER}")

    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()
    p = plan(args)
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cifar10_ssl_{args.budget}"
    budget_key = {k: getattr(args, k) for k in ("width", "batch_size", "epochs", "eval_every", "bank")}
    report = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    if report.get("budget_key") != budget_key:
        report = {"budget_key": budget_key, "runs": {}}
    for other in [Path(m) for m in args.merge.split(",") if m]:  # runs made by other invocations
        theirs = json.loads(other.read_text())
        if theirs.get("budget_key") != budget_key:
            raise SystemExit(f"--merge {other}: budget {theirs.get('budget_key')} is not this one's {budget_key}")
        report["runs"].update(theirs["runs"])
        report.setdefault("merged_commands", []).append(theirs["command"])
    report.update(args=vars(args), plan=p, notes=NOTES + args.note, command="python benchmarks/cifar10_ssl.py " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    data_path = root / f"data_bank{args.bank}.npz"
    data = {}  # exported when a run or a floor needs it: re-rendering the report needs no data

    def save(ran: bool):
        if ran or "machine" not in report:  # the machine the runs ran on, not the one that re-rendered
            report["machine"] = machine()
        report["comparison"] = comparison(report["runs"])
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
        stem.with_suffix(".md").write_text(markdown(report))
        plot(report, stem.with_suffix(".png"))

    jobs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for m in OURS:
            if m in args.methods.split(","):
                jobs.append((m, "ours", seed))
            if m in args.peer_methods.split(","):
                jobs.append((m, "peer", seed))
    if args.order == "ours_first":
        jobs.sort(key=lambda j: (j[2], j[1] != "ours"))
    for method, impl, seed in jobs:
        key = f"{method}/{impl}/{seed}"
        if key in report["runs"]:
            continue
        workdir = root / f"{key.replace('/', '_')}_{args.budget}"
        finished = (workdir / ("summary.json" if impl == "ours" else "peer.json")).exists()
        if workdir.exists() and not finished:  # an interrupted run starts again (its timing would not be whole)
            subprocess.run(["rm", "-rf", str(workdir)], check=True)
        data = data or export_data(args, data_path)
        t = time.time()
        if impl == "ours":
            r = run_ours(method, seed, args, p, workdir)
        else:
            r = run_peer(method, seed, args, p, workdir, data_path, data)
        r["wall_seconds_with_eval"] = time.time() - t
        r["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        r["command"] = report["command"]
        report["runs"][key] = r
        save(ran=True)
        print(f"== {key}: kNN {100 * r['knn_top1']:.2f}% probe {100 * r['probe_top1']:.2f}% "
              f"train {r['train_seconds']:.0f}s", flush=True)
    if args.floors and ("floors" not in report or (args.floor_probe and "probe_top1" not in report["floors"])):
        # Raw pixels: the same for every run of this bank.
        cached = root / f"floors_bank{args.bank}{'' if args.floor_probe else '_knn'}.json"
        if not cached.exists():
            t = time.time()
            cached.write_text(json.dumps({**floors(data or export_data(args, data_path), args.floor_probe),
                                          "seconds": time.time() - t}))
        report["floors"] = json.loads(cached.read_text())
    save(ran=False)
    print(markdown(report))


if __name__ == "__main__":
    main()
