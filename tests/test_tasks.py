"""The task data sets of CKF and their prompts with embedding slots (recbole_ckf.data: tasks, templates, collate).

* No valid or test interaction reaches a training sample (pairs, answers, histories) or an item text; no
  sample's own review reaches its prompt; a history holds only interactions strictly before the predicted one.
* After encoding, every task's prompt holds exactly its user/item slots, in the order of ``slot_items``; labels
  are -100 on the prompt and the answer's tokens after it; text-only twins hold no slot token.
* The tokenised training samples are cached on disk under a key that changes with what shapes the samples.
* Asking for a task the data set cannot support is a clear CKFError.
"""

import collections
import dataclasses
import os
import sys

import numpy as np
import pytest

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
from conftest import small_config
from recbole_ckf.config import Config
from recbole_ckf.data.collate import IGNORE, Encoder
from recbole_ckf.data.fields import available_tasks
from recbole_ckf.data.item_text import token_text
from recbole_ckf.data.tasks import TaskBuilder, candidate_lists
from recbole_ckf.data.templates import LABELS
from recbole_ckf.errors import CKFError
from recbole_ckf.model.llm import ITEM_TOKEN, USER_TOKEN

AMAZON, ML = "amazon-instruments", "ml-100k"
NO_TEXT = "an item with no description"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(name, tmp):
    from recbole.utils import init_seed

    from recbole_ckf.data import load_data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(tmp)
        config = Config("CKF", name, config_dict=small_config(
            llm="tiny", llm_cache_dir=str(tmp / "cache"), train_batch_size=4, epochs=1, train_samples_per_task=8,
            sequential_answer="label"))
        dataset, train_data, valid_data, test_data = load_data(config)
        init_seed(config["seed"], True)
        from recbole_ckf.model import ckf

        corpus, load_llm = [], ckf.load_llm  # what the tiny test tokenizer is trained on
        mp.setattr(ckf, "load_llm", lambda *a, **k: corpus.extend(k["texts"]) or load_llm(*a, **k))
        model = config.model_class(config, train_data.dataset)
    builder = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts)
    encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
    return dict(config=config, dataset=dataset, train=train_data, valid=valid_data, test=test_data, model=model,
                builder=builder, encoder=encoder, tmp=tmp, corpus=corpus)


@pytest.fixture(scope="module")
def amazon(tmp_path_factory):
    return _build(AMAZON, tmp_path_factory.mktemp("amazon"))


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    return _build(ML, tmp_path_factory.mktemp("ml100k"))


def _rows(s, split):
    """Per-row (user, item, rating, timestamp, headline) of one split, in RecBole's split order."""
    ds, cfg = s["dataset"], s["config"]
    inter = s[split].dataset.inter_feat
    users = inter[ds.uid_field].numpy().tolist()
    items = inter[ds.iid_field].numpy().tolist()
    ratings = inter[cfg["RATING_FIELD"]].numpy().tolist()
    times = inter[ds.time_field].numpy().tolist()
    heads = token_text(ds, "summary", inter["summary"].numpy()) if "summary" in inter else [""] * len(users)
    return list(zip(users, items, ratings, times, heads))


# ---- leakage ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def amazon_train_samples(amazon):
    return amazon["builder"].train_samples()


