"""``score_fusion: backbone``: CKF's scores blended with its frozen backbone's, fitted on validation.

A second row beside pure CKF (never instead of it). The backbone's score of (u, v) is e_u . e_v of the frozen
tables CKF fuses (the score BPR and LightGCN rank by; for other backbones, the inner product of their exported
tables).

* sequential: per candidate list, ``(1 - w) * z(CKF score) + w * z(backbone score)``, z the standardisation
  within the list; ``w`` in [0, 1] is the grid value with the best validation NDCG@3 (the first of equals, so
  the smallest). ``w = 1`` ranks exactly as the backbone, ``w = 0`` exactly as CKF: on validation the fused
  ranking is never below either.
* ctr: logistic regression of the label on (CKF logit, backbone score); rating: least squares of the rating
  on (CKF's calibrated rating, backbone score). Both fitted on validation (scikit-learn).
"""

import numpy as np
import torch

GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def _z(x):
    x = torch.as_tensor(x, dtype=torch.float64)
    x = torch.nan_to_num(x, nan=0.0, neginf=0.0)
    sd = x.std(unbiased=False)
    return (x - x.mean()) / sd if sd > 0 else x - x.mean()


def blend_lists(ckf_scores, backbone_scores, w):
    """Per list: ``(1 - w) * z(ckf) + w * z(backbone)`` (lists of 1-D tensors, one per sample)."""
    return [((1 - w) * _z(c) + w * _z(b)).float() for c, b in zip(ckf_scores, backbone_scores)]


def _ndcg_at(scores_list, positives, k=3):
    from recbole_ckf.evaluator.sequential import rank_candidates

    gains = []
    for scores, pos in zip(scores_list, positives):
        pos = {int(p) for p in np.atleast_1d(pos)}  # RecBole's NDCG: several positives per list allowed
        top = rank_candidates(scores)[:k]
        dcg = sum(1.0 / np.log2(r + 2) for r, c in enumerate(top) if c in pos)
        gains.append(dcg / sum(1.0 / np.log2(r + 2) for r in range(min(len(pos), k))))
    return float(np.mean(gains)) if gains else 0.0


def fit_list_weight(ckf_scores, backbone_scores, positives, k=3):
    """The backbone weight ``w`` in :data:`GRID` with the best validation NDCG@k (smallest among equals)."""
    best, best_w = -1.0, 0.0
    for w in GRID:
        score = _ndcg_at(blend_lists(ckf_scores, backbone_scores, w), positives, k)
        if score > best + 1e-12:
            best, best_w = score, float(w)
    return best_w


def _features(ckf, backbone, stats=None):
    x = np.stack([np.asarray(ckf, dtype=float), np.asarray(backbone, dtype=float)], axis=1)
    if stats is None:
        stats = (x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0))
    return (x - stats[0]) / stats[1], stats


def fit_pointwise(kind, ckf, backbone, targets):
    """A fitted blend for ``kind`` ``ctr`` (logistic) or ``rating`` (least squares), as a plain dict."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x, stats = _features(ckf, backbone)
    y = np.asarray(targets, dtype=float)
    if kind == "ctr":
        if len(np.unique(y)) < 2:
            return None
        model = LogisticRegression(C=1e4, solver="lbfgs", max_iter=1000).fit(x, y.astype(int))
    else:
        model = LinearRegression().fit(x, y)
    return {"kind": kind, "coef": model.coef_.reshape(-1).tolist(), "intercept": float(np.ravel(model.intercept_)[0]),
            "mean": stats[0].tolist(), "std": stats[1].tolist()}


def apply_pointwise(params, ckf, backbone, low=None, high=None):
    x, _ = _features(ckf, backbone, (np.asarray(params["mean"]), np.asarray(params["std"])))
    out = x @ np.asarray(params["coef"]) + params["intercept"]
    if params["kind"] == "ctr":
        out = 1.0 / (1.0 + np.exp(-out))
    elif low is not None:
        out = np.clip(out, low, high)
    return torch.tensor(out, dtype=torch.float)
