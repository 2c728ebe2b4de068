r"""MoCo v2: a query encoder trained by InfoNCE against keys from a momentum encoder (EMA of
the query encoder) and a queue of past keys as negatives.

Default (embedded data, 2-core CPU, a few minutes; queue 4096, momentum 0.99):
  python -m mmssl_jax.main --config=configs/moco.py
ImageNet recipe (ResNet-50, queue 65536, momentum 0.999, temperature 0.2, SGD 0.03 x B/256):
  python -m mmssl_jax.main --config=configs/moco.py:imagenet
"""

import ml_collections

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "moco_v2"
    c.views = {"image1": cb.image_view("simclr_cifar"), "image2": cb.image_view("simclr_cifar")}
    c.encoders = {"image": cb.module("resnet18", cifar_stem=True, width=16)}
    c.heads = {"image": cb.module("simclr_mlp", hidden_dim=256, out_dim=64, num_layers=2, last_bn=False)}
    c.moco = ml_collections.ConfigDict()
    c.moco.momentum = 0.99  # EMA decay of the key (momentum) encoder.
    c.moco.queue_size = 4096  # Negatives kept from past batches (a multiple of the batch size).
    c.moco.key_view = "image2"  # The view the momentum encoder embeds as keys.
    c.loss_terms = [cb.term("image1", "image2@momentum", "info_nce", temperature=0.2, negatives="queue")]
    c.num_steps = 300
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.06
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 5e-4
    if arg == "imagenet":
        c.input.name = "imagenet2012"
        cb.imagenet_eval(c)
        c.input.image_size = 224
        c.input.batch_size = 256
        c.input.worker_count = 32
        c.views.image1.augment = c.views.image2.augment = "simclr_imagenet"
        c.encoders.image = cb.module("resnet50")
        c.heads.image = cb.module("simclr_mlp", hidden_dim=2048, out_dim=128, num_layers=2, last_bn=False)
        c.moco.momentum = 0.999
        c.moco.queue_size = 65536
        c.num_steps = 0
        c.num_epochs = 200
        c.optimizer.learning_rate = 0.03
        c.optimizer.weight_decay = 1e-4
        c.optimizer.warmup_steps = 0
        c.log_every = 100
        c.checkpoint_every = 2000
    elif arg:
        raise ValueError(f"configs/moco.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
