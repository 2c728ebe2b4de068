r"""Evaluate a training checkpoint: linear probe and kNN (and zero-shot / retrieval for models with
a text branch) on frozen features, without training.

The model is rebuilt from the config saved in the checkpoint. Metrics go to TensorBoard and
``eval_summary.json`` in ``--workdir`` (default ``<checkpoint_dir>/eval``).

  python -m mmssl_jax.main --config=configs/linear_probe.py --config.checkpoint_dir=runs/simclr-...

The config argument names the method the checkpoint must come from (its model sections are
compared, and a checkpoint of another model fails with the differing keys), and turns on the
protocols that method supports:
  python -m mmssl_jax.main --config=configs/linear_probe.py:clip --config.checkpoint_dir=runs/clip-...
Probe another labelled set, e.g. CIFAR-10 (prepared) at 32 px:
  ... --config.eval.classification.dataset=cifar10_npz --config.eval.classification.max_train=0
On the embedded data a 300-step SimCLR checkpoint probes in about a minute on 2 CPU cores.
"""

import importlib.util
from pathlib import Path

import ml_collections

from mmssl_jax import config_base as cb

TEXT_METHODS = ("clip", "siglip", "bert_simclr")


def _method_config(name: str) -> ml_collections.ConfigDict:
    path = Path(__file__).with_name(f"{name}.py")
    if not path.exists() or name == "linear_probe":
        known = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem != "linear_probe")
        raise ValueError(f"configs/linear_probe.py: unknown method {name!r}; use one of {known}")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str = ""):
    c = ml_collections.ConfigDict()
    c.mode = "evaluate"  # main.py evaluates instead of training
    c.checkpoint_dir = ""  # A training workdir (or its checkpoints/ folder). Required.
    c.step = -1  # Checkpoint step to evaluate; -1: the latest.
    c.dtype = ""  # Compute dtype; "": the training run's.
    # The training config the checkpoint must match (empty: whatever the checkpoint says).
    c.train = _method_config(arg) if arg else ml_collections.ConfigDict()
    protocols = ("linear_probe", "knn") + (("zero_shot", "retrieval") if arg in TEXT_METHODS else ())
    c.eval = cb.eval_config(protocols)
    c.eval.classification.max_train = 0  # the probe uses the whole training split
    return c
