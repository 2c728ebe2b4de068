"""Throughput of the whole two-view training input pipeline: host-only vs host+device augmentation.

What is timed is the stream the trainer consumes, built by the trainer's own function
(:func:`mmssl_jax.data.pipeline.train_dataset`: grain source -> shuffle -> ``MakeViews``
(decode, random resized crop, flip, per view) -> batch, optionally ``mp_prefetch`` worker
processes), followed by the colour half of the augmentation, with two views per image
(``image1`` and ``image2``, the same preset: ``simclr_cifar`` at 32 px, ``simclr_imagenet`` at
224 px). Paths:

* ``loader only``: the batches as they leave the loader, ``uint8`` crops, no colour ops. This is
  all the host does when an accelerator runs the colour ops, so it bounds what one host can feed;
* ``host+device``: the loader, then ``jax.jit(pipeline.device_augment)`` on the batch, ended by
  ``block_until_ready`` (what the train step does before the model; compiled before timing);
* ``host only``: the loader, then the colour ops in numpy (``numpy_color_augment`` from
  ``benchmarks/augment.py``, a port of the JAX ops checked against them at start-up) for every
  view of every image, in this process, after batching;
* ``host only, colour in loader``: the colour ops in numpy inside the loader's per-record map
  (right after the crop and flip of each view), i.e. in grain's reader threads or worker
  processes, as a host-only data loader would place them.

Each is run with ``worker_count`` 0 (grain's reader threads in this process: ``to_iter_dataset``
reads with 16 threads and a 500-element prefetch buffer by default) and with worker processes
(``mp_prefetch``). Source: an in-memory list of ``{"image": JPEG bytes}`` records, smooth random
images (upsampled multi-scale noise, so the JPEGs compress like photographs rather than like
noise), 32x32 (CIFAR-like) for 32 px and 375x500 (a typical ImageNet image) for 224 px.

Timing per configuration: a fresh iterator; its first batch (start-up, worker processes
included) and ``--warmup`` more batches untimed (the JAX compile is done before). Then the steady
state the trainer runs in (the step slower than the loader, so grain's prefetch buffers full):
wait until this process and its workers go idle (buffers full), time ``--batches*`` batches
back to back, and wait again until they go idle (buffers refilled), counting that refill in the
time. The buffers then hold the same at both ends, so every timed image was produced inside the
timed span; without this, grain's 500-element read-ahead would be charged to (or given away by)
a short window. Wall time with ``time.perf_counter``; CPU time is this process (all its threads:
grain readers, XLA, numpy) plus its child processes (grain workers, via psutil). images/s =
timed images / wall; images per CPU-second = timed images / CPU time; ``cores busy`` = CPU /
wall. With ``--rounds`` > 1 each configuration is repeated (the order reversed every other
round) and images/s is the median over rounds with the range.

For scale, two one-thread reference figures per size (:func:`reference`): ``MakeViews`` in a plain
loop over the records, and the same grain chain read with no reader threads.

Usage:
  python benchmarks/input_pipeline.py --quick    # ~20 s: 32 px, batch 64, 0 workers, writes nothing
  python benchmarks/input_pipeline.py --quick --workers 0 2   # also smoke-tests worker processes
  python benchmarks/input_pipeline.py            # writes benchmarks/results/input_pipeline_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import augment as augment_bench  # noqa: E402  (benchmarks/augment.py: the numpy colour ops)
import bench_common  # noqa: E402
from mmssl_jax.data import augment, pipeline  # noqa: E402

try:
    import psutil
except ImportError:  # worker CPU time is then not counted (reported as such)
    psutil = None

PATHS = {
    "loader_only": "loader only (decode+crop+flip, no colour ops)",
    "host_device": "host+device (loader, then jit device_augment)",
    "host_only": "host only (loader, then numpy colour ops after batching)",
    "host_only_in_loader": "host only, colour in loader (numpy colour ops in the per-record map)",
}
SIZES = {  # size -> (source image shape, preset)
    32: ((32, 32), "simclr_cifar"),
    224: ((375, 500), "simclr_imagenet"),
}


# ----------------------------------------------------------------------------- source


def make_records(count: int, shape: tuple[int, int], seed: int = 0, quality: int = 90) -> list[dict]:
    """``count`` records ``{"image": JPEG bytes, "image_id": i}`` of smooth random ``shape`` images."""
    rng = np.random.default_rng(seed)
    height, width = shape
    records = []
    for i in range(count):
        layers = []
        for div, weight in ((16, 0.6), (4, 0.3), (1, 0.1)):  # coarse blobs, texture, a little grain
            small = rng.integers(0, 256, (max(height // div, 2), max(width // div, 2), 3), dtype=np.uint8)
            up = Image.fromarray(small).resize((width, height), Image.BICUBIC) if div > 1 else Image.fromarray(small)
            layers.append(weight * np.asarray(up, np.float32))
        image = np.clip(sum(layers), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        records.append({"image": buffer.getvalue(), "image_id": i})
    return records


# ----------------------------------------------------------------------------- the paths


class MakeViewsHostColour(pipeline.MakeViews):
    """``MakeViews`` whose image views also get the colour ops, in numpy, per record."""

    def _views(self, record, rng, index=None):
        sample = super()._views(record, rng, index)
        for name, cfg in self.image_views.items():
            view = sample[name].astype(np.float32) / 255.0
            sample[name] = augment_bench.numpy_color_augment(view, rng, cfg).astype(np.float32)
        return sample


@contextlib.contextmanager
def _colour_in_loader():
    """Build ``train_dataset`` with :class:`MakeViewsHostColour` in place of ``MakeViews``, so the
    chain (shuffle, repeat, map, batch, mp_prefetch) stays exactly the trainer's."""
    original = pipeline.MakeViews
    pipeline.MakeViews = MakeViewsHostColour
    try:
        yield
    finally:
        pipeline.MakeViews = original


