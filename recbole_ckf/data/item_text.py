"""Item text for prompts: the title where the data set has one, otherwise text derived from reviews.

Data sets without titles (amazon-instruments) describe an item only by its *training-split* review headlines
(the earliest ``item_text_reviews`` of them, joined by " / "): nothing from a valid or test interaction ever
reaches an item's text. In the prompts of user u, an item's text leaves out u's own reviews
(:meth:`ItemTexts.for_user`): otherwise a training sample of (u, i) could show u's own headline of i (the
explanation answer, and a cue for ctr/rating and for which candidate is the true one) inside i's description,
a cue that never exists at test time. Texts are cut to ``item_text_words`` words to keep prompts short.
"""

import math

import numpy as np

NO_TEXT = "an item with no description"

from recbole_ckf.data.fields import resolve_text_fields


def token_text(dataset, field, ids):
    """Strings of a token field; RecBole maps a missing/empty value to id 0 ("[PAD]"), returned as ""."""
    vocab = dataset.field2id_token[field]
    return ["" if int(i) == 0 else str(vocab[int(i)]) for i in ids]


def seq_text(dataset, field, id_rows):
    """Strings of a token_seq field (RecBole splits it on spaces; joined back with one space)."""
    vocab = dataset.field2id_token[field]
    return [" ".join(str(vocab[int(i)]) for i in row if int(i) != 0) for row in id_rows]


def _cut(text, words):
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


class ItemStats:
    """Each item's training-split rating count and mean rating, leaving out one user's own rating: in user u's
    prompts an item shows what the *other* users' training interactions say (u's own rating of it is the answer
    of a training sample). ``prompt_stats`` shows them after the item's text."""

    def __init__(self, config, dataset, train_dataset):
        inter = train_dataset.inter_feat
        items = inter[dataset.iid_field].numpy()
        users = inter[dataset.uid_field].numpy()
        field = config["RATING_FIELD"]
        ratings = inter[field].numpy().astype(float) if field and field in inter else None
        self.count = np.bincount(items, minlength=dataset.item_num)
        self.total = np.bincount(items, weights=ratings, minlength=dataset.item_num) if ratings is not None else None
        self.own = {(int(u), int(i)): (float(r) if ratings is not None else 0.0)
                    for u, i, r in zip(users, items, ratings if ratings is not None else np.zeros(len(items)))}

    def of(self, item, user=None):
        """``(count, mean rating or None)`` of ``item`` without ``user``'s own training interaction."""
        n, total = int(self.count[item]), (float(self.total[item]) if self.total is not None else None)
        own = self.own.get((user, int(item)))
        if own is not None:
            n -= 1
            total = total - own if total is not None else None
        return n, (total / n if n and total is not None else None)


def stats_text(count, mean):
    """``"12 ratings, avg 4.5 stars"`` (``"no ratings yet"``; no mean where the data set has no ratings)."""
    if not count:
        return "no ratings yet"
    words = f"{count} rating{'s' if count != 1 else ''}"
    return words + (f", avg {mean:.1f} stars" if mean is not None else "")


def stat_features(count, mean):
    """The bridge's statistics input (``bridge_stats``) of a (count, mean rating or None) pair, each O(1):
    [log1p(count) / 4, (mean - 3) / 2 (0 without a mean), 1 without a mean]."""
    return [math.log1p(count) / 4.0, 0.0 if mean is None else (mean - 3.0) / 2.0, float(mean is None)]


N_STATS = len(stat_features(0, None))


class ItemTexts:
    """``texts[item]``: an item's description (RecBole ids; index 0 is padding, ``""``);
    ``texts.for_user(item, user)``: the same without ``user``'s own reviews (review-derived texts only;
    ``exclude_own=False`` is the ablation that shows every user the same text)."""

    def __init__(self, texts, reviews=None, k=0, words=0, exclude_own=True, stats=None):
        self.texts = np.asarray(texts, dtype=object)
        self.stats = stats  # ItemStats of the training split
        self._reviews = reviews or {}  # item -> [(user, headline), ...] earliest first (review-derived texts)
        self._k, self._words, self.exclude_own = k, words, exclude_own

    def __getitem__(self, item):
        return self.texts[item]

    def __len__(self):
        return len(self.texts)

    def __iter__(self):
        return iter(self.texts)

    def for_user(self, item, user):
        reviews = self._reviews.get(int(item))
        if user is None or not self.exclude_own or not reviews or all(u != user for u, _ in reviews[: self._k]):
            return self.texts[item]
        lines = [h for u, h in reviews if u != user][: self._k]
        return _cut(" / ".join(lines), self._words) if lines else NO_TEXT


def build_item_texts(config, dataset, train_dataset):
    """An :class:`ItemTexts` (RecBole ids; index 0 is padding) and a note saying where texts come from."""
    fields = resolve_text_fields(config)
    n_items = dataset.item_num
    words = config["item_text_words"]
    texts = [""] * n_items
    reviews, k = {}, 0
    if "title" in fields:
        item_feat = dataset.item_feat
        iid = item_feat[dataset.iid_field].numpy()
        column = fields["title"][1]
        titles = (seq_text if dataset.field2type[column].value.endswith("seq") else token_text)(
            dataset, column, item_feat[column].numpy() if item_feat[column].dim() == 1 else item_feat[column].tolist())
        years = token_text(dataset, fields["year"][1], item_feat[fields["year"][1]].numpy()) if "year" in fields else None
        for k, item in enumerate(iid):
            if item == 0:
                continue
            text = titles[k]
            if years and years[k] and years[k] not in text:
                text = f"{text} ({years[k]})"
            texts[item] = _cut(text, words)
        note = f"item titles ({column})"
    elif "summary" in fields or "review" in fields:
        column = fields.get("summary", fields.get("review"))[1]
        inter = train_dataset.inter_feat  # training split only
        items = inter[dataset.iid_field].numpy()
        users = inter[dataset.uid_field].numpy()
        heads = token_text(dataset, column, inter[column].numpy())
        order = np.argsort(inter[dataset.time_field].numpy(), kind="stable") if dataset.time_field else range(len(items))
        for row in order:  # earliest first
            if heads[row]:
                reviews.setdefault(int(items[row]), []).append((int(users[row]), heads[row]))
        k = config["item_text_reviews"]
        for item, lines in reviews.items():
            texts[item] = _cut(" / ".join(h for _, h in lines[:k]), words)
        note = f"the earliest {k} training-split review headlines ({column}) of each item"
    else:
        note = "no item text (neither a title nor reviews): items are shown by their slot only"
    for item in range(1, n_items):
        if not texts[item]:
            texts[item] = NO_TEXT
    exclude = config["exclude_own_review"] is not False
    return ItemTexts(texts, reviews, k, words, exclude, ItemStats(config, dataset, train_dataset)), note
