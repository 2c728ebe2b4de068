"""Specification of multi-process runs: 2 processes x 4 CPU devices behave as 1 process x 8 devices.

The processes are real (``mmssl_jax.launch``, as a user starts them): they join through
``jax.distributed``, run their collectives across processes with gloo, read their own rows of
the data, write one checkpoint together and survive one of them being killed. Every run uses the
embedded dataset at a tiny size, tiny models and 20 steps; the 1-process references run in this
(8-device) test process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mmssl_jax import launch, reporting, train
from tests.test_train import REPO, load_config, tiny

STEPS = 20
pytestmark = pytest.mark.xdist_group("multihost")  # one worker runs them, in this order


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mmssl_jax.data import builders

    path = tmp_path_factory.mktemp("tfds")
    builders.prepare_embedded(data_dir=str(path), num_train=256, num_test=64)
    return str(path)


def cli_overrides(config, name: str) -> list[str]:
    """``--config.KEY=VALUE`` for every field where ``config`` differs from ``configs/<name>.py``."""
    default = reporting.flatten(load_config(name).to_dict())
    out = []
    for key, value in reporting.flatten(config.to_dict()).items():
        if key not in default:
            raise KeyError(f"{key} is not a field of configs/{name}.py")
        if value != default[key]:
            out.append(f"--config.{key}={value if isinstance(value, str) else repr(value)}")
    return out


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory) -> dict[str, str]:
    """A persistent XLA cache the launched runs share: a restarted run compiles nothing again."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def run_processes(name: str, config, workdir: Path, env: dict[str, str], *, kill_when=None):
    """``python -m mmssl_jax.main`` as 2 processes x 4 CPU devices on ``config`` (as overrides)."""
    command = [sys.executable, "-m", "mmssl_jax.main", f"--config=configs/{name}.py", *cli_overrides(config, name),
               f"--workdir={workdir}"]
    return launch.launch(command, num_processes=2, devices_per_process=4, timeout=420, cwd=REPO,
                         env={**os.environ, **env}, log_dir=workdir.parent / f"{workdir.name}_logs",
                         kill_when=kill_when)


def losses(workdir: Path) -> list[float]:
    history = json.loads((workdir / "history.json").read_text())
    assert [step for step, _ in history] == list(range(1, STEPS + 1))  # every step logged once
    return [row["loss"] for _, row in history]


def final_params(workdir: Path):
    from mmssl_jax import evaluation

    _, step, params, _ = evaluation.restore_for_eval(workdir)
    assert step == STEPS
    return jax.tree.map(np.asarray, params)


def assert_close_trees(a, b, rtol):
    """Each leaf within ``rtol`` of its elements or, for elements near 0, of its largest one, with
    a floor of 1e-5: 20 steps of float32 summation-order noise leave ~1e-6 on parameters that
    stay near 0 (a BatchNorm bias of 3e-5 differed by 1e-6)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=max(1e-5, rtol * float(np.max(np.abs(y)))),
                                   err_msg=jax.tree_util.keystr(path))


def test_each_process_reads_its_own_rows_and_an_epoch_covers_every_example_once(data_dir, tmp_path):
    """Over one epoch (256 records, global batch 16) the two processes' rows are disjoint and
    cover every example; step by step they are the global batch one process reads."""
    code = f"""