def host_colour(batch: dict, views: dict, rng: np.random.Generator) -> dict:
    """Numpy colour ops on every view of every image of a ``uint8`` batch -> ``float32`` in [0, 1]."""
    out = dict(batch)
    for name, cfg in sorted(views.items()):
        images = batch[name]
        result = np.empty(images.shape, np.float32)
        for i in range(images.shape[0]):
            result[i] = augment_bench.numpy_color_augment(images[i].astype(np.float32) / 255.0, rng, cfg)
        out[name] = result
    return out


def compile_device_augment(views: dict, batch: int, size: int):
    """``jax.jit(pipeline.device_augment)`` compiled for the batch shape (a key per step, as the trainer)."""

    def fn(images, step):
        return pipeline.device_augment(images, jax.random.fold_in(jax.random.key(0), step), views)

    spec = {name: jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8) for name in views}
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(spec, jax.ShapeDtypeStruct((), jnp.int32)).compile()
    return compiled, time.perf_counter() - start


# ----------------------------------------------------------------------------- timing


def _children_cpu() -> dict[int, float]:
    if psutil is None:
        return {}
    out = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            out[child.pid] = times.user + times.system
    return out


class CpuClock:
    """Wall time and CPU time of this process (all threads) plus its live child processes."""

    def __init__(self) -> None:
        self.children: dict[int, float] = {}
        self.children_total = 0.0

    def read(self) -> tuple[float, float, float]:
        """``(wall, own CPU, children CPU)``; children CPU accumulates per pid across reads."""
        now = _children_cpu()
        self.children_total += sum(cpu - self.children.get(pid, 0.0) for pid, cpu in now.items())
        self.children = {**self.children, **now}
        return time.perf_counter(), time.process_time(), self.children_total


def wait_until_idle(clock: CpuClock, poll_s: float = 0.1, quiet_polls: int = 3, threshold: float = 0.05,
                    timeout_s: float = 180.0) -> tuple[tuple[float, float, float], bool]:
    """Block until this process and its workers stop using CPU (the loader's prefetch buffers are full).

    Returns the clock reading at the start of the quiet stretch (when the last busy poll ended) and
    whether that happened before ``timeout_s``. Quiet: ``quiet_polls`` polls in a row under
    ``threshold`` cores (grain's blocked threads use about 0.01).
    """
    prev = clock.read()
    quiet_since, quiet = prev, 0
    deadline = prev[0] + timeout_s
    while prev[0] < deadline:
        time.sleep(poll_s)
        now = clock.read()
        rate = (now[1] + now[2] - prev[1] - prev[2]) / max(now[0] - prev[0], 1e-9)
        if rate < threshold:
            if quiet == 0:
                quiet_since = prev
            quiet += 1
            if quiet >= quiet_polls:
                return quiet_since, True
        else:
            quiet = 0
        prev = now
    return prev, False


