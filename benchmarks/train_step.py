"""Train-step throughput and MFU: the trainer's own jitted update step, end to end.

What runs is exactly what ``mmssl_jax.train.train_and_evaluate`` runs each step, built with the
same functions: ``models.build_model``, ``optim.make_optimizer``, ``train._init_state`` (jitted,
output replicated on the mesh) and ``train.make_train_step`` jitted with the trainer's
shardings and the state donated. So a step here is: the device half of the augmentation
(colour ops on the ``uint8`` views), forward and backward of every view through encoder and
head, the method's loss terms, the optax update (LARS for SimCLR, AdamW with clipping for
CLIP), the non-finite guard, and the logged metrics. Only the input is synthetic: random
``uint8`` image views ``[B, S, S, 3]`` and unit-norm ``float32`` caption embeddings ``[B, 384]``
placed with ``sharding.host_batch_to_global`` on ``sharding.make_mesh()``; this measures the
step, not the loader (``benchmarks/augment.py`` measures the host side).

Workloads (a recipe config from ``configs/``, loaded with importlib, only the batch size and
``dtype`` changed):

* ``simclr_r18_32``:  ``configs/simclr.py:cifar``, ResNet-18 (CIFAR stem) + simclr_mlp
  2048-2048-128, two views at 32 px, LARS;
* ``simclr_r50_224``: ``configs/simclr.py:imagenet``, ResNet-50 + simclr_mlp, two views at
  224 px, LARS;
* ``clip_vitb16_224``: ``configs/clip.py:coco``, ViT-B/16 at 224 px + linear projection, text
  MLP on precomputed 384-d caption embeddings, AdamW + grad clipping.

Measurements. ``init s`` is the jitted ``_init_state`` (compile + run), ``compile s`` the step's
``lower().compile()``. The step then runs ``--warmup`` times, then ``--steps`` timed calls each
ended by ``block_until_ready``; the step time is their median, images/s = global batch / median.
``cores busy`` is this process's CPU time over wall time during the timed steps: on a CPU host
shared with other jobs it shows how much of the machine the step actually got. FLOPs are XLA's own count for the
compiled step (``compiled.cost_analysis()["flops"]``), which after SPMD partitioning describes
one device's program, so ``MFU = flops / step time / peak of one device``. ``model GFLOP/img``
is the textbook count (6 x forward multiply-adds x views: forward + backward) to check XLA's
count against. The peak comes from ``--peak-tflops`` or, when the device kind is in
``PEAK_TFLOPS``, from that table (float32 maps to the TF32 tensor-core peak on NVIDIA GPUs and
to the bf16 peak on TPU, since that is what JAX's default matmul precision runs); on a CPU
there is no trustworthy peak (shared vCPUs, turbo and AVX-512 clocks vary), so MFU is n/a
unless ``--peak-tflops`` is given.

Published training throughputs (PyTorch; MLPerf's is MXNet) are listed beside ours (``PEERS``,
with source, hardware and how each per-device figure was derived); the ratio ours/theirs is
computed only when this run's device kind matches the peer's GPU (and against our row of the
matching precision), because a throughput ratio across different hardware says nothing about
the code. On a CPU no ratio is computed.

Usage:
  python benchmarks/train_step.py --quick                  # ~5 min on a shared 2-core CPU, prints only
  python benchmarks/train_step.py                          # CPU: ~7-10 min, ~4 GiB RAM; writes benchmarks/results/train_step_cpu.*
  python benchmarks/train_step.py --batch simclr_r50_224=256 clip_vitb16_224=256   # e.g. on a GPU
  python benchmarks/train_step.py --peak-tflops 2.5        # MFU against a peak you supply
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from mmssl_jax import optim, sharding, train  # noqa: E402
from mmssl_jax.data import inputs, pipeline  # noqa: E402
from mmssl_jax.models import build_model  # noqa: E402

import bench_common  # noqa: E402  (benchmarks/ is on sys.path when a script runs)


@dataclasses.dataclass(frozen=True)
class Workload:
    label: str
    config: str  # path under the repo
    arg: str  # get_config(arg)
    batches: tuple[int, int, int]  # --quick, CPU default, accelerator default per device (global batch)
    fwd_gmacs_per_view: float  # published forward multiply-adds of the image encoder per view
    fwd_gmacs_source: str


WORKLOADS = {
    "simclr_r18_32": Workload(
        "SimCLR ResNet-18 (CIFAR stem) @32px", "configs/simclr.py", "cifar", (16, 32, 512),
        0.556, "ResNet-18 with the 3x3 stride-1 stem and no max-pool at 32 px, counted layer by layer",
    ),
    "simclr_r50_224": Workload(
        "SimCLR ResNet-50 @224px", "configs/simclr.py", "imagenet", (2, 4, 128),
        4.09, "torchvision ResNet-50 at 224 px (4.09 G, its docs' 'GFLOPS', which count multiply-adds)",
    ),
    "clip_vitb16_224": Workload(
        "CLIP ViT-B/16 @224px, precomputed text", "configs/clip.py", "coco", (2, 4, 128),
        17.6, "ViT-B/16 at 224 px (DeiT-B / timm vit_base_patch16_224: 17.6 G multiply-adds)",
    ),
}
DTYPES = ("float32", "bfloat16")
TEXT_DIM = 384  # all-MiniLM-L6-v2, the default caption embedder (mmssl_jax.text)

# Dense peak TFLOP/s of one device, keyed by a substring of jax's device_kind (first match wins).
# "float32" is what JAX's default matmul precision gets from a float32 matmul/conv: TF32 tensor
# cores on NVIDIA Ampere/Hopper, one bfloat16 pass on TPU.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}, "H100 PCIe: 756 bf16 dense, 378 TF32 dense (51 fp32 non-tensor)"),
    ("H100", {"bfloat16": 989.0, "float32": 495.0}, "H100 SXM: 989 bf16 dense, 495 TF32 dense (67 fp32 non-tensor)"),
    ("H200", {"bfloat16": 989.0, "float32": 495.0}, "H200: same compute as H100 SXM"),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}, "A100: 312 bf16 dense, 156 TF32 dense (19.5 fp32 non-tensor)"),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}, "TPU v4: 275 bf16"),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}, "TPU v5e: 197 bf16"),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}, "TPU v5p: 459 bf16"),
    ("TPU v6 lite", {"bfloat16": 918.0, "float32": 918.0}, "TPU v6e (Trillium): 918 bf16"),
)

# Published PyTorch (and one MXNet) training throughputs. `views_per_s` is per device, counting every
# image that goes through the encoder (a SimCLR image is two views, a supervised image one), the unit
# that compares an encoder's training speed across methods. `device` is a regex on jax's device_kind:
# only when it matches this run's device is the ratio ours/theirs computed. `dtype` is the config.dtype
# of our row it is set beside (mixed precision, fp16 or bf16, against our bfloat16); `precision` is what
# the source says. Every figure was read from the linked source; what the source does not state is
# marked as an assumption in `derivation`.
PEERS = (
    {
        "workload": "simclr_r18_32",
        "name": "p3i0t/SimCLR-CIFAR10 (PyTorch 1.5): SimCLR, ResNet-18 with CIFAR stem, 2-layer head, batch 512, SGD",
        "hardware": "1x GTX 1080 Ti",
        "device": r"1080 Ti",
        "dtype": "float32",
        "precision": "fp32 (PyTorch 1.5, no AMP in simclr.py)",
        "views_per_s": 2 * 50_000 / 38,
        "derivation": "38 s per CIFAR-10 epoch (50,000 images x 2 views) in the README's results table "
                      "(another README revision says 42 s, i.e. 2,381 views/s); end to end, torchvision "
                      "DataLoader included",
        "source": "https://github.com/p3i0t/SimCLR-CIFAR10#experimental-results",
    },
    {
        "workload": "simclr_r18_32",
        "name": "solo-learn (PyTorch Lightning + DALI): NNCLR, ResNet-18 at 224 px",
        "hardware": "2x RTX 2080 Ti",
        "device": r"2080 Ti",
        "dtype": "bfloat16",
        "precision": "16-bit mixed (assumed: --precision 16 in its ImageNet-100 scripts; the table does not say)",
        "views_per_s": 2 * 126_689 / 126 / 2,
        "derivation": "2 min 6 s per epoch with DALI on 2 GPUs (README 'Training efficiency for DALI'); the "
                      "table does not name the dataset: ImageNet-100 (126,689 images, 2 views) assumed, as in "
                      "its DALI ImageNet-100 scripts. solo-learn publishes no CIFAR or SimCLR throughput and "
                      "this is 224 px, not 32 px: context only, never a ratio",
        "source": "https://github.com/vturrisi/solo-learn#training-efficiency-for-dali",
        "comparable": False,
    },
    {
        "workload": "simclr_r50_224",
        "name": "NVIDIA DeepLearningExamples ResNet-50 v1.5 (PyTorch, supervised)",
        "hardware": "1x A100 80GB (DGX A100), TF32",
        "device": r"A100-SXM4-80GB",
        "dtype": "float32",
        "precision": "TF32",
        "views_per_s": 938.0,
        "derivation": "938 img/s, 1 GPU, TF32, NGC pytorch-21.03 (README table 'Training performance: "
                      "NVIDIA DGX A100 (8x A100 80GB)', benchmark_training mode)",
        "source": "https://github.com/NVIDIA/DeepLearningExamples/tree/master/PyTorch/Classification/ConvNets/resnet50v1.5#training-performance-results",
    },
    {
        "workload": "simclr_r50_224",
        "name": "NVIDIA DeepLearningExamples ResNet-50 v1.5 (PyTorch, supervised)",
        "hardware": "1x A100 80GB (DGX A100), AMP",
        "device": r"A100-SXM4-80GB",
        "dtype": "bfloat16",
        "precision": "AMP (fp16)",
        "views_per_s": 2470.0,
        "derivation": "2,470 img/s, 1 GPU, mixed precision, NGC pytorch-21.03, same table",
        "source": "https://github.com/NVIDIA/DeepLearningExamples/tree/master/PyTorch/Classification/ConvNets/resnet50v1.5#training-performance-results",
    },
    {
        "workload": "simclr_r50_224",
        "name": "MLPerf Training v3.0 closed, ResNet-50 v1.5 (MXNet, supervised), Dell XE9680, ID 3.0-2053",
        "hardware": "8x H100 SXM5 80GB",
        "device": r"H100",
        "dtype": "bfloat16",
        "precision": "mixed",
        "views_per_s": None,
        "derivation": "13.466 min to train to 75.90% top-1 (NVIDIA's MLPerf 3.0 training table, single node). "
                      "MLPerf reports time to train, not images/s; the epoch count is only in the submission "
                      "logs, so no per-GPU rate is derived here: context only",
        "source": "https://developer.nvidia.com/deep-learning-performance-training-inference/training",
        "comparable": False,
    },
    {
        "workload": "clip_vitb16_224",
        "name": "open_clip ViT-B/16 on LAION-400M (PyTorch), image + text towers",
        "hardware": "176x A100 40GB (JUWELS Booster)",
        "device": r"A100-SXM4-40GB",
        "dtype": "bfloat16",
        "precision": "mixed (assumed: open_clip's AMP; PRETRAINED.md does not say)",
        "views_per_s": 32 * 400e6 / (10_700 * 3600),
        "derivation": "32 epochs (checkpoint laion400m_e32) in ~10,700 GPU-hours (docs/PRETRAINED.md: 176 A100 "
                      "40GB, ~61 h, 192 per GPU); ~400M samples an epoch assumed (LAION-400M's nominal size; "
                      "the page does not give it) = ~332 samples/s per GPU, end to end: data loading, "
                      "evals, multi-node all-gathers and a 12-layer text transformer that our precomputed "
                      "text skips, so a same-GPU ratio overstates us",
        "source": "https://github.com/mlfoundations/open_clip/blob/main/docs/PRETRAINED.md#vit-b16-224x224",
    },
)


# ----------------------------------------------------------------------------- helpers


def device_description() -> dict:
    return bench_common.device_description()


def code_version() -> dict:
    """The commit measured and the library files that differ from it."""
    return bench_common.code_version(REPO, ("mmssl_jax", "configs"))


def device_tag(device: dict) -> str:
    if device["platform"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", device["device_kind"].lower()).strip("_")


def peak_for(device_kind: str, dtype: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s of one device, where it came from)."""
    if override:
        return override, f"--peak-tflops {override:g}"
    for key, peaks, note in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks[dtype], note
    return None, "no known peak for this device (pass --peak-tflops)"


