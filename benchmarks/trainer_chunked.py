"""The trainer with ``config.loss.chunk_size`` follows the default run's loss curve (issue 12's check).

  python benchmarks/trainer_chunked.py [--steps=20] [--chunk_size=8] [--devices=8]

Trains configs/clip.py on the embedded data (its default: ResNet-18 width 16, batch 128, 32 px,
AdamW, warmup over the first quarter of the run; no evaluation) twice from the same seed over ``--devices`` simulated CPU devices: once as
shipped (the loss under ``jit`` on the global batch, embeddings gathered by XLA) and once with
``config.loss.chunk_size`` (the loss terms under ``shard_map`` on the device ring, logits in
``chunk_size`` tiles). Writes both curves (loss, image->text accuracy, logit_scale, gradient
norm, every step) and their largest absolute and relative differences to
``benchmarks/results/trainer_chunked.{json,md}``. Both runs see the same batches and the same
augmentation draws, so any difference is the loss computation's float32 rounding (grown by
training). For scale, a control: the default run on 1 device (a subprocess) against the default
run on ``--devices``, i.e. how far float32 rounding alone moves these curves when only the
sharding of the same computation changes.

  python benchmarks/trainer_chunked.py --memory [--batch=4096] [--chunk_size=512] [--devices=8]

compiles (``--dry_run``, nothing trained) the trainer's CLIP step at a global batch of
``--batch`` with and without ``chunk_size``, for the shipped image encoder and for a one-block
width-4 ResNet at 16 px (there the logits, not the activations, dominate), and writes XLA's
per-device memory plan of each to ``benchmarks/results/trainer_chunked_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
KEYS = ("loss", "accuracy/clip/image-text", "scalar/logit_scale", "grad_norm")


def clip_config(steps: int, chunk_size: int):
    from mmssl_jax import config_base as cb

    spec = importlib.util.spec_from_file_location("clip", REPO / "configs" / "clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.num_steps = steps
    cb.set_warmup(c, steps=steps // 4)  # the config's 20-update warmup must end before the run does
    c.log_every = 1
    c.checkpoint_every = 10 * steps  # the last step only
    c.eval.protocols = ()
    c.loss.chunk_size = chunk_size
    return c


def run(steps: int, chunk_size: int, workdir: Path) -> dict:
    from mmssl_jax import train

    config = clip_config(steps, chunk_size)
    started = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - started
    history = json.loads((workdir / "history.json").read_text())
    card = (workdir / "recipe.md").read_text()
    computation = next(line for line in card.splitlines() if line.startswith("| loss computation |"))
    return {"chunk_size": chunk_size, "seconds": seconds, "loss_computation": computation.split("|")[2].strip(),
            "batch_size": config.input.batch_size,
            "curves": {key: [row[key] for _, row in history] for key in KEYS},
            "steps": [step for step, _ in history]}


def memory(batch: int, chunk_size: int) -> dict:
    from mmssl_jax import train

    rows = []
    for encoder in ("shipped", "tiny"):
        for chunk in (0, chunk_size):
            config = clip_config(2, chunk)
            config.input.batch_size = batch
            if encoder == "tiny":
                config.input.image_size = 16
                config.encoders.image.kwargs.update(width=4, stage_sizes=(1,))
            with tempfile.TemporaryDirectory() as tmp:
                figures = train.train_and_evaluate(config, tmp, dry_run=True)
            rows.append({"encoder": encoder, "chunk_size": chunk, **figures})
    return {"batch": batch, "chunk_size": chunk_size, "rows": rows}


def memory_markdown(result: dict) -> str:
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    lines = ["# Trainer with `config.loss.chunk_size`: the compiled step's memory per device", "",
             f"`python benchmarks/trainer_chunked.py --memory --batch={result['batch']} --chunk_size={result['chunk_size']} "
             f"--devices={result['device']['device_count']}`: configs/clip.py's step compiled by `--dry_run` "
             f"(XLA's plan on CPU, nothing run) at a global batch of {result['batch']:,} over "
             f"{result['device']['device_count']} simulated devices, commit {result['code']['commit']}"
             f"{' + uncommitted changes' if result['code']['uncommitted'] else ''}. \"tiny\": the image encoder "
             "cut to one width-4 ResNet block at 16 px, so that the loss, not the encoder, dominates.", "",
             "| image encoder | chunk_size | temporaries (MiB) | peak (MiB) | FLOPs per device |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['encoder']} | {r['chunk_size'] or 'off (gather)'} | {mib(r['temp_size_in_bytes'])} | "
                     f"{mib(r['peak_bytes_per_device'])} | {r.get('flops_per_device', float('nan')):.3g} |")
    return "\n".join(lines) + "\n"


def differences(a: list[float], b: list[float]) -> dict:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    return {"max_abs": float(diff.max()), "max_rel": float((diff / np.maximum(np.abs(a), 1e-30)).max()),
            "first_step_max_rel": float(diff[0] / max(abs(a[0]), 1e-30))}


def markdown(result: dict) -> str:
    plain, ring = result["runs"]
    lines = [
        "# Trainer with `config.loss.chunk_size`: the default run's loss curve, step by step",
        "",
        f"`python benchmarks/trainer_chunked.py --steps={result['steps']} --chunk_size={ring['chunk_size']} "
        f"--devices={result['device']['device_count']}` (configs/clip.py on the embedded data, global batch "
        f"{plain['batch_size']}, {result['device']['device_count']} simulated CPU devices, seed 0, commit "
        f"{result['code']['commit']}{' + uncommitted changes' if result['code']['uncommitted'] else ''}).",
        "",
        f"- default: {plain['loss_computation']}",
        f"- chunked: {ring['loss_computation']}",
        "",
        "| quantity | max abs difference | max relative difference | relative difference at step 1 |",
        "|---|---|---|---|",
    ]
    for key, d in result["differences"].items():
        lines.append(f"| {key} | {d['max_abs']:.3g} | {d['max_rel']:.3g} | {d['first_step_max_rel']:.3g} |")
    lines += ["", f"Control, float32 rounding alone: the default run on 1 device against the default run on "
              f"{result['device']['device_count']} devices (same batches, same computation, only the sharding "
              "differs):", "",
              "| quantity | max abs difference | max relative difference | relative difference at step 1 |",
              "|---|---|---|---|"]
    for key, d in result["control"]["differences"].items():
        lines.append(f"| {key} | {d['max_abs']:.3g} | {d['max_rel']:.3g} | {d['first_step_max_rel']:.3g} |")
    lines += ["", f"Verdict: {result['verdict']}", "",
              "| step | loss (default) | loss (chunked) | accuracy (default) | accuracy (chunked) |",
              "|---|---|---|---|---|"]
    acc = "accuracy/clip/image-text"
    for i, step in enumerate(plain["steps"]):
        lines.append(f"| {step} | {plain['curves']['loss'][i]:.7f} | {ring['curves']['loss'][i]:.7f} | "
                     f"{plain['curves'][acc][i]:.4f} | {ring['curves'][acc][i]:.4f} |")
    lines += ["", f"Wall time on this shared CPU (compilation included, not a speed benchmark): default "
              f"{plain['seconds']:.0f} s, chunked {ring['seconds']:.0f} s, 1-device control "
              f"{result['control']['run']['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk_size", type=int, default=8)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rtol", type=float, default=1e-5, help="pass if every loss agrees to this")
    parser.add_argument("--control_out", default="", help=argparse.SUPPRESS)  # the 1-device control run
    parser.add_argument("--memory", action="store_true", help="compile at --batch and report memory instead")
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_common

    assert jax.device_count() == args.devices, jax.devices()
    if args.memory:
        result = memory(args.batch, args.chunk_size)
        result.update(device=bench_common.device_description(),
                      code=bench_common.code_version(REPO, ("mmssl_jax", "configs", "benchmarks/trainer_chunked.py")))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "trainer_chunked_memory.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "trainer_chunked_memory.md").write_text(memory_markdown(result))
        print(memory_markdown(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.control_out:
            Path(args.control_out).write_text(json.dumps(run(args.steps, 0, Path(tmp) / "control")))
            return
        runs = [run(args.steps, chunk, Path(tmp) / f"chunk{chunk}") for chunk in (0, args.chunk_size)]
        out = Path(tmp) / "control.json"
        subprocess.run([sys.executable, __file__, f"--steps={args.steps}", "--devices=1", f"--control_out={out}"],
                       check=True, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
        control = json.loads(out.read_text())
    diffs = {key: differences(runs[0]["curves"][key], runs[1]["curves"][key]) for key in KEYS}
    control_diffs = {key: differences(runs[0]["curves"][key], control["curves"][key]) for key in KEYS}
    ok = diffs["loss"]["max_rel"] <= args.rtol
    result = {
        "steps": args.steps, "rtol": args.rtol, "runs": runs, "differences": diffs,
        "control": {"run": control, "differences": control_diffs},
        "verdict": (f"{'PASS' if ok else 'FAIL'}: the chunked run's loss is within relative {diffs['loss']['max_rel']:.2g} "
                    f"of the default run's at every one of {args.steps} steps (tolerance {args.rtol:g})."),
        "device": bench_common.device_description(),
        "code": bench_common.code_version(REPO, ("mmssl_jax", "configs", "benchmarks/trainer_chunked.py")),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainer_chunked.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "trainer_chunked.md").write_text(markdown(result))
    print(markdown(result))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
