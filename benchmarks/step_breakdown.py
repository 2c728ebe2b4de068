r"""Where a training update's time goes: the CIFAR-10 benchmark's trainer, taken apart.

``benchmarks/cifar10_ssl.py`` found our trainer slower per update than the lightly peer although
the bare encoder step is level with torch (``throughput_vs_torch.py``). This script times the
pieces of one update of the same run (``cifar10_ssl.run_config``: the method's default config on
prepared ``cifar10_npz``, ResNet-18 CIFAR stem, width and batch of the budget), each built by the
trainer's own functions, on the same machine in one process:

* ``loader``: drawing batches from the grain iterator the trainer reads (host crop + flip in
  ``--loader_workers`` processes), nothing else running: seconds per batch over ``--steps``
  batches drawn in a row, after emptying what the workers had prefetched.
* ``device_augment``: ``pipeline.device_augment`` (colour jitter, grayscale, ...) jitted alone on
  one batch of views.
* ``model fwd+bwd``: forward and backward of the online branch (encoder + heads, BatchNorm in
  train mode) on augmented views, gradient of the sum of the outputs: no loss, no optimizer.
* ``train step``: ``train.make_train_step`` jitted with the trainer's shardings and the state
  donated, on one batch already placed on the mesh: device augmentation, forward, backward, loss,
  LARS, EMA where the method has one, metrics.
* ``trainer loop``: the loop of ``train.train_and_evaluate`` without logging or checkpoints:
  ``next(iterator)``, ``host_batch_to_global``, the step; the loader's workers run beside the step.

Device pieces run ``--warmup`` times, then ``--rounds`` interleaved rounds (every piece once per
round) of ``--steps`` calls each, ended by ``block_until_ready``; the figure is the median over
rounds of the mean call. ``cores busy`` is the CPU time of the process and its children (the loader
workers) over wall time.

Usage::

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+eltwise \
    python benchmarks/step_breakdown.py --data_dir=D --methods=simclr,byol

Results: ``benchmarks/results/step_breakdown_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10_ssl  # noqa: E402

PIECES = ("loader", "device_augment", "model fwd+bwd", "train step", "trainer loop")


def cpu_seconds() -> float:
    """CPU seconds of this process and its live children (the loader workers run as long as the
    iterator, so ``RUSAGE_CHILDREN``, which counts only children that ended, would miss them)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def timed(fn, steps: int) -> tuple[float, float]:
    """Mean seconds per call of ``fn`` over ``steps`` calls, and the cores busy meanwhile."""
    c, t = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        fn()
    wall = time.perf_counter() - t
    return wall / steps, (cpu_seconds() - c) / wall


