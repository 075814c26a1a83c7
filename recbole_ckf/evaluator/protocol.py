"""The evaluation protocol the README's comparisons rest on: baselines evaluated on exactly what CKF is evaluated
on, the same split, the same test users and the same candidate lists.

CKF's trainer evaluates the test split like this (:func:`recbole_ckf.data.tasks.test_split_samples`):

* the candidate lists are ``candidate_lists(test_data, seed)``: RecBole's own ``uniN`` lists (1 true item + N-1
  negatives per test interaction), drawn by RecBole's sampler with numpy's global generator seeded with ``seed``;
* the test users are ``sample_users(<users of the test split>, eval_users, seed)``: a seeded subset (all users
  when ``eval_users`` is None);
* ctr / rating / explanation use every test interaction of those users.

:func:`ckf_protocol` rebuilds exactly that from CKF's own config (no language model is loaded) and keeps the users,
items and lists as RecBole *tokens*, so that a baseline whose dataset object is built separately (a general,
sequential or context model: same atomic files, same split) is evaluated on the same interactions whatever its
internal ids are. Then:

* :func:`evaluate_ranking_on_lists` scores every (user, candidate) pair with the trained model's ``predict``
  (general models: the pair; sequential models: the user's test interaction, with its ``item_id_list`` and
  ``item_length``, repeated once per candidate with ``item_id`` replaced by the candidate), puts the scores into a
  ``[users, items]`` matrix that is ``-inf`` outside the candidates, exactly as RecBole's
  ``Trainer._neg_sample_batch_eval`` does, and hands it to RecBole's ``Collector`` and ``Evaluator`` with the
  model's own config. With ``eval_users: None`` and the lists RecBole itself draws after ``np.random.seed(seed)``,
  this gives RecBole's own ``trainer.evaluate`` numbers (``tests/test_protocol.py``);
* :func:`evaluate_pointwise_on_users` scores the test interactions of the chosen users with a context model
  (labeled ctr, or the rating as label) through the same Collector/Evaluator;
* :func:`training_mean_rating` and :func:`explanation_floors` are the non-learned floors, scored with RecBole's
  Evaluator on the same users (the text metrics are the project's, registered into RecBole's registry).
"""

import collections
import dataclasses

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Collector, Evaluator
from recbole.evaluator.collector import DataStruct
from recbole.utils import ModelType, init_seed

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole is used)
import recbole_ckf.evaluator  # noqa: F401  (registers the text metrics)
from recbole_ckf.config import Config
from recbole_ckf.data import load_data
from recbole_ckf.data.tasks import TaskBuilder, candidate_lists, sample_users, user_sequences
from recbole_ckf.evaluator.task_eval import TASK_METRICS, metric_config
from recbole_ckf.evaluator.text_metrics import PRED_KEY, REF_KEY

PREDICT_CHUNK = 8192  # (user, candidate) pairs per predict call


@dataclasses.dataclass
class Protocol:
    """What CKF is evaluated on, in tokens (dataset-independent) and in the CKF dataset's ids."""

    config: object              # CKF's Config
    dataset: object             # CKF's dataset (with the text columns CKF reads)
    train_data: object
    test_data: object
    seed: int
    eval_users: object          # the limit (None = all)
    users: np.ndarray           # chosen test users (CKF dataset ids, ascending)
    lists: dict                 # {user id: [item ids]} of ALL test users (RecBole order: positives first)
    positives: dict             # {user id: [true test item ids]}
    user_tokens: list           # tokens of ``users``
    list_tokens: dict           # {user token: [item tokens]} of all test users
    positive_tokens: dict       # {user token: [item tokens]}

    def restrict(self, limit):
        """The same protocol with another ``eval_users`` limit (None = every test user)."""
        uid = self.test_data.dataset.uid_field
        users = sample_users(self.test_data.dataset.inter_feat[uid].numpy(), limit, self.seed)
        return dataclasses.replace(self, eval_users=limit, users=users,
                                   user_tokens=[str(t) for t in self.dataset.id2token(uid, users)])


