r"""BYOL: an online encoder + projector + predictor regresses the projection of the other view
by a target network (EMA of the online encoder + projector, no predictor); loss 2 - 2 cos,
both directions; the target's decay rises from 0.996 to 1 on a cosine.

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/byol.py
ImageNet recipe (the 1000-epoch preset: ResNet-50, batch 4096, LARS 0.2 x B/256, weight decay
1.5e-6, 10 warmup epochs, EMA 0.996; projector and predictor 4096 -> 256; BYOL's asymmetric views):
  python -m mmssl_jax.main --config=configs/byol.py:imagenet
"""

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "byol"
    cb.two_image_views(c)
    c.heads = {"image": cb.module("byol_mlp", hidden_dim=256, out_dim=64)}
    c.predictors = {"image": cb.module("byol_mlp", hidden_dim=256, out_dim=64)}
    c.ema = cb.ema_config(0.99, "cosine")
    c.loss_terms = [
        cb.term("image1:p", "image2@momentum", "byol"),
        cb.term("image2:p", "image1@momentum", "byol"),
    ]
    c.optimizer.name = "lars"
    c.optimizer.learning_rate = 0.2
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1.5e-6
    if arg == "imagenet":
        cb.imagenet_run(c, batch_size=4096, epochs=1000)
        c.views.image1.augment, c.views.image2.augment = "byol_view1", "byol_view2"
        c.heads.image = cb.module("byol_mlp")
        c.predictors.image = cb.module("byol_mlp")
        c.ema = cb.ema_config(0.996, "cosine")
        cb.set_warmup(c, epochs=10)
    elif arg:
        raise ValueError(f"configs/byol.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
