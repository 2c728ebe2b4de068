r"""The PyTorch peer of ``benchmarks/cifar10_ssl.py``: lightly 1.6.0 on torch (CPU) running the
same method as our trainer, with the same architecture, views, optimizer, schedule and loss.

Run by ``cifar10_ssl.py`` in a separate Python with torch + lightly (never a dependency of
mmssl_jax); it reads the training images that script exported from our prepared
``cifar10_npz`` (the same decoded pixels), and at each evaluation point writes the frozen
encoder's features of the kNN bank and the test set to ``OUT/features_<step>.npz``; the kNN and
the linear probe are then computed on them by mmssl_jax's own protocol functions, exactly as
for our runs. ``OUT/peer.json`` gets the timings and the loss history.

Its environment (5.5 GB; torch's CPU-only 2.13.0 wheel cannot load torchvision's compiled ops;
lightly's other dependencies are not needed here, but its ``lightly.transforms`` imports
``lightning_utilities``)::

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lightning-utilities
    /work/torchvenv/bin/pip install --no-deps lightly==1.6.0

What mirrors what (ours -> here):

* encoder: ``mmssl_jax.models.resnet`` ResNet-18 with the CIFAR stem -> :class:`ResNet18Cifar`
  (3x3 stride-1 stem without max-pool, v1 basic blocks, 1x1 projection shortcut, last BN of
  each block zero-initialised, He fan-out normal conv init, BN momentum 0.1 = flax 0.9, eps 1e-5);
* heads: lightly's ``SimCLRProjectionHead`` / ``BYOLProjectionHead`` / ``BYOLPredictionHead``
  with our sizes; where ours has no parameter (the shift of SimCLR's last BN, the bias of BYOL's
  last Dense) it is set to zero and frozen; Dense weights initialised as flax (LeCun truncated
  normal, zero bias);
* views: lightly's ``SimCLRTransform`` with our ``simclr_cifar`` preset's parameters
  (crop 0.08-1, ratio 3/4-4/3, flip 0.5, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2,
  no blur, no normalisation: pixels in [0, 1] as ours);
* both views through the encoder in ONE forward pass (BatchNorm statistics over 2B), as
  ``mmssl_jax.models.multiview`` does; BYOL's target branch likewise, in train mode;
* optimizer: ``lightly.utils.lars.LARS`` (momentum 0.9, trust coefficient 1e-3, eps 0) with
  weight decay and the trust ratio only on rank >= 2 parameters (ours: optax.lars with those
  masks); learning rate ``lr x B/256``, linear warmup from 0 then cosine to 0, per update;
* losses: lightly ``NTXentLoss`` (SimCLR); BYOL ``(2 + 2 NegativeCosineSimilarity(p1, z2')) +
  (2 + 2 NegativeCosineSimilarity(p2, z1'))``, the value of ours; EMA decay
  ``1 - (1 - base)(cos(pi k / K) + 1) / 2`` at update k (ours), via lightly's ``update_momentum``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
from lightly.models.utils import update_momentum
from lightly.transforms import SimCLRTransform
from lightly.utils.lars import LARS
from PIL import Image

METHODS = ("simclr", "byol")


# ----------------------------------------------------------------------------- encoder


class BasicBlock(nn.Module):
    def __init__(self, cin: int, filters: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, filters, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters)
        nn.init.zeros_(self.bn2.weight)  # ours: zero_init_residual
        self.proj = None
        if stride != 1 or cin != filters:
            self.proj = nn.Sequential(nn.Conv2d(cin, filters, 1, stride, 0, bias=False), nn.BatchNorm2d(filters))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet18Cifar(nn.Module):
    """``[B, 3, 32, 32] -> [B, 8 * width]``, the mirror of ours (``resnet18``, ``cifar_stem=True``)."""

    def __init__(self, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for stage in range(4):
            for i in range(2):
                blocks.append(BasicBlock(cin, width * 2**stage, 2 if stage > 0 and i == 0 else 1))
                cin = width * 2**stage
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def flax_dense_init(module: nn.Module) -> None:
    """Linear layers as flax's Dense: LeCun normal (truncated at 2 std, variance 1/fan_in), zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            std = math.sqrt(1.0 / m.in_features) / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def freeze_zero(p: torch.nn.Parameter) -> None:
    """A parameter ours does not have: held at zero."""
    with torch.no_grad():
        p.zero_()
    p.requires_grad_(False)


# ----------------------------------------------------------------------------- data


