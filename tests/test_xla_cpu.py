"""Specification of mmssl_jax.xla_cpu: the CPU options are added to XLA_FLAGS, a user's own win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmssl_jax import xla_cpu

OPTION = "--xla_cpu_experimental_ynn_fusion_type"


def test_added_where_absent_and_kept_with_the_other_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.add_cpu_flags(env) == list(xla_cpu.CPU_FLAGS)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *xla_cpu.CPU_FLAGS]
    assert xla_cpu.add_cpu_flags(env) == [] and env["XLA_FLAGS"].count(OPTION) == 1  # once only
    empty = {}
    xla_cpu.add_cpu_flags(empty)
    assert empty["XLA_FLAGS"].split() == list(xla_cpu.CPU_FLAGS)


def test_a_users_own_setting_of_the_option_wins():
    env = {"XLA_FLAGS": f"{OPTION}=+eltwise"}
    assert xla_cpu.add_cpu_flags(env) == [] and env["XLA_FLAGS"] == f"{OPTION}=+eltwise"


def test_too_late_is_an_error_not_a_silent_no_op():
    code = ("import os, jax; os.environ.pop('XLA_FLAGS', None); jax.numpy.ones(1).block_until_ready()\n"
            "from mmssl_jax import xla_cpu; xla_cpu.add_cpu_flags()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    assert proc.returncode != 0 and "after JAX started its backends" in proc.stderr


@pytest.mark.parametrize("flag", xla_cpu.CPU_FLAGS)
def test_this_process_runs_with_them(flag):
    """tests/conftest.py adds them, as ``python -m mmssl_jax.main`` does for the runs tests start."""
    assert flag in os.environ["XLA_FLAGS"].split()
