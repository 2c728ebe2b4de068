"""Loss + gradient time and peak memory against the global batch.

Three implementations of the same math, side by side in one script, on the same machine:

* ``jax``: the plain call (``axis_name=None``) on one device, jitted ``value_and_grad``;
* ``jax_shard_map``: the ``axis_name`` path inside ``jax.shard_map`` over N simulated CPU
  devices (``--xla_force_host_platform_device_count``), the way a pod runs it;
* ``torch``: a PyTorch CPU peer written the usual way (full similarity matrix + cross-entropy,
  autograd backward), if torch is installed (``pip install torch==2.13.0``; benchmark-only);
* ``jax_chunked`` / ``jax_ring`` (``--chunked``): the same two JAX calls with ``chunk_size=``,
  streamed in tiles (and, under ``shard_map``, around the device ring instead of an all_gather).

Each (implementation, loss, batch) runs in its own subprocess so peak memory is clean:
``peak_rss`` is the child's peak resident set growth over its baseline (all simulated devices
together), and for JAX ``xla_per_device`` is XLA's planned per-device footprint (temporaries +
arguments + outputs, from ``compiled.memory_analysis()``), which is the number that tells
O(global^2) from O(local x global). Times are the median of ``--reps`` runs after a warm-up.
On a CPU host the simulated devices share the same cores, so the shard_map column measures
the cost of the sharded program's structure, not a speed-up.

``--chunked`` writes ``losses_chunked.{json,md,png}``: the time of the chunked calls against the
plain ones at sizes that run here, and a compile-only memory plan (abstract inputs, nothing
allocated) of the per-device footprint of the gather path against the ring path for global
batches of 32k to 1M over 8 to 256 simulated devices.

Usage:
  python benchmarks/losses.py --quick            # a minute: small batches, prints the table
  python benchmarks/losses.py                    # full sweep 1k..32k, writes benchmarks/results/
  python benchmarks/losses.py --chunked          # chunk_size: time + memory plan (~10 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOSSES = ("nt_xent", "clip", "siglip")
IMPLS = ("jax", "jax_shard_map", "torch")
CHUNKED_IMPLS = ("jax", "jax_chunked", "jax_shard_map", "jax_ring")
PLAN_DEVICES = (8, 16, 32, 64, 128, 256)
PLAN_BATCHES = (32768, 65536, 131072, 262144, 524288, 1048576)


# ----------------------------------------------------------------------------- child side


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _time(fn, reps: int) -> tuple[float, float, float]:
    """(first call incl. compile, median of reps, fastest of reps) in seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return first, times[len(times) // 2], times[0]


def _run_jax(loss: str, batch: int, dim: int, reps: int, devices: int, compile_only: bool = False,
             chunk_size: int | None = None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, str(REPO))
    from mmssl_jax import losses, sharding

    call = _loss_calls(chunk_size)[loss]
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(batch, dim)).astype(np.float32)
    z2 = rng.normal(size=(batch, dim)).astype(np.float32)
    if compile_only:  # abstract inputs: XLA plans the memory without allocating any
        z1 = z2 = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    if devices == 1:
        fn = jax.jit(jax.value_and_grad(lambda a, b: call(a, b, None), argnums=(0, 1)))
        args = (z1, z2) if compile_only else (jnp.asarray(z1), jnp.asarray(z2))
    else:
        if batch % devices:
            raise ValueError(f"batch {batch} does not split over {devices} devices")
        mesh = sharding.make_mesh(jax.devices()[:devices])
        axis = sharding.DATA_AXIS
        per_device = jax.value_and_grad(lambda a, b: call(a, b, axis), argnums=(0, 1))
        fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis), P(axis)), out_specs=(P(), (P(axis), P(axis)))))
        place = sharding.batch_sharding(mesh)
        if compile_only:
            args = tuple(jax.ShapeDtypeStruct(z.shape, z.dtype, sharding=place) for z in (z1, z2))
        else:
            args = tuple(jax.device_put(z, place) for z in (z1, z2))
    compiled = fn.lower(*args).compile()
    analysis = compiled.memory_analysis()
    xla_bytes = None
    if analysis is not None:
        xla_bytes = int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes)
    if compile_only:
        return {"xla_per_device_bytes": xla_bytes, "device": f"{jax.devices()[0].device_kind} x{devices}"}
    baseline = _rss_bytes()
    first, median, best = _time(lambda: jax.block_until_ready(compiled(*args)), reps)
    value = float(compiled(*args)[0])
    return {
        "seconds": median,
        "min_seconds": best,
        "first_call_seconds": first,
        "peak_rss_bytes": max(0, _peak_rss_bytes() - baseline),
        "xla_per_device_bytes": xla_bytes,
        "value": value,
        "device": f"{jax.devices()[0].device_kind} x{devices}",
    }


