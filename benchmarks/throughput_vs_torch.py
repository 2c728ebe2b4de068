"""Training-step throughput on the CPU beside PyTorch: the same ResNet, batch and update.

The model is ResNet-18 v1.5 with the CIFAR stem (3x3 stride-1 stem, no max-pool) at 32 px,
``width`` channels in the first stage (16 by default, the issue's setting), float32.
One training step, on both sides:

* forward in training mode (BatchNorm with the batch's statistics, running averages updated),
* ``loss = mean(h ** 2)`` over the pooled features ``h: [batch, 8 * width]``,
* backward to every parameter,
* an SGD update with momentum 0.9 (``optax.sgd`` / ``torch.optim.SGD``, learning rate 0.01).

Ours is ``mmssl_jax.models.build_encoder("resnet18", cifar_stem=True, width=...)`` in one
``jax.jit`` with the parameters, BatchNorm statistics and optimizer state donated. The peer is
the same network written in torch (module names mirror ours, so the weights are copied across),
eager, with PyTorch's CPU defaults (oneDNN/mkldnn convolutions, ``torch.get_num_threads()``
threads), in the default NCHW layout and in ``channels_last``.

Each side is a persistent worker process: ours in this interpreter's environment (``--ours
NAME=XLA_FLAGS`` picks the XLA flags of each variant; XLA reads them once, at start-up), the
torch ones under ``--torch-python`` (a separate virtual environment: torch is not a dependency
of this package). Every worker is started and warmed up first; then ``--rounds`` rounds run
``--steps`` timed steps in each worker in turn, the order rotated every round, so that every
variant sees the same machine load (the point on a shared host). A worker waits idle, blocked
on its pipe, while another runs. Reported per variant: views/s = batch / median step time over
all rounds, the median of the per-round ratios ours / torch (each round's medians paired), and
views per CPU-second (the worker's CPU time, all threads, over the step), steadier than the
wall clock when other jobs share the cores.

Correctness check before any timing: every worker starts from the same weights (ours writes
them, the torch workers load them) and runs ``CHECK_STEPS`` steps on the same batch; their loss
trajectories must agree (relative 2e-3), which also checks the gradients and the update.

Usage:
  python benchmarks/throughput_vs_torch.py                    # writes benchmarks/results/throughput_vs_torch.*
  python benchmarks/throughput_vs_torch.py --quick            # 2 rounds of 1 step, prints only
  python benchmarks/throughput_vs_torch.py --ours default= --ours onednn=--xla_cpu_use_onednn=true
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECK_STEPS = 3
LR, MOMENTUM = 0.01, 0.9
# Our variants by default: XLA:CPU as installed, and with the flag the README suggests on CPU
# (elementwise fusions to YNNPACK: the BatchNorm/ReLU/residual chains are no longer recomputed
# inside the transposes that XLA:CPU puts before every weight-gradient convolution).
# And with the options python -m mmssl_jax.main adds (mmssl_jax.xla_cpu.CPU_FLAGS: convolutions
# left to XLA's own kernels, 2.4x the default's views/s on a 2-core AVX2 CPU).
DEFAULT_OURS = ("default=", "ynn_eltwise=--xla_cpu_experimental_ynn_fusion_type=+eltwise",
                "trainer=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,+eltwise")


# ---------------------------------------------------------------------------------------------
# Workers: one process each, driven over stdin/stdout by the orchestrator (``main``).
# ---------------------------------------------------------------------------------------------

def _serve(step, batch: int, profile=None) -> None:
    """Answer ``run N`` with N timed steps (wall and CPU seconds each), ``profile N`` with
    ``profile(N)``'s breakdown, ``quit`` by exiting."""
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            return
        n = int(cmd[1])
        if cmd[0] == "profile":
            print(json.dumps({"profile": profile(n) if profile else {}}), flush=True)
            continue
        wall, cpu = [], []
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            step()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