def breakdown(method: str, args) -> dict:
    import jax
    import jax.numpy as jnp

    from mmssl_jax import optim, sharding, train
    from mmssl_jax.data import inputs, pipeline
    from mmssl_jax.models import build_model

    budget = argparse.Namespace(**{**cifar10_ssl.BUDGETS[args.budget], "data_dir": args.data_dir,
                                   "loader_workers": args.loader_workers})
    p = cifar10_ssl.plan(budget)
    config = cifar10_ssl.run_config(method, budget, 0, p)
    mesh = sharding.make_mesh()
    source = inputs.train_source(config)
    plan = optim.plan_run(config, len(source))
    iterator = iter(inputs.make_input(config, source, seed=0, batch_size=plan.batch_per_step))
    first = next(iterator)
    model = build_model(config)
    views = inputs.augment_configs(config)
    example = pipeline.device_augment({k: jnp.asarray(v[:2]) for k, v in first.items() if k in config.views},
                                      jax.random.key(0), views)
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))["params"]
    optimizer = optim.make_optimizer(config, params_shape, plan)
    replicated = sharding.replicated(mesh)
    state = jax.jit(functools.partial(train._init_state, model, optimizer.tx, config),
                    out_shardings=replicated)(example, jax.random.PRNGKey(0))
    step_fn = jax.jit(train.make_train_step(model, optimizer, config, mesh),
                      in_shardings=(replicated, sharding.batch_sharding(mesh)),
                      out_shardings=(replicated, replicated), donate_argnums=(0,))
    batch = sharding.host_batch_to_global(first, mesh)

    augment = jax.jit(lambda b, k: pipeline.device_augment(b, k, views))
    online = sorted(config.views)  # every view: what SimCLR / BYOL / Barlow / VICReg back-propagate

    def outputs_sum(params, batch_stats, b):
        out, _ = model.apply({"params": params, "batch_stats": batch_stats}, b, train=True, views=online,
                             predict=True, mutable=["batch_stats"])
        return sum(jnp.sum(x) for x in jax.tree.leaves((out["z"], out["p"])))  # heads and predictor

    grad = jax.jit(jax.grad(outputs_sum))
    augmented = augment(batch, jax.random.key(1))
    holder = {"state": state}

    def run_step():
        holder["state"], m = step_fn(holder["state"], batch)
        jax.block_until_ready(m)

    def run_loop():
        b = sharding.host_batch_to_global(next(iterator), mesh)
        holder["state"], m = step_fn(holder["state"], b)
        jax.block_until_ready(m)

    calls = {
        "loader": lambda: next(iterator),
        "device_augment": lambda: jax.block_until_ready(augment(batch, jax.random.key(2))),
        "model fwd+bwd": lambda: jax.block_until_ready(grad(holder["state"].params, holder["state"].batch_stats, augmented)),
        "train step": run_step,
        "trainer loop": run_loop,
    }
    for name, fn in calls.items():  # compile and warm up
        for _ in range(args.warmup if name != "loader" else 1):
            fn()
    rounds = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, fn in calls.items():
            if name == "loader":  # empty what the workers prefetched while the other pieces ran
                for _ in range(2 * args.loader_workers + 2):
                    next(iterator)
            rounds[name].append(timed(fn, args.steps))
    result = {name: {"seconds": float(np.median([s for s, _ in r])), "cores_busy": float(np.median([c for _, c in r])),
                     "rounds": [s for s, _ in r]} for name, r in rounds.items()}
    return {"method": method, "batch_size": config.input.batch_size, "views": online,
            "width": config.encoders.image.kwargs.width, "pieces": result}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Where a training update's time goes (CIFAR-10 benchmark's trainer)", "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, jax {m['jax']}"
        + (f", XLA_FLAGS={m['env']['XLA_FLAGS']}" if m["env"].get("XLA_FLAGS") else "")
        + f"; load average at the end {m['load_average_at_end'][0]:.1f}.  ",
        f"Budget `{report['args']['budget']}` of `cifar10_ssl.py`; loader workers {report['args']['loader_workers']}; "
        f"{report['args']['rounds']} interleaved rounds x {report['args']['steps']} calls, median of the round means.", "",
        "| method | piece | s / update | share of the train step | cores busy |",
        "|---|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        step = r["pieces"]["train step"]["seconds"]
        for name in PIECES:
            v = r["pieces"][name]
            lines.append(f"| {r['method']} | {name} | {v['seconds']:.3f} | {v['seconds'] / step:.2f} | {v['cores_busy']:.2f} |")
    lines += ["", "Pieces: " + __doc__.split("trainer's own functions, on the same machine in one process:")[1]
              .split("Device pieces run")[0].replace("\n", " ").replace("  ", " ").strip()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from mmssl_jax import xla_cpu

    xla_cpu.add_cpu_flags()  # as python -m mmssl_jax.main does; XLA_FLAGS set by the caller wins
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.environ.get("MMSSL_DATA_DIR", ""))
    parser.add_argument("--budget", default="one_epoch", choices=sorted(cifar10_ssl.BUDGETS))
    parser.add_argument("--methods", default="simclr,byol")
    parser.add_argument("--loader_workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if not args.data_dir:
        raise SystemExit("--data_dir: the directory holding the prepared cifar10_npz "
                         "(python -m mmssl_jax.data.prepare cifar10_npz --manual_dir=DATA/cifar10 --data_dir=D)")
    from mmssl_jax.tf_compat import import_tensorflow

    import_tensorflow()
    report = {"args": vars(args), "command": "python benchmarks/step_breakdown.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "results": []}
    for method in [m for m in args.methods.split(",") if m]:
        report["results"].append(breakdown(method, args))
        print(json.dumps(report["results"][-1]["pieces"], indent=1), flush=True)
    report["machine"] = cifar10_ssl.machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_breakdown_cpu.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "step_breakdown_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
