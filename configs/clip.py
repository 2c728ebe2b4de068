r"""CLIP: an image encoder and a text head on precomputed caption embeddings, symmetric InfoNCE
with a learnable temperature (initialised to 0.07, its inverse clamped at 100 as the paper).

Default (embedded data, prepared on first use; 2-core CPU, a few minutes; the loss falls from
about log(128) = 4.85 and the image->text accuracy rises far above chance 1/128):
  python -m mmssl_jax.main --config=configs/clip.py
COCO recipe (prepare first: python -m mmssl_jax.data.prepare coco_captions_embedded
--manual_dir=/path/to/coco), ViT-B/16 at 224 px, AdamW, bf16, on a TPU/GPU pod; check that it
fits first with --dry_run (prints the recipe card, compiles one step, shows its memory):
  python -m mmssl_jax.main --config=configs/clip.py:coco --dry_run
"""

import math

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.image_text_towers(cb.base_config(), arg)
    c.method = "clip"
    c.learned_scalars = {"logit_scale": math.log(1 / 0.07)}
    c.max_logit_scale = math.log(100.0)  # CLIP: "clipped to prevent scaling the logits by more than 100"
    c.loss_terms = [cb.term("image", "text", "clip", logit_scale="learned:logit_scale")]
    return c
