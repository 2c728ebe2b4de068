"""Several processes of one program on this machine: a multi-host run without the hosts.

``python -m mmssl_jax.launch --num_processes=2 --devices_per_process=4 -- --config=configs/clip.py ...``
starts ``python -m mmssl_jax.main ARGS`` twice. Each process gets its own simulated CPU devices
and the coordinates of the run in the environment (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); :func:`initialize_distributed` (which ``main``
calls) turns them into ``jax.distributed.initialize()``, and the processes run their collectives
across processes with JAX's gloo CPU implementation, as a pod's hosts would over the network.

Each process's output goes to a log file (and, for process 0, to this console); when one process
fails or the timeout passes, every process is ended and the logs are shown. The tests use
:func:`launch` the same way (``tests/test_multihost.py``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # jax.distributed reads this one itself
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """``jax.distributed.initialize()`` when this is one of several processes; returns whether it was.

    Arguments left ``None`` come from the launcher's environment variables; on a TPU pod, SLURM or
    MPI, JAX finds them itself. One process on its own (no such environment) initializes nothing.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if not (coordinator_address or _cluster_environment()):
        return False
    import jax

    if coordinator_address and num_processes is not None and num_processes > 1:
        # Collectives between processes of a CPU platform (a no-op setting on GPU and TPU).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def sync_processes(name: str, timeout_s: float = 1800) -> None:
    """Waits until every process of the run has reached the barrier ``name`` (a no-op alone).

    The barrier is the distributed runtime's (``jax.distributed``'s coordination service), which
    waits up to ``timeout_s``. Call it before a run's first collective across processes: on CPU,
    gloo opens its connections there and gives up when the processes arrive more than 30 s apart
    (``Gloo context initialization failed: ... timed out``), which startup, data loading or a
    compile on a busy machine easily exceed. Every process must make the same calls in the same
    order (the n-th call with ``name`` is its own barrier).
    """
    import jax

    if jax.process_count() == 1:
        return
    from orbax.checkpoint import multihost  # its public wrapper of the runtime's barrier

    _barrier_calls[name] = _barrier_calls.get(name, 0) + 1
    key = f"mmssl_jax:{name}:{_barrier_calls[name]}"
    multihost.get_barrier_sync_fn()(key=key, timeout_ms=int(timeout_s * 1000))


_barrier_calls: dict[str, int] = {}


def _cluster_environment() -> bool:
    """True when a cluster launcher says this is one of several processes (TPU pod, SLURM, MPI)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if int(os.environ.get(var, "1") or 1) > 1:
            return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ProcessResult:
    process_id: int
    returncode: int | None  # None: ended by the launcher
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


class LaunchError(RuntimeError):
    """A process failed or the run timed out; the message holds every process's output tail."""

    def __init__(self, message: str, results: list[ProcessResult]):
        super().__init__(message)
        self.results = results


