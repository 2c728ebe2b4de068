"""Evaluation of frozen representations: linear probe, kNN, zero-shot, retrieval, modality ablations.

- :mod:`~mmssl_jax.evaluation.protocols`: pure functions on feature arrays (no Flax, no config),
  usable from any project like :mod:`mmssl_jax.losses`.
- :mod:`~mmssl_jax.evaluation.features`: a frozen model on the mesh, image sets, prompt embeddings.
- :mod:`~mmssl_jax.evaluation.evaluators`: config-driven evaluators the trainer runs
  (``run(params, batch_stats) -> metrics``).
- :mod:`~mmssl_jax.evaluation.checkpoints`: a training checkpoint restored and evaluated on its
  own (``configs/linear_probe.py``).

The names most used are re-exported here: ``from mmssl_jax import evaluation;
evaluation.linear_probe(...)``.
"""

from mmssl_jax.evaluation.checkpoints import (
    MODEL_KEYS, CheckpointMismatchError, evaluate_checkpoint, restore_for_eval,
)
from mmssl_jax.evaluation.evaluators import (
    IMAGE_PROTOCOLS, PROTOCOLS, TEXT_PROTOCOLS, ClassificationEval, Evaluation, RetrievalEval,
)
from mmssl_jax.evaluation.features import (
    ZERO_SHOT_TEMPLATES, FrozenModel, ImageSet, caption_table, class_embeddings, class_prompt_embeddings,
    model_variables,
)
from mmssl_jax.evaluation.protocols import (
    CAPTION_ABLATIONS, DEFAULT_L2_GRID, ablate_captions, knn_classify, l2_normalize, linear_probe,
    retrieval_recall, topk_accuracy, zero_shot_classify,
)

__all__ = [
    "CAPTION_ABLATIONS", "DEFAULT_L2_GRID", "IMAGE_PROTOCOLS", "MODEL_KEYS", "PROTOCOLS", "TEXT_PROTOCOLS",
    "ZERO_SHOT_TEMPLATES", "CheckpointMismatchError", "ClassificationEval", "Evaluation", "FrozenModel",
    "ImageSet", "RetrievalEval", "ablate_captions", "caption_table", "class_embeddings",
    "class_prompt_embeddings", "evaluate_checkpoint", "knn_classify", "l2_normalize", "linear_probe",
    "model_variables", "restore_for_eval", "retrieval_recall", "topk_accuracy", "zero_shot_classify",
]
