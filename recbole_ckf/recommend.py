"""Two-stage recommendation from a trained CKF checkpoint (issue #13, part 1).

    python run_recbole_ckf.py --checkpoint=saved/CKF-<dataset>-<time> --recommend --users=A1B2,C3D4 --topk=10 \\
        [--output=recs.json|recs.md]

    from recbole_ckf import recommend
    rows = recommend("saved/CKF-amazon-instruments-<time>", ["A1B2", "C3D4"], topk=10)

The checkpoint's ``meta.json`` names the data set and holds the model's config; the data set is loaded and split
as for ``--eval_only`` and the model restored with :func:`~recbole_ckf.trainer.checkpoint.load_checkpoint`.
User ids are the data set's ORIGINAL tokens (amazon reviewerIDs, ml-100k user ids as strings).

Stage 1, retrieval: the frozen CF backbone scores the whole catalogue, ``e_u . e_v``
(:meth:`CKF.backbone_scores`), and keeps the top ``recommend_retrieve`` items (default 10; at least ``topk``).
Every item the user interacted with anywhere in the data (training, validation AND test splits) is excluded:
recommending something the user already bought or rated is useless.

Stage 2, re-ranking and prediction, by the language model (``recommend_rerank``):

* ``ckf`` (default): CKF's listwise sequential prompt ("which of these comes next: (A) ... (J) ...?") over the
  retrieved items, the user's history being all their interactions in time order. One prompt takes at most
  ``n_candidates`` (10) items, so the N items are split into ``ceil(N / n_candidates)`` lists that each see
  every item once. To make scores of different lists comparable, the lists are *stratified*: list j takes the
  backbone's ranks j, j + m, j + 2m, ... (m lists), so every list holds a similar mix of strong and weak items
  and the lists differ in size by at most one. An item's CKF score is its log-softmax over its list's letters
  plus log(list size): the log-lift over picking uniformly in that list (0 = no preference, > 0 = preferred),
  which is what stays comparable between lists of (nearly) equal size and mix. Within a list the items are in a
  seeded order (as in evaluation, the model was trained with the true item at random positions). Equal scores
  are broken by the backbone's rank. With ``sequential_answer: title`` the score is the mean log-probability of
  the item's text, with ``pointwise`` the log-odds of Yes after the item's block (each block sees the shared
  prefix only, never another item): both already comparable between lists, not normalised.
* ``fusion``: ``(1 - w) * z(CKF score) + w * z(backbone score)``, z standardised over the user's N retrieved
  items; ``w = recommend_fusion_weight``, else the weight the checkpoint's ``meta.json`` holds
  (``adjust.sequential.backbone_weight``, as :func:`~recbole_ckf.evaluator.task_eval.fit_adjustments` fits it),
  else 0.5.
* ``backbone``: the backbone's order, no LM re-ranking.

In every mode the LM predicts, for the top-k items, the rating (expected stars over the five digit answers, as
``CKF.predict_rating``) and P(like) (P(Yes) against P(No), as ``CKF.predict_ctr``), and writes a one-line
explanation (greedy decoding of the explanation task's headline). Where the checkpoint's ``meta.json`` holds a
calibration fitted on validation (``adjust.ctr.platt``, ``adjust.rating.linear``), it is applied; otherwise the
raw outputs are shown (CKF trains ctr on class-balanced batches: a raw P(like) is not a calibrated rate). A task
the model does not have (the explanation on ml-100k) leaves its column empty.

Batching: each LM stage runs for ALL the given users at once: the listwise prompts in length-sorted batches of
``eval_batch_size``; a user's top-k rating / P(like) / explanation prompts run their common prefix (the history)
once (:mod:`recbole_ckf.recommend_shared`), ``recommend_batch_size`` prompts (whole users) per pass.
``recommend(..., batched=False)`` runs one user at a time without sharing (the reference: same output up to float
rounding). Table, files, CLI: :mod:`recbole_ckf.recommend_output`.
"""

import difflib
import math
import os

from recbole_ckf.errors import CKFError
from recbole_ckf.recommend_output import COLUMNS, OUTPUT_SUFFIXES, check_output, format_table, \
    print_recommendations, run_cli, write_recommendations  # noqa: F401  (the output side, re-exported)

RERANK_MODES = ("ckf", "fusion", "backbone")
DEFAULT_RETRIEVE = 10
DEFAULT_SHARED_BATCH = 64  # prompts per pass of the shared-prefix stages (measured: see CKF.yaml)
DEFAULT_FUSION_WEIGHT = 0.5


