r"""Barlow Twins: two views, cross-correlation pushed to the identity (lambda 0.0051), LARS.

Biases and BatchNorm parameters learn at 0.0048 x B/256 against 0.2 x B/256 for the weights
(the reference's two parameter groups), both warm up for 10 epochs and decay by cosine to 1/1000
of their peak; LARS leaves rank-1 parameters out of weight decay and adaptation.

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/barlow_twins.py
ImageNet recipe (ResNet-50, projector 8192-8192-8192, batch 2048, 1000 epochs, weight decay
1.5e-6 as the paper; the reference code's default is 1e-6):
  python -m mmssl_jax.main --config=configs/barlow_twins.py:imagenet
"""

from mmssl_jax import config_base as cb

BIAS_LR_RATIO = 0.0048 / 0.2  # learning-rate-biases / learning-rate-weights


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "barlow_twins"
    cb.two_image_views(c)
    c.heads = {"image": cb.module("barlow_projector", hidden_dim=512, out_dim=512, num_layers=3)}
    c.loss_terms = [cb.term("image1", "image2", "barlow_twins", lambda_=0.0051)]
    c.optimizer.name = "lars"
    c.optimizer.learning_rate = 0.2
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1.5e-6
    c.optimizer.end_lr_fraction = 0.001
    c.optimizer.groups = {"biases_and_norms": cb.param_group("rank<=1", lr_multiplier=BIAS_LR_RATIO)}
    if arg == "imagenet":
        cb.imagenet_run(c, batch_size=2048, epochs=1000)
        c.views.image1.augment, c.views.image2.augment = "barlow_view1", "barlow_view2"
        c.heads.image = cb.module("barlow_projector")
        cb.set_warmup(c, epochs=10)
    elif arg:
        raise ValueError(f"configs/barlow_twins.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
