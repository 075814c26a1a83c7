"""Results for all / warm / cold users, computed by RecBole's own evaluator on subsets of the test samples.

A user is *cold* when they have fewer than ``cold_threshold`` interactions in the training split, *warm*
otherwise. The default, :data:`DEFAULT_COLD_THRESHOLD` = 5, is the usual "fewer than 5 interactions"
cold-start cut. It depends on the data set: on amazon-instruments (5-core) with leave-one-out, a user keeps
3 or more training interactions and about 60% of the users fall below 5 (39% below 4); on ml-100k every user
keeps 18 or more, so nobody is cold. Choose the threshold per data set and report it with the numbers.
"""

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch

from recbole.evaluator.collector import DataStruct

DEFAULT_COLD_THRESHOLD = 5


def _as_index_array(values):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


def split_by_activity(user_ids, train_counts, cold_threshold=DEFAULT_COLD_THRESHOLD):
    """Boolean masks over the evaluated samples: ``{"warm": mask, "cold": mask}`` (numpy arrays).

    Args:
        user_ids: the user id of each evaluated sample (1-D tensor, array or list), in the order of the
            evaluator's data (one row of ``rec.score`` / ``rec.topk`` / ``text.pred``, ...).
        train_counts: training interactions per user id: a mapping (e.g. the training dataset's
            ``user_counter``; missing users count 0) or an array indexed by user id (e.g. ``np.bincount``).
        cold_threshold: users with fewer training interactions than this are cold.

    The two masks are complementary: every sample is in exactly one group.
    """
    if cold_threshold is None or cold_threshold < 0:
        raise ValueError(f"cold_threshold must be a non-negative number, got {cold_threshold!r}")
    users = _as_index_array(user_ids)
    if isinstance(train_counts, Mapping):
        counts = np.array([train_counts.get(u.item() if hasattr(u, "item") else u, 0) for u in users])
    else:
        table = _as_index_array(train_counts)
        counts = table[users.astype(np.int64)] if users.size else np.zeros(0)
    cold = counts < cold_threshold
    return {"warm": ~cold, "cold": cold}


def subset_data_struct(data_struct, mask):
    """A new :class:`DataStruct` holding only the samples where ``mask`` is true.

    Entries with one row per sample (tensors or arrays whose first dimension, or lists whose length, is
    ``len(mask)``) are filtered; everything else (``data.num_items``, ``data.count_users``, ...) is copied.
    """
    mask = _as_index_array(mask).astype(bool)
    n = mask.shape[0]
    keep = np.flatnonzero(mask)
    sub = DataStruct()
    for key, value in data_struct._data_dict.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            value = value[torch.as_tensor(keep, dtype=torch.long, device=value.device)]
        elif isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
            value = value[keep]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            value = [value[i] for i in keep]
        sub.set(key, value)
    return sub


def evaluate_by_group(evaluator, data_struct, masks):
    """``{"all": result, <group>: result, ...}`` from ``evaluator.evaluate`` on each subset of samples.

    ``evaluator`` is a RecBole :class:`~recbole.evaluator.Evaluator`; ``masks`` maps group names to boolean
    masks over the samples (e.g. :func:`split_by_activity`). A group without samples gets ``None``.
    """
    results = OrderedDict(all=evaluator.evaluate(data_struct))
    for group, mask in masks.items():
        if group == "all":
            raise ValueError("'all' is reserved for the whole test set")
        mask = _as_index_array(mask).astype(bool)
        results[group] = evaluator.evaluate(subset_data_struct(data_struct, mask)) if mask.any() else None
    return results
