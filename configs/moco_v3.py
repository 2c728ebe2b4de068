r"""MoCo v3: a query encoder + projector + predictor against keys from a momentum encoder +
projector (EMA, no predictor), symmetric InfoNCE over the batch (no queue), each direction
multiplied by 2T as the reference; the key momentum rises from its base to 1 on a cosine.

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/moco_v3.py
ImageNet recipe (ResNet-50, 100 epochs: batch 4096, LARS 0.6 x B/256, weight decay 1e-6,
10 warmup epochs, T 1.0, momentum 0.99 -> 1, projector 2048 -> 4096 -> 256 and predictor
256 -> 4096 -> 256 with BN, crop scale 0.2-1 with BYOL's asymmetric blur and solarize):
  python -m mmssl_jax.main --config=configs/moco_v3.py:imagenet
"""

from mmssl_jax import config_base as cb


def _terms(temperature: float) -> list[dict]:
    return [
        cb.term("image1:p", "image2@momentum", "info_nce", weight=2 * temperature, temperature=temperature),
        cb.term("image2:p", "image1@momentum", "info_nce", weight=2 * temperature, temperature=temperature),
    ]


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "moco_v3"
    cb.two_image_views(c)
    c.heads = {"image": cb.module("moco_v3_projector", hidden_dim=256, out_dim=64)}
    c.predictors = {"image": cb.module("moco_predictor", hidden_dim=256, out_dim=64)}
    c.ema = cb.ema_config(0.99, "cosine")
    c.loss_terms = _terms(0.2)
    c.optimizer.name = "lars"
    c.optimizer.learning_rate = 0.6
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1e-6
    if arg == "imagenet":
        cb.imagenet_run(c, batch_size=4096, epochs=100)
        c.views.image1.augment, c.views.image2.augment = "moco_v3_view1", "moco_v3_view2"
        c.heads.image = cb.module("moco_v3_projector")
        c.predictors.image = cb.module("moco_predictor")
        c.loss_terms = _terms(1.0)
        cb.set_warmup(c, epochs=10)
    elif arg:
        raise ValueError(f"configs/moco_v3.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
