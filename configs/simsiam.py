r"""SimSiam: a projector + predictor on each view, negative cosine to the other view's projection
under stop-gradient, both directions averaged; no target network, no negatives.

As the reference: SGD with weight decay on every parameter, cosine per epoch without warmup,
and the predictor's learning rate held at its initial value (``--fix-pred-lr``).

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/simsiam.py
ImageNet recipe (ResNet-50, batch 512, 100 epochs, SGD 0.05 x B/256, weight decay 1e-4;
projector 3 x 2048 with BN, predictor 2048 -> 512 -> 2048; MoCo v2's augmentation):
  python -m mmssl_jax.main --config=configs/simsiam.py:imagenet
"""

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "simsiam"
    cb.two_image_views(c)
    c.heads = {"image": cb.module("simsiam_projector", hidden_dim=256, out_dim=256)}
    c.predictors = {"image": cb.module("simsiam_predictor", hidden_dim=64, out_dim=256)}
    c.loss_terms = [
        cb.term("image1:p", "image2", "negative_cosine", weight=0.5),
        cb.term("image2:p", "image1", "negative_cosine", weight=0.5),
    ]
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.05
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1e-4
    c.optimizer.decay_rank1 = True  # torch SGD's weight_decay: every parameter
    c.optimizer.groups = {"predictor": cb.param_group("^predictors_", constant_lr=True)}
    if arg == "imagenet":
        cb.imagenet_run(c, batch_size=512, epochs=100)
        c.views.image1.augment = c.views.image2.augment = "moco_v2"
        c.heads.image = cb.module("simsiam_projector")
        c.predictors.image = cb.module("simsiam_predictor")
        c.optimizer.step_lr_per_epoch = True  # the reference adjusts the LR once per epoch
        cb.set_warmup(c)  # none
    elif arg:
        raise ValueError(f"configs/simsiam.py: unknown argument {arg!r}; use '' or 'imagenet'")
    return c
