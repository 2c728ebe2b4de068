"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder
is on ``sys.path``)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_config(name: str, arg: str | None = None):
    """``configs/<name>.py``'s ``get_config(arg)``, loaded from its file as ``main.py`` would."""
    spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def write_report(out: str | Path, stem: str, report: dict, markdown: Callable[[dict], str],
                 plot: Callable[[dict, Path], None]) -> None:
    """``<out>/<stem>.{json,md,png}`` of an experiment's report; prints the Markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / stem
    path.with_suffix(".json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    path.with_suffix(".md").write_text(text)
    plot(report, path.with_suffix(".png"))
    print(text)


def device_description() -> dict:
    # Imported here: the experiment scripts import this module before TensorFlow and JAX are set up.
    import flax
    import jax
    import optax

    device = jax.devices()[0]
    cpu_model = ""
    if Path("/proc/cpuinfo").exists():
        match = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu_model = match.group(1).strip() if match else ""
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


def machine_line() -> str:
    """``"<device kind>, <n> device(s), <host>[, XLA_FLAGS=...]"`` for a report's Machine line (the
    flags change CPU speed, so a time without them is not comparable)."""
    import jax

    line = f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s), {platform.node()}"
    return line + (f", XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else "")


def code_version(repo: Path, paths: tuple[str, ...]) -> dict:
    """The commit measured and which of ``paths`` (the measured code) differ from it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None

    head = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--", *paths)
    return {"commit": head.strip() if head else None,
            "uncommitted": [line[3:] for line in status.splitlines()] if status else []}