def _profile_breakdown(compiled, run_step, steps: int) -> dict:
    """Where one step's time goes, from a ``jax.profiler`` trace of ``steps`` steps: each XLA:CPU
    thunk's wall time, grouped by what its fusion computes (ms per step)."""
    import collections
    import glob
    import gzip
    import re

    import jax

    hlo = compiled.as_text()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                run_step()
        (path,) = glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True)
        trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    computations = {m.group(1): m.group(0) for m in re.finditer(r"\n(%[\w.\-]+) [^\n]*\{\n.*?\n\}", hlo, re.S)}
    fusions = dict(re.findall(r"\n\s+(?:ROOT )?%([\w.\-]+) = [^\n]*? fusion\([^\n]*?calls=(%[\w.\-]+)", hlo))
    totals = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name not in fusions and not re.match(r"(convolution|conv_general_dilated)", name):
            continue
        body = computations.get(fusions.get(name, ""), "")
        if not body:  # a convolution thunk of its own (XLA:CPU's Eigen path), not a fusion
            line = re.search(r"\n\s+(?:ROOT )?%" + re.escape(name) + r" = [^\n]*", hlo)
            body = line.group(0) if line else ""
        ops = set(re.findall(r"= \S+ ([a-z\-]+)\(", body)) - {"parameter", "constant", "broadcast", "bitcast"}
        library = "YNNPACK" if "ynn" in name else "XLA"
        if "convolution" in ops or "convolution(" in body:
            window = re.search(r"window=\{([^}]*)\}", body)
            kind = ("weight gradient" if window and re.search(r"size=(\d+)x", window.group(1))
                    and int(re.search(r"size=(\d+)x", window.group(1)).group(1)) > 3 else "forward / input gradient")
            group = f"convolution, {kind} ({library})"
        elif "transpose" in ops:
            group = ("transpose (+ recomputed elementwise producers)" if len(ops) > 2 else "transpose (plain copy)")
        elif "reduce" in ops:
            group = f"reductions: BatchNorm statistics, pooling ({library})"
        else:
            group = f"elementwise: BatchNorm, ReLU, residual, update ({library})"
        totals[group] += e.get("dur", 0) / 1e3 / steps
    return dict(totals.most_common())


def jax_worker(args) -> None:
    """Our step: ``mmssl_jax.models`` ResNet in one jit, state donated; writes the shared init."""
    sys.path.insert(0, str(REPO))
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from mmssl_jax.models import build_encoder

    dtype = jnp.dtype(args.dtype)
    model = build_encoder("resnet18", cifar_stem=True, width=args.width, dtype=dtype)
    x = jax.random.uniform(jax.random.key(1), (args.batch, 32, 32, 3), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    if args.init_out:  # the weights and batch every worker starts from, flattened by path
        flat = {"x": np.asarray(x)}
        for kind in ("params", "batch_stats"):
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables[kind])[0]:
                flat[kind + "/" + "/".join(p.key for p in path)] = np.asarray(leaf)
        np.savez(args.init_out, **flat)
    tx = optax.sgd(LR, momentum=MOMENTUM)
    state = {"params": variables["params"], "stats": variables["batch_stats"]}
    state["opt"] = tx.init(state["params"])

    def loss_fn(params, stats, x):
        h, updates = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(jnp.square(h.astype(jnp.float32))), updates["batch_stats"]

    def train_step(state, x):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["stats"], x)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "stats": stats, "opt": opt}, loss

    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, x).compile()
    compile_s = time.perf_counter() - start
    losses = []
    for _ in range(CHECK_STEPS):
        state, loss = compiled(state, x)
        losses.append(float(loss))

    def step():
        nonlocal state
        state, loss = compiled(state, x)
        jax.block_until_ready(loss)

    step()  # one more warm-up step
    print(json.dumps({"ready": True, "losses": losses, "compile_s": compile_s, "jax": jax.__version__,
                      "xla_flags": os.environ.get("XLA_FLAGS", ""), "threads": os.cpu_count()}), flush=True)
    _serve(step, args.batch, lambda n: _profile_breakdown(compiled, step, n))


