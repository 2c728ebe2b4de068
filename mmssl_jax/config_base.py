"""Defaults shared by every config in ``configs/``; each method file changes what it needs.

Every field is commented here once. Configs are plain ``ml_collections.ConfigDict``s; the
command line overrides any field with ``--config.key=value`` (unknown keys and wrong types are
refused before training).
"""

from __future__ import annotations

import math

import ml_collections

class ConfigError(ValueError):
    """A config that cannot train; raised before any training step, naming the key."""


EMBEDDED_DATASET = "mmssl_shapes"
"""The procedurally generated default dataset, prepared locally on first use (no download)."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ""  # Name shown in logs and the final summary line.
    c.seed = 0  # One seed for initialisation, shuffling, crops, caption draws and device augmentation.
    c.dtype = "float32"  # Compute dtype of encoders and heads ("bfloat16" on TPU/GPU); params stay float32.
    c.num_steps = 0  # Optimizer updates; 0 means num_epochs epochs.
    c.num_epochs = 0  # Epochs (may be fractional), used when num_steps is 0.
    # Gradient accumulation: one update takes k micro-batches of input.batch_size; the LR scales
    # with the batch per update and the schedule counts updates.
    c.accumulation_steps = 1
    # "average" (optax.MultiSteps): k steps, each averaging in one micro-batch's gradient; its
    # contrastive negatives and BatchNorm statistics stay per micro-batch (k = 1 is the real thing).
    # "exact" (GradCache, mmssl_jax.gradcache): one step embeds the k micro-batches without
    # activations, takes the loss over all k x batch_size embeddings (negatives from all of
    # them) and pulls its gradient back one micro-batch at a time: the whole batch's gradient
    # with one micro-batch's activations live. BatchNorm still normalizes per micro-batch. Not
    # with a target branch (config.ema: BYOL, MoCo).
    c.accumulation_mode = "average"
    c.log_every = 10  # Steps between logged metrics (TensorBoard + console).
    c.checkpoint_every = 100  # Steps between checkpoints; the last step is always saved.
    c.keep_checkpoints = 3  # Checkpoints kept on disk.
    c.profile = False  # Capture a profiler trace of a few steps into the workdir.
    # Upper clamp of a learned logit_scale after each update (CLIP: log 100); inf: no clamp (SigLIP).
    c.max_logit_scale = math.inf

    c.input = ml_collections.ConfigDict()
    c.input.name = EMBEDDED_DATASET  # A prepared tfds dataset (python -m mmssl_jax.data.prepare NAME).
    c.input.data_dir = ""  # tfds data dir; "" means $MMSSL_DATA_DIR or ~/tensorflow_datasets.
    c.input.split = "train"  # Split to train on.
    c.input.batch_size = 128  # Global batch (all devices, all hosts), per optimizer micro-step.
    c.input.image_size = 32  # Side of the image views after the random resized crop.
    c.input.caption_mode = "random"  # "random": a new caption each time (caption augmentation); "first": always caption 0.
    # Partially paired training: the fraction of training images that keep their captions; the
    # others (one seeded draw per image, the same every epoch and after a resume) are caption-less:
    # the image-only loss terms train on them, the image-text terms leave them out (loss masks).
    c.input.caption_fraction = 1.0
    # A stored image without captions: "skip" it (with a warning) or "mask" it (kept, caption-less).
    c.input.missing_captions = "skip"
    c.input.worker_count = 0  # grain worker processes for decoding and cropping (0: in the main process).
    # grain ReadOptions per process (each worker has its own): reader threads and prefetch buffer (elements).
    # Few threads for small images: at 32 px grain's default 16 threads cost ~1.6x the CPU per image of
    # 0-4 (GIL hand-offs outweigh the decoding); the buffer holds a batch, prepared during the step.
    # 0 and 0: read in the calling thread. Large images (224 px) set grain's defaults, 16 and 500.
    c.input.read_threads = 4
    c.input.read_buffer_size = 512
    c.input.prepare_if_missing = True  # Prepare the embedded dataset on first use (never downloads).

    # Views: name -> modality ("image" or "text") and, for images, the augmentation preset.
    c.views = ml_collections.ConfigDict()
    # Encoders and heads by modality, found by name in mmssl_jax.models (name "none": identity).
    c.encoders = ml_collections.ConfigDict()
    c.heads = ml_collections.ConfigDict()
    # Loss terms: (view a, view b, loss name, weight, kwargs); "learned:NAME" refers to learned_scalars.
    c.loss_terms = []
    # Learnable scalars and their initial values (CLIP's logit_scale, SigLIP's logit_bias).
    c.learned_scalars = ml_collections.ConfigDict()
    # Predictors by modality: the online branch's extra head (BYOL, SimSiam, MoCo v3), "p" outputs.
    c.predictors = ml_collections.ConfigDict()
    # A target branch (EMA of the online parameters) is config.ema = ema_config(...), read by
    # loss-term sides "VIEW@momentum"; MoCo's queue is config.moco (queue_size, key_view).

    c.loss = ml_collections.ConfigDict()
    # > 0: the loss terms run on the device ring (shard_map over the data axis): each contrastive
    # term (and its accuracy) streams chunk_size x chunk_size tiles of logits, the other devices'
    # embeddings passed around a ppermute ring, never gathered. Same loss to float32 rounding;
    # for global batches whose logits do not fit (slower than the default below ~4k). 0: off.
    c.loss.chunk_size = 0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # "lars", "adamw" or "sgd".
    c.optimizer.learning_rate = 1e-3  # Base learning rate, scaled by lr_scaling.
    # "linear": lr * B / 256; "sqrt": lr * sqrt(B); "none". B is the batch per optimizer update.
    c.optimizer.lr_scaling = "none"
    # Linear warmup from 0, given in ONE unit (the others 0): optimizer updates, epochs, or a
    # fraction of the run. It must end before the run does (refused otherwise).
    c.optimizer.warmup_steps = 20
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.warmup_fraction = 0.0
    c.optimizer.end_lr_fraction = 0.0  # Cosine decays to this fraction of the peak (Barlow Twins: 0.001).
    c.optimizer.step_lr_per_epoch = False  # Hold the LR within an epoch (MoCo v2 / SimSiam's per-epoch cosine).
    # Weight decay: AdamW's is decoupled (times the LR, as torch.optim.AdamW); LARS and SGD add
    # weight_decay * w to the gradient (L2). Never on rank <= 1 parameters unless decay_rank1.
    c.optimizer.weight_decay = 1e-4
    c.optimizer.decay_rank1 = False  # Decay biases and norm parameters too (MoCo v2, SimSiam: every parameter).
    c.optimizer.momentum = 0.9  # LARS / SGD momentum.
    c.optimizer.nesterov = False  # Nesterov momentum (LARS / SGD).
    c.optimizer.b1 = 0.9  # AdamW's first-moment decay.
    c.optimizer.b2 = 0.999  # AdamW's second-moment decay (CLIP: 0.98).
    c.optimizer.eps = 1e-8  # AdamW's epsilon (CLIP: 1e-6).
    c.optimizer.trust_coefficient = 1e-3  # LARS trust coefficient.
    c.optimizer.grad_clip_norm = 0.0  # Clip the global gradient norm (0: off).
    c.optimizer.no_decay = ()  # Extra regexes of parameter paths excluded from decay and LARS adaptation.
    c.optimizer.freeze = ()  # Regexes of parameter paths that are not trained.
    # Parameter groups with their own learning rate: name -> {select: "rank<=1" or a regex of
    # parameter paths, lr_multiplier: x the recipe's LR, constant_lr: no warmup or decay}; a
    # parameter joins the first group that selects it, else "default" (see param_group()).
    c.optimizer.groups = ml_collections.ConfigDict()

    # Robustness to a missing modality: modality -> fraction of samples that lose it at each step
    # (e.g. {"text": 0.3}). A dropped caption leaves the sample out of the image-text terms for
    # that step (loss masks, as input.caption_fraction); another modality's input is zeroed.
    # Evaluate with eval.ablations, eval.robustness or eval.counterfactual.
    c.modality_dropout = ml_collections.ConfigDict()
    c.eval = eval_config()
    return c


def eval_config(protocols: tuple[str, ...] = ("linear_probe", "knn")) -> ml_collections.ConfigDict:
    """Evaluation settings (mmssl_jax.evaluation), used during training and by configs/linear_probe.py."""
    e = ml_collections.ConfigDict()
    e.every = 0  # Steps between evaluations during training; 0: only after the last step.
    # Any of "linear_probe", "knn" (image encoder h), "zero_shot", "retrieval" (joint space z,
    # models with a text branch); () evaluates nothing. CLI: --config.eval.protocols="('knn',)".
    e.protocols = protocols
    e.image_size = 0  # Evaluation image side (centre crop); 0: input.image_size.
    # Centre crop of the evaluation images as a fraction of their shorter side (ImageNet recipes:
    # 0.875); the embedded 64 px shapes are evaluated whole. Images of <= 32 px are never cropped.
    e.center_crop_fraction = 1.0
    e.batch_size = 256  # Global batch of the feature extraction.
    e.cache_mb = 1024  # Keep decoded evaluation images in memory up to this size.
    e.text_model = "all-MiniLM-L6-v2"  # Sentence model for zero-shot prompts, unless the dataset names its own.
    e.templates = ()  # Zero-shot prompt templates with "{}" for the class name; (): evaluation.ZERO_SHOT_TEMPLATES.
    e.probe_l2 = ()  # L2 strengths the linear probe chooses from; (): evaluation.DEFAULT_L2_GRID (1e-6 .. 1).
    e.probe_iters = 300  # L-BFGS iterations of each probe fit.
    e.knn_k = (20, 200)  # Neighbour counts of the kNN classifier (InstDisc).
    e.knn_temperature = 0.07  # Temperature of the kNN vote weights exp(sim / T).
    # Labelled images for the probe, kNN and zero-shot: a prepared dataset name or a path (.npz,
    # image folder, CIFAR files); "" means input.name.
    e.classification = ml_collections.ConfigDict()
    e.classification.dataset = ""
    e.classification.data_dir = ""  # "" means input.data_dir.
    e.classification.label_key = "label"
    e.classification.train_split = "train"  # Probe/kNN training images.
    e.classification.max_train = 4000  # Use at most the first N of them (0: all).
    e.classification.test_split = "test"
    e.classification.name = ""  # Metric prefix; "" means the dataset name.
    e.classification.representation = "h"  # Probe/kNN features: "h" (encoder output) or "z" (head output).
    # Captioned images for retrieval (image<->text R@1/5/10) and the caption ablations.
    e.retrieval = ml_collections.ConfigDict()
    e.retrieval.dataset = ""  # "" means input.name.
    e.retrieval.data_dir = ""
    e.retrieval.split = "test"
    e.retrieval.name = ""
    # Modality ablations (models with a text branch): captions removed, shuffled, or noise.
    e.ablations = False
    # Robustness curves: each metric against a corruption rate, with MultiBench's relative and
    # effective robustness per curve, and <workdir>/robustness.png. Caption corruptions (text
    # branch) hit a fraction r of the images: "caption_missing", "caption_swapped",
    # "caption_noise"; image corruptions hit every test image at severity r: "image_noise",
    # "image_blur", "image_occlusion". (): none (each rate costs a pass over the test images
    # for an image corruption). CLI: --config.eval.robustness.corruptions="('caption_missing',)".
    e.robustness = ml_collections.ConfigDict()
    e.robustness.corruptions = ()
    e.robustness.rates = tuple(round(0.1 * i, 1) for i in range(11))  # from 0 (clean) to 1; subsample to save time
    # Metric families followed, () all that apply: retrieval, fused_probe, fused_knn (caption
    # corruptions, on the retrieval split), probe, knn, zero_shot (image corruptions), retrieval.
    e.robustness.metrics = ()
    # Effective robustness against another run's curves: its eval_summary.json or workdir (same
    # corruptions and rates); "": against the constant clean score (a model the corruption cannot touch).
    e.robustness.baseline = ""
    e.robustness.seed = 0  # Which images and captions are corrupted, the noise and the occluders.
    # Counterfactual modality contribution (image+caption models), on the retrieval split, whose
    # label (label_key) the fused probe predicts: per test sample, how the probe's p(true class)
    # and the retrieval rank of its partner change when its image or caption alone is "removed"
    # (black image / zero caption embedding), "swapped" (another sample's, a seeded derangement)
    # or "class_mean" (its class's prototype over the training half). Means per counterfactual go
    # to the metrics; per class, per sample and the top_k samples that depend most on each
    # modality to <workdir>/counterfactual.json and .md. (): off.
    # CLI: --config.eval.counterfactual.modalities="('image','caption')".
    e.counterfactual = ml_collections.ConfigDict()
    e.counterfactual.modalities = ()  # any of "image", "caption"
    e.counterfactual.kinds = ("removed", "swapped", "class_mean")
    e.counterfactual.label_key = ""  # "": eval.classification.label_key
    e.counterfactual.top_k = 10
    e.counterfactual.seed = 0  # The probe/prototype half of the split and the swap derangement.
    return e


def imagenet_eval(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ImageNet recipes: weighted kNN on the full training set, scored on the validation split
    (the linear probe is run on the final checkpoint with configs/linear_probe.py)."""
    c.eval.protocols = ("knn",)
    c.eval.center_crop_fraction = 0.875  # resize 256, centre crop 224
    c.eval.classification.test_split = "validation"
    c.eval.classification.max_train = 0
    return c


