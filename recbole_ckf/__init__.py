"""recbole-ckf: CKF (Collaborative Knowledge Fusion, arXiv 2410.20642) as a RecBole plugin."""

from recbole_ckf import compat as _compat

_compat.apply()

__version__ = "0.1.0"

from recbole_ckf.recommend import recommend  # noqa: E402  (recbole_ckf.recommend(checkpoint, users, topk=10))
