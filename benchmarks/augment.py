"""Where should the colour augmentations run? Host (numpy, per image) vs device (JAX, per batch).

Two ways to make one batch of augmented views from decoded ``uint8`` source images, on the same
machine, same recipe (``simclr_cifar`` at 32 px, ``simclr_imagenet`` at 224 px):

* ``host_all``: everything on the host, image by image, as a data-loader worker would: crop and
  flip (:func:`mmssl_jax.data.augment.host_view`), then the colour operations in numpy
  (:func:`numpy_color_augment`, a faithful numpy port of ``augment.color_augment``: the same
  ops, order, clipping and probabilities; checked against the JAX ops before timing);
* ``split``: crop and flip on the host per image, then the colour operations on the batch in
  one jitted ``augment.color_augment`` call (what ``pipeline.device_augment`` does in the step).

Reported per batch: wall time and CPU time (all threads; XLA uses every core, numpy one), as
images per wall-second and images per CPU-second, for the host part and the device part
separately. On this CPU-only machine the "device" is the same cores as the host, so the split
column is the cost of running the colour ops with XLA on the CPU instead of numpy; on a GPU or
TPU the device part leaves the host altogether and overlaps with the next batch's crops.

Usage:
  python benchmarks/augment.py --quick     # seconds: small batch, prints the table
  python benchmarks/augment.py             # batch 256, 32 px and 224 px, writes benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from mmssl_jax.data import augment  # noqa: E402

# ----------------------------------------------------------------------------- numpy colour ops
# float32 [H, W, 3] in [0, 1], one image at a time, the same formulas as the JAX ops.


def _rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    value = np.maximum(np.maximum(r, g), b)
    range_ = value - np.minimum(np.minimum(r, g), b)
    safe_value = np.where(value > 0, value, 1.0)
    safe_range = np.where(range_ > 0, range_, 1.0)
    sat = np.where(value > 0, range_ / safe_value, 0.0)
    norm = 1.0 / (6.0 * safe_range)
    hue = np.where(value == g, norm * (b - r) + 2.0 / 6.0, norm * (r - g) + 4.0 / 6.0)
    hue = np.where(value == r, norm * (g - b), hue)
    hue = np.where(range_ > 0, hue, 0.0) + (hue < 0.0)
    return hue, sat, value


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, value: np.ndarray) -> np.ndarray:
    dh = (hue % 1.0) * 6.0
    dr = np.clip(np.abs(dh - 3.0) - 1.0, 0.0, 1.0)
    dg = np.clip(2.0 - np.abs(dh - 2.0), 0.0, 1.0)
    db = np.clip(2.0 - np.abs(dh - 4.0), 0.0, 1.0)
    one_minus_s = 1.0 - sat
    return np.stack([value * (one_minus_s + sat * d) for d in (dr, dg, db)], axis=-1)


def _np_hsv(x: np.ndarray, hue_delta: float, sat_factor: float) -> np.ndarray:
    hue, sat, value = _rgb_to_hsv(x)
    return _hsv_to_rgb((hue + hue_delta) % 1.0, np.clip(sat * sat_factor, 0.0, 1.0), value).astype(np.float32)


def _np_op(x: np.ndarray, op: int, factor: float, brightness_mode: str) -> np.ndarray:
    if op == 0:
        return x * factor if brightness_mode == "multiplicative" else x + factor
    if op == 1:
        mean = x.mean(axis=(0, 1), keepdims=True)
        return (x - mean) * factor + mean
    if op == 2:
        return _np_hsv(x, 0.0, factor)
    return _np_hsv(x, factor, 1.0)


def numpy_jitter_in_order(
    x: np.ndarray, order, factors, brightness_mode: str = "multiplicative", enabled=(True,) * 4
) -> np.ndarray:
    for op in order:
        if enabled[op]:  # an op of strength 0 is skipped (only one op runs per slot on the host)
            x = _np_op(x, int(op), float(factors[op]), brightness_mode)
        x = np.clip(x, 0.0, 1.0)
    return x


def numpy_gaussian_blur(x: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    radius = kernel_size // 2
    if radius == 0:
        return x
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    w = np.exp(-(taps**2) / (2.0 * sigma**2)).astype(np.float32)
    w /= w.sum()
    height, width = x.shape[:2]
    padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(w[i] * padded[i : i + height] for i in range(kernel_size))
    return sum(w[i] * rows[:, i : i + width] for i in range(kernel_size))


def numpy_color_augment(x: np.ndarray, rng: np.random.Generator, cfg: augment.AugmentConfig) -> np.ndarray:
    """One image ``float32 [H, W, 3]`` in [0, 1]: jitter, grayscale, blur, solarize, as on device."""
    u = rng.random(9)
    enabled = cfg.jitter_enabled
    if cfg.jitter_p > 0 and any(enabled) and u[0] < cfg.jitter_p:
        if cfg.brightness_mode == "multiplicative":
            bright = max(1 - cfg.brightness, 0) + u[1] * (1 + cfg.brightness - max(1 - cfg.brightness, 0))
        else:
            bright = -cfg.brightness + u[1] * 2 * cfg.brightness
        factors = [
            bright,
            max(1 - cfg.contrast, 0) + u[2] * (1 + cfg.contrast - max(1 - cfg.contrast, 0)),
            max(1 - cfg.saturation, 0) + u[3] * (1 + cfg.saturation - max(1 - cfg.saturation, 0)),
            -cfg.hue + u[4] * 2 * cfg.hue,
        ]
        x = numpy_jitter_in_order(x, rng.permutation(4), factors, cfg.brightness_mode, enabled)
    if u[5] < cfg.grayscale_p:
        luma = x @ np.array([0.2989, 0.5870, 0.1140], np.float32)
        x = np.repeat(luma[..., None], 3, axis=-1)
    kernel = augment.blur_kernel_size(x.shape[0], cfg.blur_kernel_fraction)
    if kernel > 1 and u[6] < cfg.blur_p:
        sigma = cfg.blur_sigma[0] + u[7] * (cfg.blur_sigma[1] - cfg.blur_sigma[0])
        x = np.clip(numpy_gaussian_blur(x, sigma, kernel), 0.0, 1.0)
    if u[8] < cfg.solarize_p:
        x = np.where(x < cfg.solarize_threshold, x, 1.0 - x)
    return x


def check_numpy_matches_jax(size: int = 32) -> float:
    """Max |numpy - JAX| over the jitter (three orders) and the blur on one random image."""
    x = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    factors = np.array([1.3, 0.6, 1.5, -0.12], np.float32)
    worst = 0.0
    for order in ([0, 1, 2, 3], [3, 1, 2, 0], [2, 0, 3, 1]):
        ours = np.asarray(augment.jitter_in_order(jnp.asarray(x), jnp.array(order), jnp.asarray(factors)))
        worst = max(worst, float(np.abs(ours - numpy_jitter_in_order(x, order, factors)).max()))
    ours = np.asarray(augment.gaussian_blur(jnp.asarray(x), 1.7, 5))
    worst = max(worst, float(np.abs(ours - numpy_gaussian_blur(x, 1.7, 5)).max()))
    if worst > 1e-4:
        raise AssertionError(f"numpy port disagrees with the JAX ops by {worst}")
    return worst


# ----------------------------------------------------------------------------- timing


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def _median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    pairs = sorted(pairs)
    return pairs[len(pairs) // 2]


def bench(size: int, source_shape: tuple[int, int], batch: int, reps: int, preset: str) -> dict:
    cfg = augment.PRESETS[preset](size)
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, size=(*source_shape, 3), dtype=np.uint8) for _ in range(min(batch, 32))]

    def crops(rng: np.random.Generator) -> np.ndarray:
        return np.stack([augment.host_view(sources[i % len(sources)], rng, cfg) for i in range(batch)])

    def host_all(rng: np.random.Generator) -> np.ndarray:
        out = np.empty((batch, size, size, 3), np.float32)
        for i in range(batch):
            view = augment.host_view(sources[i % len(sources)], rng, cfg).astype(np.float32) / 255.0
            out[i] = numpy_color_augment(view, rng, cfg)
        return out

    device = jax.jit(lambda images, key: augment.color_augment(images, key, cfg))
    start = _clock()
    compiled = device.lower(jnp.zeros((batch, size, size, 3), jnp.uint8), jax.random.key(0)).compile()
    compile_s = _since(start)[0]

    host_all_t, crop_t, device_t = [], [], []
    host_all(np.random.default_rng(1))  # warm-up
    compiled(jnp.asarray(crops(np.random.default_rng(1))), jax.random.key(1)).block_until_ready()
    for rep in range(reps):
        start = _clock()
        host_all(np.random.default_rng(rep))
        host_all_t.append(_since(start))
        start = _clock()
        views = crops(np.random.default_rng(rep))
        crop_t.append(_since(start))
        start = _clock()
        compiled(jnp.asarray(views), jax.random.key(rep)).block_until_ready()
        device_t.append(_since(start))

    host_all_s, crop_s, device_s = _median(host_all_t), _median(crop_t), _median(device_t)
    split_s = (crop_s[0] + device_s[0], crop_s[1] + device_s[1])
    rate = lambda seconds: batch / seconds if seconds > 0 else float("inf")  # noqa: E731
    return {
        "size": size, "source": list(source_shape), "preset": preset, "batch": batch, "reps": reps,
        "compile_s": compile_s,
        "host_all": {"wall_s": host_all_s[0], "cpu_s": host_all_s[1]},
        "split_host_crop_flip": {"wall_s": crop_s[0], "cpu_s": crop_s[1]},
        "split_device_color": {"wall_s": device_s[0], "cpu_s": device_s[1]},
        "split_total": {"wall_s": split_s[0], "cpu_s": split_s[1]},
        "images_per_s": {
            "host_all": rate(host_all_s[0]), "split": rate(split_s[0]),
            "split_host_only": rate(crop_s[0]), "split_device_only": rate(device_s[0]),
        },
        "images_per_cpu_s": {"host_all": rate(host_all_s[1]), "split": rate(split_s[1])},
    }


def table(results: list[dict]) -> str:
    rows = [
        "| size | preset | batch | path | wall / batch (s) | images/s | CPU / batch (s) | images / CPU-s |",
        "|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for path, key, rate_key in [
            ("host_all (crop+flip+numpy colour, per image)", "host_all", "host_all"),
            ("split: host crop+flip", "split_host_crop_flip", "split_host_only"),
            ("split: device colour (jit, CPU)", "split_device_color", "split_device_only"),
            ("split total", "split_total", "split"),
        ]:
            t = r[key]
            per_cpu = f"{r['batch'] / t['cpu_s']:,.0f}" if t["cpu_s"] > 0 else "-"
            rows.append(
                f"| {r['size']} | {r['preset']} | {r['batch']} | {path} | {t['wall_s']:.3f} | "
                f"{r['images_per_s'][rate_key]:,.0f} | {t['cpu_s']:.3f} | {per_cpu} |"
            )
    return "\n".join(rows)


def conclusions(results: list[dict]) -> str:
    """What the numbers say here, and what changes on an accelerator (argued, not measured)."""
    lines = ["", "## Which split is faster on this CPU", ""]
    for r in results:
        wall = r["images_per_s"]["split"] / r["images_per_s"]["host_all"]
        cpu = r["images_per_cpu_s"]["split"] / r["images_per_cpu_s"]["host_all"]
        host = r["images_per_s"]["split_host_only"] / r["images_per_s"]["host_all"]
        if wall > 1.1:
            verdict = "the split is faster"
        elif wall < 0.9:
            verdict = "the all-host path is faster"
        else:
            verdict = "the two are about even (within the run-to-run noise of this shared machine)"
        lines.append(
            f"- {r['size']} px ({r['preset']}): {verdict}. The split makes "
            f"{wall:.2f}x the images per wall-second and {cpu:.2f}x the images per CPU-second of the all-host "
            f"path; its host part alone (crop+flip) costs {host:.1f}x less per image than crop+flip+colour "
            "on the host."
        )
    lines += [
        "",
        "Why: at small images the per-image numpy overhead dominates and one batched XLA call wins "
        "outright. At large images the device version pays for being branch-free: every image computes "
        "every op it might draw (each of the four jitter slots computes brightness, contrast and one HSV "
        "round trip before `jnp.where` picks one; the blur runs for all images and is kept for half), "
        "about 2-2.5x the arithmetic of the host loop, which runs only the ops it drew, so per CPU-second "
        "the two end up close. XLA may spread one call over every core, while the host loop here is one "
        "process; a loader with one worker per core parallelises the host path the same way. The margin "
        "at large sizes also moves with how many cores XLA gets on a shared machine (repeated runs here "
        "put the 224 px ratio on either side of 1), so on a CPU-only machine treat the two as about even "
        "at 224 px. The split is kept because it is clearly right on an accelerator (below) and costs "
        "nothing here.",
    ]
    big = next((r for r in results if r["size"] >= 128), None)
    if big is not None:
        crop_rate = big["images_per_s"]["split_host_only"]
        all_rate = big["images_per_s"]["host_all"]
        views = 2 * 2500  # two views per image at 2,500 images/s per accelerator
        lines += [
            "",
            "## What changes on a GPU or TPU (argued from these numbers, not measured on one)",
            "",
            f"- The colour ops leave the host. A host core then only decodes, crops and flips: here "
            f"{crop_rate:,.0f} views/s per core at {big['size']} px instead of {all_rate:,.0f} with the "
            f"colour ops, {crop_rate / all_rate:.1f}x fewer host cores per view. Feeding 2,500 images/s "
            f"(two views each) to one accelerator takes about {views / crop_rate:.0f} cores instead of "
            f"about {views / all_rate:.0f} (decoding comes on top of both), which decides whether an "
            "8-accelerator host keeps up.",
            "- On the accelerator the colour ops are elementwise passes and a few per-image means, i.e. "
            "memory bound: a batch of 256 views at 224 px is 154 MB in float32 and the ops make a few "
            "dozen passes, a few GB of traffic, on the order of a millisecond at 2-3 TB/s of HBM "
            "(H100, TPU v5p), against roughly 0.1 s for a ResNet-50 forward and backward on the same "
            "batch. The branch-free 2-2.5x extra arithmetic does not matter at that scale, and the "
            "device part overlaps with the host preparing the next batch.",
            "- What crosses the host-device link is the `uint8` view, 4x smaller than float32.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 32, 32 px only, print, write nothing")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps32", type=int, default=5, help="timed batches at 32 px")
    parser.add_argument("--reps224", type=int, default=3, help="timed batches at 224 px")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    diff = check_numpy_matches_jax()
    print(f"numpy port matches the JAX ops: max abs diff {diff:.2e}")
    specs = [(32, (32, 32), "simclr_cifar", args.reps32)]
    if not args.quick:
        specs.append((224, (375, 500), "simclr_imagenet", args.reps224))  # a typical ImageNet image
    batch = 32 if args.quick else args.batch
    results = []
    for size, source, preset, reps in specs:
        print(f"{size} px from {source[0]}x{source[1]}, {preset}, batch {batch}, {reps} reps...", flush=True)
        results.append(bench(size, source, batch, reps, preset))
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, jax {jax.__version__}"
    )
    intro = (
        f"Machine: {machine}; JAX on CPU (the 'device' is the same cores). Median of repeats; the "
        "JAX compile is excluded. Source images are random uint8 (CIFAR-size 32x32 for 32 px; 375x500, "
        "a typical ImageNet image, for 224 px). CPU time counts every thread (XLA uses all cores, numpy "
        "and PIL one).\n\n"
    )
    text = intro + table(results) + "\n" + conclusions(results)
    print(text)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine, "args": vars(args), "numpy_vs_jax_max_abs_diff": diff, "results": results,
        }
        (out / "augment_cpu.json").write_text(json.dumps(payload, indent=1))
        (out / "augment_cpu.md").write_text(text)
        print(f"wrote {out / 'augment_cpu.json'} and {out / 'augment_cpu.md'}")


if __name__ == "__main__":
    main()
