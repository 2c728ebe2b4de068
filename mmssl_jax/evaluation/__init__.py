"""Evaluation of frozen representations: linear probe, kNN, zero-shot, retrieval, modality ablations,
robustness curves.

- :mod:`~mmssl_jax.evaluation.protocols`: pure functions on feature arrays (no Flax, no config),
  usable from any project like :mod:`mmssl_jax.losses`.
- :mod:`~mmssl_jax.evaluation.robustness`: corruptions of captions and images, curves along a
  corruption rate and MultiBench's robustness scores (pure functions too).
- :mod:`~mmssl_jax.evaluation.counterfactual`: what each modality contributes per sample, when it
  is removed, swapped or replaced by its class mean (pure functions too).
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
    IMAGE_PROTOCOLS, PROTOCOLS, TEXT_PROTOCOLS, ClassificationEval, CounterfactualEval, Evaluation, RetrievalEval,
    RobustnessEval, check_counterfactual,
)
from mmssl_jax.evaluation.counterfactual import contributions as counterfactual_contributions
from mmssl_jax.evaluation.features import (
    ZERO_SHOT_TEMPLATES, FrozenModel, ImageSet, caption_table, class_embeddings, class_prompt_embeddings,
    model_variables,
)
from mmssl_jax.evaluation.protocols import (
    CAPTION_ABLATIONS, DEFAULT_L2_GRID, LinearProbe, ablate_captions, fit_linear_probe, knn_classify, l2_normalize,
    linear_probe, retrieval_recall, topk_accuracy, zero_shot_classify,
)
from mmssl_jax.evaluation.robustness import (
    CORRUPTIONS, caption_curves, corrupt_captions, corrupt_images, effective_robustness, relative_robustness,
)

__all__ = [
    "CAPTION_ABLATIONS", "CORRUPTIONS", "CounterfactualEval", "check_counterfactual", "counterfactual_contributions", "DEFAULT_L2_GRID", "LinearProbe", "RobustnessEval", "caption_curves",
    "corrupt_captions", "corrupt_images", "effective_robustness", "fit_linear_probe", "relative_robustness", "IMAGE_PROTOCOLS", "MODEL_KEYS", "PROTOCOLS", "TEXT_PROTOCOLS",
    "ZERO_SHOT_TEMPLATES", "CheckpointMismatchError", "ClassificationEval", "Evaluation", "FrozenModel",
    "ImageSet", "RetrievalEval", "ablate_captions", "caption_table", "class_embeddings",
    "class_prompt_embeddings", "evaluate_checkpoint", "knn_classify", "l2_normalize", "linear_probe",
    "model_variables", "restore_for_eval", "retrieval_recall", "topk_accuracy", "zero_shot_classify",
]
