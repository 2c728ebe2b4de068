"""Encoders and heads (Flax linen, used through ``init``/``apply``), found by name.

``build_encoder("resnet50")``, ``build_head("simclr_mlp", out_dim=128)``; the Flax BERT lives in
``mmssl_jax.models.bert`` and is imported only where text is encoded.
"""

from mmssl_jax.models.registry import ENCODERS, HEADS, build_encoder, build_head

__all__ = ["ENCODERS", "HEADS", "build_encoder", "build_head"]
