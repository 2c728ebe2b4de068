"""Encoders and heads (Flax linen modules, used through ``init``/``apply``), found by name.

    from mmssl_jax.models import build_encoder, build_head
    encoder = build_encoder("resnet18", cifar_stem=True)       # x: [batch, 32, 32, 3] -> h: [batch, 512]
    head = build_head("simclr_mlp", hidden_dim=512, out_dim=128)  # h: [batch, 512] -> z: [batch, 128]
    model = build_model(config)                                 # a config's views, encoders, heads

The Flax BERT lives in ``mmssl_jax.models.bert`` and is imported only where text is encoded, so
importing this package stays light.
"""

from mmssl_jax.models.build import build_model
from mmssl_jax.models.multiview import MultiViewModel
from mmssl_jax.models.registry import ENCODERS, HEADS, build_encoder, build_head

__all__ = ["ENCODERS", "HEADS", "MultiViewModel", "build_encoder", "build_head", "build_model"]
