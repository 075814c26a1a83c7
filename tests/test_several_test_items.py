"""Splits that give a user several test items (RecBole's RS 8:1:1 here): CKF ranks them as RecBole does.

RecBole's uni9 evaluation draws 9 negatives per test item and ranks a user's whole list once, over distinct
items (its scores live in a ``[user, item]`` matrix), every test item of the user a positive. CKF's sequential
evaluation must build exactly one sample per user from that list, with all the user's test items as positives,
so that the same scores give RecBole's Hit/NDCG/MRR. Checked with a RecBole BPR: its scores on CKF's samples,
through CKF's ranking metrics, equal RecBole's own ``trainer.evaluate`` on the same seeded lists.
"""

import collections

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import small_config
from test_protocol import _train
from recbole_ckf.config import Config
from recbole_ckf.data.tasks import TaskBuilder, candidate_lists
from recbole_ckf.evaluator.task_eval import TaskScores, task_metrics

DATA = "amazon-instruments"
RS = {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "uni9"}}


class _Texts(dict):
    def __missing__(self, item):
        return f"item {item}"


@pytest.fixture(scope="module")
def bpr_on_rs():
    import sys

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        ckf_config = Config("CKF", DATA, config_dict=small_config(llm="tiny", sequential_answer="title",
                                                                metric_decimal_place=10, **RS))
        # BPR loads CKF's columns (the headlines too): one dataset, one split, read by both
        config, dataset, train_data, test_data, model, trainer = _train("BPR", DATA, load_col=ckf_config["load_col"],
                                                                        **RS)
    return config, ckf_config, dataset, train_data, test_data, model, trainer


def test_one_ranking_per_user_with_every_test_item_as_positive(bpr_on_rs):
    config, ckf_config, dataset, train_data, test_data, model, trainer = bpr_on_rs
    lists = candidate_lists(test_data, config["seed"])
    builder = TaskBuilder(ckf_config, dataset, train_data.dataset, ["sequential"], _Texts())
    samples = builder.eval_samples(test_data.dataset, candidates=lists)["sequential"]

    inter = test_data.dataset.inter_feat
    truth = collections.defaultdict(set)
    for u, i in zip(inter[dataset.uid_field].tolist(), inter[dataset.iid_field].tolist()):
        truth[u].add(i)
    assert sum(len(v) > 1 for v in truth.values()) >= 20  # the split really gives users several test items
    assert sorted(s.user for s in samples) == sorted(truth)  # one sample per test user
    for s in samples:
        assert len(set(s.candidates)) == len(s.candidates)  # distinct items, as RecBole's score matrix
        assert set(s.candidates) == set(lists[s.user])
        assert {s.candidates[k] for k in s.positives} == truth[s.user]
        assert s.candidates[int(s.label)] == s.item and s.item in truth[s.user]

    # BPR's scores on CKF's samples, through CKF's ranking metrics = RecBole's own evaluation of the same lists
    model.eval()
    with torch.no_grad():
        raw = [model.predict(Interaction({dataset.uid_field: torch.full((len(s.candidates),), s.user),
                                          dataset.iid_field: torch.tensor(s.candidates)})) for s in samples]
    scores = TaskScores("sequential", [s.user for s in samples], [s.item for s in samples],
                        torch.tensor([s.label for s in samples]), raw=raw,
                        positives=[list(s.positives) for s in samples])
    ours = task_metrics({"sequential": scores}, ckf_config, train_counts={})
    np.random.seed(config["seed"])  # the state candidate_lists drew the lists with
    theirs = trainer.evaluate(test_data, load_best_model=False)
    for key in ("hit@1", "hit@3", "ndcg@3"):
        assert ours[f"sequential:{key}"] == pytest.approx(theirs[key], abs=1e-9), key
    assert 0 < ours["sequential:ndcg@3"] < 1

    # counting one test item per list as the positive (the others as negatives) would not be RecBole's number
    per_item = [s.positives[:1] for s in samples]
    old = task_metrics({"sequential": TaskScores("sequential", scores.users, scores.items, scores.labels, raw=raw,
                                                 positives=per_item)}, ckf_config, train_counts={})
    assert old["sequential:ndcg@3"] != pytest.approx(theirs["ndcg@3"], abs=1e-6)
