"""Why BERTSimCLR's caption terms barely learned: short runs of the old configs/bert_simclr.py
design with one lever changed (the findings behind today's config; see its docstring).

  python benchmarks/caption_terms_diagnosis.py VARIANT [--steps=150]

The old design: the caption terms (CLIP, weight 0.5 each) read the two SimCLR views, under LARS
at 0.3 x B/256 (0.15 at batch 128), weight decay 1e-6, the learned temperature in the default
group. That last part is now refused by the optimizer (a scalar gets no trust ratio under LARS),
so every LARS variant puts it in its own group except ``fixed_t``. VARIANT is one of:
  fixed_t       the CLIP terms at a fixed temperature 0.07 (no learned scalar)
  scalar_group  the learned logit_scale in its own group at 0.01 x the LARS learning rate
  adamw         AdamW 2e-3, weight decay 0.05, instead of LARS (logit_scale at the same rate)
  third_view    scalar_group, and one caption term on a third, gently cropped view (clip_crop)
  sqrt_lr       scalar_group, and LARS at SimCLR's small-batch CIFAR rate, 0.2 x sqrt(B)
  sqrt_lr_text  sqrt_lr, and the caption terms weighted 1 each (not 0.5)
  sqrt_third    sqrt_lr and third_view together
  adamw_third   adamw and third_view together: today's configs/bert_simclr.py
Each run trains on the embedded data (no evaluation) in /tmp/caption_terms/VARIANT and prints the
caption-term losses and accuracies, the temperature and the NT-Xent accuracy every 30 updates.
"""

import argparse
import importlib.util
import json
import math
from pathlib import Path

from mmssl_jax import config_base as cb
from mmssl_jax import train

VARIANTS = ("fixed_t", "scalar_group", "adamw", "third_view", "sqrt_lr", "sqrt_lr_text", "sqrt_third", "adamw_third")


def old_config():
    """configs/bert_simclr.py as it was: caption terms on both SimCLR views, LARS 0.3 x B/256."""
    spec = importlib.util.spec_from_file_location("bert_simclr", Path(__file__).parents[1] / "configs" / "bert_simclr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    del c.views["image"]
    nt_xent = c.loss_terms[0]
    c.loss_terms = [nt_xent] + [cb.term(v, "text", "clip", weight=0.5, logit_scale="learned:logit_scale")
                                for v in ("image1", "image2")]
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.lr_scaling = "lars", 0.3, "linear"
    c.optimizer.weight_decay = 1e-6
    return c


def config_for(variant: str, steps: int):
    c = old_config()
    c.num_steps = steps
    c.eval.protocols = ()
    if variant == "fixed_t":
        c.learned_scalars = {}
        for t in c.loss_terms:
            if t["loss"] == "clip":
                t["kwargs"]["logit_scale"] = math.log(1 / 0.07)
    if variant.startswith(("adamw",)):
        c.optimizer.name, c.optimizer.learning_rate, c.optimizer.lr_scaling = "adamw", 2e-3, "none"
        c.optimizer.weight_decay = 0.05
    elif variant != "fixed_t":
        c.optimizer.groups = {"scalars": cb.param_group("^logit_scale$", lr_multiplier=0.01)}
    if variant.startswith("sqrt_"):
        c.optimizer.learning_rate, c.optimizer.lr_scaling = 0.2, "sqrt"
    if variant == "sqrt_lr_text":
        for t in c.loss_terms[1:]:
            t["weight"] = 1.0
    if variant in ("third_view", "sqrt_third", "adamw_third"):
        c.views["image"] = cb.image_view("clip_crop")
        c.loss_terms = [c.loss_terms[0], cb.term("image", "text", "clip", logit_scale="learned:logit_scale")]
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    workdir = Path("/tmp/caption_terms") / args.variant
    train.train_and_evaluate(config_for(args.variant, args.steps), workdir)
    history = json.loads((workdir / "history.json").read_text())
    for step, row in history[2::3] + history[-1:]:
        shown = {k: round(v, 3) for k, v in row.items() if k.startswith(("accuracy", "scalar/temp", "loss/clip"))}
        print(args.variant, step, shown)


if __name__ == "__main__":
    main()