def test_no_valid_or_test_interaction_reaches_training_samples(amazon, amazon_train_samples):
    s, samples = amazon, amazon_train_samples
    train, held_out = _rows(s, "train"), _rows(s, "valid") + _rows(s, "test")
    train_pairs = {(u, i): (r, h) for u, i, r, _, h in train}
    held_pairs = {(u, i) for u, i, *_ in held_out}
    assert len(train_pairs) == len(train) and not train_pairs.keys() & held_pairs  # no duplicate (user, item)
    # leave-one-out by time: every held-out interaction is no earlier than its user's training interactions
    last_train = collections.defaultdict(lambda: -np.inf)
    for u, _, _, t, _ in train:
        last_train[u] = max(last_train[u], t)
    assert all(t >= last_train[u] for u, _, _, t, _ in held_out)

    # each user's training sequence in RecBole's split order, rebuilt here from the split itself
    seqs = collections.defaultdict(list)
    for u, i, *_ in train:
        seqs[u].append(i)
    m, p = s["config"]["max_history"], s["config"]["pool_history"]
    expected = [(u, seqs[u][k], seqs[u][max(0, k - m):k], seqs[u][max(0, k - p):k])
                for u in sorted(seqs) for k in range(len(seqs[u]))]
    for task in ("ctr", "rating", "explanation"):
        assert [(x.user, x.item, list(x.history), list(x.pool)) for x in samples[task]] == expected, task
    assert [(x.user, x.item, list(x.history), list(x.pool)) for x in samples["sequential"]] == [
        e for e in expected if e[2]]

    threshold = s["config"]["ctr_threshold"]
    for x in samples["ctr"]:
        assert x.answer == ("Yes" if train_pairs[(x.user, x.item)][0] >= threshold else "No")
    for x in samples["rating"]:
        assert x.answer == str(int(train_pairs[(x.user, x.item)][0]))
    for x in samples["explanation"]:
        assert x.answer == train_pairs[(x.user, x.item)][1]
    for x in samples["sequential"]:
        assert x.answer == LABELS[int(x.label)]  # listwise: the true candidate's letter
        assert x.candidates[int(x.label)] == x.item and len(set(x.candidates)) == s["config"]["n_candidates"]
        assert not set(x.candidates) - {x.item} & set(seqs[x.user])  # negatives: items the user never trained on
    held_items = collections.defaultdict(set)
    for u, i in held_pairs:
        held_items[u].add(i)
    for task, rows in samples.items():
        for x in rows:
            assert (x.user, x.item) not in held_pairs
            assert not set(x.pool) & held_items[x.user]

    # headlines that only valid/test rows have never become an answer of a training sample
    train_heads = {h for *_, h in train if h}
    unique = {h for *_, h in held_out if h and h not in train_heads}
    assert len(unique) > 100
    assert not unique & {x.answer for x in samples["explanation"]}


def test_eval_histories_hold_only_interactions_before_the_predicted_one(amazon):
    """Validation samples see the training interactions; test samples the training ones, then the validation
    one (as RecBole's sequential models do): never the predicted interaction or anything later."""
    s = amazon
    seqs = collections.defaultdict(list)
    for u, i, *_ in _rows(s, "train"):
        seqs[u].append(i)
    valid_item = {u: i for u, i, *_ in _rows(s, "valid")}
    m, p = s["config"]["max_history"], s["config"]["pool_history"]
    for split in ("valid", "test"):
        lists = candidate_lists(s[split], s["config"]["seed"])
        earlier = (s["valid"].dataset,) if split == "test" else ()
        samples = s["builder"].eval_samples(s[split].dataset, lists, earlier=earlier)
        truth = {(u, i) for u, i, *_ in _rows(s, split)}
        assert len(samples["ctr"]) == len(truth) == len(lists)
        for task, rows in samples.items():
            assert rows, task
            for x in rows:
                assert (x.user, x.item) in truth
                before = seqs[x.user] + ([valid_item[x.user]] if split == "test" else [])
                assert list(x.history) == before[-m:] and list(x.pool) == before[-p:]
                assert x.item not in x.pool


