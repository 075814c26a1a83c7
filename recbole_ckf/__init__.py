"""recbole-ckf: CKF (Collaborative Knowledge Fusion, arXiv 2410.20642) as a RecBole plugin."""

import os as _os

# torch's bf16 CPU matmuls (oneDNN) keep one JIT-compiled primitive per matmul shape, up to 1024; prompts of every
# length make new shapes, so a Gemma training run's resident memory grew ~20 MB per step (0.8 GB in 40 steps).
# Capped at 128 it levelled off 0.4 GB lower, with the same losses and ~3% fewer training tokens/s (measured, 2
# cores; README). Read at the first matmul; a value already in the environment wins.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")

from recbole_ckf import compat as _compat  # noqa: E402

_compat.apply()

__version__ = "0.1.0"

from recbole_ckf.recommend import recommend  # noqa: E402  (recbole_ckf.recommend(checkpoint, users, topk=10))