def torch_resnet18_cifar(width: int):
    """ResNet-18 v1.5 with the CIFAR stem, as ``mmssl_jax.models.resnet.ResNet``: explicit symmetric
    padding, no biases in convolutions, BatchNorm eps 1e-5 and momentum 0.1 (our decay 0.9)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.proj = stride != 1 or cin != cout
            if self.proj:
                self.proj_conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
                self.proj_bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if self.proj:
                x = self.proj_bn(self.proj_conv(x))
            return torch.relu(x + y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem_conv = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.stem_bn = nn.BatchNorm2d(width)
            cin = width
            for stage in range(4):
                for i in range(2):
                    cout = width * 2**stage
                    setattr(self, f"stage{stage + 1}_block{i + 1}", Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                    cin = cout

        def forward(self, x):
            x = torch.relu(self.stem_bn(self.stem_conv(x)))
            for stage in range(4):
                for i in range(2):
                    x = getattr(self, f"stage{stage + 1}_block{i + 1}")(x)
            return x.mean(dim=(2, 3))

    return Net()


def torch_worker(args) -> None:
    """The peer's step: the same network in eager PyTorch, started from our weights."""
    import numpy as np
    import torch

    init = np.load(args.init_in)
    net = torch_resnet18_cifar(args.width)
    state = net.state_dict()
    loaded = set()
    for key in init.files:
        if key == "x":
            continue
        kind, *path, leaf = key.split("/")
        value = init[key]
        name = ".".join(path) + "." + {"kernel": "weight", "scale": "weight", "bias": "bias",
                                       "mean": "running_mean", "var": "running_var"}[leaf]
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        if tuple(state[name].shape) != value.shape:
            raise ValueError(f"{name}: torch shape {tuple(state[name].shape)} != ours {value.shape}")
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
        loaded.add(name)
    missing = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"torch parameters with no counterpart in ours: {missing}")
    net.load_state_dict(state)
    x = torch.from_numpy(np.ascontiguousarray(init["x"].transpose(0, 3, 1, 2)))  # NHWC -> NCHW
    if args.layout == "channels_last":
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = net(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    losses = [float(train_step().detach()) for _ in range(CHECK_STEPS)]
    train_step()
    print(json.dumps({"ready": True, "losses": losses, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.is_available()}),
          flush=True)
    _serve(train_step, args.batch)


# ---------------------------------------------------------------------------------------------
# Orchestrator.
# ---------------------------------------------------------------------------------------------

class Worker:
    def __init__(self, name: str, cmd: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, cwd=REPO)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited with {self.proc.wait()} (its stderr is above)")
        return json.loads(line)

    def run(self, steps: int, what: str = "run") -> dict:
        self.proc.stdin.write(f"{what} {steps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def machine() -> dict:
    flags = ""
    model = platform.processor()
    if Path("/proc/cpuinfo").exists():
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and model == platform.processor():
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1]
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile") if f in flags.split()]
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "isa": isa, "python": platform.python_version(),
            "load_average": list(os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="nchw", help=argparse.SUPPRESS)
    parser.add_argument("--init-out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--init-in", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage (64: the paper's ResNet-18)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; every variant runs --steps steps per round")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--ours", action="append", metavar="NAME=XLA_FLAGS",
                        help=f"one of our variants and its XLA_FLAGS (repeatable; default {list(DEFAULT_OURS)})")
    parser.add_argument("--torch-python", default="/work/torchvenv/bin/python",
                        help="a Python with torch installed (not this package's environment)")
    parser.add_argument("--torch-layouts", default="nchw,channels_last")
    parser.add_argument("--profile-steps", type=int, default=2,
                        help="after the rounds, profile this many steps of each of ours (0: no profile)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 step, print only")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "throughput_vs_torch"))
    args = parser.parse_args()
    if args.worker == "jax":
        return jax_worker(args)
    if args.worker == "torch":
        return torch_worker(args)
    run(args)


