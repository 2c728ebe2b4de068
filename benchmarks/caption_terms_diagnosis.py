"""Why BERTSimCLR's caption terms barely learn: short runs of configs/bert_simclr.py with one lever changed.

  python benchmarks/caption_terms_diagnosis.py VARIANT [--steps=150]

VARIANT is one of:
  shipped       the config as it is (LARS 0.3 x B/256, learned temperature)
  fixed_t       the CLIP terms at a fixed temperature 0.07 (no learned scalar)
  scalar_group  the learned logit_scale in its own group at 0.01 x the LARS learning rate
  adamw         AdamW 2e-3, weight decay 0.05, instead of LARS
  third_view    the scalar group, and the caption term on a third, gently cropped view (clip_crop)
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

VARIANTS = ("shipped", "fixed_t", "scalar_group", "adamw", "third_view")


def config_for(variant: str, steps: int):
    spec = importlib.util.spec_from_file_location("bert_simclr", Path(__file__).parents[1] / "configs" / "bert_simclr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.num_steps = steps
    c.eval.protocols = ()
    if variant == "fixed_t":
        c.learned_scalars = {}
        for t in c.loss_terms:
            if t["loss"] == "clip":
                t["kwargs"]["logit_scale"] = math.log(1 / 0.07)
    elif variant in ("scalar_group", "third_view"):
        c.optimizer.groups = {"scalars": cb.param_group("^logit_scale$", lr_multiplier=0.01)}
        if variant == "third_view":
            c.views["image"] = cb.image_view("clip_crop")
            c.loss_terms = [c.loss_terms[0], cb.term("image", "text", "clip", logit_scale="learned:logit_scale")]
    elif variant == "adamw":
        c.optimizer.name, c.optimizer.learning_rate, c.optimizer.lr_scaling = "adamw", 2e-3, "none"
        c.optimizer.weight_decay = 0.05
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
