"""Input data: tfds builders, grain pipelines, image augmentations and the embedded default dataset."""