def lists_protocol(config, dataset, train_data, test_data, eval_users=None):
    """The protocol of any model's ``uniN`` test dataloader: ``candidate_lists(test_data, config["seed"])`` and
    ``sample_users(<test users>, eval_users, seed)``, as CKF's trainer computes them
    (:func:`recbole_ckf.data.tasks.evaluation_samples`)."""
    seed = config["seed"]
    lists = candidate_lists(test_data, seed)
    ds = test_data.dataset
    uid, iid = ds.uid_field, ds.iid_field
    positives = collections.defaultdict(list)
    for u, i in zip(ds.inter_feat[uid].numpy(), ds.inter_feat[iid].numpy()):
        positives[int(u)].append(int(i))
    users = sample_users(ds.inter_feat[uid].numpy(), eval_users, seed)
    u_tok = lambda u: str(dataset.id2token(uid, int(u)))  # noqa: E731
    i_toks = lambda items: [str(t) for t in dataset.id2token(iid, np.asarray(items, dtype=np.int64))]  # noqa: E731
    return Protocol(
        config=config, dataset=dataset, train_data=train_data, test_data=test_data, seed=seed,
        eval_users=eval_users, users=users, lists=lists, positives=dict(positives),
        user_tokens=[u_tok(u) for u in users],
        list_tokens={u_tok(u): i_toks(items) for u, items in lists.items()},
        positive_tokens={u_tok(u): i_toks(items) for u, items in positives.items()})


def ckf_protocol(dataset_name, config_dict=None, eval_users="config"):
    """CKF's test users and candidate lists for ``dataset_name``, as ``CKFTrainer.evaluate`` builds them.

    ``config_dict`` overrides CKF's config (as for the CKF run); ``eval_users``: ``"config"`` takes CKF's
    ``eval_users`` (CKF.yaml: 100), an int or None overrides it. No language model is loaded."""
    config = Config("CKF", dataset_name, config_dict=dict(config_dict or {}))
    init_seed(config["seed"], config["reproducibility"])  # as run_recbole_ckf does before load_data
    dataset, train_data, _, test_data = load_data(config)
    limit = config["eval_users"] if eval_users == "config" else eval_users
    return lists_protocol(config, dataset, train_data, test_data, limit)


def split_overrides(protocol):
    """Config keys a baseline needs to get CKF's split. RecBole sorts the split by the time field as a float32
    tensor: raw Unix seconds (~1e9) are rounded to 64 s, min-max normalised ones to ~1 s, so whether the time
    field is normalised decides which same-minute interaction is a user's last one. CKF reads raw ratings
    (``normalize_all: False``); the baselines must then load their data the same way."""
    return {"normalize_all": protocol.config["normalize_all"], "normalize_field": protocol.config["normalize_field"]}


def check_same_split(test_data, protocol):
    """Raise if the model's test split differs from CKF's (another test item for some user)."""
    ds = test_data.dataset
    users = ds.id2token(ds.uid_field, ds.inter_feat[ds.uid_field].numpy())
    items = ds.id2token(ds.iid_field, ds.inter_feat[ds.iid_field].numpy())
    mine = collections.defaultdict(list)
    for u, i in zip(users, items):
        mine[str(u)].append(str(i))
    differ = [u for u in protocol.positive_tokens if sorted(mine.get(u, [])) != sorted(protocol.positive_tokens[u])]
    if differ or set(mine) != set(protocol.positive_tokens):
        raise ValueError(f"not CKF's split: {len(differ)} of {len(protocol.positive_tokens)} users have another test "
                         f"item (e.g. user {differ[:1]}); check normalize_all / normalize_field (see split_overrides)")


# ---------------------------------------------------------------------------------------------------------
def _ids(dataset, field, tokens):
    """Token(s) -> this dataset's ids; a token the dataset does not know is an error (different data)."""
    tokens = np.asarray(tokens, dtype=str)
    known = dataset.field2token_id[field]
    missing = [t for t in tokens if t not in known]
    if missing:
        raise ValueError(f"{field}: {len(missing)} token(s) unknown to this dataset (e.g. {missing[:3]}): "
                         f"the baseline was not built from the same data")
    return np.array([known[t] for t in tokens], dtype=np.int64)


