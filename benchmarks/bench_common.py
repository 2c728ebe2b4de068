"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this folder
is on ``sys.path``)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import flax
import jax
import optax


def device_description() -> dict:
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
