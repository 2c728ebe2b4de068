r"""Image + caption pretraining (BERTSimCLR): SimCLR on two strongly augmented image views plus
CLIP between a third, gently cropped view and a caption embedding from the frozen sentence-BERT
("virtual text head").

Each step draws one of the image's captions (caption augmentation); turn it off for the
ablation with --config.input.caption_mode=first.

Why a third view and AdamW (benchmarks/caption_terms_diagnosis.py, results in the README): with
the caption terms on the two SimCLR views under LARS at 0.3 x B/256 the image-caption terms
did not learn (their loss stayed at log(batch)). Three causes: (1) LARS gave the learned
temperature the full learning rate (a scalar gets no trust ratio): 0.07 -> 0.74 in 60 updates,
now refused by the optimizer; (2) LARS at the linearly scaled 0.15 (batch 128) moves each
weight matrix by about 0.15% of its norm per update, too slow for a text head that starts from
random; (3) SimCLR's crops (down to 8% of the image) and colour jitter remove what a caption
describes. So, as SLIP (Mu et al. 2022) combines SimCLR and CLIP: the caption term reads its own
gently cropped view (``clip_crop``, no colour changes), and the optimizer is AdamW as for CLIP.

Default (embedded data, 2-core CPU, a few minutes):
  python -m mmssl_jax.main --config=configs/bert_simclr.py
COCO recipe: python -m mmssl_jax.main --config=configs/bert_simclr.py:coco
"""

import math

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "bert_simclr"
    c.views = {
        "image1": cb.image_view("simclr_cifar"),  # the SimCLR pair
        "image2": cb.image_view("simclr_cifar"),
        "image": cb.image_view("clip_crop"),  # the caption term's view: what the caption describes stays
        "text": cb.text_view(),
    }
    c.encoders = {"image": cb.module("resnet18", cifar_stem=True, width=16), "text": cb.module("none")}
    c.heads = {
        "image": cb.module("simclr_mlp", hidden_dim=256, out_dim=64, num_layers=2),
        "text": cb.module("text_mlp", hidden_dim=256, out_dim=64, num_layers=2),
    }
    c.learned_scalars = {"logit_scale": math.log(1 / 0.07)}
    c.max_logit_scale = math.log(100.0)  # as CLIP
    c.loss_terms = [
        cb.term("image1", "image2", "nt_xent", temperature=0.2),
        cb.term("image", "text", "clip", logit_scale="learned:logit_scale"),
    ]
    c.num_steps = 300
    c.optimizer.name = "adamw"  # as configs/clip.py and SLIP; LARS left the caption terms untrained
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 0.05
    c.eval.protocols = ("linear_probe", "knn", "zero_shot", "retrieval")
    if arg == "coco":
        c.input.name = "coco_captions_embedded"
        c.input.image_size = 224
        c.input.batch_size = 1024
        c.input.worker_count = 16
        c.input.read_threads, c.input.read_buffer_size = 16, 500  # grain's defaults: decoding dominates at 224 px
        c.dtype = "bfloat16"
        c.views.image1.augment = c.views.image2.augment = "simclr_imagenet"
        # SimCLR's ImageNet optimizer (LARS 0.3 x B/256, weight decay 1e-6); the learned
        # temperature gets no trust ratio under LARS, so it learns at 1% of the rate.
        c.optimizer.name = "lars"
        c.optimizer.learning_rate = 0.3
        c.optimizer.lr_scaling = "linear"
        c.optimizer.weight_decay = 1e-6
        c.optimizer.groups = {"scalars": cb.param_group("^logit_scale$", lr_multiplier=0.01)}
        c.encoders.image = cb.module("resnet50")
        c.heads.image = cb.module("simclr_mlp", hidden_dim=2048, out_dim=128, num_layers=3)
        c.heads.text = cb.module("text_mlp", hidden_dim=1024, out_dim=128, num_layers=2)
        c.num_steps = 0
        c.num_epochs = 100
        cb.set_warmup(c, epochs=10)
        # The original experiment: linear probe on CIFAR-10 (prepare cifar10_npz), and retrieval.
        c.eval.protocols = ("linear_probe", "retrieval")
        c.eval.classification.dataset = "cifar10_npz"
        c.eval.classification.max_train = 0
        c.eval.retrieval.split = "val"  # val2017 (5,000 images), not the Karpathy 5k test split
        c.eval.center_crop_fraction = 0.875  # COCO at 224 px (CIFAR-10's 32 px images are never cropped)
        c.log_every = 50
        c.checkpoint_every = 1000
    elif arg:
        raise ValueError(f"configs/bert_simclr.py: unknown argument {arg!r}; use '' or 'coco'")
    return c
