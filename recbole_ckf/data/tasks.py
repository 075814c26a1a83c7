"""The four task data sets of CKF, built from RecBole's split of one data set.

* ``ctr``          will the user like the item?     answer "Yes"/"No"   (label: rating >= ``ctr_threshold``)
* ``sequential``   which candidate comes next?      answer: the true candidate's letter (``sequential_answer:
                                                    label``, listwise), the item's text (``title``) or, per
                                                    candidate, "Yes"/"No" (``pointwise``)
* ``rating``       how many stars?                  answer "1".."5"
* ``explanation``  a headline for the item          answer: the review headline (``summary``)

History. A sample sees only interactions *before* the one it predicts, in RecBole's split order (RecBole sorts
by time with a stable sort, so same-day ties keep the atomic file's row order): training samples the user's
earlier training interactions; validation samples all training interactions; test samples all training
interactions and then the validation one (as RecBole's sequential models see it). The prompt shows the
latest ``max_history`` of them; p_u pools the latest ``pool_history``. At evaluation, the sequential candidates
are RecBole's own ``uniN`` lists (:func:`candidate_lists`), so CKF ranks exactly the lists the general
baselines rank, in a seeded order per user (the true item is not always first).
"""

import hashlib
from dataclasses import dataclass, field

import numpy as np

from recbole_ckf.data.fields import resolve_text_fields
from recbole_ckf.data.item_text import token_text
from recbole_ckf.data.templates import LABELS
from recbole_ckf.errors import CKFError


#: bump when the way samples are built changes: cached tokenised samples of older code are not reused
CODE_VERSION = 5


def split_fingerprint(config, split_dataset):
    """A hash of one split's content as the tasks read it (users, items, times, ratings, headlines, in split
    order): two runs share cached samples only if their training splits are identical."""
    h = hashlib.sha256()
    for column in _columns(config, split_dataset, split_dataset):
        if column is None:
            h.update(b"-")
        elif isinstance(column, np.ndarray):
            h.update(np.ascontiguousarray(column).tobytes())
        else:
            h.update("\x1f".join(column).encode("utf-8"))
    return h.hexdigest()[:16]


@dataclass
class Sample:
    task: str
    user: int
    item: int                      # the item asked about (sequential: the true next item)
    history: list                  # item ids shown in the prompt, oldest first
    history_ratings: list = None   # ratings of the history items (None where the data set has none)
    candidates: list = field(default_factory=list)  # sequential: items in prompt order
    label: float = float("nan")    # ctr 0/1, rating 1-5, sequential: index of the true item in candidates
    answer: str = ""               # the text the LM learns / is compared with
    pool: list = None              # item ids pooled into p_u (the latest pool_history earlier items)
    user_stats: tuple = None       # (count, mean rating) of all the user's earlier interactions
    positives: tuple = None        # sequential evaluation: indices of every true item in candidates (several
                                   # when the split gives a user several test items; ranked together, as RecBole)

    def __post_init__(self):
        if self.pool is None:
            self.pool = list(self.history)


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


def sample_users(users, limit, seed):
    """A deterministic subset of ``limit`` users (all when ``limit`` is None)."""
    users = np.unique(np.asarray(users))
    if limit is None or limit >= len(users):
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=limit, replace=False))


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


def evaluation_samples(builder, eval_data, limit, seed, earlier=()):
    """The samples one evaluation split is scored on: RecBole's ``uniN`` lists of ``eval_data``
    (:func:`candidate_lists`) and every interaction of a seeded subset of its users (:func:`sample_users`,
    ``limit`` users; all when None). ``earlier``: as for :meth:`TaskBuilder.eval_samples`."""
    lists = candidate_lists(eval_data, seed)
    users = sample_users(eval_data.dataset.inter_feat[eval_data.dataset.uid_field].numpy(), limit, seed)
    return builder.eval_samples(eval_data.dataset, lists, users, earlier=earlier)


def validation_split_samples(config, builder, valid_data):
    """The validation samples: ``valid_users`` seeded users of the validation split."""
    return evaluation_samples(builder, valid_data, config["valid_users"], config["seed"])


def test_split_history(config, valid_data):
    """The splits test prompts continue the history through: the validation split (``test_history:
    train_valid``, as RecBole's sequential models see it), or none (``test_history: train``, the ablation)."""
    return (valid_data.dataset,) if valid_data is not None and config["test_history"] != "train" else ()


def test_split_samples(config, builder, test_data, valid_data=None):
    """The test samples: ``eval_users`` seeded users of the test split, histories through
    :func:`test_split_history`."""
    return evaluation_samples(builder, test_data, config["eval_users"], config["seed"],
                              earlier=test_split_history(config, valid_data))