def run(args) -> None:
    if args.quick:
        args.rounds, args.steps = 2, 1
    ours = []
    for spec in args.ours or DEFAULT_OURS:
        name, sep, flags = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--ours takes NAME=XLA_FLAGS (flags may be empty), got {spec!r}")
        ours.append((name, flags))
    layouts = [s for s in args.torch_layouts.split(",") if s]
    bad = sorted(set(layouts) - {"nchw", "channels_last"})
    if bad:
        raise SystemExit(f"--torch-layouts: unknown {bad}; known: nchw, channels_last")
    if layouts and not Path(args.torch_python).exists():
        raise SystemExit(f"--torch-python {args.torch_python} does not exist (a Python with torch, e.g. a venv)")

    before = machine()
    common = ["--batch", str(args.batch), "--width", str(args.width)]
    base_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workers: list[Worker] = []
    started = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            init = os.path.join(tmp, "init.npz")
            for i, (name, flags) in enumerate(ours):
                print(f"starting ours:{name} (XLA_FLAGS={flags!r}) ...", flush=True)
                cmd = [sys.executable, __file__, "--worker", "jax", *common]
                if name.endswith("bf16"):
                    cmd += ["--dtype", "bfloat16"]
                workers.append(Worker(f"ours:{name}", cmd + (["--init-out", init] if i == 0 else []),
                                      {**base_env, "XLA_FLAGS": flags}))
            for layout in layouts:
                print(f"starting torch:{layout} ...", flush=True)
                cmd = [args.torch_python, __file__, "--worker", "torch", "--layout", layout, "--init-in", init, *common]
                workers.append(Worker(f"torch:{layout}", cmd, base_env))

            reference = workers[0].info["losses"]
            for w in workers:
                if "bf16" in w.name:
                    continue
                rel = max(abs(a - b) / abs(b) for a, b in zip(w.info["losses"], reference))
                w.info["loss_rel_diff"] = rel
                print(f"  {w.name}: losses {['%.6f' % l for l in w.info['losses']]} (rel. diff {rel:.1e})")
                if rel > 2e-3:
                    raise SystemExit(f"{w.name}'s losses {w.info['losses']} differ from {workers[0].name}'s "
                                     f"{reference}: not the same network or update; no timing")

            times = {w.name: [] for w in workers}
            for r in range(args.rounds):
                order = workers[r % len(workers):] + workers[:r % len(workers)]
                for w in order:
                    time.sleep(0.3)  # let the previous worker's threads go idle
                    out = w.run(args.steps)
                    times[w.name].append(out)
                line = "  ".join(f"{w.name} {args.batch / statistics.median(times[w.name][-1]['wall']):.0f}" for w in workers)
                print(f"round {r + 1}/{args.rounds} views/s: {line}", flush=True)
            for w in workers:
                if w.name.startswith("ours:") and args.profile_steps and not args.quick:
                    print(f"profiling {w.name} ...", flush=True)
                    w.info["profile_ms_per_step"] = w.run(args.profile_steps, "profile")["profile"]
    finally:
        for w in workers:
            try:
                w.close()
            except Exception:  # noqa: BLE001 - a worker already gone must not hide the error
                w.proc.kill()
    report = summarize(args, ours, workers, times, before, machine(), time.time() - started)
    print("\n" + report["markdown"])
    if not args.quick:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        md = report.pop("markdown")
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        out.with_suffix(".md").write_text(md)
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def summarize(args, ours, workers, times, before, after, elapsed) -> dict:
    batch = args.batch
    rows = {}
    for w in workers:
        rounds = times[w.name]
        wall = [t for r in rounds for t in r["wall"]]
        cpu = [t for r in rounds for t in r["cpu"]]
        rows[w.name] = {
            "views_per_s": batch / statistics.median(wall),
            "views_per_s_best": batch / min(wall),
            "step_s_median": statistics.median(wall),
            "round_medians_s": [statistics.median(r["wall"]) for r in rounds],
            "views_per_cpu_s": batch / statistics.median(cpu),
            "cores_busy": statistics.median(cpu) / statistics.median(wall),
            "info": w.info,
        }
    peers = [n for n in rows if n.startswith("torch:")]
    for name in rows:
        if not name.startswith("ours:"):
            continue
        for peer in peers:
            paired = [p / o for o, p in zip(rows[name]["round_medians_s"], rows[peer]["round_medians_s"])]
            rows[name][f"ratio_vs_{peer}"] = {
                "paired_median": statistics.median(paired), "paired_min": min(paired), "paired_max": max(paired),
                "per_cpu_s": rows[name]["views_per_cpu_s"] / rows[peer]["views_per_cpu_s"],
            }
    report = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith(("worker", "init", "layout"))},
        "ours": [{"name": n, "xla_flags": f} for n, f in ours], "machine_before": before, "machine_after": after,
        "elapsed_s": elapsed, "rows": rows,
    }
    report["markdown"] = markdown(args, report)
    return report