class Views(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i]))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def features(encoder: nn.Module, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    encoder.eval()
    out = [encoder(to_tensor(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
    encoder.train()
    return np.concatenate(out).astype(np.float32)


# ----------------------------------------------------------------------------- schedules


def warmup_cosine(k: int, peak: float, warmup: int, total: int) -> float:
    """optax.warmup_cosine_decay_schedule(0, peak, warmup, total, end_value=0) at update k."""
    if k < warmup:
        return peak * k / warmup
    t = min(max(k - warmup, 0), total - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def ema_decay(k: int, base: float, total: int) -> float:
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total) + 1.0) / 2.0


# ----------------------------------------------------------------------------- run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--recipe", required=True, help="JSON written by cifar10_ssl.py: the values to mirror")
    p.add_argument("--data", required=True, help="npz with train_x, test_x (uint8 [N, 32, 32, 3]), bank_index")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    r = json.loads(Path(args.recipe).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(r["threads"])
    torch.manual_seed(r["seed"])
    np.random.seed(r["seed"])
    data = np.load(args.data)
    train_x, test_x, bank = data["train_x"], data["test_x"], data["bank_index"]

    encoder = ResNet18Cifar(r["width"])
    d = encoder.out_dim
    if args.method == "simclr":
        head = SimCLRProjectionHead(d, r["head_hidden"], r["head_out"], num_layers=r["head_layers"], batch_norm=True)
        flax_dense_init(head)
        freeze_zero(head.layers[-1].bias)  # ours: the last BN learns a scale, no shift
        online = nn.ModuleDict({"encoder": encoder, "head": head})
        criterion = NTXentLoss(temperature=r["temperature"])
    else:
        head = BYOLProjectionHead(d, r["head_hidden"], r["head_out"])
        predictor = BYOLPredictionHead(r["head_out"], r["pred_hidden"], r["pred_out"])
        flax_dense_init(head)
        flax_dense_init(predictor)
        freeze_zero(head.layers[-1].bias)  # ours: bias-free last Dense
        freeze_zero(predictor.layers[-1].bias)
        online = nn.ModuleDict({"encoder": encoder, "head": head, "predictor": predictor})
        target = nn.ModuleDict({"encoder": copy.deepcopy(encoder), "head": copy.deepcopy(head)})
        for q in target.parameters():
            q.requires_grad_(False)
        criterion = NegativeCosineSimilarity()
    trainable = [q for q in online.parameters() if q.requires_grad]
    groups = [{"params": [q for q in trainable if q.ndim >= 2], "weight_decay": r["weight_decay"]},
              {"params": [q for q in trainable if q.ndim < 2], "weight_decay": 0.0}]  # no decay, no trust ratio
    opt = LARS(groups, lr=0.0, momentum=r["momentum"], trust_coefficient=r["trust_coefficient"], eps=0.0)

    transform = SimCLRTransform(input_size=32, cj_prob=0.8, cj_strength=0.5, min_scale=0.08, random_gray_scale=0.2,
                                gaussian_blur=0.0, hf_prob=0.5, normalize=None)
    loader = torch.utils.data.DataLoader(
        Views(train_x, transform), batch_size=r["batch_size"], shuffle=True, drop_last=True,
        num_workers=r["loader_workers"], persistent_workers=r["loader_workers"] > 0,
        generator=torch.Generator().manual_seed(r["seed"]))
    total, warmup, eval_steps = r["total_steps"], r["warmup_steps"], set(r["eval_steps"])
    online.train()
    if args.method == "byol":
        target.train()

    history, evals, step_times = [], [], []
    train_seconds = 0.0
    step = 0
    t_last = time.perf_counter()
    while step < total:
        for (x0, x1) in loader:
            if step >= total:
                break
            lr = warmup_cosine(step, r["peak_lr"], warmup, total)
            for g in opt.param_groups:
                g["lr"] = lr
            x = torch.cat([x0, x1])
            if args.method == "simclr":
                z = online["head"](online["encoder"](x))
                z0, z1 = z.chunk(2)
                loss = criterion(z0, z1)
            else:
                pz = online["predictor"](online["head"](online["encoder"](x)))
                p0, p1 = pz.chunk(2)
                with torch.no_grad():
                    t0, t1 = target["head"](target["encoder"](x)).chunk(2)
                loss = (2 + 2 * criterion(p0, t1)) + (2 + 2 * criterion(p1, t0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if args.method == "byol":
                m = ema_decay(step, r["ema_base"], total)
                update_momentum(online["encoder"], target["encoder"], m)
                update_momentum(online["head"], target["head"], m)
            step += 1
            now = time.perf_counter()
            step_times.append(now - t_last)
            train_seconds += now - t_last
            if step % r["log_every"] == 0 or step == total:
                history.append((step, {"loss": float(loss), "learning_rate": lr}))
                print(f"peer {args.method} step {step}/{total} loss {float(loss):.4f} lr {lr:.4f} "
                      f"{train_seconds:.0f}s", flush=True)
            if step in eval_steps:
                t = time.perf_counter()
                np.savez(out / f"features_{step}.npz", bank=features(online["encoder"], train_x[bank]),
                         test=features(online["encoder"], test_x))
                evals.append({"step": step, "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t})
            t_last = time.perf_counter()
    (out / "peer.json").write_text(json.dumps({
        "train_seconds": train_seconds, "step_seconds": step_times, "history": history, "evals": evals,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
