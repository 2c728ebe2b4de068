r"""VICReg: invariance + variance + covariance terms (weights 25 / 25 / 1), LARS.

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/vicreg.py
ImageNet recipe (ResNet-50, expander 8192 x 3, batch 2048, 1000 epochs):
  python -m mmssl_jax.main --config=configs/vicreg.py:imagenet
"""

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "vicreg"
    cb.two_image_views(c)
    c.heads = {"image": cb.module("barlow_projector", hidden_dim=512, out_dim=512, num_layers=3)}
    c.loss_terms = [cb.term("image1", "image2", "vicreg", sim_weight=25.0, var_weight=25.0, cov_weight=1.0)]
    c.optimizer.name = "lars"
    c.optimizer.learning_rate = 0.2
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1e-6
    if arg == "imagenet":
        cb.imagenet_run(c, batch_size=2048, epochs=1000)
        # torchvision ColorJitter (multiplicative brightness) with BYOL's probabilities, as Barlow Twins
        c.views.image1.augment, c.views.image2.augment = "barlow_view1", "barlow_view2"
        c.heads.image = cb.module("barlow_projector")
        cb.set_warmup(c, epochs=10)
    elif arg:
        raise ValueError(f"configs/vicreg.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