def _predict(model, interaction, device):
    out = []
    for start in range(0, len(interaction), PREDICT_CHUNK):
        part = interaction[start:start + PREDICT_CHUNK].to(device)
        out.append(model.predict(part).detach().float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _test_rows(dataset, user_ids):
    """{user id: [row indices]} of the test interactions of ``user_ids`` in ``dataset.inter_feat``."""
    users = dataset.inter_feat[dataset.uid_field].numpy()
    wanted = set(int(u) for u in user_ids)
    rows = collections.defaultdict(list)
    for r, u in enumerate(users):
        if int(u) in wanted:
            rows[int(u)].append(r)
    return rows


@torch.no_grad()
def evaluate_ranking_on_lists(model, config, test_data, protocol, users="protocol"):
    """RecBole ranking metrics of a trained general or sequential model on CKF's candidate lists.

    ``config`` is the model's own Config (metrics, topk); ``test_data`` its own test dataloader (only its
    dataset is read: nothing is sampled here). ``users``: ``"protocol"`` (CKF's test users) or a list of user
    tokens. Returns RecBole's result dict (``hit@1``, ``ndcg@3``, ``mrr@10``, ...)."""
    ds = test_data.dataset
    uid, iid = ds.uid_field, ds.iid_field
    user_tokens = protocol.user_tokens if isinstance(users, str) and users == "protocol" else list(users)
    user_ids = _ids(ds, uid, user_tokens)
    order = np.argsort(user_ids, kind="stable")  # RecBole's NegSampleEvalDataLoader sorts by user id
    user_ids = user_ids[order]
    user_tokens = [user_tokens[k] for k in order]
    cands = [_ids(ds, iid, protocol.list_tokens[t]) for t in user_tokens]
    positives = [_ids(ds, iid, protocol.positive_tokens[t]) for t in user_tokens]
    counts = torch.tensor([len(c) for c in cands])
    flat_items = torch.from_numpy(np.concatenate(cands))
    row_idx = torch.repeat_interleave(torch.arange(len(cands)), counts)

    if model.type == ModelType.SEQUENTIAL:
        rows = _test_rows(ds, user_ids)
        picked = []
        for u, t, pos in zip(user_ids, user_tokens, positives):
            r = rows.get(int(u), [])
            if len(r) != 1:
                raise ValueError(f"user {t}: {len(r)} test interactions in the sequential test split; same-list "
                                 f"evaluation of sequential models needs exactly one (leave-one-out)")
            if int(ds.inter_feat[iid][r[0]]) != int(pos[0]):
                raise ValueError(f"user {t}: the sequential test item differs from CKF's test item (another split?)")
            picked.append(r[0])
        base = test_data.transform(ds, ds.inter_feat[torch.tensor(picked)])
        inter = Interaction({k: v.repeat_interleave(counts, dim=0) for k, v in base.interaction.items()})
        inter.interaction[iid] = flat_items.to(inter[iid].dtype)
        inter = Interaction(inter.interaction)
    else:
        inter = Interaction({uid: torch.from_numpy(user_ids).repeat_interleave(counts), iid: flat_items})

    model.eval()
    scores = _predict(model, inter, config["device"])
    matrix = torch.full((len(cands), ds.item_num), -np.inf)
    matrix[row_idx, flat_items] = scores
    positive_u = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(positives)])
    positive_i = torch.from_numpy(np.concatenate(positives))
    collector = Collector(config)
    collector.eval_batch_collect(matrix, inter, positive_u, positive_i)
    return Evaluator(config).evaluate(collector.get_data_struct())