# ---- inputs ---------------------------------------------------------------------------------------------
def checkpoint_folder(path):
    """The checkpoint folder of ``path``: ``path`` itself when it holds ``meta.json``, else its ``best/``
    (``path`` being a run folder such as ``saved/CKF-<dataset>-<time>``)."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    best = os.path.join(path, "best")
    if not os.path.isfile(os.path.join(path, "meta.json")) and os.path.isdir(best):
        return best
    return path


def parse_users(users):
    """A list of user tokens from ``"A,B"`` or an iterable; duplicates dropped, order kept."""
    if isinstance(users, str):
        users = users.split(",")
    out = []
    for u in users:
        u = str(u).strip()
        if u and u not in out:
            out.append(u)
    if not out:
        raise CKFError("recommend: no user given (expected --users=ID[,ID...], the data set's original user ids)")
    return out


def _int(value, key, minimum):
    try:
        number = int(str(value).strip()) if not isinstance(value, (bool, float)) else None
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise CKFError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return number


def _setting(config, key, given, default):
    if given is not None:
        return given
    try:
        value = config[key]
    except KeyError:
        value = None
    return default if value is None else value


def map_users(dataset, users):
    """RecBole ids of the user tokens ``users``; an unknown token is one ``CKFError`` line with the closest
    known tokens (difflib)."""
    field = dataset.uid_field
    token_id = dataset.field2token_id[field]
    ids = []
    for u in users:
        if u not in token_id or token_id[u] == 0:  # 0 is RecBole's [PAD]
            known = [t for t, i in token_id.items() if i != 0]
            close = difflib.get_close_matches(u, known, n=3, cutoff=0.0)
            raise CKFError(f"unknown user '{u}' in data set '{dataset.dataset_name}'; closest known: "
                           f"{', '.join(close) if close else '(none)'}")
        ids.append(int(token_id[u]))
    return ids


# ---- the model --------------------------------------------------------------------------------------------
class Recommender:
    """A CKF checkpoint loaded with its data set, ready to recommend (load once, call :meth:`recommend` often).

    ``config_dict`` / ``cmd_args`` override the checkpoint's config (e.g. ``data_path``, ``device``,
    ``recommend_retrieve``, ``recommend_rerank``, ``explanation_max_tokens``, ``eval_batch_size``)."""

    def __init__(self, checkpoint, config_file_list=None, config_dict=None, cmd_args=None, users=None):
        from recbole.utils import init_seed

        from recbole_ckf.config import Config
        from recbole_ckf.data.collate import Encoder
        from recbole_ckf.data.tasks import user_sequences
        from recbole_ckf.data import load_data
        from recbole_ckf.trainer.checkpoint import load_checkpoint, read_meta
        from recbole_ckf.trainer.trainer import resolve_mixed_precision

        self.path = checkpoint_folder(checkpoint)
        self.meta = read_meta(self.path)  # one-line errors for a missing folder, file or a garbage meta.json
        dataset_name = self.meta.get("dataset")
        saved = dict(self.meta.get("config") or {})
        saved.update({k: saved.get(k, False) for k in ("answer_head", "bridge_stats", "bridge_anchor")})  # older: none
        config = Config("CKF", dataset_name, config_file_list, {**saved, **(config_dict or {})}, cmd_args)
        if config["dataset"] != dataset_name:
            raise CKFError(f"checkpoint '{self.path}' was trained on data set '{dataset_name}', not "
                           f"'{config['dataset']}'")
        self.config = config
        init_seed(config["seed"], config["reproducibility"])
        self.dataset, train_data, valid_data, test_data = load_data(config)
        if users is not None:  # unknown ids are refused before the language model is loaded
            map_users(self.dataset, parse_users(users))
        # every interaction of every user in time order: training, then validation, then test (the order in
        # which the test prompts see them)
        self.sequences = {}
        for split in (train_data.dataset, valid_data.dataset, test_data.dataset):
            split_sequences = user_sequences(config, self.dataset, split)
            for u, seq in split_sequences.items():
                own = self.sequences.setdefault(u, ([], []))
                own[0].extend(seq[0])
                own[1].extend(seq[1])
        self.test_users = sorted(split_sequences)  # RecBole ids of the users with a test interaction
        init_seed(config["seed"], config["reproducibility"])
        self.model = config.model_class(config, train_data.dataset)
        load_checkpoint(self.model, self.path)
        self.model.to(config["device"])
        self.model.eval()
        self.encoder = Encoder(self.model.tokenizer, self.model.renderer, config["max_length"])
        self.autocast = resolve_mixed_precision(config["mixed_precision"], cuda=config["device"].type == "cuda") == "bf16"
        self.batch_size = int(config["eval_batch_size"] or 16)
        # rating / P(like) / explanation prompts are short past their shared history prefix: bigger passes pay
        # off there, while the re-ranking's packed rows (prompt + 10 candidates) are fastest at eval_batch_size
        self.shared_batch_size = _int(
            _setting(config, "recommend_batch_size", None, DEFAULT_SHARED_BATCH), "recommend_batch_size", 1)
        self.share_prefix = True  # batched path: a user's top-k prompts of a task share their prefix

    # ---- pieces: each takes many (user, ...) at once; the LM runs them in batches of ``batch_size`` ------------
    def interacted(self, user):
        """Every item ``user`` interacted with in the data (all splits)."""
        return set(self.sequences.get(user, ([], []))[0])

    def retrieve(self, user, n):
        """Stage 1: ``[(item, e_u . e_v), ...]``, the backbone's top ``n`` over the whole catalogue without the
        user's own items (and the padding item 0); equal scores in item id order."""
        import numpy as np

        n_items = int(self.model.n_items)
        items = np.arange(n_items)
        scores = self.model.backbone_scores([user] * n_items, items).double().numpy()
        keep = np.ones(n_items, dtype=bool)
        keep[0] = False
        keep[list(self.interacted(user))] = False
        items, scores = items[keep], scores[keep]
        order = np.lexsort((items, -scores))[:n]
        return [(int(items[k]), float(scores[k])) for k in order]

    def _sample(self, task, user, item, candidates=()):
        """A prompt about ``item`` after ALL of ``user``'s interactions, built as the training prompts are
        (``TaskBuilder._history``: shown history, pooled items, (count, mean rating) for ``prompt_stats``)."""
        from recbole_ckf.data.tasks import Sample, TaskBuilder

        seq = self.sequences.get(user, ([], []))
        shown = self.model.config["max_history"]
        pooled = max(self.model.config["pool_history"] or shown, shown)
        history, hist_ratings, pool, stats = TaskBuilder._history((*seq, None), len(seq[0]), shown, pooled)
        return Sample(task, user, item, list(history), hist_ratings, candidates=list(candidates), label=0.0,
                      answer="", pool=pool, user_stats=stats)

    def _lists(self, user, items):
        """The stratified candidate lists of ``user``'s retrieved ``items`` (list j: ranks j, j+m, ...), each in
        a seeded order per user and list, as the evaluation's lists."""
        import numpy as np

        from recbole_ckf.data.templates import LABELS

        width = max(1, min(int(self.config["n_candidates"]), len(LABELS)))
        m = math.ceil(len(items) / width)
        lists = [items[j::m] for j in range(m)]
        for j, lst in enumerate(lists):
            order = np.random.default_rng([int(self.config["seed"]), int(user), j]).permutation(len(lst))
            lists[j] = [lst[k] for k in order]
        return lists

    def _title_scores(self, samples):
        """:func:`score_candidates` of ``samples``, fed in order of their packed row length (so a batch of many
        users holds rows of similar length) and returned in the given order."""
        from recbole_ckf.evaluator.sequential import encode_candidates, score_candidates

        slotted = bool(self.model.use_cf)
        if len(samples) > 1:
            packed = [len(p.input_ids) + sum(len(a) - 1 for a in {tuple(a) for a in answers})
                      for p, answers in encode_candidates(self.encoder, samples, slotted)]
            order = sorted(range(len(samples)), key=lambda k: packed[k])
        else:
            order = list(range(len(samples)))
        rows = score_candidates(self.model, self.encoder, [samples[k] for k in order], slotted, self.batch_size,
                                self.config["sequential_score"] or "mean", self.autocast)
        out = [None] * len(samples)
        for k, row in zip(order, rows):
            out[k] = row
        return out

    def ckf_scores_many(self, requests):
        """Stage 2 (``ckf``) for ``requests = [(user, items), ...]``: per request, CKF's listwise score of each
        of ``items`` (see the module docstring). All requests' prompts go through the LM together."""
        from recbole_ckf.evaluator.pointwise import predict_answer_logits

        model = self.model
        samples, owner = [], []
        for r, (user, items) in enumerate(requests):
            for lst in self._lists(user, list(items)):
                samples.append(self._sample("sequential", user, lst[0], lst))
                owner.append(r)
        if not samples:
            return [[] for _ in requests]
        if "sequential" in model.answer_ids:
            logits = predict_answer_logits(model, self.encoder, samples, bool(model.use_cf), self.batch_size,
                                           self.autocast)
            rows = [row[: len(s.candidates)].double() for row, s in zip(logits, samples)]
            if model.sequential_answer == "label":  # letters: lift over a uniform pick in the list
                rows = [row.log_softmax(-1) + math.log(len(row)) for row in rows]
            # pointwise: each block sees the shared prefix only, its log-odds need no normalising
        else:  # sequential_answer: title: mean log-probability of each item's text
            rows = self._title_scores(samples)
        scores = [{} for _ in requests]
        for r, s, row in zip(owner, samples, rows):
            for item, value in zip(s.candidates, row.tolist()):
                scores[r][item] = float(value)
        return [[scores[r][i] for i in items] for r, (_, items) in enumerate(requests)]

    def ckf_scores(self, user, items):  # one user's :meth:`ckf_scores_many`
        return self.ckf_scores_many([(user, items)])[0]

    def point_predictions(self, pairs, shared=False):
        """``(ratings, p_likes)`` of ``pairs = [(user, item), ...]`` (None for a task the model does not have).
        ``shared``: a user's prompts run their common prefix once (:mod:`recbole_ckf.recommend_shared`)."""
        import torch
        from recbole_ckf.evaluator.calibration import apply_linear, apply_platt
        from recbole_ckf.evaluator.pointwise import predict_answer_logits
        from recbole_ckf.recommend_shared import answer_logits_by_user
        model = self.model
        adjust = self.meta.get("adjust") or {}
        out = {}
        for task in ("rating", "ctr"):
            if task not in model.tasks or not pairs:
                out[task] = [None] * len(pairs)
                continue
            samples = [self._sample(task, u, i) for u, i in pairs]
            logits = (answer_logits_by_user if shared else predict_answer_logits)(
                model, self.encoder, samples, bool(model.use_cf), self.shared_batch_size if shared else self.batch_size,
                self.autocast)
            if task == "ctr":
                logit = logits[:, 0] - logits[:, 1]
                platt = (adjust.get("ctr") or {}).get("platt")
                values = apply_platt(logit, platt) if platt else torch.sigmoid(logit.double())
            else:
                values = logits.softmax(-1) @ torch.arange(1, 6, dtype=logits.dtype)
                linear = (adjust.get("rating") or {}).get("linear")
                if linear:
                    values = apply_linear(values, linear, 1.0, 5.0)
            out[task] = [float(v) for v in values.tolist()]
        return out["rating"], out["ctr"]

    def explanations(self, pairs, shared=False):
        """The one-line explanation of each of ``pairs = [(user, item), ...]`` (None without the task)."""
        from recbole_ckf.evaluator.explanation import generate_explanations
        from recbole_ckf.recommend_shared import explanations_by_user
        model = self.model
        if "explanation" not in model.tasks or not pairs:
            return [None] * len(pairs)
        samples = [self._sample("explanation", u, i) for u, i in pairs]
        return (explanations_by_user if shared else generate_explanations)(
            model, self.encoder, samples, bool(model.use_cf), self.shared_batch_size if shared else self.batch_size,
            autocast=self.autocast)

    def fusion_weight(self):
        given = _setting(self.config, "recommend_fusion_weight", None, None)
        if given is None:
            given = ((self.meta.get("adjust") or {}).get("sequential") or {}).get("backbone_weight")
        w = DEFAULT_FUSION_WEIGHT if given is None else float(given)
        if not 0.0 <= w <= 1.0:
            raise CKFError(f"recommend_fusion_weight: expected a number in [0, 1], got {given!r}")
        return w

    # ---- the whole thing ----------------------------------------------------------------------------------
    def recommend(self, users, topk=10, retrieve=None, rerank=None, batched=True):
        """Rows (dicts, keys :data:`COLUMNS`) of the top ``topk`` items of each user in ``users``. ``batched``:
        each LM stage runs all users' prompts together (batches of ``eval_batch_size``); ``batched=False``: one
        user at a time (the same numbers up to float rounding; the reference of the tests and benchmark)."""
        tokens = parse_users(users)
        ids = map_users(self.dataset, tokens)
        topk = _int(topk, "topk", 1)
        n = max(_int(_setting(self.config, "recommend_retrieve", retrieve, DEFAULT_RETRIEVE),
                     "recommend_retrieve", 1), topk)
        mode = str(_setting(self.config, "recommend_rerank", rerank, "ckf")).lower()
        if mode not in RERANK_MODES:
            raise CKFError(f"recommend_rerank: expected one of {', '.join(RERANK_MODES)}, got {mode!r}")
        w = self.fusion_weight() if mode == "fusion" else None
        has_sequential = "sequential" in self.model.tasks
        used = mode if (has_sequential or mode == "backbone") else "backbone (the model has no sequential task)"
        groups = [list(zip(tokens, ids))] if batched else [[pair] for pair in zip(tokens, ids)]
        rows = []
        for group in groups:
            rows += self._recommend_group(group, topk, n, mode if used == mode else "backbone", w,
                                          shared=batched and self.share_prefix)
        self.last_settings = {"checkpoint": self.path, "dataset": self.config["dataset"], "llm": self.meta.get("llm"),
                              "rerank": used, "retrieve": n, "topk": topk, "fusion_weight": w,
                              "backbone": self.meta.get("config", {}).get("backbone"),
                              "batch_size": self.batch_size, "shared_batch_size": self.shared_batch_size,
                              "batched": bool(batched)}
        return rows

    def _recommend_group(self, group, topk, n, mode, w, shared):
        """The rows of the users ``group = [(token, id), ...]``, every LM stage run once for the whole group."""
        import torch
        from recbole_ckf.evaluator.fusion import blend_lists

        retrieved = [self.retrieve(user, n) for _, user in group]
        items = [[i for i, _ in r] for r in retrieved]
        backbone = [[s for _, s in r] for r in retrieved]
        ckf = [None] * len(group)
        if mode != "backbone":
            todo = [g for g in range(len(group)) if items[g]]
            for g, scores in zip(todo, self.ckf_scores_many([(group[g][1], items[g]) for g in todo])):
                ckf[g] = scores
        orders, fused = [], [None] * len(group)
        for g in range(len(group)):
            if ckf[g] is not None and mode == "fusion":
                fused[g] = blend_lists([torch.tensor(ckf[g])], [torch.tensor(backbone[g])], w)[0].tolist()
            key = fused[g] if fused[g] is not None else (ckf[g] if (ckf[g] is not None and mode == "ckf") else None)
            # backbone rank breaks ties (and is the order itself in mode backbone or without a sequential task)
            orders.append(sorted(range(len(items[g])), key=lambda k: (-key[k], k) if key is not None else k)[:topk])
        # rating, P(like) and the explanation only for the top-k shown
        pairs = [(user, items[g][k]) for g, (_, user) in enumerate(group) for k in orders[g]]
        ratings, likes = self.point_predictions(pairs, shared)
        texts = self.explanations(pairs, shared)
        item_tokens = self.dataset.field2id_token[self.dataset.iid_field]
        rows, p = [], 0
        for g, (token, user) in enumerate(group):
            for rank, k in enumerate(orders[g], start=1):
                item = items[g][k]
                rows.append({
                    "user": token, "rank": rank, "item": str(item_tokens[item]),
                    "item_text": str(self.model.renderer.item_text(item, user)),
                    "backbone_score": round(backbone[g][k], 6),
                    "ckf_score": round(ckf[g][k], 6) if ckf[g] is not None else None,
                    "fused_score": round(fused[g][k], 6) if fused[g] is not None else None,
                    "rating": _round(ratings[p]), "p_like": _round(likes[p]), "explanation": texts[p],
                })
                p += 1
        return rows


def _round(value, digits=4):
    return None if value is None else round(float(value), digits)


def recommend(checkpoint, users, topk=10, retrieve=None, rerank=None, config_file_list=None, config_dict=None,
              cmd_args=None):
    """Two-stage recommendation for ``users`` (the data set's original user ids, a list or ``"A,B"``) from a CKF
    checkpoint folder (or its run folder, whose ``best/`` is used). Returns one dict per (user, rank) with the
    keys ``user, rank, item, item_text, backbone_score, ckf_score, fused_score, rating, p_like, explanation``
    (None where the mode or the model has no such value). ``retrieve`` / ``rerank`` override the config keys
    ``recommend_retrieve`` / ``recommend_rerank``; see the module docstring. Items the user interacted with in
    any split are never recommended. To recommend many times, build a :class:`Recommender` once."""
    return Recommender(checkpoint, config_file_list, config_dict, cmd_args, users=users).recommend(
        users, topk, retrieve, rerank)
