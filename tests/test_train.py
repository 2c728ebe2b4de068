"""Specification of the trainer: every method trains, sharding is exact, runs resume, bad configs fail early.

The runs use the embedded dataset prepared at a tiny size in a temporary data dir, tiny
encoders, and a handful of steps, so the whole file stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mmssl_jax import config_base as cb
from mmssl_jax import train

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ["simclr", "clip", "siglip", "bert_simclr", "barlow_twins", "vicreg", "moco", "byol", "simsiam",
           "moco_v3"]


def load_config(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The embedded dataset, prepared once for this module at a tiny size."""
    from mmssl_jax.data import builders

    path = tmp_path_factory.mktemp("tfds")
    builders.prepare_embedded(data_dir=str(path), num_train=256, num_test=64)
    return str(path)


def tiny(config, data_dir: str, steps: int = 6):
    config.input.data_dir = data_dir
    config.input.batch_size = 16
    config.input.image_size = 16
    config.num_steps = steps
    config.num_epochs = 0
    config.log_every = 1
    config.checkpoint_every = 1000
    cb.set_warmup(config, steps=1)
    for modality, spec in config.encoders.items():
        if spec.name.startswith("resnet"):
            spec.kwargs.update(width=4)
    for modality, spec in [*config.heads.items(), *dict(config.get("predictors") or {}).items()]:
        for key in ("hidden_dim", "out_dim", "width"):
            if key in spec.kwargs:
                spec.kwargs[key] = 16
    if config.get("moco") is not None:
        config.moco.queue_size = 32
    config.eval.protocols = ()  # tests/test_evaluate.py covers evaluation
    return config


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_with_a_falling_loss(name, data_dir, tmp_path, capsys):
    """Each method, with its own optimizer, lowers its objective on 16 images within 20 steps.

    The image views use the gentle ``clip_crop`` preset here: with the full SimCLR views a
    width-4 ResNet at 16 px needs far more than 20 steps before the trend shows through the
    noise of the random crops.
    """
    config = tiny(load_config(name), data_dir, steps=20)
    config.input.split = "train[:16]"
    for view in config.views.values():
        if view.modality == "image":
            view.augment = "clip_crop"
    if name in ("clip", "siglip"):  # start above CLIP's clamp: CLIP clamps it at log 100, SigLIP does not
        config.learned_scalars.logit_scale = 5.0
    summary = train.train_and_evaluate(config, tmp_path)
    if name == "clip":
        assert summary["scalar/logit_scale"] <= np.log(100.0) + 1e-6
    if name == "siglip":
        assert summary["scalar/logit_scale"] > 4.9
    # The console: the recipe in three lines, one short line per log step (every step here) and
    # the final summary line.
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"Recipe {config.method}: 20 updates") and "recipe.md" in lines[2], lines[:3]
    lines = lines[3:]
    assert len(lines) == 21 and lines[0].startswith("step  1/20  loss ") and "ETA" in lines[0], lines[:2]
    assert lines[-1].startswith(f"Finished {config.method} at step 20: loss ") and max(map(len, lines)) < 200
    history = json.loads((tmp_path / "history.json").read_text())
    losses = [m["loss"] for _, m in history]
    assert len(losses) == 20 and all(np.isfinite(losses))
    # MoCo's queue starts as random unit vectors (easy negatives) and is full of real keys
    # from step 3 on; compare from there.
    start = 2 if config.get("moco") is not None else 0
    assert np.mean(losses[-5:]) < np.mean(losses[start:start + 5]), losses
    assert summary["step"] == 20
    assert (tmp_path / "curves.png").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


@pytest.mark.parametrize("name, arg", [
    ("clip", "coco"), ("siglip", "coco"), ("bert_simclr", "coco"), ("simclr", "cifar"), ("simclr", "imagenet"),
    ("barlow_twins", "imagenet"), ("vicreg", "imagenet"), ("moco", "imagenet"), ("byol", "imagenet"),
    ("simsiam", "imagenet"), ("moco_v3", "imagenet"),
])
def test_published_recipes_are_valid_configs(name, arg):
    config = load_config(name, arg)
    train.validate_config(config)  # views, terms, registry names, batch over 8 devices...
    assert config.input.batch_size >= 256 and config.input.name != "mmssl_shapes"
    with pytest.raises(ValueError, match="unknown"):
        load_config(name, "no_such_recipe")


