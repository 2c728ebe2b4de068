r"""SigLIP: CLIP's towers with the pairwise sigmoid loss; learnable scale (init log 10) and bias
(init -10, as the paper; log(1/batch) is the reasoned alternative at small batch). The paper
clamps neither (config.max_logit_scale stays inf: no clamp).

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/siglip.py
COCO recipe (ViT-B/16 at 224 px, batch 4096):
  python -m mmssl_jax.main --config=configs/siglip.py:coco
"""

import math

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.image_text_towers(cb.base_config(), arg)
    c.method = "siglip"
    c.learned_scalars = {"logit_scale": math.log(10.0), "logit_bias": -10.0}
    c.loss_terms = [
        cb.term("image", "text", "siglip", logit_scale="learned:logit_scale", logit_bias="learned:logit_bias")
    ]
    return c
