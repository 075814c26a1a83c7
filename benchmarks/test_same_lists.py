"""Same-list evaluation reproduces RecBole's own evaluation when both rank the same seeded lists.

``candidate_lists(test_data, seed)`` seeds numpy's global generator with ``seed`` and iterates RecBole's uni9
test dataloader; RecBole's own ``trainer.evaluate(test_data)`` run right after ``np.random.seed(seed)`` iterates
the same dataloader with the same generator state, so it draws the very same lists. On those lists, with every
test user (``eval_users: None``), :func:`evaluate_ranking_on_lists` must give RecBole's numbers exactly (to 10
decimals): same model outputs, same ``[users, items]`` score matrix, same Collector and Evaluator.

    HF_HUB_OFFLINE=1 python -m pytest -q benchmarks/test_same_lists.py      # ~1 minute on 2 CPU cores
"""

import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import recbole_ckf  # noqa: E402,F401
from recbole.utils import get_trainer, init_seed  # noqa: E402

from recbole_ckf.config import Config  # noqa: E402
from recbole_ckf.quick_start import load_data  # noqa: E402
from same_lists import (check_same_split, ckf_protocol, evaluate_pointwise_on_users,  # noqa: E402
                        evaluate_ranking_on_lists, explanation_floors, lists_protocol, split_overrides,
                        training_mean_rating)

SMALL = {"epochs": 1, "show_progress": False, "state": "WARNING", "embedding_size": 16, "train_batch_size": 4096,
         "eval_batch_size": 4096, "metric_decimal_place": 10, "n_layers": 1, "n_heads": 2, "hidden_size": 16,
         "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 20, "mlp_hidden_size": [16]}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)  # RecBole writes saved/ and log_tensorboard/ into the current folder


def _train(model_name, dataset, **overrides):
    config = Config(model_name, dataset, config_dict=dict(SMALL, **overrides))
    init_seed(config["seed"], config["reproducibility"])
    ds, train_data, valid_data, test_data = load_data(config)
    init_seed(config["seed"], config["reproducibility"])
    model = config.model_class(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    return config, ds, train_data, test_data, model, trainer


def _recbole_on_seeded_lists(trainer, test_data, seed):
    np.random.seed(seed)  # the state candidate_lists draws with
    return trainer.evaluate(test_data, load_best_model=False)


@pytest.mark.parametrize("model_name", ["BPR", "SASRec"])
def test_same_lists_reproduce_recbole_uni9(model_name):
    config, ds, train_data, test_data, model, trainer = _train(model_name, "ml-100k")
    protocol = lists_protocol(config, ds, train_data, test_data, eval_users=None)  # the model's own lists
    ours = evaluate_ranking_on_lists(model, config, test_data, protocol)
    theirs = _recbole_on_seeded_lists(trainer, test_data, config["seed"])
    assert len(protocol.users) == 943
    assert dict(ours) == dict(theirs)
    assert 0 < ours["ndcg@3"] < 1


def test_bpr_on_ckf_lists_is_recbole_on_the_same_lists():
    """CKF's lists (drawn from CKF's own test dataloader) are the lists RecBole's BPR evaluation draws with the
    same seed: BPR's ids and sampler are CKF's. So same-list BPR numbers over all users = RecBole's own."""
    protocol = ckf_protocol("ml-100k", {"show_progress": False, "state": "WARNING"}, eval_users=None)
    config, ds, train_data, test_data, model, trainer = _train("BPR", "ml-100k", **split_overrides(protocol))
    check_same_split(test_data, protocol)
    ours = evaluate_ranking_on_lists(model, config, test_data, protocol)
    theirs = _recbole_on_seeded_lists(trainer, test_data, config["seed"])
    assert dict(ours) == dict(theirs)
    # CKF's default subset: 100 users, a different (seeded) number
    subset = evaluate_ranking_on_lists(model, config, test_data, protocol.restrict(100))
    assert set(subset) == set(ours) and len(protocol.restrict(100).users) == 100


def test_context_model_all_users_is_recbole_labeled_test():
    """Labeled ctr evaluation samples nothing: over all test users it is RecBole's own test result."""
    protocol = ckf_protocol("ml-100k", {"show_progress": False, "state": "WARNING"}, eval_users=None)
    config, ds, train_data, test_data, model, trainer = _train("DeepFM", "ml-100k", **split_overrides(protocol))
    check_same_split(test_data, protocol)
    ours = evaluate_pointwise_on_users(model, config, test_data, protocol)
    theirs = trainer.evaluate(test_data, load_best_model=False)
    assert dict(ours) == dict(theirs)


def test_split_check_catches_another_split():
    """A baseline whose split differs from CKF's (here: another user's test item swapped in) is refused."""
    protocol = ckf_protocol("amazon-instruments", {"show_progress": False, "state": "WARNING"})
    config = Config("BPR", "amazon-instruments", config_dict=dict(SMALL, **split_overrides(protocol)))
    _, _, _, test_data = load_data(config)
    check_same_split(test_data, protocol)
    user = next(iter(protocol.positive_tokens))
    protocol.positive_tokens[user] = ["no-such-item"]
    with pytest.raises(ValueError, match="not CKF's split: 1 of"):
        check_same_split(test_data, protocol)


def test_floors_on_amazon():
    protocol = ckf_protocol("amazon-instruments", {"show_progress": False, "state": "WARNING"})
    assert len(protocol.users) == protocol.config["eval_users"]
    result, mean = training_mean_rating(protocol)
    assert 1 <= mean <= 5 and 0 < result["rmse"] < 4 and 0 < result["mae"] <= result["rmse"]
    floors, notes = explanation_floors(protocol)
    assert set(floors) == {"item", "global"} and notes["samples"] > 0
    assert floors["global"]["distinct-1"] <= floors["item"]["distinct-1"]
    assert set(floors["item"]) == {"bleu-1", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "distinct-1", "distinct-2"}