def param_group(select: str, lr_multiplier: float = 1.0, constant_lr: bool = False) -> ml_collections.ConfigDict:
    """One entry of ``optimizer.groups``: parameters ``select``-ed (``"rank<=1"`` or a path regex)."""
    return ml_collections.ConfigDict({"select": select, "lr_multiplier": lr_multiplier, "constant_lr": constant_lr})


def set_warmup(c: ml_collections.ConfigDict, *, steps: int = 0, epochs: float = 0.0, fraction: float = 0.0):
    """Warmup in the unit the paper gives it (the other two units are zeroed)."""
    c.optimizer.warmup_steps, c.optimizer.warmup_epochs, c.optimizer.warmup_fraction = steps, epochs, fraction
    return c


def ema_config(momentum: float, schedule: str = "constant") -> ml_collections.ConfigDict:
    """A target branch: EMA of the online encoder + head, decay ``momentum`` per optimizer update,
    ``schedule="cosine"`` raising it to 1 at the last update (BYOL, MoCo v3)."""
    return ml_collections.ConfigDict({"momentum": momentum, "schedule": schedule})


def two_image_views(c: ml_collections.ConfigDict, augment: str = "simclr_cifar") -> ml_collections.ConfigDict:
    """Two augmented views of each image through one encoder: the embedded default's small
    ResNet-18 (CIFAR stem, width 16) for 300 updates; the image methods start from this."""
    c.views = {"image1": image_view(augment), "image2": image_view(augment)}
    c.encoders = {"image": module("resnet18", cifar_stem=True, width=16)}
    c.num_steps = 300
    return c