def run_one(source, *, size, preset, batch, path, workers, warmup, batches, seed, device_fn) -> dict:
    cfg = augment.PRESETS[preset](size)
    views = {"image1": cfg, "image2": cfg}
    build = _colour_in_loader() if path == "host_only_in_loader" else contextlib.nullcontext()
    with build:
        ds = pipeline.train_dataset(source, batch_size=batch, seed=seed, image_views=views,
                                    worker_count=workers, process_index=0, process_count=1)
    rng = np.random.default_rng(seed)

    def finish(b: dict, step: int):
        images = {name: b[name] for name in views}
        if path == "host_device":
            return jax.block_until_ready(device_fn(images, np.int32(step)))
        if path == "host_only":
            return host_colour(images, views, rng)
        return images

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    clock = CpuClock()
    start = time.perf_counter()
    it = iter(ds)
    out = finish(next(it), 0)
    first_s = time.perf_counter() - start
    for step in range(1, 1 + warmup):
        out = finish(next(it), step)
    # Sanity: the right shapes, dtypes and range, the colour ops applied where the path says.
    for name in views:
        arr = np.asarray(out[name])
        want = np.uint8 if path == "loader_only" else np.float32
        assert arr.shape == (batch, size, size, 3) and arr.dtype == want, (path, arr.shape, arr.dtype)
        if want == np.float32:
            assert 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0, (path, arr.min(), arr.max())
    del out

    # Steady state: start with the prefetch buffers full (as in training, where the step is slower
    # than the loader), take the timed batches, then let the buffers refill and count that too, so
    # the buffers hold the same at both ends and every image timed was produced inside the window.
    t_fill = time.perf_counter()
    c0, idle0 = wait_until_idle(clock)
    fill_s = c0[0] - t_fill
    wait_s = finish_s = 0.0
    c0 = clock.read()
    for step in range(1 + warmup, 1 + warmup + batches):
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        finish(b, step)
        finish_s += time.perf_counter() - t1
        wait_s += t1 - t0
        del b
    c1 = clock.read()
    c2, idle1 = wait_until_idle(clock)
    t_close = time.perf_counter()
    it.close()
    del it, ds
    gc.collect()
    close_s = time.perf_counter() - t_close

    images = batch * batches
    window_wall, window_cpu = c1[0] - c0[0], (c1[1] - c0[1]) + (c1[2] - c0[2])
    wall, own_cpu, child_cpu = c2[0] - c0[0], c2[1] - c0[1], c2[2] - c0[2]
    cpu = own_cpu + child_cpu
    return {
        "size": size, "preset": preset, "path": path, "workers": workers, "batch": batch,
        "warmup_batches": warmup, "timed_batches": batches, "images": images,
        "load1_at_start": load1, "first_batch_s": first_s, "buffer_fill_s": fill_s,
        "idle_reached": bool(idle0 and idle1), "close_s": close_s,
        "window_wall_s": window_wall, "window_cpu_s": window_cpu, "refill_wall_s": c2[0] - c1[0],
        "wall_s": wall, "cpu_s": cpu, "own_cpu_s": own_cpu, "children_cpu_s": child_cpu,
        "wait_on_loader_s": wait_s, "colour_after_loader_s": finish_s,
        "images_per_s": images / wall, "images_per_cpu_s": images / cpu if cpu > 0 else None,
        "cores_busy": cpu / wall,
    }


def reference(source, *, size, preset, batch, batches, seed) -> list[dict]:
    """What the per-record map costs outside the trainer's stream, on one thread (for scale).

    * ``MakeViews`` (decode, crop and flip of both views) in a plain Python loop over the records;
    * the same grain chain as ``train_dataset`` (source, shuffle, repeat, random_map, batch) but
      read with ``ReadOptions(num_threads=0, prefetch_buffer_size=0)``: no reader threads, no
      read-ahead. ``train_dataset`` itself uses grain's default (16 threads, 500 elements).
    """
    cfg = augment.PRESETS[preset](size)
    views = {"image1": cfg, "image2": cfg}
    make_views = pipeline.MakeViews(views)
    rows = []
    records = source[: max(batch, min(len(source), batch * batches))]
    rng = np.random.default_rng(seed)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for record in records:
        make_views.random_map(record, rng)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rows.append({"size": size, "what": "MakeViews in a plain loop (no grain)", "images": len(records),
                 "images_per_s": len(records) / wall, "images_per_cpu_s": len(records) / cpu})
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None).random_map(make_views)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
              .batch(batch, drop_remainder=True))
    next(it)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    it.close()
    rows.append({"size": size, "what": "the train_dataset chain, grain with no reader threads", "images": batch * batches,
                 "images_per_s": batch * batches / wall, "images_per_cpu_s": batch * batches / cpu})
    return rows