def load_config(workload: Workload, batch: int, dtype: str):
    """The recipe config, loaded from its file as ``main.py`` would, with batch and dtype changed."""
    path = REPO / workload.config
    spec = importlib.util.spec_from_file_location(f"_bench_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(workload.arg)
    config.input.batch_size = batch
    config.dtype = dtype
    config.num_steps = 10_000  # only sets the LR schedule's length; the step does not depend on it
    config.num_epochs = 0
    train.validate_config(config)
    return config


def synthetic_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """This process's batch with the shapes and dtypes the input pipeline hands the step."""
    rng = np.random.default_rng(seed)
    per_process = batch // jax.process_count()
    size = config.input.image_size
    out = {}
    for name, view in sorted(config.views.items()):
        if view.modality == "image":
            out[name] = rng.integers(0, 256, (per_process, size, size, 3), dtype=np.uint8)
        else:
            text = rng.normal(size=(per_process, TEXT_DIM)).astype(np.float32)
            out[name] = text / np.linalg.norm(text, axis=1, keepdims=True)
    return out


def _flops(cost) -> float | None:
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


# ----------------------------------------------------------------------------- one measurement


def bench(name: str, dtype: str, batch: int, warmup: int, steps: int, peak_override: float | None) -> dict:
    workload = WORKLOADS[name]
    config = load_config(workload, batch, dtype)
    mesh = sharding.make_mesh()
    replicated = sharding.replicated(mesh)
    image_views = inputs.augment_configs(config)

    # Model, optimizer and state, built the way train_and_evaluate builds them.
    host = synthetic_batch(config, batch)
    model = build_model(config)
    example = {k: jnp.asarray(v[:2]) for k, v in host.items()}
    example = pipeline.device_augment(example, jax.random.key(0), image_views)
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))["params"]
    # The trainer's plan: num_steps updates, 100 per "epoch" so epoch-based warmups fit (LR shape only).
    optimizer = optim.make_optimizer(config, params_shape, optim.plan_run(config, 100 * batch))
    tx = optimizer.tx
    start = time.perf_counter()
    init = jax.jit(functools.partial(train._init_state, model, tx, config), out_shardings=replicated)
    state = jax.block_until_ready(init(example, jax.random.PRNGKey(config.seed)))
    init_s = time.perf_counter() - start
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))

    step_fn = jax.jit(
        train.make_train_step(model, optimizer, config),
        in_shardings=(replicated, sharding.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    global_batch = sharding.host_batch_to_global(host, mesh)
    start = time.perf_counter()
    lowered = step_fn.lower(state, global_batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops_compiled = _flops(compiled.cost_analysis())  # one device's program, after partitioning
    flops_global_hlo = _flops(lowered.cost_analysis())  # the whole step, before XLA's passes
    n_dev = jax.device_count()
    flops_device, flops_source = flops_compiled, "compiled.cost_analysis()"
    if flops_global_hlo and (not flops_compiled or flops_compiled < 0.5 * flops_global_hlo / n_dev):
        # A backend whose compiled cost model misses ops (e.g. library custom calls) would
        # understate MFU; the pre-optimisation HLO count, split over the devices, stands in.
        flops_device, flops_source = flops_global_hlo / n_dev, "lowered.cost_analysis() / devices"
    memory = compiled.memory_analysis()
    memory_bytes = None
    if memory is not None:
        memory_bytes = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                           + memory.output_size_in_bytes - getattr(memory, "alias_size_in_bytes", 0))

    for _ in range(warmup):
        state, metrics = jax.block_until_ready(compiled(state, global_batch))
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        state, metrics = jax.block_until_ready(compiled(state, global_batch))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    metrics = jax.device_get(metrics)
    if not bool(metrics["finite"]):
        raise FloatingPointError(f"{name} {dtype}: non-finite step (loss {float(metrics['loss'])})")

    step_s = statistics.median(times)
    image_views_n = len(image_views)
    images_per_s = batch / step_s
    model_gflop_per_image = 6 * workload.fwd_gmacs_per_view * image_views_n
    peak, peak_source = peak_for(jax.devices()[0].device_kind, dtype, peak_override)
    achieved = flops_device / step_s / 1e12 if flops_device else None
    row = {
        "workload": name, "label": workload.label, "config": f"{workload.config}:{workload.arg}",
        "dtype": dtype, "batch": batch, "devices": n_dev, "image_size": config.input.image_size,
        "image_views": image_views_n, "params": num_params, "optimizer": config.optimizer.name,
        "init_s": init_s, "compile_s": compile_s, "warmup": warmup, "steps": steps,
        "step_s_median": step_s, "step_s_min": min(times), "step_s_all": times,
        # CPU seconds of this process (all its threads) per step; / wall time = cores kept busy.
        "cpu_s_median": statistics.median(cpu_times), "cores_busy": statistics.median(cpu_times) / step_s,
        "images_per_s": images_per_s, "images_per_s_per_device": images_per_s / n_dev,
        "views_per_s_per_device": images_per_s * image_views_n / n_dev,
        "xla_flops_per_step_per_device": flops_device, "flops_source": flops_source,
        "compiled_flops_per_step_per_device": flops_compiled,
        "hlo_flops_per_step_global": flops_global_hlo,
        "xla_gflop_per_image": flops_device * n_dev / batch / 1e9 if flops_device else None,
        "model_gflop_per_image": model_gflop_per_image,
        "xla_over_model_flops": (flops_device * n_dev / batch / 1e9) / model_gflop_per_image if flops_device else None,
        "achieved_tflops_per_device": achieved,
        "peak_tflops_per_device": peak, "peak_source": peak_source,
        "mfu": achieved / peak if (achieved and peak) else None,
        "xla_memory_per_device_bytes": memory_bytes,
        "loss": float(metrics["loss"]),
    }
    del state, metrics, compiled, lowered, global_batch
    jax.clear_caches()
    gc.collect()
    return row


# ----------------------------------------------------------------------------- peers and report


def peer_rows(results: list[dict], device: dict) -> list[dict]:
    """Each published peer beside our matching result, with ours/theirs where the hardware matches."""
    rows = []
    for peer in PEERS:
        ours = next((r for r in results if r["workload"] == peer["workload"] and "error" not in r
                     and r["dtype"] == peer["dtype"]), None)
        same_hw = device["platform"] != "cpu" and re.search(peer["device"], device["device_kind"]) is not None
        if not peer.get("comparable", True) or peer["views_per_s"] is None:
            ratio, why = None, "context only"
        elif ours is None:
            ratio, why = None, "not run"
        elif device["platform"] == "cpu":
            ratio, why = None, "n/a: this run is on a CPU"
        elif not same_hw:
            ratio, why = None, f"n/a: {device['device_kind']} vs {peer['hardware']}"
        else:
            ratio = ours["views_per_s_per_device"] / peer["views_per_s"]
            why = f"{ratio:.2f}x"
        rows.append({**peer, "ours_views_per_s_per_device": ours["views_per_s_per_device"] if ours else None,
                     "ours_dtype": ours["dtype"] if ours else None, "ratio": ratio, "ratio_text": why})
    return rows


def _fmt(x, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def _load_text(load: dict, cores: int) -> str:
    before, after = load.get("before"), load.get("after")
    if not (before and after):
        return "Host load average: not available on this OS."
    fmt = lambda l: "/".join(f"{x:.2f}" for x in l)  # noqa: E731
    text = (f"Host load average (1/5/15 min) on {cores} cores: {fmt(before)} before the run, "
            f"{fmt(after)} after it.")
    if max(before[0], after[0]) > 0.5 * cores:
        text += (" Other jobs shared the machine, so wall times are noisy: compare the `cores busy` column "
                 "(this process's CPU time / wall time) and the min-max spread of the step time.")
    return text


def _code_text(code: dict) -> str:
    if not code.get("commit"):
        return "Code: not in a git checkout."
    text = f"Code: commit `{code['commit']}`"
    if code["uncommitted"]:
        text += (", with uncommitted changes to " + ", ".join(f"`{p}`" for p in code["uncommitted"])
                 + " (measured as they were in the working tree)")
    return text + "."


def markdown(report: dict) -> str:
    device, results, args = report["device"], report["results"], report["args"]
    on_cpu = device["platform"] == "cpu"
    lines = [
        f"# Train-step throughput and MFU ({report['tag']})",
        "",
        f"Device: {device['device_kind']} ({device['platform']}, {device['device_count']} device(s)); host: "
        f"{device['cpu_count']} CPU cores ({device['cpu_model']}); Python {device['python']}, jax {device['jax']}, "
        f"flax {device['flax']}, optax {device['optax']}.",
        "",
        _code_text(report.get("code", {})),
        "",
        f"Command: `{report['command']}` (whole run: {report['wall_s'] / 60:.1f} min, compiles included; "
        f"peak host memory (RSS) {report['peak_host_rss_bytes'] / 2**30:.1f} GiB).",
        "",
        _load_text(report.get("load_average_1_5_15", {}), device["cpu_count"]),
        "",
        "What is timed: the trainer's own step (`train.make_train_step` on the state from `train._init_state`, "
        "jitted with the trainer's shardings and the state donated): device-side colour augmentation of the "
        "`uint8` views, forward + backward of every view through encoder and head, the loss terms, the optimizer "
        "update (LARS for SimCLR, AdamW + clipping for CLIP), the non-finite guard and the logged metrics. "
        "Synthetic input of the real shapes and dtypes, placed with `sharding.host_batch_to_global`; no input "
        f"pipeline. Step time = median of {args['steps']} timed steps after {args['warmup']} warm-up step(s), each "
        "ended by `block_until_ready` (min-max in brackets); images/s = batch / median step time. A SimCLR "
        "image is 2 encoder views, a CLIP image 1 (its caption embedding is precomputed). GFLOP/img (XLA) is "
        "XLA's count for the compiled step; model GFLOP/img = 6 x the image encoder's published forward "
        "multiply-adds x views (forward + backward; head, loss and optimizer not included), a check on XLA's count.",
        "",
        "| workload | config | dtype | batch | params | init (s) | compile (s) | step (s): median [min-max] "
        "| images/s | views/s/device | cores busy | GFLOP/img (XLA) | XLA / model | TFLOP/s/device | MFU |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['label']} | | {r['dtype']} | {r['batch']} | failed: {r['error']} "
                         "| | | | | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(
            f"| {r['label']} | `{r['config']}` | {r['dtype']} | {r['batch']} | {r['params'] / 1e6:.1f}M "
            f"| {r['init_s']:.1f} | {r['compile_s']:.1f} "
            f"| {r['step_s_median']:.2f} [{r['step_s_min']:.2f}-{max(r['step_s_all']):.2f}] "
            f"| {r['images_per_s']:,.2f} | {r['views_per_s_per_device']:,.2f} | {r['cores_busy']:.2f} "
            f"| {_fmt(r['xla_gflop_per_image'], '.2f')} | {_fmt(r['xla_over_model_flops'], '.2f')} "
            f"| {_fmt(r['achieved_tflops_per_device'], '.3f')} | {mfu} |"
        )
    ok = [r for r in results if "error" not in r]
    if on_cpu and ok and max(r["cores_busy"] for r in ok) < 0.75 * device["cpu_count"]:
        lines += ["", f"`cores busy` stayed at or below {max(r['cores_busy'] for r in ok):.2f} of the "
                  f"{device['cpu_count']} cores: the step got about that much of the machine, whether because of "
                  "XLA:CPU's own threading or the other jobs on the host (this run cannot tell which), so these "
                  "images/s are not what an idle host of this size would give."]
    peaks = sorted({r["peak_source"] for r in ok})
    sources = sorted({r["flops_source"] for r in ok})
    lines += ["", "Peak used for MFU: " + ("; ".join(peaks) if peaks else "-") + ". FLOPs from: "
              + (", ".join(f"`{s}`" for s in sources) if sources else "-") + "."]
    if on_cpu and not args.get("peak_tflops"):
        lines += [
            "",
            "MFU is n/a on a CPU: there is no trustworthy peak for a shared, virtualised CPU (the vCPUs are "
            "shared with other jobs here, turbo and AVX-512 clocks vary with load, and XLA:CPU's bf16 path is "
            "not the packed-bf16 peak the ISA advertises). The TFLOP/s column is what the step reached; pass "
            "`--peak-tflops` to get an MFU against a peak you trust.",
        ]
    by = {(r["workload"], r["dtype"]): r for r in ok}
    notes = []
    for name in WORKLOADS:
        f32, bf16 = by.get((name, "float32")), by.get((name, "bfloat16"))
        if f32 and bf16:
            notes.append(f"{WORKLOADS[name].label}: {bf16['images_per_s'] / f32['images_per_s']:.2f}x.")
    if notes:
        lines += ["", "bfloat16 images/s over float32 images/s on this device: " + " ".join(notes)]
        if on_cpu:
            lines += ["", "On a CPU the bf16/f32 ratio depends on the ISA (AVX-512 BF16 / AMX or not) and on how much "
                      "of the step XLA:CPU runs in bf16 rather than converting to float32; it says nothing about GPUs "
                      "or TPUs, where bf16 is the recipe setting (tensor cores / MXU). On a shared host, a ratio "
                      "within the rows' min-max step-time spread is no measurable difference."]

    lines += [
        "",
        "## Beside published training throughputs",
        "",
        "Per device, in encoder views/s (a supervised image = 1 view, a SimCLR image = 2). A throughput ratio "
        "across different hardware says nothing about the code, so ours / peer is computed only when this run's "
        "device kind matches the peer's GPU, and left n/a otherwise. "
        + ("**This run is on a CPU: no ratio against these GPU figures is computed; the column is for a run on "
           "the peer's GPU.**" if on_cpu else ""),
        "",
        "| workload | peer | hardware | precision | peer views/s/device | ours views/s/device (this run) "
        "| ours / peer | how the peer figure was derived |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for p in report["peers"]:
        peer_rate = _fmt(p["views_per_s"], ",.0f", "-")
        ours = _fmt(p["ours_views_per_s_per_device"], ",.2f", "-")
        if p["ours_dtype"]:
            ours += f" ({p['ours_dtype']})"
        lines.append(
            f"| {p['workload']} | [{p['name']}]({p['source']}) | {p['hardware']} | {p['precision']} | {peer_rate} "
            f"| {ours} | {p['ratio_text']} | {p['derivation']} |"
        )
    lines += [
        "",
        "Caveats on the peers: they are end-to-end training rates (data loading, and for open_clip a text "
        "transformer, evals and multi-node communication, included) where ours is the step alone on synthetic "
        "input; the ResNet-50 figures are supervised training (1 view, a 1000-way classifier) against our "
        "SimCLR (2 views, an MLP head, NT-Xent over the batch), compared per view; precisions differ in detail "
        "(PyTorch AMP is fp16 with loss scaling, ours bf16). Treat a same-hardware ratio as a sanity check "
        "(about 1x is healthy, far below 1x points at a slow spot), not a league table.",
    ]
    return "\n".join(lines) + "\n"


def parse_batches(specs: list[str]) -> dict[str, tuple[int, ...]]:
    out = {}
    for spec in specs:
        name, _, sizes = spec.partition("=")
        if name not in WORKLOADS or not sizes:
            raise SystemExit(f"--batch takes NAME=B[,B2...] with NAME one of {sorted(WORKLOADS)}, got {spec!r}")
        out[name] = tuple(int(b) for b in sizes.split(","))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny batches, 1 warm-up + 2 timed steps, print, write nothing")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES), help="config.dtype values")
    parser.add_argument("--batch", nargs="+", default=[], metavar="NAME=B",
                        help="global batch per workload (default: small on CPU, recipe-like x devices on accelerators)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 1 on CPU, 3 otherwise)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5 on CPU, 20 otherwise)")
    parser.add_argument("--peak-tflops", "--peak_tflops", dest="peak_tflops", type=float, default=None,
                        help="peak dense TFLOP/s of one device for MFU (default: PEAK_TFLOPS by device kind; none on CPU)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    device = device_description()
    accelerator = device["platform"] != "cpu"
    if args.warmup is None:
        args.warmup = 1 if (args.quick or not accelerator) else 3
    if args.steps is None:
        args.steps = 2 if args.quick else (20 if accelerator else 5)
    overrides = parse_batches(args.batch)
    print(f"device: {device['device_kind']} x{device['device_count']} ({device['platform']})", flush=True)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    run_start = time.perf_counter()
    results = []
    for name in args.workloads:
        quick, cpu, acc = WORKLOADS[name].batches
        default = quick if args.quick else (acc * jax.device_count() if accelerator else cpu)
        for batch in overrides.get(name, (default,)):
            for dtype in args.dtypes:
                print(f"{name} {dtype} batch {batch} ...", flush=True)
                try:
                    row = bench(name, dtype, batch, args.warmup, args.steps, args.peak_tflops)
                except Exception as e:  # e.g. out of memory at a large batch: record it and go on
                    row = {"workload": name, "label": WORKLOADS[name].label, "dtype": dtype, "batch": batch,
                           "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
                    print(f"  failed: {row['error']}", flush=True)
                    jax.clear_caches()
                    gc.collect()
                else:
                    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
                    print(f"  init {row['init_s']:.1f} s, compile {row['compile_s']:.1f} s, step {row['step_s_median']:.3f} s "
                          f"({row['cores_busy']:.2f} cores busy), {row['images_per_s']:,.2f} images/s, "
                          f"{_fmt(row['xla_gflop_per_image'], '.2f')} GFLOP/img, "
                          f"{_fmt(row['achieved_tflops_per_device'], '.3f')} TFLOP/s/device, MFU {mfu}", flush=True)
                results.append(row)

    tag = device_tag(device)
    command = shlex.join(["python", "benchmarks/train_step.py", *(sys.argv[1:] if argv is None else argv)])
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {"tag": tag, "device": device, "code": code_version(), "command": command, "args": vars(args),
              "results": results,
              "wall_s": time.perf_counter() - run_start,
              "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
              "load_average_1_5_15": {"before": load_before, "after": load_after}}
    report["peers"] = peer_rows(results, device)
    text = markdown(report)
    print("\n" + text)
    if not args.quick and jax.process_index() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"train_step_{tag}.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / f"train_step_{tag}.md").write_text(text)
        print(f"wrote {out / f'train_step_{tag}.json'} and {out / f'train_step_{tag}.md'}")


if __name__ == "__main__":
    main()
