"""Specification of mmssl_jax.launch: N processes of one run, their output kept, all ended on a failure.

The real multi-process runs (JAX, gloo, training) are in tests/test_multihost.py; these use
small Python programs to pin down the launcher's own behaviour in a few seconds.
"""

from __future__ import annotations

import sys
import time

import pytest

from mmssl_jax import launch


def test_each_process_gets_the_run_coordinates_and_its_own_devices(tmp_path):
    code = ("import os; print('ID', os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
            "os.environ['JAX_COORDINATOR_ADDRESS'], os.environ['XLA_FLAGS'])")
    results = launch.launch([sys.executable, "-c", code], num_processes=3, devices_per_process=2, timeout=60,
                            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=x"},
                            log_dir=tmp_path)
    lines = [r.output.strip().split() for r in results]
    assert [line[1:3] for line in lines] == [["0", "3"], ["1", "3"], ["2", "3"]]
    assert len({line[3] for line in lines}) == 1 and lines[0][3].startswith("127.0.0.1:")  # one coordinator
    assert all(line[4:] == ["--xla_dump_to=x", "--xla_force_host_platform_device_count=2"] for line in lines)
    assert [r.log.name for r in results] == ["process_0.log", "process_1.log", "process_2.log"]


def test_a_failing_process_ends_the_others_and_its_output_is_shown(tmp_path):
    code = ("import os, sys, time; pid = os.environ['JAX_PROCESS_ID']; print('process', pid, 'started', flush=True)\n"
            "if pid == '1': sys.exit('process 1 gives up')\n"
            "time.sleep(120)")
    start = time.monotonic()
    with pytest.raises(launch.LaunchError, match="a process failed") as error:
        launch.launch([sys.executable, "-c", code], num_processes=2, timeout=100, log_dir=tmp_path)
    assert time.monotonic() - start < 60  # process 0 did not sleep its 120 s
    message = str(error.value)
    assert "process 1 gives up" in message and "process 0 started" in message
    assert [r.returncode for r in error.value.results][1] == 1 and error.value.results[0].returncode != 0


def test_a_timeout_ends_every_process():
    start = time.monotonic()
    with pytest.raises(launch.LaunchError, match="timed out after 2 s"):
        launch.launch([sys.executable, "-c", "import time; time.sleep(120)"], num_processes=2, timeout=2)
    assert time.monotonic() - start < 60


def test_kill_when_sigkills_one_process_and_ends_the_rest(tmp_path):
    flag = tmp_path / "ready"
    code = f"import time, pathlib; pathlib.Path({str(flag)!r}).touch(); time.sleep(120)"
    results = launch.launch([sys.executable, "-c", code], num_processes=2, timeout=100,
                            kill_when=(1, flag.exists))
    assert results[1].returncode == -9 and results[0].returncode is not None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_processes=0"):
        launch.launch([sys.executable, "-c", "pass"], num_processes=0)


def test_one_process_without_a_launcher_initializes_nothing(monkeypatch):
    for var in (launch.ENV_COORDINATOR, launch.ENV_NUM_PROCESSES, launch.ENV_PROCESS_ID, "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert launch.initialize_distributed() is False


def test_command_line_runs_a_module_as_processes(tmp_path, capsys):
    """``python -m mmssl_jax.launch [options] -- ARGS`` (here ``--module=platform``, which prints
    the platform): 0 when every process succeeds, 1 with each process's output when one fails."""
    assert launch.main(["--num_processes=2", "--devices_per_process=1", "--module=platform", f"--log_dir={tmp_path}",
                        "--", "--terse"]) == 0
    assert capsys.readouterr().out.endswith(f"2 processes finished; logs in {tmp_path}\n")
    assert (tmp_path / "process_1.log").read_text().strip()
    assert launch.main(["--num_processes=2", "--module=mmssl_jax_no_such_module"]) == 1
    err = capsys.readouterr().err
    assert "a process failed" in err and "No module named mmssl_jax_no_such_module" in err


def test_sync_processes_lets_processes_arrive_far_apart_at_their_first_collective(tmp_path):
    """Gloo opens its connections at the first collective across processes and gives up when the
    processes arrive there more than 30 s apart (the failure of a resumed 2-process run on a busy
    CI machine). Process 1 arrives 35 s late here, through ``sync_processes`` (the trainer calls it
    before its first collectives), and the collective then runs; without it, this program fails
    with ``Gloo context initialization failed``."""
    code = ("import sys, time; from mmssl_jax import launch; launch.initialize_distributed()\n"
            "import jax; from jax.experimental import multihost_utils\n"
            "if jax.process_index() == 1: time.sleep(35)\n"
            "launch.sync_processes('late'); launch.sync_processes('late')  # a name may be used again\n"
            "rows = multihost_utils.process_allgather(jax.numpy.full((1,), jax.process_index()), tiled=True)\n"
            "print('gathered', rows.tolist(), flush=True)")
    results = launch.launch([sys.executable, "-c", code], num_processes=2, devices_per_process=1, timeout=240,
                            log_dir=tmp_path)
    assert all("gathered [0, 1]" in r.output for r in results)
