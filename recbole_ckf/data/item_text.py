"""Item text for prompts: the title where the data set has one, otherwise text derived from reviews.

Data sets without titles (amazon-instruments) describe an item only by its *training-split* review headlines
(the earliest ``item_text_reviews`` of them, joined by " / "): nothing from a valid or test interaction ever
reaches an item's text. Texts are cut to ``item_text_words`` words to keep prompts short.
"""

import numpy as np

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


def build_item_texts(config, dataset, train_dataset):
    """A list ``texts[item_id]`` (RecBole ids; index 0 is padding) and a note saying where texts come from."""
    fields = resolve_text_fields(config)
    n_items = dataset.item_num
    words = config["item_text_words"]
    texts = [""] * n_items
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
        heads = token_text(dataset, column, inter[column].numpy())
        order = np.argsort(inter[dataset.time_field].numpy(), kind="stable") if dataset.time_field else range(len(items))
        per_item = {}
        for row in order:  # earliest first
            item, head = items[row], heads[row]
            if head:
                per_item.setdefault(int(item), []).append(head)
        k = config["item_text_reviews"]
        for item, lines in per_item.items():
            texts[item] = _cut(" / ".join(lines[:k]), words)
        note = f"the earliest {k} training-split review headlines ({column}) of each item"
    else:
        note = "no item text (neither a title nor reviews): items are shown by their slot only"
    for item in range(1, n_items):
        if not texts[item]:
            texts[item] = "an item with no description"
    return np.array(texts, dtype=object), note
