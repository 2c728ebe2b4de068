r"""MoCo v2: a query encoder trained by InfoNCE against keys from a momentum encoder (EMA of
the query encoder) and a queue of past keys as negatives.

As the reference: the query branch sees only the query view and the key branch only the key
view (two encoder passes, BatchNorm statistics of each view apart); the head is Dense 2048 ->
ReLU -> Dense 128 with biases; SGD puts weight decay on every parameter; the learning rate
follows a cosine per epoch, without warmup; views use MoCo v2's augmentation (its --aug-plus).

Default (embedded data, 2-core CPU, a few minutes; queue 4096, momentum 0.99):
  python -m mmssl_jax.main --config=configs/moco.py
ImageNet recipe (ResNet-50, batch 256, 200 epochs, SGD 0.03 x B/256, weight decay 1e-4,
temperature 0.2, queue 65536, momentum 0.999):
  python -m mmssl_jax.main --config=configs/moco.py:imagenet
"""

import ml_collections

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "moco_v2"
    cb.two_image_views(c, "moco_v2")
    c.heads = {"image": cb.module("moco_v2_mlp", hidden_dim=256, out_dim=64)}
    c.ema = cb.ema_config(0.99)  # the key (momentum) encoder
    c.moco = ml_collections.ConfigDict()
    c.moco.queue_size = 4096  # Negatives kept from past batches (a multiple of the batch size); 0: none.
    c.moco.key_view = "image2"  # The view whose target-branch keys are enqueued.
    c.loss_terms = [cb.term("image1", "image2@momentum", "info_nce", temperature=0.2, negatives="queue")]
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.06
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_rank1 = True  # torch SGD's weight_decay: every parameter
    if arg == "imagenet":
        cb.imagenet_run(c, batch_size=256, epochs=200, dtype="float32")
        c.heads.image = cb.module("moco_v2_mlp")
        c.ema = cb.ema_config(0.999)
        c.moco.queue_size = 65536
        c.optimizer.learning_rate = 0.03
        c.optimizer.weight_decay = 1e-4
        c.optimizer.step_lr_per_epoch = True  # the reference adjusts the LR once per epoch
        cb.set_warmup(c)  # none
    elif arg:
        raise ValueError(f"configs/moco.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
