"""Calibration of CKF's pointwise answers, fitted on the validation split and applied to the test split.

CKF learns ctr on class-balanced batches and both pointwise tasks with a softmax over a handful of answer
tokens, so its raw outputs rank well but need not be calibrated: a ctr model trained on balanced classes
over-predicts "No" when 85% of test items are liked. Two small maps, fitted on the validation scores of the
model that is tested:

* ctr: Platt scaling, ``P(like) = sigmoid(a * logit + b)`` with ``logit = log P(Yes) - log P(No)``; ``a`` is
  kept > 0, so the ranking (AUC) is the model's own and only LogLoss changes;
* rating: a linear map ``a * E[stars] + b``, clipped to the rating range, chosen by cross-validation on the
  validation split among the least-squares line, a shift of the model's output and the validation mean.

Both are fitted with scikit-learn (logistic and least-squares regression) and stored as plain floats.
"""

import numpy as np
import torch

MIN_SLOPE = 1e-3  # ctr: keep the map increasing, so that calibration never reorders (AUC stays the model's)


def _np(x):
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=float)


def fit_platt(logits, labels):
    """``(a, b)`` of ``sigmoid(a * logit + b)`` fitted on validation ``logits`` and 0/1 ``labels``."""
    from sklearn.linear_model import LogisticRegression

    x, y = _np(logits).reshape(-1, 1), _np(labels).astype(int)
    if len(np.unique(y)) < 2:  # one class only: nothing to fit but the base rate
        rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3)) if len(y) else 0.5
        return MIN_SLOPE, float(np.log(rate / (1 - rate)))
    model = LogisticRegression(C=1e4, solver="lbfgs", max_iter=1000).fit(x, y)
    return max(float(model.coef_[0, 0]), MIN_SLOPE), float(model.intercept_[0])


def apply_platt(logits, params):
    a, b = params
    return torch.sigmoid(a * torch.as_tensor(logits, dtype=torch.float64) + b).float()


LINEAR_FOLDS = 5


def _linear_candidates(x, y):
    """The maps ``fit_linear`` chooses from, each fitted on ``(x, y)``: the least-squares line (slope kept >= 0,
    so calibration never reverses the model's order), the model's output shifted to the mean (a = 1), the mean
    alone (a = 0)."""
    a, b = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
    line = (float(a), float(b)) if a > 0 else (0.0, float(y.mean()))
    return {"line": line, "shift": (1.0, float(y.mean() - x.mean())), "mean": (0.0, float(y.mean()))}


def fit_linear(predictions, targets):
    """``(a, b)`` of ``a * prediction + b``, fitted on the validation split: of :func:`_linear_candidates`, the
    one with the smallest squared error in ``LINEAR_FOLDS``-fold cross-validation (folds by position). A line
    fitted on a few hundred validation users can stretch noise: in one run a slope of 3.6 turned a test RMSE of
    0.949 into 0.970."""
    x, y = _np(predictions), _np(targets)
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0, float(y.mean()) if len(y) else 0.0
    if len(x) < 2 * LINEAR_FOLDS:
        return _linear_candidates(x, y)["line"]
    fold = np.arange(len(x)) % LINEAR_FOLDS
    errors = {}
    for k in range(LINEAR_FOLDS):
        train, held = fold != k, fold == k
        for name, (a, b) in _linear_candidates(x[train], y[train]).items():
            errors[name] = errors.get(name, 0.0) + float(np.sum((a * x[held] + b - y[held]) ** 2))
    best = min(errors, key=lambda name: (errors[name], name != "line"))
    return _linear_candidates(x, y)[best]


def apply_linear(predictions, params, low=None, high=None):
    a, b = params
    out = a * torch.as_tensor(predictions, dtype=torch.float64) + b
    if low is not None:
        out = out.clamp(low, high)
    return out.float()