def xla_flags_with_devices(xla_flags: str, devices: int) -> str:
    """``xla_flags`` with its simulated CPU device count (if any) replaced by ``devices``."""
    kept = [f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def process_env(process_id: int, num_processes: int, coordinator: str, devices_per_process: int,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of process ``process_id``: the run's coordinates and its own CPU devices."""
    env = dict(os.environ if base is None else base)
    env.update({
        ENV_COORDINATOR: coordinator,
        ENV_NUM_PROCESSES: str(num_processes),
        ENV_PROCESS_ID: str(process_id),
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "XLA_FLAGS": xla_flags_with_devices(env.get("XLA_FLAGS", ""), devices_per_process),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def launch(command: Sequence[str], *, num_processes: int, devices_per_process: int = 1, timeout: float = 600,
           cwd: str | Path | None = None, env: Mapping[str, str] | None = None, log_dir: str | Path | None = None,
           echo_first: bool = False, kill_when: tuple[int, Callable[[], bool]] | None = None) -> list[ProcessResult]:
    """Runs ``command`` as ``num_processes`` processes of one JAX run on this machine; waits for all.

    Args:
      command: the program and its arguments (e.g. ``[sys.executable, "-m", "mmssl_jax.main", ...]``).
      num_processes: how many processes (>= 1).
      devices_per_process: simulated CPU devices in each.
      timeout: seconds for the whole run.
      cwd, env: the processes' working directory and base environment (default: this one's).
      log_dir: where ``process_<i>.log`` go (default: a new temporary folder).
      echo_first: also copy process 0's output to this console as it comes.
      kill_when: ``(process_id, condition)``: SIGKILL that process as soon as ``condition()`` is
        true (a crash test); the others are ended then too and the call returns without raising.

    Returns:
      One :class:`ProcessResult` per process, when every process exited with 0.

    Raises:
      LaunchError: a process exited with an error or the timeout passed; every other process was
        ended, and the message shows the end of each one's output.
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(f"num_processes={num_processes} and devices_per_process={devices_per_process} must be >= 1")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="mmssl_launch_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    coordinator = f"127.0.0.1:{free_port()}"
    procs, logs, files = [], [], []
    for i in range(num_processes):
        logs.append(log_dir / f"process_{i}.log")
        files.append(open(logs[-1], "w"))
        procs.append(subprocess.Popen(
            list(command), cwd=cwd, env=process_env(i, num_processes, coordinator, devices_per_process, env),
            stdout=files[-1], stderr=subprocess.STDOUT, start_new_session=True,
        ))
    start = time.monotonic()
    echoed = 0
    failure, killed = None, False
    try:
        while True:
            if echo_first:
                echoed = _echo(logs[0], echoed)
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                if any(codes):
                    failure = "a process failed"
                break
            if any(c not in (None, 0) for c in codes):
                failure = "a process failed"
                break
            elapsed = time.monotonic() - start
            if kill_when is not None and kill_when[1]():
                procs[kill_when[0]].send_signal(signal.SIGKILL)
                procs[kill_when[0]].wait()
                killed = True
                break
            if elapsed > timeout:
                failure = f"timed out after {timeout:.0f} s"
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            _end(p)
        for f in files:
            f.close()
        if echo_first:
            _echo(logs[0], echoed)
    results = [ProcessResult(i, p.returncode, log) for i, (p, log) in enumerate(zip(procs, logs))]
    if kill_when is not None and not killed:
        failure = failure or "the run ended before the kill condition held"
    if failure and not killed:
        raise LaunchError(f"{failure}: exit codes {[p.returncode for p in procs]}\n" + format_logs(results), results)
    return results


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM to the process's group (its grain workers too), SIGKILL if it has not gone in 5 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _echo(log: Path, done: int) -> int:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return done
    if len(text) > done:
        sys.stdout.write(text[done:])
        sys.stdout.flush()
    return len(text)


def format_logs(results: Sequence[ProcessResult], tail: int = 4000) -> str:
    """The last ``tail`` characters of each process's output, under a header naming it."""
    parts = []
    for r in results:
        text = r.output
        parts.append(f"----- process {r.process_id} (exit {r.returncode}), {r.log}:\n"
                     f"{'...' if len(text) > tail else ''}{text[-tail:]}")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmssl_jax.launch",
        description="Run mmssl_jax.main (or --module) as several processes of one JAX run on this machine, "
                    "each with its own simulated CPU devices. Arguments after -- go to the program.",
    )
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="seconds for the whole run")
    parser.add_argument("--module", default="mmssl_jax.main", help="the Python module every process runs")
    parser.add_argument("--log_dir", default=None, help="where process_<i>.log go (default: a temporary folder)")
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    command = [sys.executable, "-m", args.module, *rest]
    try:
        results = launch(command, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                         timeout=args.timeout, log_dir=args.log_dir, echo_first=True)
    except LaunchError as e:  # process 0's output is on the console already: the others' tails
        others = format_logs([r for r in e.results if r.process_id != 0])
        print(f"\nmmssl_jax.launch: {str(e).splitlines()[0]}\n{others}", file=sys.stderr)
        return 1
    print(f"mmssl_jax.launch: {len(results)} processes finished; logs in {results[0].log.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