def test_no_sample_shows_its_own_review(amazon, amazon_train_samples):
    """An item's text in user u's prompts leaves out u's own headlines: no training prompt shows the sample's
    own review headline as part of an item's description (it would be the explanation answer and a
    ctr/rating/ranking cue that never exists at test time)."""
    s = amazon
    heads = {(u, i): " ".join(h.split()) for u, i, _, _, h in _rows(s, "train")}
    counts = collections.Counter(heads.values())  # a headline others wrote too ("Nice") may show: theirs
    renderer, texts = s["model"].renderer, s["model"].item_texts

    def shows(text, own):  # own is one of the whole headlines the text is made of (a cut last one is not whole)
        text = str(text)
        whole = [p.strip() for p in text.removesuffix(" ...").split(" / ")]
        return own in (whole[:-1] if text.endswith(" ...") else whole)

    leaks_before = checked = 0
    for task, rows in amazon_train_samples.items():
        for x in rows[:: max(1, len(rows) // 400)]:
            own = heads[(x.user, x.item)]
            if not own or counts[own] > 1:
                continue
            checked += 1
            prompt = renderer.render(x, slotted=False)[0]
            for item in list(x.history) + [x.item] + list(x.candidates):
                shown = renderer.item_text(item, x.user)
                assert shown in prompt and not shows(shown, own), (task, x.user, x.item)
            leaks_before += shows(texts[x.item], own)  # the shared text would have shown it
    assert checked > 400 and leaks_before > 40  # the rule matters on this data set


# ---- slots and labels ---------------------------------------------------------------------------------------
def _samples_of(s, per_task=4):
    """A few training samples per task (some with an empty history) and a few test samples (uni9 candidates)."""
    builder = s["builder"]
    full_seqs = builder.seqs
    users = sorted(full_seqs)[:6]
    builder.seqs = {u: full_seqs[u] for u in users}  # training samples of six users only (ml-100k is large)
    try:
        train = builder.train_samples()
    finally:
        builder.seqs = full_seqs
    lists = candidate_lists(s["test"], s["config"]["seed"])
    test = builder.eval_samples(s["test"].dataset, lists, users=sorted(lists)[:per_task])
    out = {}
    for task in s["model"].tasks:
        rows = train[task]
        picked = rows[:2] + rows[-per_task:]  # the first sample of a user has no history
        out[task] = picked + test[task]
    return out


def _check_encoding(s, task, x):
    model, encoder, config = s["model"], s["encoder"], s["config"]
    tok, template = model.tokenizer, config["prompt_templates"][task]
    e = encoder.encode(x, slotted=True)
    ids = e.input_ids
    n_user = sum(i == model.user_token_id for i in ids)
    n_item = sum(i == model.item_token_id for i in ids)
    assert n_user == template.count("{user}") == 1
    # a prompt longer than max_length drops its oldest history items (and their slots) only
    shown = list(e.history)
    assert shown == list(x.history)[len(x.history) - len(shown):]
    order = [name for name in ("history", "item", "candidates") if "{" + name + "}" in template]
    parts = {"history": shown, "item": [x.item], "candidates": list(x.candidates)}
    expected = [i for name in sorted(order, key=lambda n: template.index("{" + n + "}")) for i in parts[name]]
    assert e.slot_items == expected and n_item == len(expected)
    if task == "sequential":
        assert e.slot_items == shown + list(x.candidates)
    else:
        assert e.slot_items == shown + [x.item]
    # the slots appear in the prompt in slot_items order: each slot is followed by that item's text
    prompt, items = model.renderer.render(dataclasses.replace(x, history=shown, history_ratings=(
        x.history_ratings[len(x.history) - len(shown):] if x.history_ratings else x.history_ratings)), slotted=True)
    assert items == e.slot_items
    chunks = prompt.split(ITEM_TOKEN)[1:]
    assert len(chunks) == len(items)
    for chunk, item in zip(chunks, items):
        assert chunk.startswith(" " + model.renderer.item_text(item, x.user))
    # the prompt's ids are that prompt, then the answer; labels: -100 on the prompt, the answer's ids after it
    p = e.prompt_len
    assert _squeeze(tok.decode(ids[:p])) == _squeeze(tok.bos_token + prompt)
    answer = tok(x.answer, add_special_tokens=False)["input_ids"]
    if task == "explanation":
        answer = answer + [tok.eos_token_id]
    assert e.labels[:p] == [IGNORE] * p
    assert e.labels[p:] == ids[p:] == answer
    assert user_slot_positions(ids, model.user_token_id)[0] < p
    # answers and labels of each task
    if task == "ctr":
        assert x.answer == ("Yes" if x.label else "No")
        assert ids[p:] == [model.answer_ids["ctr"][0 if x.label else 1]]
    elif task == "rating":
        assert x.answer == str(int(x.label)) and 1 <= x.label <= 5
        assert ids[p:] == [model.answer_ids["rating"][int(x.label) - 1]]
    elif task == "sequential":
        assert x.candidates[int(x.label)] == x.item and len(x.candidates) == config["n_candidates"]
        assert x.answer == LABELS[int(x.label)]
        assert ids[p:] == [model.answer_ids["sequential"][int(x.label)]]
    # the text-only twin: no slot token at all, the same answer
    t = encoder.encode(x, slotted=False)
    assert model.user_token_id not in t.input_ids and model.item_token_id not in t.input_ids
    assert t.slot_items == [] and t.labels[t.prompt_len:] == answer
    assert USER_TOKEN not in model.renderer.render(x, slotted=False)[0]
    return e


def _squeeze(text):
    return "".join(text.split())


def user_slot_positions(ids, user_id):
    return [k for k, i in enumerate(ids) if i == user_id]


@pytest.mark.parametrize("name, tasks", [
    (AMAZON, ["ctr", "sequential", "rating", "explanation"]),
    (ML, ["ctr", "sequential", "rating"]),
])
def test_slot_positions_and_labels(request, name, tasks):
    s = request.getfixturevalue("amazon" if name == AMAZON else "ml100k")
    model = s["model"]
    assert model.tasks == tasks
    if name == ML:
        assert "headline" in model.unavailable_tasks["explanation"]
    samples = _samples_of(s)
    ratings = s["train"].dataset.inter_feat[s["config"]["RATING_FIELD"]].numpy()
    for task in tasks:
        rows = samples[task]
        lengths = [len(x.history) for x in rows]
        assert max(lengths) == s["config"]["max_history"] and min(lengths) == (1 if task == "sequential" else 0), lengths
        for x in rows:
            _check_encoding(s, task, x)
    # ctr labels are rating >= threshold on this user's training rows
    threshold = s["config"]["ctr_threshold"]
    for x in samples["ctr"]:
        rating = next(r for r in samples["rating"] if (r.user, r.item) == (x.user, x.item)).label
        assert x.label == float(rating >= threshold)
    assert set(np.unique(ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_collated_batch_keeps_every_samples_slots(amazon):
    """collate pads one task's samples; slot_items is the row-major concatenation of every sample's slots."""
    from recbole_ckf.data.collate import collate

    s = amazon
    model = s["model"]
    rows = _samples_of(s)["sequential"][:5]
    enc = s["encoder"].encode_all(rows, slotted=True)
    batch = collate(enc, model.tokenizer.pad_token_id)
    ids = batch["input_ids"]
    assert (ids == model.user_token_id).sum(1).tolist() == [1] * len(rows)
    assert (ids == model.item_token_id).sum(1).tolist() == [len(e.slot_items) for e in enc]
    assert batch["slot_items"].tolist() == [i for e in enc for i in e.slot_items]
    for b, e in enumerate(enc):  # p_u pools the whole pool, not only the items shown
        h = e.pool
        assert batch["history"][b, :len(h)].tolist() == h and batch["history_mask"][b].sum() == len(h)
    assert batch["n_choices"].tolist() == [len(e.candidates) for e in enc]


# ---- the tokenised-sample cache -------------------------------------------------------------------------------
def test_tokenised_samples_are_cached_under_a_key_of_what_shapes_them(amazon, monkeypatch):
    from recbole_ckf.trainer.trainer import CKFTrainer

    s = amazon
    config, model = s["config"], s["model"]
    cache = os.path.join(config["llm_cache_dir"], "tasks")
    first = CKFTrainer(config, model)
    first.setup(s["train"])
    assert first._cache_dir() == cache
    built = first._encoded_train()
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].endswith(".pt")
    assert built["sizes"]["ctr"] == len(s["train"].dataset)
    assert set(built["slot"]) == set(built["text"]) == set(model.tasks)

    # a second run with the same config loads the samples from disk: the builder is never asked
    second = CKFTrainer(config, model)
    second.setup(s["train"])
    monkeypatch.setattr(second.builder, "train_samples", lambda: pytest.fail("samples were rebuilt"))
    loaded = second._encoded_train()
    assert sorted(os.listdir(cache)) == files
    assert loaded["sizes"] == built["sizes"]
    for mode in ("slot", "text"):
        for task in model.tasks:
            assert repr(loaded[mode][task]) == repr(built[mode][task])  # repr: labels may be nan

    # max_history changes the samples: a new key, a new build with shorter histories
    old = config["max_history"]
    config["max_history"] = 1
    try:
        third = CKFTrainer(config, model)
        third.setup(s["train"])
        rebuilt = third._encoded_train()
    finally:
        config["max_history"] = old
    assert len(os.listdir(cache)) == 2
    assert max(len(e.history) for e in rebuilt["slot"]["ctr"].values()) == 1
    assert max(len(e.history) for e in built["slot"]["ctr"].values()) == old


# ---- unavailable tasks ---------------------------------------------------------------------------------------
def test_explanation_on_ml100k_is_a_clear_error(tmp_path):
    with pytest.raises(CKFError) as err:
        config = Config("CKF", ML, config_dict=small_config(llm="tiny", tasks=["explanation"]))
        available_tasks(config)
    message = str(err.value)
    assert "explanation" in message and "unavailable" in message and "summary" in message
    assert "\n" not in message
    # asked for implicitly (tasks: ~), it is only reported unavailable
    config = Config("CKF", ML, config_dict=small_config(llm="tiny"))
    tasks, unavailable = available_tasks(config)
    assert tasks == ["ctr", "sequential", "rating"] and list(unavailable) == ["explanation"]
    assert not os.path.exists(tmp_path / "saved")


def test_cache_key_follows_the_training_split_itself(amazon):
    """A setting that changes the split (here a k-core filter) changes the key of the cached samples, even
    though no key of the prompt settings changed: samples of another split are never reused."""
    from recbole_ckf.data.tasks import split_fingerprint
    from recbole_ckf.data import load_data

    s = amazon
    same = split_fingerprint(s["config"], s["train"].dataset)
    assert same == split_fingerprint(s["config"], s["train"].dataset)
    other = Config("CKF", AMAZON, config_dict=small_config(llm="tiny", user_inter_num_interval="[7,inf)"))
    _, train, _, _ = load_data(other)
    assert split_fingerprint(other, train.dataset) != same


def test_prompt_stats_hold_only_what_the_sample_may_see(amazon, amazon_train_samples):
    """prompt_stats: the user's count and mean rating come from their interactions before the predicted one; an
    item's from the other users' training interactions (never the sample's own rating)."""
    s = amazon
    train = _rows(s, "train")
    seqs, by_item = collections.defaultdict(list), collections.defaultdict(list)
    for u, i, r, _, _ in train:
        seqs[u].append(r)
        by_item[i].append((u, r))
    stats = s["model"].item_texts.stats
    position = collections.Counter()
    for x in amazon_train_samples["ctr"][:2000]:
        k = position[x.user]
        position[x.user] += 1
        earlier = seqs[x.user][:k]
        assert x.user_stats[0] == k and (x.user_stats[1] is None if not k else
                                         x.user_stats[1] == pytest.approx(np.mean(earlier)))
        others = [r for u, r in by_item[x.item] if u != x.user]
        n, mean = stats.of(x.item, x.user)
        assert n == len(others) and (mean is None if not others else mean == pytest.approx(np.mean(others)))
    # rendered: after {user} and after {item}, in the prompt the model reads
    x = next(x for x in amazon_train_samples["ctr"] if x.user_stats[0] >= 2)
    prompt = s["model"].renderer.render(x, slotted=True)[0]
    assert f"({x.user_stats[0]} ratings, avg {x.user_stats[1]:.1f} stars)" in prompt


@pytest.mark.parametrize("templates, message", [
    ({"sequential": "{candidates}"}, "needs the template 'sequential_pointwise'"),
    ({"sequential_pointwise": "{item} {user}"}, "'{item}' must be the template's last placeholder"),
    ({"sequentiel": "{item}"}, "unknown task 'sequentiel'"),
])
def test_pointwise_template_mistakes_are_one_line_errors(templates, message):
    from recbole_ckf.data.templates import PromptRenderer
    from recbole_ckf.errors import CKFError

    with pytest.raises(CKFError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")) as err:
        PromptRenderer(templates, {}, "<u>", "<i>", sequential_answer="pointwise")
    assert "\n" not in str(err.value)
