"""Encoder throughput: images per second through a jitted forward + backward, a training step
without the optimizer.

Three encoders at the sizes their recipes use them:

* ``resnet18_cifar``: ResNet-18 with the CIFAR stem at 32 px (SimCLR CIFAR-10);
* ``resnet50``: ResNet-50 at 224 px (SimCLR/Barlow/MoCo ImageNet);
* ``vit_s16``: ViT-S/16 at 224 px (CLIP-style image towers).

The step is ``loss = mean(encoder(x) ** 2)`` and its gradient with respect to the parameters,
BatchNorm in training mode (batch statistics, updated running averages returned), all in one
``jit``. Each (encoder, batch) is compiled first (compile time reported separately), run
``--warmup`` times, then timed over ``--reps`` calls, each ended by ``block_until_ready``.
images/s is the batch over the median wall time (best: over the fastest step); images / CPU-s the batch over the median CPU
time of this process (every thread), which moves less when other jobs share the machine.
``GFLOP/img`` is XLA's own count for the compiled step (``cost_analysis``), so ``GFLOP/s`` is
the arithmetic rate the step reached.

Usage:
  python benchmarks/encoders.py --quick      # a minute: small batches, prints the table
  python benchmarks/encoders.py              # CPU: a few minutes; writes benchmarks/results/encoders_<device>.*
  python benchmarks/encoders.py --dtype bfloat16 --batches resnet50=64,128   # e.g. on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from mmssl_jax.models import build_encoder  # noqa: E402

import bench_common  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

# name -> (registry name, constructor kwargs, image size)
ENCODERS = {
    "resnet18_cifar": ("resnet18", {"cifar_stem": True}, 32),
    "resnet50": ("resnet50", {}, 224),
    "vit_s16": ("vit_s", {"patch_size": 16}, 224),
}
# Batch sizes per encoder: (--quick, CPU default, accelerator default).
BATCHES = {
    "resnet18_cifar": ((8,), (32, 128), (256, 512)),
    "resnet50": ((2,), (8, 32), (64, 128)),
    "vit_s16": ((2,), (8, 32), (64, 128)),
}


def device_description() -> dict:
    return bench_common.device_description()


def make_step(model):
    """``(params, batch_stats, x) -> (loss, grads, new_batch_stats)``, jitted."""

    def loss_fn(params, batch_stats, x):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.mean(jnp.square(out.astype(jnp.float32))), updates.get("batch_stats", {})

    def step(params, batch_stats, x):
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x)
        return loss, grads, new_stats

    return jax.jit(step)


def bench(name: str, batch: int, dtype: str, warmup: int, reps: int) -> dict:
    registry_name, kwargs, size = ENCODERS[name]
    model = build_encoder(registry_name, dtype=jnp.dtype(dtype), **kwargs)
    x = jax.random.uniform(jax.random.key(1), (batch, size, size, 3), jnp.float32).astype(dtype)
    # Parameter values do not matter for timing; "rbg" keys make the init compile much faster on CPU.
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

    start = time.perf_counter()
    compiled = make_step(model).lower(params, batch_stats, x).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    for _ in range(warmup):
        jax.block_until_ready(compiled(params, batch_stats, x))
    times, cpu_times = [], []
    for _ in range(reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss, _, _ = jax.block_until_ready(compiled(params, batch_stats, x))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"{name}: non-finite loss {float(loss)}")
    median, cpu_median = statistics.median(times), statistics.median(cpu_times)
    return {
        "encoder": name, "image_size": size, "batch": batch, "dtype": dtype, "params": num_params,
        "compile_s": compile_s, "step_s_median": median, "step_s_min": min(times), "reps": reps,
        "images_per_s": batch / median, "cpu_s_median": cpu_median, "images_per_cpu_s": batch / cpu_median,
        "gflop_per_image": flops / batch / 1e9, "gflop_per_s": flops / median / 1e9,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| encoder | image | batch | dtype | params | compile (s) | step (s) | images/s | best images/s "
        "| CPU-s / step | images / CPU-s | GFLOP/img | GFLOP/s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['encoder']} | {r['image_size']} | {r['batch']} | {r['dtype']} | {r['params'] / 1e6:.1f}M "
            f"| {r['compile_s']:.1f} | {r['step_s_median']:.3f} | {r['images_per_s']:,.1f} "
            f"| {r['batch'] / r['step_s_min']:,.1f} "
            f"| {r['cpu_s_median']:.3f} | {r['images_per_cpu_s']:,.1f} "
            f"| {r['gflop_per_image']:.2f} | {r['gflop_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_batches(specs: list[str]) -> dict[str, tuple[int, ...]]:
    out = {}
    for spec in specs:
        name, _, sizes = spec.partition("=")
        if name not in ENCODERS or not sizes:
            raise SystemExit(f"--batches takes NAME=B1,B2 with NAME one of {sorted(ENCODERS)}, got {spec!r}")
        out[name] = tuple(int(b) for b in sizes.split(","))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small batch per encoder, print, write nothing")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--batches", nargs="+", default=[], metavar="NAME=B1,B2", help="override batch sizes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    device = device_description()
    accelerator = device["platform"] != "cpu"
    overrides = parse_batches(args.batches)
    load_before = os.getloadavg()[0]
    results = []
    for name in args.encoders:
        quick, cpu, acc = BATCHES[name]
        for batch in overrides.get(name, quick if args.quick else acc if accelerator else cpu):
            print(f"{name} batch {batch} ...", flush=True)
            results.append(bench(name, batch, args.dtype, args.warmup, 1 if args.quick else args.reps))
            print(f"  {results[-1]['images_per_s']:,.1f} images/s", flush=True)

    device["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    tag = "cpu" if not accelerator else re.sub(r"[^a-z0-9]+", "_", device["device_kind"].lower()).strip("_")
    intro = (
        f"# Encoder forward + backward throughput ({tag})\n\n"
        f"Device: {device['device_kind']} ({device['platform']}, {device['device_count']} device(s)); "
        f"host: {device['cpu_count']} CPU cores ({device['cpu_model']}); Python {device['python']}, "
        f"jax {device['jax']}, flax {device['flax']}.\n"
        f"Command: `python benchmarks/encoders.py {' '.join(sys.argv[1:])}`.\n\n"
        "One jitted step = forward + backward of `mean(encoder(x)**2)` with respect to the parameters, "
        "BatchNorm in training mode, no optimizer update; random inputs. Median of "
        f"{1 if args.quick else args.reps} timed steps after {args.warmup} warm-up steps; compile time "
        "excluded from images/s (best images/s: the fastest timed step). GFLOP counts are XLA's for the compiled step. CPU-s is this process's "
        "CPU time (all threads); on a shared machine images / CPU-s is the steadier number. Load average "
        f"(1 min) before / after the run: {load_before:.1f} / {device['load_average_1m']['after']:.1f}.\n\n"
    )
    text = intro + table(results)
    print("\n" + text)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"device": device, "args": vars(args), "results": results}
        (out / f"encoders_{tag}.json").write_text(json.dumps(payload, indent=1) + "\n")
        (out / f"encoders_{tag}.md").write_text(text)
        print(f"wrote {out / f'encoders_{tag}.json'} and {out / f'encoders_{tag}.md'}")


if __name__ == "__main__":
    main()