class TaskBuilder:
    """Builds the samples of every task for the train, valid and test splits."""

    def __init__(self, config, dataset, train_dataset, tasks, item_texts):
        self.config, self.dataset, self.tasks = config, dataset, tasks
        self.item_texts = item_texts
        self.max_history = config["max_history"]
        self.pool_history = max(config["pool_history"] or self.max_history, self.max_history)
        self.threshold = config["ctr_threshold"]
        self.n_candidates = config["n_candidates"]
        self.answer_mode = config["sequential_answer"] or "label"
        if self.answer_mode == "label" and "sequential" in tasks and self.n_candidates > len(LABELS):
            raise CKFError(f"n_candidates: sequential_answer 'label' labels at most {len(LABELS)} candidates, "
                           f"got {self.n_candidates} (use sequential_answer: title)")
        self.seqs = user_sequences(config, dataset, train_dataset)
        self.rng_seed = config["seed"]

    @staticmethod
    def _history(seq, end, shown, pooled):
        """(shown items, their ratings, pooled items, (count, mean rating)) of the interactions ``seq[:end]``."""
        items, ratings, _ = seq
        start = max(0, end - shown)
        rated = bool(ratings) and ratings[0] is not None
        hr = ratings[start:end] if rated else None
        stats = (end, float(np.mean(ratings[:end])) if rated and end else None)
        return items[start:end], hr, items[max(0, end - pooled):end], stats

    def _point_samples(self, u, item, rating, head, history, hist_ratings, pool, stats):
        out = {}
        if "ctr" in self.tasks and rating is not None:
            like = rating >= self.threshold
            out["ctr"] = Sample("ctr", u, item, history, hist_ratings, label=float(like),
                                answer="Yes" if like else "No", pool=pool, user_stats=stats)
        if "rating" in self.tasks and rating is not None:
            out["rating"] = Sample("rating", u, item, history, hist_ratings, label=float(rating),
                                   answer=_rating_text(rating), pool=pool, user_stats=stats)
        if "explanation" in self.tasks and head:
            out["explanation"] = Sample("explanation", u, item, history, hist_ratings, answer=head, pool=pool,
                                        user_stats=stats)
        return out

    def _sequential(self, u, item, history, hist_ratings, pool, stats, candidates, positives=None):
        k = candidates.index(item)
        if self.answer_mode == "label" and len(candidates) > len(LABELS):
            raise CKFError(f"sequential_answer 'label' labels at most {len(LABELS)} candidates, the evaluation "
                           f"lists hold {len(candidates)} (eval_args.mode uni{len(candidates) - 1}); use "
                           f"sequential_answer: title, or a mode with at most {len(LABELS) - 1} negatives")
        # pointwise: no answer text (Yes after the true candidate's block, No after the others; see collate)
        answer = LABELS[k] if self.answer_mode == "label" else self.item_answer(item, u) \
            if self.answer_mode == "title" else "Yes"
        return Sample("sequential", u, item, history, hist_ratings, candidates=candidates, label=float(k),
                      answer=answer, pool=pool, user_stats=stats,
                      positives=tuple(candidates.index(i) for i in positives) if positives else None)

    def train_samples(self):
        """Samples of every training interaction (sequential: those with at least one earlier item)."""
        samples = {t: [] for t in self.tasks}
        rng = np.random.default_rng(self.rng_seed)
        n_items = self.dataset.item_num
        for u in sorted(self.seqs):
            seq = self.seqs[u]
            items, ratings, heads = seq
            seen = set(items)
            for k, item in enumerate(items):
                history, hist_ratings, pool, stats = self._history(seq, k, self.max_history, self.pool_history)
                for task, s in self._point_samples(u, item, ratings[k], heads[k], history, hist_ratings,
                                                   pool, stats).items():
                    samples[task].append(s)
                if "sequential" in self.tasks and k > 0:
                    negatives = []
                    while len(negatives) < self.n_candidates - 1:  # items the user never touched in training
                        v = int(rng.integers(1, n_items))
                        if v not in seen and v not in negatives:
                            negatives.append(v)
                    candidates = negatives + [item]
                    rng.shuffle(candidates)
                    samples["sequential"].append(self._sequential(u, item, history, hist_ratings, pool, stats,
                                                                  candidates))
        return samples

    def item_answer(self, item, user=None):
        """The title-mode answer: the item's text as ``user``'s prompts show it."""
        for_user = getattr(self.item_texts, "for_user", None)
        return for_user(item, user) if for_user is not None else self.item_texts[item]

    def eval_samples(self, split_dataset, candidates=None, users=None, earlier=()):
        """Samples of one evaluation split (one per interaction; ``users`` restricts to a subset).

        ``earlier``: split datasets whose interactions come before this split's and after training (the
        validation split, for the test split); they join the history, after the training interactions."""
        us, items, _, ratings, heads = _columns(self.config, self.dataset, split_dataset)
        keep = None if users is None else set(int(u) for u in users)
        seqs = self.seqs
        if earlier:
            seqs = {u: tuple(list(part) for part in seq) for u, seq in self.seqs.items()}
            for split in earlier:
                for u, seq in user_sequences(self.config, self.dataset, split).items():
                    own = seqs.setdefault(u, ([], [], []))
                    for part, extra in zip(own, seq):
                        part.extend(extra)
        samples = {t: [] for t in self.tasks}
        ranked = {}  # sequential: {user: (context, [true items])}, one ranking per user
        for row in range(len(us)):
            u, item = int(us[row]), int(items[row])
            if keep is not None and u not in keep:
                continue
            seq = seqs.get(u, ([], [], []))
            context = self._history(seq, len(seq[0]), self.max_history, self.pool_history)
            rating = float(ratings[row]) if ratings is not None else None
            head = heads[row] if heads is not None else ""
            for task, s in self._point_samples(u, item, rating, head, *context).items():
                samples[task].append(s)
            if "sequential" in self.tasks and candidates is not None and u in candidates:
                ranked.setdefault(u, (context, []))[1].append(item)
        for u, (context, true_items) in ranked.items():
            # RecBole ranks a user's list once, over distinct items (its scores are an [user, item] matrix): a
            # negative drawn twice counts once, and every test item of the user is a positive of the same list
            cands = list(dict.fromkeys(int(i) for i in candidates[u]))
            order = np.random.default_rng([self.rng_seed, u]).permutation(len(cands))  # true item not always first
            cands = [cands[i] for i in order]
            true_items = list(dict.fromkeys(true_items))
            samples["sequential"].append(self._sequential(u, true_items[0], *context, cands, positives=true_items))
        return samples