def summarise(runs: list[dict]) -> dict:
    """Rounds of one configuration -> median images/s with range; CPU figures over all rounds."""
    rates = [r["images_per_s"] for r in runs]
    images = sum(r["images"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    cpu = sum(r["cpu_s"] for r in runs)
    first = runs[0]
    return {
        **{k: first[k] for k in ("size", "preset", "path", "workers", "batch", "timed_batches")},
        "rounds": len(runs),
        "images_per_s_median": statistics.median(rates), "images_per_s_min": min(rates), "images_per_s_max": max(rates),
        "images_per_cpu_s": images / cpu if cpu > 0 else None,
        "cores_busy": cpu / wall,
        "colour_after_loader_share": sum(r["colour_after_loader_s"] for r in runs) / wall,
        "wait_share": sum(r["wait_on_loader_s"] for r in runs) / wall,
        "children_cpu_share": sum(r["children_cpu_s"] for r in runs) / cpu if cpu > 0 else 0.0,
        "first_batch_s_median": statistics.median(r["first_batch_s"] for r in runs),
        "idle_reached": all(r["idle_reached"] for r in runs),
        "runs": runs,
    }


# ----------------------------------------------------------------------------- report


def code_version() -> dict:
    """The commit measured and the library files that differ from it."""
    return bench_common.code_version(REPO, ("mmssl_jax", "benchmarks/augment.py", "benchmarks/input_pipeline.py"))


def table(rows: list[dict], cores: int) -> str:
    ranged = any(r["rounds"] > 1 for r in rows)
    rate_head = "images/s (wall): median [min-max]" if ranged else "images/s (wall)"
    lines = [
        f"| size | path | workers | batch | {rate_head} | images / CPU-s | cores busy (of {cores}) "
        "| main thread in colour ops | first batch (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_cpu = f"{r['images_per_cpu_s']:,.0f}" if r["images_per_cpu_s"] else "-"
        rate = f"{r['images_per_s_median']:,.0f}"
        if ranged:
            rate += f" [{r['images_per_s_min']:,.0f}-{r['images_per_s_max']:,.0f}]"
        colour = f"{100 * r['colour_after_loader_share']:.0f}%" if r["path"] in ("host_device", "host_only") else "-"
        lines.append(
            f"| {r['size']} | {PATHS[r['path']]} | {r['workers']} | {r['batch']} | {rate}"
            f"{'' if r['idle_reached'] else ' (*)'} | {per_cpu} | {r['cores_busy']:.2f} | {colour} | "
            f"{r['first_batch_s_median']:.1f} |"
        )
    if not all(r["idle_reached"] for r in rows):
        lines.append("\n(*) the loader's buffers did not go quiet within the time limit: steady state not reached.")
    return "\n".join(lines)


def _get(rows, size, path, workers):
    return next((r for r in rows if r["size"] == size and r["path"] == path and r["workers"] == workers), None)


def _best(rows, size, paths):
    return max((r for r in rows if r["size"] == size and r["path"] in paths),
               key=lambda r: r["images_per_s_median"], default=None)


def _name(r: dict) -> str:
    return f"{PATHS[r['path']].split(' (')[0]}, {r['workers']} workers"


NOISE = 1.5
"""Ratios within this factor either way are called even: on the shared 2-core host these numbers were
taken on, two full runs minutes apart differed by up to 1.6x on a single row (most by under 1.3x)."""


def _loader_share(lo: dict, hd: dict, ho: dict) -> str:
    share_hd = hd["images_per_cpu_s"] / lo["images_per_cpu_s"]  # loader CPU per image / host+device's
    share_ho = ho["images_per_cpu_s"] / lo["images_per_cpu_s"]
    text = f"The loader alone makes {lo['images_per_cpu_s']:,.0f} images per CPU-second: "
    if share_hd > 1 / NOISE:
        text += (f"about as little CPU per image as host+device ({100 * share_hd:.0f}%), so there the colour ops "
                 "in one XLA call are lost in the loader's cost and the noise")
    else:
        text += f"{100 * share_hd:.0f}% of host+device's CPU per image, the colour ops on XLA the rest"
    return text + f"; {100 * share_ho:.0f}% of host only's."


def _verdict(ratio: float, better: str, worse: str) -> str:
    if ratio > NOISE:
        return better
    if ratio < 1 / NOISE:
        return worse
    return f"about even (within {NOISE:.1f}x, this shared machine's run-to-run noise)"


def conclusions(rows: list[dict], worker_counts: list[int], cores: int, references: list[dict],
                sources: list[dict]) -> list[str]:
    """The bullets of "what this means", computed from the rows."""
    out = []
    w0 = worker_counts[0]
    sizes = sorted({r["size"] for r in rows})
    for size in sizes:
        hd, ho, lo = (_get(rows, size, p, w0) for p in ("host_device", "host_only", "loader_only"))
        best_host = _best(rows, size, ("host_only", "host_only_in_loader"))
        best_hd = _best(rows, size, ("host_device",))
        if not (hd and ho and lo and best_host and best_hd):
            continue
        wall = hd["images_per_s_median"] / ho["images_per_s_median"]
        cpu = hd["images_per_cpu_s"] / ho["images_per_cpu_s"]
        best = best_hd["images_per_s_median"] / best_host["images_per_s_median"]
        verdict = _verdict(cpu, "host+device is cheaper", "host only is cheaper")
        out.append(
            f"**{size} px ({hd['preset']}, batch {hd['batch']}), per CPU-second with {w0} workers: {verdict}.** "
            "Host+device makes "
            f"{hd['images_per_s_median']:,.0f} images/s against {ho['images_per_s_median']:,.0f} for host only "
            f"({wall:.2f}x per wall-second, {cpu:.2f}x per CPU-second); best row of each (wall-clock, the noisier "
            "measure): "
            f"{best_hd['images_per_s_median']:,.0f} ({_name(best_hd)}) against "
            f"{best_host['images_per_s_median']:,.0f} ({_name(best_host)}), {best:.2f}x. "
            + _loader_share(lo, hd, ho)
        )
    parts, heavy = [], []
    for size in sizes:
        lo = _get(rows, size, "loader_only", w0)
        plain = next((r for r in references if r["size"] == size and "plain loop" in r["what"]), None)
        nothreads = next((r for r in references if r["size"] == size and "no reader threads" in r["what"]), None)
        if lo and plain and nothreads:
            ratio = nothreads["images_per_cpu_s"] / lo["images_per_cpu_s"]
            if ratio >= 2:  # the threads cost more than the work itself
                heavy.append(f"{size} px")
            noise = "" if ratio > NOISE else " (within the noise)"
            if not parts:
                parts.append(
                    f"at {size} px `MakeViews` alone (decode, two crops and flips) does "
                    f"{plain['images_per_cpu_s']:,.0f} images per CPU-second, the same grain chain with no reader "
                    f"threads {nothreads['images_per_cpu_s']:,.0f}, and `train_dataset` as the trainer runs it "
                    f"(grain's default 16 reader threads, loader-only row) {lo['images_per_cpu_s']:,.0f}: "
                    f"{ratio:.1f}x the CPU per image of the thread-free chain{noise}"
                )
            else:
                parts.append(
                    f"at {size} px the same three make {plain['images_per_cpu_s']:,.0f}, "
                    f"{nothreads['images_per_cpu_s']:,.0f} and {lo['images_per_cpu_s']:,.0f}: {ratio:.1f}x{noise}"
                )
    if parts:
        text = "**Where the host's time goes:** " + "; ".join(parts) + "."
        if heavy:
            text += (f" At {' and '.join(heavy)} running every element through grain's reader threads (futures, GIL "
                     "hand-offs) costs more CPU than decoding and cropping it, and more than any colour-op "
                     "placement changes; `train_dataset` does not expose grain's `ReadOptions`, and for small "
                     "images it is the knob worth having.")
        text += (" This host gave the run about one core, so the threads could not pay for themselves in "
                 "parallelism; on a free multi-core host they can.")
        out.append(text)
    if len(worker_counts) > 1:
        wn = worker_counts[-1]
        ratios = []
        for size in sizes:
            for path in PATHS:
                a, b = _get(rows, size, path, w0), _get(rows, size, path, wn)
                if a and b:
                    ratios.append((f"{size} px {PATHS[path].split(' (')[0]}",
                                   b["images_per_s_median"] / a["images_per_s_median"]))
        helped = [f"{n} {x:.2f}x" for n, x in ratios if x > NOISE]
        lost = [f"{n} {x:.2f}x" for n, x in ratios if x < 1 / NOISE]
        even = [f"{n} {x:.2f}x" for n, x in ratios if 1 / NOISE <= x <= NOISE]
        first_n = statistics.median(r["first_batch_s_median"] for r in rows if r["workers"] == wn)
        first_0 = statistics.median(r["first_batch_s_median"] for r in rows if r["workers"] == w0)
        text = (f"**Worker processes (`mp_prefetch`, {wn} vs {w0}):** they work in this environment (start-up about "
                f"{first_n:.0f} s to the first batch against {first_0:.1f} s in-process). images/s ratio: ")
        text += "; ".join(x for x in (
            f"better for {', '.join(helped)}" if helped else "",
            f"worse for {', '.join(lost)}" if lost else "",
            f"within {NOISE:.1f}x (noise) for {', '.join(even)}" if even else "") if x)
        text += (f". With {w0} workers grain already reads with 16 threads, in this process, sharing its GIL with "
                 "the main thread")
        waits = [f"{r['wait_share'] * 100:.0f}% ({size} px)" for size in sizes
                 if (r := _get(rows, size, "host_device", w0)) is not None]
        if waits:
            text += (" (host+device's main thread spent " + " and ".join(waits) + " of the wall time in `next()`, "
                     "although the buffers started full)")
        text += ("; workers move decoding and cropping out of the process, at the price of their start-up and "
                 "shared-memory copies, and cannot add cores the host does not give.")
        out.append(text)
    busy = [r["cores_busy"] for r in rows]
    out.append(
        "**Caveats: the 'device' here is the same CPU, and the CPU was shared.** Host+device on this machine is "
        "the colour ops run by XLA on the CPU, competing with the loader for the same cores; on a GPU or TPU they "
        "leave the host and overlap with the next batch, so there the host's ceiling is the loader-only row, and "
        "host only is what a loader that kept the colour ops would have to sustain (argued, not measured). The "
        f"timed work kept {min(busy):.2f}-{max(busy):.2f} of the {cores} cores busy (load averages above): "
        "wall-clock images/s is what the pipeline got beside other jobs, images per CPU-second the steadier "
        "comparison; "
        + (f"one round per configuration, and two full runs of this script minutes apart differed by up to 1.6x "
           f"on a single row (most by under 1.3x), so ratios within {NOISE:.1f}x are not findings (`--rounds 3` "
           "repeats, at 3x the time)."
           if max(r["rounds"] for r in rows) == 1 else "see the min-max range over rounds for the noise.")
    )
    big = next((x for x in sources if x["size"] == 224), None)
    out.append(
        "**Scope:** synthetic smooth JPEGs held in memory (no disk or tfds reads, no `host_batch_to_global`), no "
        "model step, one process."
        + (f" Real ImageNet JPEGs average about 110 kB against the {big['mean_jpeg_bytes'] / 1000:.0f} kB here, so "
           "the decode cost per image is of the right order but somewhat low." if big else "")
    )
    return out


def markdown(report: dict) -> str:
    dev, args, rows = report["device"], report["args"], report["rows"]
    cores = dev["cpu_count"]
    load = report["load_average_1_5_15"]
    fmt = lambda l: "/".join(f"{x:.2f}" for x in l) if l else "n/a"  # noqa: E731
    code = report["code"]
    code_text = f"commit `{code['commit']}`" if code.get("commit") else "not in a git checkout"
    if code.get("uncommitted"):
        code_text += ", with uncommitted changes to " + ", ".join(f"`{p}`" for p in code["uncommitted"])
    sources = "; ".join(
        f"{s['size']} px: {s['records']} records of {s['shape'][0]}x{s['shape'][1]} JPEG (quality {s['quality']}), "
        f"mean {s['mean_jpeg_bytes'] / 1000:.1f} kB"
        for s in report["sources"]
    )
    lines = [
        f"# Input pipeline throughput, two views per image ({dev['platform']})",
        "",
        f"Device: {dev['platform']} ({dev['device_kind']}, {dev['device_count']} device(s)); host: {cores} CPU cores "
        f"({dev['cpu_model']}); Python {dev['python']}, jax {dev['jax']}, grain {report['grain']}, "
        f"Pillow {report['pillow']}.",
        "",
        f"Code: {code_text}.",
        "",
        f"Command: `{report['command']}` (whole run: {report['wall_s'] / 60:.1f} min, source encoding and "
        f"compiles included).",
        "",
        *(["Text rebuilt from the saved JSON with `--render` (the measured numbers are unchanged).", ""]
          if report.get("rerendered") else []),
        f"Host load average (1/5/15 min) on {cores} cores: {fmt(load['before'])} before the run, "
        f"{fmt(load['after'])} after it. Other jobs shared the machine, so wall-clock numbers are noisy.",
        "",
        "What is timed: the trainer's own stream (`pipeline.train_dataset`: shuffle, decode, random resized crop "
        "and flip per view, batch) for two views per image, then the colour ops (jitter, grayscale, blur, "
        "solarize as the preset says) by one of the paths; `loader only` stops after the loader. Per configuration: "
        f"a fresh iterator, its first batch and {args['warmup']} more untimed (the JAX compile is done before), "
        "then a wait until the loader's prefetch buffers are full and its threads idle (the training regime, where "
        f"the step is slower than the loader), then {args['batches32']} (32 px) / {args['batches224']} (224 px) "
        "timed batches back to back, then a wait until the buffers have refilled, which is counted: the buffers "
        "hold the same at both ends, so every timed image was produced inside the timed span. "
        + (f"{args['rounds']} rounds, order reversed every other round; images/s is the median with the range. "
           if args["rounds"] > 1 else "One round. ")
        + "CPU time = this process (all threads: grain readers, XLA, numpy) + grain worker processes (psutil). "
        "`main thread in colour ops` = share of the wall time the main thread spent in the colour ops after the "
        "loader (host+device and host-only rows; the rest it waited on the loader). "
        f"Sources: {sources}. Presets `simclr_cifar` (32 px) and `simclr_imagenet` (224 px), the same for both "
        "views. The numpy colour ops (`numpy_color_augment` from `benchmarks/augment.py`) match the JAX ops to "
        f"{report['numpy_vs_jax_max_abs_diff']:.1e} (checked at start).",
        "",
        table(rows, cores),
        "",
        "For scale, the per-record map outside the trainer's stream, on one thread (`MakeViews` in a plain loop; "
        "the same grain chain as `train_dataset` read with `ReadOptions(num_threads=0, prefetch_buffer_size=0)`):",
        "",
        "| size | what | images/s (wall) | images / CPU-s |",
        "|---:|---|---:|---:|",
        *[f"| {r['size']} | {r['what']} | {r['images_per_s']:,.0f} | {r['images_per_cpu_s']:,.0f} |"
          for r in report["reference"]],
        "",
        "## What this means",
        "",
        *[f"- {b}" for b in report["conclusions"]],
    ]
    if report.get("worker_error"):
        lines += ["", f"Worker processes failed here: `{report['worker_error']}`; only 0 workers is reported."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def render(path: Path) -> None:
    """Re-summarise a saved report with this script's current text and rewrite its JSON and Markdown."""
    report = json.loads(path.read_text())
    report["rerendered"] = True
    report["rows"] = [summarise(row["runs"]) for row in report["rows"]]
    worker_counts = [w for w in report["args"]["workers"] if any(r["workers"] == w for r in report["rows"])]
    report["conclusions"] = conclusions(report["rows"], worker_counts, report["device"]["cpu_count"],
                                        report["reference"], report["sources"])
    text = markdown(report)
    print(text)
    path.write_text(json.dumps(report, indent=1) + "\n")
    path.with_suffix(".md").write_text(text)
    print(f"rewrote {path} and {path.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32 px only, batch 64, 3 timed batches, 0 workers unless --workers, print, write nothing")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], choices=list(SIZES))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="grain worker_count values (default 0 2; 0 with --quick)")
    parser.add_argument("--batch32", type=int, default=256)
    parser.add_argument("--batch224", type=int, default=64)
    parser.add_argument("--records32", type=int, default=2048)
    parser.add_argument("--records224", type=int, default=512)
    parser.add_argument("--batches32", type=int, default=10, help="timed batches per run at 32 px")
    parser.add_argument("--batches224", type=int, default=8, help="timed batches per run at 224 px")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches after the first")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="measure nothing: rebuild the summary rows, bullets and Markdown from a saved JSON")
    args = parser.parse_args(argv)
    if args.render:
        render(Path(args.render))
        return
    if args.workers is None:
        args.workers = [0] if args.quick else [0, 2]
    if args.quick:
        args.sizes, args.batch32, args.records32 = [32], 64, 256
        args.batches32, args.warmup, args.rounds = 3, 1, 1

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    run_start = time.perf_counter()
    diff = augment_bench.check_numpy_matches_jax()
    print(f"numpy colour ops match the JAX ops: max abs diff {diff:.2e}", flush=True)

    sources, sizes = {}, []
    for size in args.sizes:
        shape, preset = SIZES[size]
        count = args.records32 if size == 32 else args.records224
        t = time.perf_counter()
        sources[size] = make_records(count, shape, seed=args.seed + size)
        mean_bytes = float(np.mean([len(r["image"]) for r in sources[size]]))
        sizes.append({"size": size, "shape": list(shape), "records": count, "quality": 90, "mean_jpeg_bytes": mean_bytes})
        print(f"{size} px source: {count} x {shape[0]}x{shape[1]} JPEG, mean {mean_bytes / 1000:.1f} kB "
              f"({time.perf_counter() - t:.1f} s)", flush=True)

    device_fns, compile_s = {}, {}
    if "host_device" in args.paths:
        for size in args.sizes:
            cfg = augment.PRESETS[SIZES[size][1]](size)
            batch = args.batch32 if size == 32 else args.batch224
            device_fns[size], compile_s[size] = compile_device_augment({"image1": cfg, "image2": cfg}, batch, size)
            print(f"{size} px device_augment compiled in {compile_s[size]:.1f} s", flush=True)

    references = []
    for size in args.sizes:
        batch = args.batch32 if size == 32 else args.batch224
        references += reference(sources[size], size=size, preset=SIZES[size][1], batch=batch,
                                batches=4 if size == 32 else 2, seed=args.seed)
    for r in references:
        print(f"reference {r['size']:>3} px {r['what']}: {r['images_per_s']:,.1f} images/s, "
              f"{r['images_per_cpu_s']:,.1f} / CPU-s", flush=True)

    configs = [(size, path, w) for size in args.sizes for w in args.workers for path in args.paths]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    worker_error = None
    for rnd in range(args.rounds):
        for size, path, workers in (configs if rnd % 2 == 0 else configs[::-1]):
            if workers > 0 and worker_error:
                continue
            preset = SIZES[size][1]
            batch = args.batch32 if size == 32 else args.batch224
            batches = args.batches32 if size == 32 else args.batches224
            try:
                r = run_one(sources[size], size=size, preset=preset, batch=batch, path=path, workers=workers,
                            warmup=args.warmup, batches=batches, seed=args.seed + rnd, device_fn=device_fns.get(size))
            except Exception as e:  # noqa: BLE001  (worker processes may not work everywhere: report it)
                if workers == 0:
                    raise
                worker_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                print(f"  worker_count={workers} failed: {worker_error}", flush=True)
                continue
            runs[(size, path, workers)].append(r)
            print(f"round {rnd} {size:>3} px {path:<20} workers {workers}: {r['images_per_s']:8,.1f} images/s, "
                  f"{r['images_per_cpu_s']:8,.1f} / CPU-s, cores busy {r['cores_busy']:.2f}, "
                  f"waiting {100 * r['wait_on_loader_s'] / r['wall_s']:.0f}%, first batch {r['first_batch_s']:.1f} s, "
                  f"load1 {r['load1_at_start']:.2f}", flush=True)

    rows = [summarise(v) for v in runs.values() if v]
    worker_counts = [w for w in args.workers if any(r["workers"] == w for r in rows)]
    device = bench_common.device_description()
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    import PIL  # noqa: PLC0415

    report = {
        "device": device, "code": code_version(),
        "command": shlex.join(["python", "benchmarks/input_pipeline.py", *(sys.argv[1:] if argv is None else argv)]),
        "args": vars(args), "grain": getattr(grain, "__version__", "?"), "pillow": PIL.__version__,
        "psutil": psutil is not None,
        "numpy_vs_jax_max_abs_diff": diff, "sources": sizes, "compile_s": compile_s,
        "worker_error": worker_error, "rows": rows, "reference": references,
        "wall_s": time.perf_counter() - run_start,
        "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "load_average_1_5_15": {"before": load_before, "after": load_after},
    }
    report["conclusions"] = conclusions(rows, worker_counts, device["cpu_count"], references, sizes)
    text = markdown(report)
    print("\n" + text)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "input_pipeline_cpu.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "input_pipeline_cpu.md").write_text(text)
        print(f"wrote {out / 'input_pipeline_cpu.json'} and {out / 'input_pipeline_cpu.md'}")


if __name__ == "__main__":
    main()
