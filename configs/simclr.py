r"""SimCLR: two augmented views of each image, NT-Xent across the global batch.

Default (embedded data, 2-core CPU, a few minutes; the loss falls and the view1->view2
retrieval accuracy rises far above chance 1/128):
  python -m mmssl_jax.main --config=configs/simclr.py

CIFAR-10 recipe (SimCLR's CIFAR command: ResNet-18 with the CIFAR stem, batch 512, 1000 epochs,
LARS lr 1.0 x B/256, weight decay 1e-4, 10 warmup epochs, temperature 0.5, jitter strength 0.5,
no blur, a 3-layer head as wide as the encoder (512); about 91% linear-probe top-1 reported).
Prepare once: python -m mmssl_jax.data.prepare cifar10_npz --manual_dir=/path/to/cifar10
  python -m mmssl_jax.main --config=configs/simclr.py:cifar
ImageNet recipe (the paper's: ResNet-50, batch 4096, 100 epochs, LARS 0.3 x B/256, weight decay
1e-6, 10 warmup epochs, temperature 0.1; the v2 README's command uses 0.075 x sqrt(B) with weight
decay 1e-4 instead):
  python -m mmssl_jax.main --config=configs/simclr.py:imagenet
"""

from mmssl_jax import config_base as cb


def get_config(arg: str = ""):
    c = cb.base_config()
    c.method = "simclr"
    cb.two_image_views(c)
    # Small-batch advice of the authors: 2-layer head, 64-d, temperature 0.2.
    c.heads = {"image": cb.module("simclr_mlp", hidden_dim=256, out_dim=64, num_layers=2)}
    c.loss_terms = [cb.term("image1", "image2", "nt_xent", temperature=0.2)]
    c.optimizer.name = "lars"
    c.optimizer.learning_rate = 0.3
    c.optimizer.lr_scaling = "linear"
    c.optimizer.weight_decay = 1e-6
    if arg == "cifar":
        c.input.name = "cifar10_npz"
        c.eval.classification.max_train = 0  # probe and kNN on all 50k training images
        c.input.batch_size = 512
        c.input.image_size = 32
        c.input.worker_count = 8
        c.encoders.image = cb.module("resnet18", cifar_stem=True)
        # The reference head: hidden width = the encoder's output width (512 for ResNet-18).
        c.heads.image = cb.module("simclr_mlp", hidden_dim=512, out_dim=128, num_layers=3)
        c.loss_terms = [cb.term("image1", "image2", "nt_xent", temperature=0.5)]
        c.num_steps = 0
        c.num_epochs = 1000
        c.optimizer.learning_rate = 1.0
        c.optimizer.weight_decay = 1e-4
        cb.set_warmup(c, epochs=10)
        c.log_every = 50
        c.checkpoint_every = 1000
    elif arg == "imagenet":
        cb.imagenet_run(c, batch_size=4096, epochs=100)
        c.views = {"image1": cb.image_view("simclr_imagenet"), "image2": cb.image_view("simclr_imagenet")}
        c.heads.image = cb.module("simclr_mlp", hidden_dim=2048, out_dim=128, num_layers=3)
        c.loss_terms = [cb.term("image1", "image2", "nt_xent", temperature=0.1)]
        c.optimizer.weight_decay = 1e-6
        cb.set_warmup(c, epochs=10)
    elif arg:
        raise ValueError(f"configs/simclr.py: unknown argument {arg!r}; use '', 'cifar' or 'imagenet'")
    return c