def _loss_calls(chunk_size: int | None) -> dict:
    import jax.numpy as jnp

    from mmssl_jax import losses

    kw = {} if chunk_size is None else {"chunk_size": chunk_size}  # the default path passes nothing
    return {
        "nt_xent": lambda a, b, ax: losses.nt_xent(a, b, temperature=0.1, axis_name=ax, **kw),
        "clip": lambda a, b, ax: losses.clip(a, b, logit_scale=jnp.log(1 / 0.07), axis_name=ax, **kw),
        "siglip": lambda a, b, ax: losses.siglip(a, b, logit_scale=jnp.log(10.0), logit_bias=-10.0, axis_name=ax, **kw),
    }


def _plan_memory(spec: dict) -> dict:
    """Per-device XLA memory of loss + gradient under shard_map, compiled only, for every
    (loss, global batch, path) of ``spec`` on ``spec["devices"]`` simulated devices."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, str(REPO))
    from mmssl_jax import sharding

    devices, dim = spec["devices"], spec["dim"]
    mesh = sharding.make_mesh(jax.devices()[:devices])
    axis = sharding.DATA_AXIS
    rows = []
    for loss in spec["losses"]:
        for batch in spec["batches"]:
            for path, chunk in (("gather", None), ("ring", spec["chunk_size"])):
                call = _loss_calls(chunk)[loss]
                per_device = jax.value_and_grad(lambda a, b: call(a, b, axis), argnums=(0, 1))
                fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(axis), P(axis)),
                                           out_specs=(P(), (P(axis), P(axis)))))
                z = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharding.batch_sharding(mesh))
                start = time.perf_counter()
                analysis = fn.lower(z, z).compile().memory_analysis()
                parts = {k: int(getattr(analysis, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output")}
                rows.append({"loss": loss, "devices": devices, "batch": batch, "local": batch // devices,
                             "dim": dim, "path": path, "chunk_size": chunk,
                             "xla_per_device_bytes": sum(parts.values()), **{f"{k}_bytes": v for k, v in parts.items()},
                             "compile_seconds": time.perf_counter() - start})
                print(f"{loss} {devices} {batch} {path} {_fmt_bytes(rows[-1]['xla_per_device_bytes'])}",
                      file=sys.stderr, flush=True)
    return {"plan": rows}


def _run_torch(loss: str, batch: int, dim: int, reps: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    def nt_xent(a, b):
        z = F.normalize(torch.cat([a, b]), dim=1)
        logits = z @ z.T / 0.1
        logits.fill_diagonal_(float("-inf"))
        n = a.shape[0]
        labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(logits, labels)

    def clip(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        logits = (1 / 0.07) * a @ b.T
        labels = torch.arange(a.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def siglip(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        logits = 10.0 * a @ b.T - 10.0
        labels = 2 * torch.eye(a.shape[0]) - 1
        return -F.logsigmoid(labels * logits).sum() / a.shape[0]

    call = {"nt_xent": nt_xent, "clip": clip, "siglip": siglip}[loss]
    rng = np.random.default_rng(0)
    z1 = torch.from_numpy(rng.normal(size=(batch, dim)).astype(np.float32)).requires_grad_()
    z2 = torch.from_numpy(rng.normal(size=(batch, dim)).astype(np.float32)).requires_grad_()

    def step():
        z1.grad = z2.grad = None
        value = call(z1, z2)
        value.backward()
        return value

    baseline = _rss_bytes()
    first, median, best = _time(step, reps)
    return {
        "seconds": median,
        "min_seconds": best,
        "first_call_seconds": first,
        "peak_rss_bytes": max(0, _peak_rss_bytes() - baseline),
        "xla_per_device_bytes": None,
        "value": float(step()),
        "device": f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads",
    }


def _child(spec: dict) -> None:
    if spec["impl"] == "plan":
        result = _plan_memory(spec)
    elif spec["impl"] == "torch":
        result = _run_torch(spec["loss"], spec["batch"], spec["dim"], spec["reps"])
    else:
        result = _run_jax(spec["loss"], spec["batch"], spec["dim"], spec["reps"], spec["devices"],
                          spec.get("compile_only", False), spec.get("chunk_size"))
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------- parent side


def _estimated_bytes(impl: str, loss: str, batch: int, devices: int) -> int:
    """Rough peak of the similarity blocks (logits, softmax, gradient, mask): 4 float32 copies."""
    views = 2 if loss == "nt_xent" else 1
    rows = views * batch
    cols = views * batch
    copies = 4 if loss != "clip" else 6  # clip holds both directions
    # Every simulated device lives in this one process, so the host total is the same
    # O(global^2) whether it is split over devices or not; per device it is 1/devices of it.
    del impl, devices
    return copies * 4 * rows * cols


def _run_child(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    if spec["impl"] in ("jax_shard_map", "jax_ring", "plan"):
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={spec['devices']}"
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _markdown(results: list[dict], devices: int, machine: str) -> str:
    lines = [
        f"Machine: {machine}. Loss + gradient (jitted `value_and_grad`), dim {results[0]['dim'] if results else '-'}, "
        f"median of repeats. `jax_shard_map` runs the `axis_name` path over {devices} simulated CPU devices "
        "sharing the same cores. Ratios are against `jax` (the plain call) in the same row; "
        "> 1 means slower / more memory than the plain JAX call.",
        "",
        "| loss | global batch | impl | time (s) | time ratio | peak RSS growth | RSS ratio | XLA per device |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["loss"], r["batch"], r["impl"]): r for r in results}
    for r in results:
        base = by_key.get((r["loss"], r["batch"], "jax"), {})
        if "error" in r or "skipped" in r:
            why = r.get("error") or r.get("skipped")
            planned = _fmt_bytes(r.get("xla_per_device_bytes"))
            lines.append(f"| {r['loss']} | {r['batch']:,} | {r['impl']} | {why} | | | | {planned} |")
            continue
        t_ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base.get("seconds") else "-"
        m_ratio = (
            f"{r['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}x"
            if base.get("peak_rss_bytes") else "-"
        )
        lines.append(
            f"| {r['loss']} | {r['batch']:,} | {r['impl']} | {r['seconds']:.4f} | {t_ratio} | "
            f"{_fmt_bytes(r['peak_rss_bytes'])} | {m_ratio} | {_fmt_bytes(r['xla_per_device_bytes'])} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: list[dict], path: Path) -> bool:
    """Time and XLA per-device memory against the global batch, one column per loss."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib).")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["loss"] for r in results}, key=list(LOSSES).index)
    fig, axes = plt.subplots(2, len(names), figsize=(4.5 * len(names), 7), squeeze=False)
    for col, loss in enumerate(names):
        for impl, style in zip(IMPLS, ("o-", "s--", "^:")):
            rows = [r for r in results if r["loss"] == loss and r["impl"] == impl]
            timed = [(r["batch"], r["seconds"]) for r in rows if r.get("seconds")]
            planned = [(r["batch"], r["xla_per_device_bytes"] / 2**20) for r in rows if r.get("xla_per_device_bytes")]
            if timed:
                axes[0, col].plot(*zip(*timed), style, label=impl)
            if planned:
                axes[1, col].plot(*zip(*planned), style, label=impl)
        axes[0, col].set_title(f"{loss}: loss + gradient")
        axes[0, col].set_ylabel("seconds (CPU)")
        axes[1, col].set_ylabel("XLA memory per device (MiB)")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("global batch")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _chunked_markdown(report: dict) -> str:
    plan, timed = report["plan"], report["timing"]
    chunk = report["args"]["chunk_size"]
    mem = {(r["loss"], r["devices"], r["batch"], r["path"]): r["xla_per_device_bytes"] for r in plan}
    lines = [
        f"Machine: {report['machine']}; load average {report['load_average_before']} before, "
        f"{report['load_average_after']} after (1, 5, 15 min; the 2 cores are shared). "
        f"Commit {report['code']['commit']}"
        + (f" + uncommitted {report['code']['uncommitted']}" if report["code"]["uncommitted"] else "") + ".",
        "",
        f"## Per-device memory, loss + gradient (compile-only plan, dim {report['args']['plan_dim']}, float32)",
        "",
        "XLA's `compiled.memory_analysis()` of the jitted `shard_map` of `value_and_grad` over N simulated "
        "CPU devices (temporaries + arguments + outputs: the embeddings and their gradients included), "
        "from abstract `jax.ShapeDtypeStruct` inputs, so nothing is allocated. `gather`: `axis_name` "
        f"(local x global logits); `ring`: `axis_name` + `chunk_size={chunk}` (tiles of at most "
        f"{chunk} x {chunk} logits, column blocks by `ppermute`).",
        "",
    ]
    goals = [(256, 2**30), (8, 2 * 2**30)]
    for devices, budget in goals:
        got = mem.get(("clip", devices, 1048576, "ring"))
        if got is not None:
            verdict = "met" if got <= budget else "NOT met"
            lines.append(f"- Goal: CLIP at a global batch of 1,048,576 over {devices} devices within "
                         f"{_fmt_bytes(budget)} per device: ring plans {_fmt_bytes(got)} ({verdict}); the gather "
                         f"path plans {_fmt_bytes(mem.get(('clip', devices, 1048576, 'gather')))}.")
    lines += ["", "| loss | devices | global batch | local batch | gather | ring | gather / ring |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in plan:
        if r["path"] != "ring":
            continue
        gather = mem.get((r["loss"], r["devices"], r["batch"], "gather"))
        ratio = f"{gather / r['xla_per_device_bytes']:,.0f}x" if gather else "-"
        lines.append(f"| {r['loss']} | {r['devices']} | {r['batch']:,} | {r['local']:,} | {_fmt_bytes(gather)} | "
                     f"{_fmt_bytes(r['xla_per_device_bytes'])} | {ratio} |")
    lines += ["", f"## Time, loss + gradient (median of {report['args']['reps']}, dim {report['args']['dim']}, "
              f"chunk_size {chunk})", "",
              "`jax` / `jax_chunked`: one device, `axis_name=None`; `jax_shard_map` / `jax_ring`: `axis_name` over "
              f"{report['args']['devices']} simulated devices on the same 2 cores. Ratio: chunked over its "
              "unchunked counterpart (<= 1.3 is the goal; < 1 is faster).", "",
              "Times are medians; the ratio is given for the medians and (in brackets) for the fastest "
              "repeat of each, which other jobs on the shared cores disturb least.", "",
              "| loss | global batch | jax (s) | jax_chunked (s) | ratio (fastest) | jax_shard_map (s) | jax_ring (s) | ratio (fastest) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["loss"], r["batch"], r["impl"]): r for r in timed}
    for loss, batch in dict.fromkeys((r["loss"], r["batch"]) for r in timed):
        cells = []
        for plain, chunked in (("jax", "jax_chunked"), ("jax_shard_map", "jax_ring")):
            a, b = by.get((loss, batch, plain), {}), by.get((loss, batch, chunked), {})
            ta, tb = a.get("seconds"), b.get("seconds")
            fastest = f" ({b['min_seconds'] / a['min_seconds']:.2f}x)" if ta and tb else ""
            cells += [f"{ta:.4f}" if ta else a.get("error", "-"), f"{tb:.4f}" if tb else b.get("error", "-"),
                      f"{tb / ta:.2f}x{fastest}" if ta and tb else "-"]
        lines.append(f"| {loss} | {batch:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _chunked_plot(plan: list[dict], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib).")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [loss for loss in LOSSES if any(r["loss"] == loss for r in plan)]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.8), squeeze=False)
    device_counts = sorted({r["devices"] for r in plan})
    colours = plt.cm.viridis([i / max(1, len(device_counts) - 1) for i in range(len(device_counts))])
    for ax, loss in zip(axes[0], names):
        for devices, colour in zip(device_counts, colours):
            for p, style in (("gather", "--"), ("ring", "-")):
                pts = [(r["batch"], r["xla_per_device_bytes"] / 2**30) for r in plan
                       if r["loss"] == loss and r["devices"] == devices and r["path"] == p]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", ms=3, color=colour, label=f"{p}, {devices} dev")
        for budget in (1, 2):
            ax.axhline(budget, color="red", lw=0.8, ls=":")
        ax.set_title(f"{loss}: loss + gradient, per device")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("global batch")
        ax.set_ylabel("XLA planned memory per device (GiB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("gather (dashed: axis_name) vs ring (solid: axis_name + chunk_size); dotted: 1 and 2 GiB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _chunked_main(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import code_version

    out = Path(args.out or (REPO / "benchmarks/results"))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    load_before = [round(x, 2) for x in os.getloadavg()]
    timing = []
    for loss in args.losses.split(","):
        for batch in (int(b) for b in args.chunked_batches.split(",")):
            for impl in CHUNKED_IMPLS:
                spec = {"impl": impl, "loss": loss, "batch": batch, "dim": args.dim, "reps": args.reps,
                        "devices": args.devices if impl in ("jax_shard_map", "jax_ring") else 1,
                        "chunk_size": args.chunk_size if impl in ("jax_chunked", "jax_ring") else None}
                result = _run_child(spec, args.timeout)
                timing.append({**spec, **result})
                shown = result.get("error") or f"{result['seconds']:.4f} s, loss {result['value']:.4f}"
                print(f"{loss:8s} batch {batch:6d} {impl:14s} {shown}", flush=True)
    plan = []
    for devices in (int(d) for d in args.plan_devices.split(",")):
        names = args.losses.split(",") if devices in (min(PLAN_DEVICES), max(PLAN_DEVICES)) else ["clip"]
        spec = {"impl": "plan", "devices": devices, "dim": args.plan_dim, "chunk_size": args.chunk_size,
                "losses": names, "batches": [int(b) for b in args.plan_batches.split(",")]}
        result = _run_child(spec, args.timeout)
        if "error" in result:
            print(f"plan over {devices} devices: {result['error']}")
        plan += result.get("plan", [])
    report = {"machine": machine, "load_average_before": load_before,
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "code": code_version(REPO, ("mmssl_jax/losses.py", "mmssl_jax/streaming.py", "mmssl_jax/sharding.py")),
              "args": vars(args), "timing": timing, "plan": plan}
    table = _chunked_markdown(report)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "losses_chunked.json").write_text(json.dumps(report, indent=1))
    (out / "losses_chunked.md").write_text(table)
    print(f"wrote {out / 'losses_chunked.json'} and {out / 'losses_chunked.md'}")
    if _chunked_plot(plan, out / "losses_chunked.png"):
        print(f"wrote {out / 'losses_chunked.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small batches, two losses, about a minute")
    parser.add_argument("--batches", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--devices", type=int, default=8, help="simulated devices for jax_shard_map")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--memory-budget-gb", type=float, default=12.0,
                        help="skip a configuration whose estimated host memory exceeds this")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument("--out", default=None,
                        help="folder for JSON + Markdown (default: benchmarks/results, or runs/benchmarks with --quick)")
    parser.add_argument("--plot-only", metavar="JSON", help="redraw the plot from a results JSON and exit")
    parser.add_argument("--chunked", action="store_true",
                        help="chunk_size: time against the plain calls + per-device memory plan (losses_chunked.*)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="chunk_size for --chunked")
    parser.add_argument("--chunked-batches", default="1024,2048,4096,8192", help="timed global batches for --chunked")
    parser.add_argument("--plan-batches", default=",".join(map(str, PLAN_BATCHES)))
    parser.add_argument("--plan-devices", default=",".join(map(str, PLAN_DEVICES)))
    parser.add_argument("--plan-dim", type=int, default=128, help="embedding dim of the memory plan")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return
    if args.chunked:
        _chunked_main(args)
        return
    if args.plot_only:
        source = Path(args.plot_only)
        if _plot(json.loads(source.read_text())["results"], source.with_suffix(".png")):
            print(f"wrote {source.with_suffix('.png')}")
        return

    if args.quick:
        args.batches, args.losses, args.reps = "256,1024", "nt_xent,clip", 2
    out = Path(args.out or (REPO / ("runs/benchmarks" if args.quick else "benchmarks/results")))
    impls = [i for i in args.impls.split(",") if i]
    if "torch" in impls:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed: skipping the PyTorch peer (pip install torch==2.13.0).")
            impls.remove("torch")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    budget = args.memory_budget_gb * 2**30
    results = []
    for loss in args.losses.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for impl in impls:
                spec = {"impl": impl, "loss": loss, "batch": batch, "dim": args.dim,
                        "reps": args.reps, "devices": args.devices if impl == "jax_shard_map" else 1}
                estimate = _estimated_bytes(impl, loss, batch, spec["devices"])
                if estimate > budget:
                    result = {"skipped": f"not run: est. {_fmt_bytes(estimate)} on the host > {args.memory_budget_gb:g} GiB"}
                    if impl != "torch":  # XLA can still plan its per-device memory
                        planned = _run_child({**spec, "compile_only": True}, args.timeout)
                        result["xla_per_device_bytes"] = planned.get("xla_per_device_bytes")
                else:
                    result = _run_child(spec, args.timeout)
                row = {**spec, **result}
                results.append(row)
                shown = result.get("error") or result.get("skipped", "") + (
                    f" (XLA/device {_fmt_bytes(result.get('xla_per_device_bytes'))})" if "skipped" in result else "") or (
                    f"{result['seconds']:.4f} s, peak RSS +{_fmt_bytes(result['peak_rss_bytes'])}, "
                    f"XLA/device {_fmt_bytes(result['xla_per_device_bytes'])}, loss {result['value']:.4f}")
                print(f"{loss:8s} batch {batch:6d} {impl:14s} {shown}", flush=True)

    table = _markdown(results, args.devices, machine)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    stem = "losses_quick" if args.quick else "losses"
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=1))
    (out / f"{stem}.md").write_text(table)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    if not args.quick and _plot(results, out / f"{stem}.png"):
        print(f"wrote {out / (stem + '.png')}")


if __name__ == "__main__":
    main()