@torch.no_grad()
def evaluate_pointwise_on_users(model, config, test_data, protocol, users="protocol"):
    """RecBole value metrics (AUC/LogLoss, or RMSE/MAE) of a trained context model on every test interaction of
    CKF's test users (or of the user tokens given), through the model's own Collector/Evaluator config."""
    ds = test_data.dataset
    uid = ds.uid_field
    user_tokens = protocol.user_tokens if isinstance(users, str) and users == "protocol" else list(users)
    user_ids = _ids(ds, uid, user_tokens)
    rows = _test_rows(ds, user_ids)
    picked = sorted(r for u in user_ids for r in rows.get(int(u), []))
    if not picked:
        raise ValueError("none of the chosen users has a test interaction in this model's test split")
    inter = test_data.transform(ds, ds[torch.tensor(picked)])  # ds[...] joins user/item features as RecBole does
    model.eval()
    scores = _predict(model, inter, config["device"])
    collector = Collector(config)
    collector.eval_batch_collect(scores, inter, None, None)
    return Evaluator(config).evaluate(collector.get_data_struct())


# ---------------------------------------------------------------------------------------------------------
# floors (no model)

def task_samples(protocol, task, users):
    """CKF's test samples of ``task`` for ``users`` (no candidate lists: the pointwise tasks)."""
    builder = TaskBuilder(protocol.config, protocol.dataset, protocol.train_data.dataset, [task], item_texts=None)
    return builder.eval_samples(protocol.test_data.dataset, None, users)[task]


def _value_result(config, metrics, scores, labels):
    mconfig = metric_config(config, metrics)
    collector = Collector(mconfig)
    collector.eval_batch_collect(scores.unsqueeze(-1), {"label": labels.unsqueeze(-1)}, None, None)
    return Evaluator(mconfig).evaluate(collector.get_data_struct())


def training_mean_rating(protocol, users=None):
    """RMSE/MAE (1-5 scale) of predicting the mean training rating for every test interaction of the users
    (``None``: CKF's test users). Returns ``(result, mean)``."""
    users = protocol.users if users is None else users
    train = protocol.train_data.dataset.inter_feat[protocol.config["RATING_FIELD"]].numpy().astype(np.float64)
    mean = float(train.mean())
    samples = task_samples(protocol, "rating", users)
    labels = torch.tensor([s.label for s in samples], dtype=torch.float)
    result = _value_result(protocol.config, TASK_METRICS["rating"], torch.full_like(labels, mean), labels)
    return result, mean


def headline_floors(protocol):
    """``(item -> most frequent training headline, global most frequent training headline)``; ties go to the
    headline seen first in RecBole's split order."""
    seqs = user_sequences(protocol.config, protocol.dataset, protocol.train_data.dataset)
    per_item = collections.defaultdict(collections.Counter)
    overall = collections.Counter()
    for items, _, heads in (seqs[u] for u in sorted(seqs)):
        for item, head in zip(items, heads):
            if head:
                per_item[item][head] += 1
                overall[head] += 1
    if not overall:
        raise ValueError("no training headlines: this data set has no explanation task")
    best = {item: c.most_common(1)[0][0] for item, c in per_item.items()}
    return best, overall.most_common(1)[0][0]


def explanation_floors(protocol, users=None):
    """Text metrics of two retrieval floors on the explanation samples of the users (``None``: CKF's):
    ``item``: the item's most frequent training headline (the global one where the item has none);
    ``global``: the global most frequent training headline. Returns ``{name: result}`` and notes."""
    users = protocol.users if users is None else users
    samples = task_samples(protocol, "explanation", users)
    per_item, top = headline_floors(protocol)
    refs = [s.answer for s in samples]
    preds = {"item": [per_item.get(s.item, top) for s in samples], "global": [top] * len(samples)}
    mconfig = metric_config(protocol.config, TASK_METRICS["explanation"])
    out = {}
    for name, pred in preds.items():
        data = DataStruct()
        data.set(PRED_KEY, pred)
        data.set(REF_KEY, refs)
        out[name] = Evaluator(mconfig).evaluate(data)
    notes = {"samples": len(samples), "global_headline": top,
             "items_without_training_headline": sum(s.item not in per_item for s in samples)}
    return out, notes