def markdown(args, report) -> str:
    rows, m = report["rows"], report["machine_before"]
    ours_info = next(r["info"] for n, r in rows.items() if n.startswith("ours:"))
    torch_info = next((r["info"] for n, r in rows.items() if n.startswith("torch:")), {})
    lines = [
        "# Training-step throughput beside PyTorch (CPU)",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores visible (ISA: {', '.join(m['isa'])}); "
        f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in m['load_average'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in report['machine_after']['load_average'])} after: "
        + ("**the machine was shared with other jobs**, so absolute views/s are low and noisy; the paired "
           "ratios (same round, same load) are the result. " if m["load_average"][0] > 0.5 * m["cpu_count"] else
           "idle when it started (the load after is the benchmark's own). ")
        + 
        f"Python {m['python']}, jax {ours_info.get('jax')}, torch {torch_info.get('torch', 'n/a')} "
        f"({torch_info.get('threads', '?')} intra-op threads, mkldnn {torch_info.get('mkldnn', '?')}).",
        "",
        f"Command: `python benchmarks/throughput_vs_torch.py {' '.join(sys.argv[1:])}` "
        f"({report['elapsed_s'] / 60:.1f} min). Model: ResNet-18 v1.5, CIFAR stem, width {args.width}, "
        f"32 px, batch {args.batch}, float32 unless the name says bf16. Step: forward (BatchNorm in training "
        "mode) + `mean(h**2)` + backward + SGD with momentum 0.9, on both sides; the losses of the first "
        f"{CHECK_STEPS} steps from the same weights agree (column `loss rel. diff`). {args.rounds} rounds x "
        f"{args.steps} steps per variant, variants interleaved, order rotated each round.",
        "",
        "| variant | XLA_FLAGS | views/s (median) | best | views / CPU-s | cores busy | loss rel. diff |"
        + "".join(f" ours / {p} (paired median [min-max]) |" for p in rows if p.startswith("torch:")),
        "|---|---|---:|---:|---:|---:|---:|" + "---|" * sum(p.startswith("torch:") for p in rows),
    ]
    for name, r in rows.items():
        flags = r["info"].get("xla_flags", "")
        rel = r["info"].get("loss_rel_diff")
        cells = [name, f"`{flags}`" if flags else ("(none)" if name.startswith("ours:") else "-"),
                 f"{r['views_per_s']:.0f}", f"{r['views_per_s_best']:.0f}", f"{r['views_per_cpu_s']:.0f}",
                 f"{r['cores_busy']:.2f}", "-" if rel is None else f"{rel:.0e}"]
        for p in rows:
            if not p.startswith("torch:"):
                continue
            ratio = r.get(f"ratio_vs_{p}")
            cells.append(f"{ratio['paired_median']:.2f}x [{ratio['paired_min']:.2f}-{ratio['paired_max']:.2f}]"
                         if ratio else "-")
        lines.append("| " + " | ".join(cells) + " |")
    profiles = {n: r["info"]["profile_ms_per_step"] for n, r in rows.items() if r["info"].get("profile_ms_per_step")}
    if profiles:
        groups = list(dict.fromkeys(g for p in profiles.values() for g in p))
        lines += [
            "",
            "## Where our step's time goes",
            "",
            f"A `jax.profiler` trace of {args.profile_steps} steps per variant after the rounds: each XLA:CPU "
            "thunk's wall time, grouped by what its fusion computes, in ms per step (threads overlap "
            "little on 2 cores; the machine load differs from the rounds'). `transpose (+ recomputed "
            "elementwise producers)` are the copies XLA:CPU makes of each weight-gradient "
            "convolution's input into batch-minor order, with the BatchNorm/ReLU/residual chain that "
            "produced that input recomputed inside the transposing loop.",
            "",
            "| part | " + " | ".join(profiles) + " |",
            "|---|" + "---:|" * len(profiles),
        ]
        for g in groups:
            lines.append(f"| {g} | " + " | ".join(f"{p.get(g, 0):.0f}" for p in profiles.values()) + " |")
        lines.append("| **sum** | " + " | ".join(f"**{sum(p.values()):.0f}**" for p in profiles.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
