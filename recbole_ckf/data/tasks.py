"""The four task data sets of CKF, built from RecBole's split of one data set.

* ``ctr``          will the user like the item?     answer "Yes"/"No"   (label: rating >= ``ctr_threshold``)
* ``sequential``   which candidate comes next?      answer: the item's text
* ``rating``       how many stars?                  answer "1".."5"
* ``explanation``  a headline for the item          answer: the review headline (``summary``)

Training samples come from training interactions only; a sample's history holds at most ``max_history``
training interactions of the user that come *before* it in RecBole's split order (RecBole sorts by time with a
stable sort, so same-day ties keep the atomic file's row order). Valid and test samples use the user's last
``max_history`` training interactions as history. At evaluation, the sequential candidates are RecBole's own
``uniN`` lists (:func:`candidate_lists`), so CKF ranks exactly the lists the general baselines rank.
"""

from dataclasses import dataclass, field

import numpy as np

from recbole_ckf.data.fields import resolve_text_fields
from recbole_ckf.data.item_text import token_text


@dataclass
class Sample:
    task: str
    user: int
    item: int                      # the item asked about (sequential: the true next item)
    history: list                  # item ids, oldest first
    history_ratings: list = None   # ratings of the history items (None where the data set has none)
    candidates: list = field(default_factory=list)  # sequential: items in prompt order
    label: float = float("nan")    # ctr 0/1, rating 1-5, sequential: index of the true item in candidates
    answer: str = ""               # the text the LM learns / is compared with


def _columns(config, dataset, split_dataset):
    """Per-row arrays of one split, in RecBole's split order: users, items, times, ratings, headlines."""
    inter = split_dataset.inter_feat
    users = inter[dataset.uid_field].numpy()
    items = inter[dataset.iid_field].numpy()
    times = inter[dataset.time_field].numpy() if dataset.time_field in inter else np.arange(len(users))
    ratings = inter[config["RATING_FIELD"]].numpy() if config["RATING_FIELD"] in inter else None
    fields = resolve_text_fields(config)
    heads = token_text(dataset, fields["summary"][1], inter[fields["summary"][1]].numpy()) if "summary" in fields else None
    return users, items, times, ratings, heads


def user_sequences(config, dataset, train_dataset):
    """``{user: (items, ratings, headlines)}`` of the training split, in RecBole's split order."""
    users, items, times, ratings, heads = _columns(config, dataset, train_dataset)
    order = np.lexsort((np.arange(len(users)), times, users))  # stable: ties keep the split order
    seqs = {}
    for row in order:
        u = int(users[row])
        s = seqs.setdefault(u, ([], [], []))
        s[0].append(int(items[row]))
        s[1].append(float(ratings[row]) if ratings is not None else None)
        s[2].append(heads[row] if heads is not None else "")
    return seqs


def _rating_text(value):
    return str(int(round(value)))


def candidate_lists(eval_data, seed):
    """``{user: [true item, 9 negatives]}`` from RecBole's ``uniN`` evaluation dataloader.

    RecBole's sampler draws from numpy's global generator; it is seeded with ``seed`` here (and restored
    afterwards), so CKF and every baseline evaluated with this function rank identical lists.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    lists = {}
    try:
        uid_field, iid_field = eval_data.dataset.uid_field, eval_data.dataset.iid_field
        for interaction, idx_list, positive_u, positive_i in eval_data:
            users = interaction[uid_field].numpy()
            items = interaction[iid_field].numpy()
            idx = idx_list.numpy()
            for k in np.unique(idx):
                rows = np.nonzero(idx == k)[0]
                lists[int(users[rows[0]])] = [int(i) for i in items[rows]]
    finally:
        np.random.set_state(state)
    return lists


class TaskBuilder:
    """Builds the samples of every task for the train, valid and test splits."""

    def __init__(self, config, dataset, train_dataset, tasks, item_texts):
        self.config, self.dataset, self.tasks = config, dataset, tasks
        self.item_texts = item_texts
        self.max_history = config["max_history"]
        self.threshold = config["ctr_threshold"]
        self.n_candidates = config["n_candidates"]
        self.seqs = user_sequences(config, dataset, train_dataset)
        self.rng_seed = config["seed"]

    def _history(self, u, end):
        items, ratings, _ = self.seqs.get(u, ([], [], []))
        start = max(0, end - self.max_history)
        hr = ratings[start:end] if ratings and ratings[0] is not None else None
        return items[start:end], hr

    def _point_samples(self, u, item, rating, head, history, hist_ratings):
        out = {}
        if "ctr" in self.tasks and rating is not None:
            like = rating >= self.threshold
            out["ctr"] = Sample("ctr", u, item, history, hist_ratings, label=float(like), answer="Yes" if like else "No")
        if "rating" in self.tasks and rating is not None:
            out["rating"] = Sample("rating", u, item, history, hist_ratings, label=float(rating), answer=_rating_text(rating))
        if "explanation" in self.tasks and head:
            out["explanation"] = Sample("explanation", u, item, history, hist_ratings, answer=head)
        return out

    def train_samples(self):
        """Samples of every training interaction (sequential: those with at least one earlier item)."""
        samples = {t: [] for t in self.tasks}
        rng = np.random.default_rng(self.rng_seed)
        n_items = self.dataset.item_num
        for u in sorted(self.seqs):
            items, ratings, heads = self.seqs[u]
            seen = set(items)
            for k, item in enumerate(items):
                history, hist_ratings = self._history(u, k)
                for task, s in self._point_samples(u, item, ratings[k], heads[k], history, hist_ratings).items():
                    samples[task].append(s)
                if "sequential" in self.tasks and k > 0:
                    negatives = []
                    while len(negatives) < self.n_candidates - 1:  # items the user never touched in training
                        v = int(rng.integers(1, n_items))
                        if v not in seen and v not in negatives:
                            negatives.append(v)
                    candidates = negatives + [item]
                    rng.shuffle(candidates)
                    samples["sequential"].append(Sample(
                        "sequential", u, item, history, hist_ratings, candidates=candidates,
                        label=float(candidates.index(item)), answer=self.item_answer(item)))
        return samples

    def item_answer(self, item):
        return self.item_texts[item]

    def eval_samples(self, split_dataset, candidates=None, users=None):
        """Samples of one evaluation split (one per interaction; ``users`` restricts to a subset)."""
        us, items, _, ratings, heads = _columns(self.config, self.dataset, split_dataset)
        keep = None if users is None else set(int(u) for u in users)
        samples = {t: [] for t in self.tasks}
        for row in range(len(us)):
            u, item = int(us[row]), int(items[row])
            if keep is not None and u not in keep:
                continue
            n_train = len(self.seqs.get(u, ([],))[0])
            history, hist_ratings = self._history(u, n_train)
            rating = float(ratings[row]) if ratings is not None else None
            head = heads[row] if heads is not None else ""
            for task, s in self._point_samples(u, item, rating, head, history, hist_ratings).items():
                samples[task].append(s)
            if "sequential" in self.tasks and candidates is not None and u in candidates:
                cands = list(candidates[u])
                order = np.random.default_rng([self.rng_seed, u]).permutation(len(cands))  # true item not always first
                cands = [cands[i] for i in order]
                samples["sequential"].append(Sample(
                    "sequential", u, item, history, hist_ratings, candidates=cands,
                    label=float(cands.index(item)), answer=self.item_answer(item)))
        return samples
