r"""Barlow Twins: two views, cross-correlation pushed to the identity (lambda 5e-3), LARS.

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/barlow_twins.py
ImageNet recipe (ResNet-50, projector 8192-8192-8192, batch 2048, 1000 epochs):
  python -m mmssl_jax.main --config=configs/barlow_twins.py:imagenet
"""

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "barlow_twins"
    c.views = {"image1": cb.image_view("simclr_cifar"), "image2": cb.image_view("simclr_cifar")}
    c.encoders = {"image": cb.module("resnet18", cifar_stem=True, width=16)}
    c.heads = {"image": cb.module("barlow_projector", hidden_dim=512, out_dim=512, num_layers=3)}
    c.loss_terms = [cb.term("image1", "image2", "barlow_twins", lambda_=5e-3)]
    c.num_steps = 300
    c.optimizer.name = "lars"
    c.optimizer.learning_rate = 0.2
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1.5e-6
    if arg == "imagenet":
        c.input.name = "imagenet2012"
        cb.imagenet_eval(c)
        c.input.image_size = 224
        c.input.batch_size = 2048
        c.input.worker_count = 32
        c.dtype = "bfloat16"
        c.views.image1.augment, c.views.image2.augment = "byol_view1", "byol_view2"
        c.encoders.image = cb.module("resnet50")
        c.heads.image = cb.module("barlow_projector")
        c.num_steps = 0
        c.num_epochs = 1000
        c.optimizer.warmup_steps = 10 * (1_281_167 // 2048)
        c.log_every = 100
        c.checkpoint_every = 2000
    elif arg:
        raise ValueError(f"configs/barlow_twins.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