def imagenet_run(c: ml_collections.ConfigDict, *, batch_size: int, epochs: int,
                 dtype: str = "bfloat16") -> ml_collections.ConfigDict:
    """The ImageNet pretraining run of the image recipes: ResNet-50 on 224 px views of
    imagenet2012, ``epochs`` epochs at a global ``batch_size``, kNN on the validation split."""
    c.input.name = "imagenet2012"
    imagenet_eval(c)
    c.input.image_size = 224
    c.input.batch_size = batch_size
    c.input.worker_count = 32
    c.input.read_threads, c.input.read_buffer_size = 16, 500  # grain's defaults: decoding dominates at 224 px
    c.dtype = dtype
    c.encoders.image = module("resnet50")
    c.num_steps = 0
    c.num_epochs = epochs
    c.log_every = 100
    c.checkpoint_every = 2000
    return c


def image_view(augment: str = "simclr_cifar") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"modality": "image", "augment": augment})


def text_view() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"modality": "text"})


def module(name: str, **kwargs) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, "kwargs": kwargs})


def term(a: str, b: str, loss: str, weight: float = 1.0, **kwargs) -> dict:
    return {"a": a, "b": b, "loss": loss, "weight": weight, "kwargs": kwargs}


CLIP_WARMUP_FRACTION = 2000 / (32 * 400_000_000 // 32_768)
"""CLIP's 2,000 warmup iterations of its 32 epochs x 400M pairs at batch 32,768 (390,625 updates)."""


def image_text_towers(c: ml_collections.ConfigDict, recipe: str = "") -> ml_collections.ConfigDict:
    """The CLIP-style towers shared by CLIP and SigLIP: an image encoder + linear projection, and
    the text head on precomputed caption embeddings. ``recipe="coco"``: ViT-B/16 at 224 px,
    bf16, AdamW with CLIP's settings (lr 5e-4, b2 0.98, eps 1e-6, weight decay 0.2, warmup as the
    same fraction of the run as CLIP's), on the prepared COCO captions."""
    c.views = {"image": image_view("clip_crop"), "text": text_view()}
    c.encoders = {"image": module("resnet18", cifar_stem=True, width=16), "text": module("none")}
    c.heads = {
        "image": module("linear_projection", out_dim=128),
        "text": module("text_mlp", hidden_dim=256, out_dim=128, num_layers=2),
    }
    c.num_steps = 300
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.weight_decay = 0.05
    c.eval.protocols = ("linear_probe", "knn", "zero_shot", "retrieval")
    if recipe == "coco":
        c.input.name = "coco_captions_embedded"
        c.input.image_size = 224
        c.input.batch_size = 4096
        c.input.worker_count = 16
        c.input.read_threads, c.input.read_buffer_size = 16, 500  # grain's defaults: decoding dominates at 224 px
        c.dtype = "bfloat16"
        c.encoders.image = module("vit_b", patch_size=16, pool="cls")
        c.heads.image = module("linear_projection", out_dim=512)
        c.heads.text = module("text_mlp", hidden_dim=1024, out_dim=512, num_layers=2)
        c.num_steps = 0
        c.num_epochs = 32
        c.optimizer.learning_rate = 5e-4
        c.optimizer.weight_decay = 0.2
        c.optimizer.b2 = 0.98
        c.optimizer.eps = 1e-6
        set_warmup(c, fraction=CLIP_WARMUP_FRACTION)
        c.optimizer.grad_clip_norm = 1.0
        # Image<->text R@1/5/10 on val2017 (its 5,000 images; not the Karpathy 5k test split).
        c.eval.protocols = ("retrieval",)
        c.eval.retrieval.split = "val"
        c.eval.center_crop_fraction = 0.875
        c.log_every = 50
        c.checkpoint_every = 1000
    elif recipe:
        raise ValueError(f"unknown config argument {recipe!r}; use '' (embedded data) or 'coco'")
    return c