import json, sys
from mmssl_jax import launch
launch.initialize_distributed()
import jax
from mmssl_jax.data import builders, pipeline
source = builders.load_source("mmssl_shapes", "train", data_dir={data_dir!r})
ds = pipeline.train_dataset(source, batch_size=16, seed=0, image_views={{}}, keep=("image_id",), num_epochs=1)
ids = [[int(i) for i in batch["image_id"]] for batch in ds]
print("process", jax.process_index(), "of", jax.process_count())
json.dump(ids, open(f"{tmp_path}/ids_{{jax.process_index()}}.json", "w"))
"""
    results = launch.launch([sys.executable, "-c", code], num_processes=2, devices_per_process=4, timeout=300,
                            cwd=REPO, log_dir=tmp_path / "logs")
    assert [r.output.count(f"process {r.process_id} of 2") for r in results] == [1, 1]
    parts = [json.loads((tmp_path / f"ids_{p}.json").read_text()) for p in range(2)]
    assert [len(p) for p in parts] == [16, 16] and all(len(b) == 8 for p in parts for b in p)
    seen = [i for p in parts for batch in p for i in batch]
    assert len(seen) == 256 and len(set(seen)) == 256  # none seen twice, none missed

    from mmssl_jax.data import builders, pipeline

    source = builders.load_source("mmssl_shapes", "train", data_dir=data_dir)
    one = pipeline.train_dataset(source, batch_size=16, seed=0, image_views={}, keep=("image_id",), num_epochs=1,
                                 process_index=0, process_count=1)
    assert [list(b["image_id"]) for b in one] == [a + b for a, b in zip(*parts)]


def test_clip_on_two_processes_trains_and_evaluates_as_one(data_dir, compilation_cache, tmp_path):
    """CLIP, 20 steps: the loss trajectory and the final parameters of 2 processes x 4 devices
    match 1 process x 8 devices; the evaluation (probe, kNN, retrieval) of the 2-process run, on
    splits that divide by neither the processes nor the batch, gives the metrics one process
    computes from the same parameters; only process 0 writes the run's files."""
    config = tiny(load_config("clip"), data_dir, steps=STEPS)
    single = tmp_path / "single"
    train.train_and_evaluate(config, single)

    config.eval.protocols = ("linear_probe", "knn", "retrieval")
    config.eval.batch_size = 24  # 12 rows per process per batch: 45 probe images pad to 48, 25 to 36
    config.eval.classification.train_split = "train[:90]"
    config.eval.classification.test_split = "test[:50]"
    config.eval.retrieval.split = "test[:50]"
    config.eval.knn_k = (5,)
    config.eval.probe_iters = 50
    multi = tmp_path / "multi"
    results = run_processes("clip", config, multi, compilation_cache)

    np.testing.assert_allclose(losses(multi), losses(single), rtol=2e-4)
    assert_close_trees(final_params(multi), final_params(single), rtol=2e-4)

    # Evaluation: the metrics the 2 processes wrote, recomputed here by one process.
    from mmssl_jax import evaluation, sharding
    from mmssl_jax.models import build_model

    train_config, _, params, batch_stats = evaluation.restore_for_eval(multi)
    one = evaluation.Evaluation(train_config, build_model(train_config), sharding.make_mesh()).run(params, batch_stats)
    written = json.loads((multi / "eval_summary.json").read_text())
    assert list(written) == [str(STEPS)]
    written = written[str(STEPS)]
    assert {"eval/mmssl_shapes/linear_probe/top1", "eval/mmssl_shapes/knn/k5_top1",
            "eval/mmssl_shapes/retrieval/i2t_r@1"} <= set(written), sorted(written)
    assert set(written) == set(one)
    for key in one:
        if not key.endswith("seconds"):
            assert written[key] == pytest.approx(one[key], rel=1e-3, abs=1e-3), key

    # Files: one writer (process 0); process 1 prints nothing of the run either.
    names = sorted(p.name for p in multi.iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents")]
    assert len(events) == 1 and (multi / events[0]).stat().st_size > 0, names
    assert set(names) - set(events) == {"checkpoints", "curves.png", "eval_summary.json", "history.json",
                                        "recipe.md", "summary.json"}, names
    assert json.loads((multi / "summary.json").read_text())["step"] == STEPS
    assert (multi / "recipe.md").read_text().startswith("# Recipe: clip")
    assert (multi / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out0, out1 = results[0].output, results[1].output
    assert f"step {STEPS}/{STEPS}" in out0 and "Finished clip" in out0
    assert "step 1/" not in out1 and "Finished" not in out1 and "Recipe" not in out1


def test_simclr_on_two_processes_killed_mid_run_resumes_to_the_single_process_result(data_dir, compilation_cache,
                                                                                     tmp_path):
    """SimCLR, 20 steps, a checkpoint every 10: one of the two processes is killed (SIGKILL) after
    the first checkpoint, both are restarted, and the run resumes from step 10 (each process's
    data iterator included) to the loss trajectory and parameters of an uninterrupted
    1-process x 8-device run.

    At SimCLR's own learning rate this tiny run is chaotic: the float summation order of the
    cross-process reductions (gloo versus one process's), ~1e-7 per step, grows about 3x per step
    from step 8 and passes 2e-4 at step 11, in an uninterrupted 2-process run as much as in a
    resumed one. At a tenth of it the trajectories stay within that tolerance, so a difference
    in the data or in the resumed state is what would fail here."""
    config = tiny(load_config("simclr"), data_dir, steps=STEPS)
    config.optimizer.learning_rate /= 10
    config.checkpoint_every = 10
    single = tmp_path / "single"
    train.train_and_evaluate(config, single)

    multi = tmp_path / "multi"
    first = multi / "checkpoints" / "10" / "commit_success.txt"
    run_processes("simclr", config, multi, compilation_cache, kill_when=(1, first.exists))
    assert first.exists() and not (multi / "summary.json").exists()
    saved = sorted((multi / "checkpoints" / "10" / "data").glob("process_*.json"))
    assert [p.name for p in saved] == ["process_0-of-2.json", "process_1-of-2.json"]
    assert all(json.loads(p.read_text())["next_index"] == 10 * 8 for p in saved)  # 8 rows per step each

    resumed = run_processes("simclr", config, multi, compilation_cache)
    assert "Resumed from step 10 " in resumed[0].output, resumed[0].output[-3000:]
    np.testing.assert_allclose(losses(multi), losses(single), rtol=2e-4)
    assert_close_trees(final_params(multi), final_params(single), rtol=2e-4)