def test_bad_configs_fail_before_training_naming_the_problem(data_dir, tmp_path):
    config = tiny(load_config("clip"), data_dir)
    config.input.batch_size = 12  # 8 devices
    with pytest.raises(train.ConfigError, match=r"batch_size=12.*8 devices"):
        train.train_and_evaluate(config, tmp_path / "a")

    config = tiny(load_config("clip"), data_dir)
    config.loss_terms = [{"a": "image", "b": "txt", "loss": "clip", "weight": 1.0, "kwargs": {}}]
    with pytest.raises(train.ConfigError, match=r"b='txt' names no view"):
        train.train_and_evaluate(config, tmp_path / "b")

    config = tiny(load_config("clip"), data_dir)
    config.encoders.image.name = "resnet19"
    with pytest.raises(train.ConfigError, match="resnet19"):
        train.train_and_evaluate(config, tmp_path / "c")

    config = tiny(load_config("clip"), data_dir)
    config.input.read_threads, config.input.read_buffer_size = 8, 4
    with pytest.raises(train.ConfigError, match=r"config.input.read_threads=8, config.input.read_buffer_size=4.*idle"):
        train.train_and_evaluate(config, tmp_path / "e")

    config = tiny(load_config("clip"), data_dir)
    config.input.name = "mmssl_no_such_dataset"
    with pytest.raises(Exception, match="prepare"):
        train.train_and_evaluate(config, tmp_path / "d")
    assert not (tmp_path / "a").exists()


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS (tests/conftest.py's included) with ``devices`` simulated CPU devices."""
    from mmssl_jax import launch

    return launch.xla_flags_with_devices(os.environ.get("XLA_FLAGS", ""), devices)


def _run_main(args: list[str], workdir: Path, env_extra: dict | None = None, **kwargs):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "mmssl_jax.main", f"--workdir={workdir}", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def test_cli_refuses_unknown_keys_and_wrong_types(tmp_path):
    proc = _run_main(["--config=configs/clip.py", "--config.input.batch_sise=8"], tmp_path / "x")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "batch_sise" in out
    proc = _run_main(["--config=configs/clip.py", "--config.num_steps=many"], tmp_path / "y")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "num_steps" in out
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _params(workdir: Path, config) -> dict:
    """The final parameters of a run, restored from its last checkpoint."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(workdir.absolute() / "checkpoints")
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored["state"]["params"])


def test_a_run_killed_at_any_moment_resumes_to_the_same_parameters(data_dir, tmp_path):
    overrides = [
        "--config=configs/simclr.py", f"--config.input.data_dir={data_dir}", "--config.input.batch_size=16",
        "--config.input.image_size=16", "--config.num_steps=16", "--config.checkpoint_every=4",
        "--config.log_every=2", "--config.encoders.image.kwargs.width=4", "--config.optimizer.warmup_steps=2",
        "--config.eval.protocols=()",
    ]
    # One persistent compilation cache: the three later runs compile nothing again.
    env = {"XLA_FLAGS": xla_flags(1), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    straight = _run_main(overrides, tmp_path / "straight", env)
    out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, out

    killed = tmp_path / "killed"
    proc = _run_main(overrides, killed, env)
    # Kill it mid-run, once a checkpoint exists, at whatever it is doing (possibly mid-save).
    deadline = time.time() + 600
    while time.time() < deadline and not list((killed / "checkpoints").glob("8*")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = _run_main(overrides, killed, env)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "Resumed from step" in out or "resumed" in out.lower()
    # Resuming a finished run trains nothing and still reports what the run logged.
    again = _run_main(overrides, killed, env)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "Finished simclr at step 16: loss " in out and "step 16/16" not in out
    assert "loss" in json.loads((killed / "summary.json").read_text())

    config = load_config("simclr")
    a, b = _params(tmp_path / "straight", config), _params(killed, config)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_eight_devices_follow_the_single_device_trajectory(data_dir, tmp_path):
    """The same global batch on 1 and on 8 devices gives the same losses, step by step."""
    code = """
import json, sys
sys.path.insert(0, {repo!r})
from tests.test_train import load_config, tiny
from mmssl_jax import train
config = tiny(load_config("simclr"), {data_dir!r}, steps=5)
train.train_and_evaluate(config, {workdir!r})
"""
    trajectories = []
    for devices in (1, 8):
        workdir = tmp_path / f"d{devices}"
        env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
        proc = subprocess.run(
            [sys.executable, "-c", code.format(repo=str(REPO), data_dir=data_dir, workdir=str(workdir))],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        trajectories.append([m["loss"] for _, m in json.loads((workdir / "history.json").read_text())])
    np.testing.assert_allclose(trajectories[0], trajectories[1], rtol=2e-4)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    config = tiny(load_config("clip"), data_dir, steps=8)
    config.checkpoint_every = 2
    config.optimizer.learning_rate = 1e30  # diverges within a few steps
    cb.set_warmup(config)
    with pytest.raises(train.NonFiniteLossError, match=r"non-finite loss or gradient at step \d+ .*skipped"):
        train.train_and_evaluate(config, tmp_path)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [] or saved[-1] < 8


def test_moco_step_queue_ema_and_accumulation(data_dir):
    """MoCo v2 with 2 micro-steps per update: the queue takes every micro-batch's keys in order
    and wraps around; parameters and the EMA target change once per update, the target by
    ``m * target + (1 - m) * params``."""
    from mmssl_jax import optim
    from mmssl_jax.data import inputs, pipeline
    from mmssl_jax.models import build_model

    config = tiny(load_config("moco"), data_dir, steps=2)  # 2 optimizer updates
    config.accumulation_steps = 2
    config.moco.queue_size = 48  # 3 micro-batches of 16: wraps at the 4th
    cb.set_warmup(config)  # no warmup: the first update already moves the parameters
    source = inputs.train_source(config)
    plan = optim.plan_run(config, len(source))
    model = build_model(config)
    stream = iter(inputs.make_input(config, source, seed=0))
    batches = [next(stream) for _ in range(plan.total_micro_steps)]
    example = pipeline.device_augment({k: jax.numpy.asarray(v[:2]) for k, v in batches[0].items() if k in config.views},
                                      jax.random.key(0), inputs.augment_configs(config))
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))["params"]
    opt = optim.make_optimizer(config, params_shape, plan)
    state = jax.jit(lambda e: train._init_state(model, opt.tx, config, e, jax.random.PRNGKey(1)))(example)
    step = jax.jit(train.make_train_step(model, opt, config))
    m = config.ema.momentum
    for i, batch in enumerate(batches, start=1):
        before = jax.tree.map(np.asarray, state)
        state, metrics = step(state, {k: jax.numpy.asarray(v) for k, v in batch.items()})
        after = jax.tree.map(np.asarray, state)
        slot = slice(((i - 1) * 16) % 48, ((i - 1) * 16) % 48 + 16)
        assert int(after.queue_ptr) == (i * 16) % 48
        assert not np.allclose(after.queue[slot], before.queue[slot])  # this micro-batch's keys...
        rest = np.ones(48, bool)
        rest[slot] = False
        np.testing.assert_array_equal(after.queue[rest], before.queue[rest])  # ...and nothing else
        np.testing.assert_allclose(np.linalg.norm(after.queue[slot], axis=1), 1.0, rtol=1e-5)
        updated = i % 2 == 0
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params))]
        assert any(changed) == updated, i
        for target, old, new in zip(jax.tree.leaves(after.momentum_params), jax.tree.leaves(before.momentum_params),
                                    jax.tree.leaves(after.params)):
            np.testing.assert_allclose(target, m * old + (1 - m) * new if updated else old, rtol=1e-5, atol=1e-7)
        assert float(metrics["learning_rate"]) == pytest.approx(float(opt.schedule((i - 1) // 2)))


def test_moco_without_a_queue_is_refused_naming_the_fix(data_dir, tmp_path):
    config = tiny(load_config("moco"), data_dir)
    config.moco.queue_size = 0
    with pytest.raises(train.ConfigError, match=r"needs a queue, but config.moco.queue_size=0.*drop negatives='queue'"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_dry_run_prints_the_recipe_card_and_the_compiled_step(data_dir, tmp_path):
    """--dry_run from the command line, with fields the code reads set by overrides."""
    proc = _run_main([
        "--config=configs/barlow_twins.py", "--dry_run", f"--config.input.data_dir={data_dir}",
        "--config.input.batch_size=16", "--config.input.image_size=16", "--config.encoders.image.kwargs.width=4",
        "--config.heads.image.kwargs.hidden_dim=16", "--config.heads.image.kwargs.out_dim=16",
        "--config.num_steps=10", "--config.optimizer.warmup_steps=0", "--config.optimizer.warmup_epochs=0.5",
        "--config.optimizer.nesterov=True", "--config.optimizer.b1=0.8", "--config.max_logit_scale=4.0",
        "--config.eval.classification.representation=z", "--config.eval.center_crop_fraction=0.875",
    ], tmp_path, {"XLA_FLAGS": xla_flags(1)})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    card = (tmp_path / "recipe.md").read_text()
    assert card.startswith("# Recipe: barlow_twins") and "## Compiled step (--dry_run)" in card
    assert "| biases_and_norms |" in card and "| default |" in card and "barlow_twins(image1, image2" in card
    assert "| warmup | 8 updates (0.5 epochs) |" in card and "momentum 0.9 nesterov" in card
    assert "| input reading | in the training process: 4 reader threads, prefetch buffer 512 elements |" in card
    assert "memory per device: peak" in out and "FLOPs per device per micro-step" in out
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "history.json").exists()


def test_chunk_size_runs_the_loss_on_the_device_ring_with_the_unchunked_losses(data_dir):
    """CLIP on the 8 simulated devices, 3 updates: with config.loss.chunk_size the trainer's step
    gives the losses, accuracies and parameters of the default step to float32 rounding, and its
    compiled program passes the embeddings around the ring (collective-permute) instead of
    gathering them (the default step all-gathers them). The recipe card says which path runs."""
    from mmssl_jax import optim, recipe, sharding
    from mmssl_jax.data import inputs, pipeline
    from mmssl_jax.models import build_model

    mesh = sharding.make_mesh()
    assert mesh.size == 8
    config = tiny(load_config("clip"), data_dir, steps=3)
    config.encoders.image.kwargs.stage_sizes = (1,)  # one residual block (with BatchNorm): a quick compile
    source = inputs.train_source(config)
    plan = optim.plan_run(config, len(source))
    model = build_model(config)
    stream = iter(inputs.make_input(config, source, seed=0))
    batches = [sharding.host_batch_to_global(next(stream), mesh) for _ in range(plan.total_micro_steps)]
    example = pipeline.device_augment({k: jax.numpy.asarray(v[:2]) for k, v in batches[0].items() if k in config.views},
                                      jax.random.key(0), inputs.augment_configs(config))
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))["params"]
    opt = optim.make_optimizer(config, params_shape, plan)
    replicated = sharding.replicated(mesh)
    state0 = jax.jit(lambda e: train._init_state(model, opt.tx, config, e, jax.random.PRNGKey(1)),
                     out_shardings=replicated)(example)
    runs, programs = {}, {}
    for chunk in (0, 3):  # 3 does not divide the 2 rows per device... or the 16 columns: tiles are padded
        config.loss.chunk_size = chunk
        step = jax.jit(train.make_train_step(model, opt, config, mesh),
                       in_shardings=(replicated, sharding.batch_sharding(mesh)), out_shardings=(replicated, replicated))
        compiled = step.lower(state0, batches[0]).compile()
        programs[chunk] = compiled.as_text()
        state, metrics = state0, []
        for batch in batches:
            state, m = compiled(state, batch)
            metrics.append(jax.device_get(m))
        runs[chunk] = (metrics, jax.device_get(state.params))
    for plain, ring in zip(runs[0][0], runs[3][0]):
        for key in ("loss", "accuracy/clip/image-text", "grad_norm", "scalar/logit_scale"):
            np.testing.assert_allclose(ring[key], plain[key], rtol=1e-5, err_msg=key)
    assert not np.allclose(runs[0][0][0]["loss"], runs[0][0][-1]["loss"])  # the steps did train
    for plain, ring in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[3][1])):
        np.testing.assert_allclose(ring, plain, rtol=1e-4, atol=1e-6)
    # An all-gather whose result has the global batch (16) as its leading dimension: the default
    # step gathers the [16, 16] embedding matrices; the ring step gathers nothing batch-sized.
    gathers_batch = re.compile(r"= f32\[16(,\d+)*\]\{[^}]*\} all-gather\(")
    assert re.search(r"= f32\[16,16\]\{[^}]*\} all-gather\(", programs[0]) and "collective-permute" not in programs[0]
    assert "collective-permute" in programs[3] and not gathers_batch.search(programs[3])

    card = recipe.recipe_card(config, opt, params_shape)
    assert "| loss computation | device ring: shard_map over the data axis, 8 devices x 2 rows" in card
    assert "tiles of at most 3 x 3 logits" in card
    config.loss.chunk_size = 0
    assert "| loss computation | jit on the global batch over 8 devices" in recipe.recipe_card(config, opt, params_shape)


def test_chunk_size_is_refused_where_it_cannot_stream(data_dir):
    config = tiny(load_config("barlow_twins"), data_dir)
    config.loss.chunk_size = 64
    with pytest.raises(train.ConfigError, match=r"chunk_size=64 streams the contrastive terms.*\['barlow_twins'\]"):
        train.validate_config(config)
    config = tiny(load_config("clip"), data_dir)
    config.loss.chunk_size = -1
    with pytest.raises(train.ConfigError, match=r"config.loss.chunk_size must be an int >= 0"):
        train.validate_config(config)
    config = tiny(load_config("clip"), data_dir)
    config.loss_terms = [cb.term("image", "text", "clip", logit_scale="learned:logit_scale", chunk_size=64)]
    with pytest.raises(train.ConfigError, match=r"kwargs.chunk_size: the trainer sets it; use config.loss.chunk_size"):
        train.validate_config(config)
    config = tiny(load_config("clip"), data_dir)
    config.loss.chunk_size = 64
    train.validate_config(config)
    with pytest.raises(ValueError, match="pass mesh="):
        train.make_train_step(None, None, config)


def test_exact_accumulation_gives_the_whole_batch_update(data_dir):
    """accumulation_mode="exact" with 2 micro-batches of 8 (on the ring, chunk_size 3) takes the
    same updates as one batch of 16: same losses and parameters, on 8 devices. A BatchNorm-free
    CLIP (ViT + LayerNorm text head), since exact accumulation keeps BatchNorm per micro-batch."""
    from mmssl_jax import optim, recipe, sharding
    from mmssl_jax.data import inputs, pipeline
    from mmssl_jax.models import build_model

    mesh = sharding.make_mesh()
    replicated = sharding.replicated(mesh)

    def run(batch_size: int, accumulation: int, mode: str, chunk_size: int):
        config = tiny(load_config("clip"), data_dir, steps=2)
        config.encoders.image = cb.module("vit_ti", width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8)
        config.input.batch_size, config.accumulation_steps = batch_size, accumulation
        config.accumulation_mode, config.loss.chunk_size = mode, chunk_size
        # SGD: an update linear in the gradient (Adam would blow the rounding noise of the attention
        # key bias, whose true gradient is 0, up to a full step)
        config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.5
        train.validate_config(config)
        source = inputs.train_source(config)
        plan = optim.plan_run(config, len(source))
        model = build_model(config)
        stream = iter(inputs.make_input(config, source, seed=0, batch_size=plan.batch_per_step))
        batches = [sharding.host_batch_to_global(next(stream), mesh) for _ in range(plan.total_micro_steps)]
        example = pipeline.device_augment({k: jax.numpy.asarray(v[:2]) for k, v in batches[0].items()
                                           if k in config.views}, jax.random.key(0), inputs.augment_configs(config))
        params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))["params"]
        opt = optim.make_optimizer(config, params_shape, plan)
        state = jax.jit(lambda e: train._init_state(model, opt.tx, config, e, jax.random.PRNGKey(1)),
                        out_shardings=replicated)(example)
        step = jax.jit(train.make_train_step(model, opt, config, mesh),
                       in_shardings=(replicated, sharding.batch_sharding(mesh)), out_shardings=(replicated, replicated))
        losses = []
        for batch in batches:
            state, metrics = step(state, batch)
            losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
        return plan, losses, jax.device_get(state.params), recipe.recipe_card(config, opt, params_shape)

    plan, whole, whole_params, _ = run(16, 1, "average", 0)
    exact_plan, exact, exact_params, card = run(8, 2, "exact", 3)
    assert (plan.total_micro_steps, exact_plan.total_micro_steps, exact_plan.batch_per_step) == (2, 2, 16)
    np.testing.assert_allclose(exact, whole, rtol=1e-5)
    assert whole[0][0] != whole[1][0]
    for got, want in zip(jax.tree.leaves(exact_params), jax.tree.leaves(whole_params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert "| global batch per micro-step / per update | 8 / 16 (accumulation 2, exact: one loss over the whole batch" in card
    assert "| loss computation | device ring: shard_map over the data axis, 8 devices x 2 rows" in card  # 16 / 8


def test_exact_accumulation_is_refused_with_a_target_branch(data_dir):
    config = tiny(load_config("byol"), data_dir)
    config.accumulation_steps, config.accumulation_mode = 2, "exact"
    with pytest.raises(train.ConfigError, match=r"accumulation_mode='exact'.*target branch \(config.ema"):
        train.validate_config(config)
    config.accumulation_mode = "exactly"
    with pytest.raises(train.ConfigError, match=r"accumulation_mode must be 'average' or 'exact', got 'exactly'"):
        train.validate_config(config)


@pytest.mark.parametrize("method", ["bert_simclr", "siglip", "moco", "vicreg_and_clip"])
def test_ring_objective_equals_the_global_objective(method):
    """objectives.ring_method_loss (the step's loss with config.loss.chunk_size) over 8 devices:
    the loss, every logged metric and the gradients with respect to the embeddings, the learned
    scalars and nothing else equal objectives.method_loss on the global batch; chunk 5 leaves
    padded tiles of the 6 rows per device, and of the MoCo queue's 40 columns."""
    from mmssl_jax import objectives, sharding

    if method == "vicreg_and_clip":  # a non-contrastive term beside a contrastive one
        terms = [cb.term("image1", "image2", "vicreg"), cb.term("image1", "text", "clip", weight=0.5,
                                                                logit_scale="learned:logit_scale")]
    else:
        terms = [dict(t) for t in load_config(method).loss_terms]
    sides = sorted({side for t in terms for side in (t["a"], t["b"])})
    rng = np.random.default_rng(0)
    base = rng.normal(size=(48, 8))
    z = {side: jax.numpy.asarray(base + 0.8 * rng.normal(size=(48, 8)), jax.numpy.float32) for side in sides}
    scalars = {"logit_scale": jax.numpy.float32(2.0), "logit_bias": jax.numpy.float32(-1.0)}
    queue = jax.numpy.asarray(rng.normal(size=(40, 8)), jax.numpy.float32)
    # BERTSimCLR partially paired: a third of the samples have no caption (the image-text terms' where=)
    where = {"text": jax.numpy.asarray(rng.random(48) < 0.67)} if method == "bert_simclr" else None
    ring = objectives.ring_method_loss(terms, chunk_size=5, mesh=sharding.make_mesh())
    want = jax.jit(jax.value_and_grad(lambda z, s: objectives.method_loss(z, s, terms, queue, where), (0, 1),
                                      has_aux=True))
    got = jax.jit(jax.value_and_grad(lambda z, s: ring(z, s, queue, where), (0, 1), has_aux=True))
    (w_loss, w_metrics), w_grads = want(z, scalars)
    (g_loss, g_metrics), g_grads = got(z, scalars)
    np.testing.assert_allclose(g_loss, w_loss, rtol=1e-5)
    assert sorted(g_metrics) == sorted(w_metrics)
    for key in w_metrics:
        np.testing.assert_allclose(g_metrics[key], w_metrics[key], rtol=1e-5, err_msg=key)
    assert any(0.05 < float(v) < 0.95 for k, v in w_metrics.items() if k.startswith("accuracy/"))
    for g, w in zip(jax.tree.leaves(g_grads), jax.tree.leaves(w_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
# ----------------------------------------------------------------------------- partially paired


def test_method_loss_masks_the_terms_that_read_a_partial_view():
    """DESIGN.md's partially paired image+caption: image terms on every sample, image-text terms
    (and their accuracy) on the captioned ones, exactly the losses' ``where=``."""
    from mmssl_jax import losses, objectives

    rng = np.random.default_rng(0)
    z = {v: rng.normal(size=(12, 8)).astype(np.float32) for v in ("image1", "image2", "text")}
    has_text = rng.random(12) < 0.5
    # BERTSimCLR's NT-Xent pair, and a caption term on each of its views.
    terms = [dict(load_config("bert_simclr").loss_terms[0])] + [
        {"a": v, "b": "text", "loss": "clip", "weight": 0.5, "kwargs": {"logit_scale": "learned:logit_scale"}}
        for v in ("image1", "image2")]
    scalars = {"logit_scale": np.float32(2.0)}
    _, metrics = objectives.method_loss(z, scalars, terms, where={"text": has_text})
    np.testing.assert_allclose(metrics["loss/nt_xent/image1-image2"], losses.nt_xent(z["image1"], z["image2"], temperature=0.2))
    for view in ("image1", "image2"):
        want = losses.clip(z[view][has_text], z["text"][has_text], logit_scale=2.0)
        np.testing.assert_allclose(metrics[f"loss/clip/{view}-text"], want, rtol=1e-6)
        np.testing.assert_allclose(metrics[f"accuracy/clip/{view}-text"],
                                   losses.positive_pair_accuracy(z[view][has_text], z["text"][has_text]))
    # No caption in the batch: the image-text terms are 0 and give the temperature no gradient.
    grad = jax.grad(lambda s: objectives.method_loss(z, {"logit_scale": s}, terms, where={"text": np.zeros(12, bool)})[0])
    assert float(grad(np.float32(2.0))) == 0.0
    terms.append({"a": "image1", "b": "text", "loss": "barlow_twins", "weight": 1.0, "kwargs": {}})
    with pytest.raises(ValueError, match="barlow_twins/image1-text reads a partially present view"):
        objectives.method_loss(z, scalars, terms, where={"text": has_text})


def test_partially_paired_training_on_a_dataset_with_caption_less_images(tmp_path):
    """BERTSimCLR on a real-format dataset whose train split keeps 6 of its 20 images without
    captions (prepared with ``keep_captionless``; ``input.missing_captions=mask``) and with 3 of
    4 of the others' captions hidden (``caption_fraction``): the step trains the image terms on
    every image and the image-text terms on the batch's captioned ones (their logged share is the
    pipeline's ``has_text``); a loss without a mask on the text view, and retrieval on a split
    with caption-less images, are refused before training."""
    from mmssl_jax import evaluation, sharding
    from mmssl_jax.data import builders, inputs
    from mmssl_jax.models import build_model
    from tests.test_builders import write_captions_json

    write_captions_json(tmp_path / "src", {"train": 20, "dev": 4}, {1, 4, 7, 10, 13, 16}, size=(24, 24))
    prepared = builders.prepare("flickr8k_embedded", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "src",
                                keep_captionless=True)
    assert prepared.captionless == {"dev": 0, "train": 6}
    config = tiny(load_config("bert_simclr"), str(tmp_path / "tfds"), steps=2)
    config.input.name = prepared.name
    config.input.missing_captions = "mask"
    config.input.caption_fraction = 0.25
    summary = train.train_and_evaluate(config, tmp_path / "quarter")
    history = json.loads((tmp_path / "quarter" / "history.json").read_text())
    stream = iter(inputs.make_input(config, inputs.train_source(config), seed=config.seed))
    shares = [float(np.mean(next(stream)["has_text"])) for _ in history]
    assert [m["input/caption_fraction"] for _, m in history] == pytest.approx(shares)
    assert 0 < np.mean(shares) < 0.5 and all(np.isfinite(m["loss"]) for _, m in history)
    assert summary["loss/clip/image-text"] > 0 and summary["loss/nt_xent/image1-image2"] > 0
    card = (tmp_path / "quarter" / "recipe.md").read_text()
    assert ("| partially paired | 25% of the images keep their captions (seeded, fixed); stored images without "
            "captions kept; caption-less samples leave clip/image-text |") in card

    config.eval.protocols = ("retrieval",)
    config.eval.retrieval.split = "train"
    with pytest.raises(ValueError, match=r"train: 6 of its 20 images have no captions .*retrieval needs every image"):
        evaluation.Evaluation(config, build_model(config), sharding.make_mesh())
    config.loss_terms = [dict(t) for t in config.loss_terms] + [cb.term("image1", "text", "vicreg")]
    with pytest.raises(train.ConfigError, match=r"loss_terms\[2\]: vicreg on a text view, but some samples have no caption"):
        train.train_and_evaluate(config, tmp_path / "bad")
