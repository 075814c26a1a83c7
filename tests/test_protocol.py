"""The evaluation protocol (:mod:`recbole_ckf.evaluator.protocol`): same split, same users, same lists.

``candidate_lists(test_data, seed)`` seeds numpy's global generator with ``seed`` and iterates RecBole's uni9
test dataloader; RecBole's own ``trainer.evaluate(test_data)`` run right after ``np.random.seed(seed)`` iterates
the same dataloader with the same generator state, so it draws the very same lists. On those lists, with every
test user (``eval_users: None``), :func:`evaluate_ranking_on_lists` must give RecBole's numbers exactly (to 10
decimals): same model outputs, same ``[users, items]`` score matrix, same Collector and Evaluator.

    HF_HUB_OFFLINE=1 python -m pytest -q tests/test_protocol.py
"""

import dataclasses

import numpy as np
import pytest
from recbole.utils import get_trainer, init_seed

from recbole_ckf.config import Config
from recbole_ckf.evaluator.protocol import (check_same_split, ckf_protocol, evaluate_pointwise_on_users,
                                            evaluate_ranking_on_lists, explanation_floors, lists_protocol,
                                            split_overrides, training_mean_rating)
from recbole_ckf.data import load_data

SMALL = {"epochs": 1, "show_progress": False, "state": "WARNING", "embedding_size": 16, "train_batch_size": 4096,
         "eval_batch_size": 4096, "metric_decimal_place": 10, "n_layers": 1, "n_heads": 2, "hidden_size": 16,
         "inner_size": 32, "MAX_ITEM_LIST_LENGTH": 20, "mlp_hidden_size": [16]}


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


DATA = "amazon-instruments"  # 1,429 users, ~7.4k training interactions: seconds per model on 2 CPU cores
QUIET = {"show_progress": False, "state": "WARNING"}


@pytest.fixture(scope="module")
def protocol():
    """CKF's protocol over every test user (no language model is loaded)."""
    return ckf_protocol(DATA, QUIET, eval_users=None)


@pytest.mark.parametrize("model_name", ["BPR", "SASRec"])
def test_same_lists_reproduce_recbole_uni9(model_name):
    config, ds, train_data, test_data, model, trainer = _train(model_name, DATA)
    protocol = lists_protocol(config, ds, train_data, test_data, eval_users=None)  # the model's own lists
    ours = evaluate_ranking_on_lists(model, config, test_data, protocol)
    theirs = _recbole_on_seeded_lists(trainer, test_data, config["seed"])
    assert len(protocol.users) == 1429
    assert dict(ours) == dict(theirs)
    assert 0 < ours["ndcg@3"] < 1


def test_bpr_on_ckf_lists_is_recbole_on_the_same_lists(protocol):
    """CKF's lists (drawn from CKF's own test dataloader) are the lists RecBole's BPR evaluation draws with the
    same seed: BPR's ids and sampler are CKF's. So same-list BPR numbers over all users = RecBole's own."""
    config, ds, train_data, test_data, model, trainer = _train("BPR", DATA, **split_overrides(protocol))
    check_same_split(test_data, protocol)
    ours = evaluate_ranking_on_lists(model, config, test_data, protocol)
    theirs = _recbole_on_seeded_lists(trainer, test_data, config["seed"])
    assert dict(ours) == dict(theirs)
    # a seeded subset of 100 users: a different number, the same metrics
    subset = evaluate_ranking_on_lists(model, config, test_data, protocol.restrict(100))
    assert set(subset) == set(ours) and len(protocol.restrict(100).users) == 100

    # a baseline whose split differs from CKF's (here: another user's test item swapped in) is refused
    user = next(iter(protocol.positive_tokens))
    other = dataclasses.replace(protocol, positive_tokens={**protocol.positive_tokens, user: ["no-such-item"]})
    with pytest.raises(ValueError, match="not CKF's split: 1 of"):
        check_same_split(test_data, other)


def test_context_model_all_users_is_recbole_labeled_test(protocol):
    """Labeled ctr evaluation samples nothing: over all test users it is RecBole's own test result."""
    config, ds, train_data, test_data, model, trainer = _train("DeepFM", DATA, **split_overrides(protocol))
    check_same_split(test_data, protocol)
    ours = evaluate_pointwise_on_users(model, config, test_data, protocol)
    theirs = trainer.evaluate(test_data, load_best_model=False)
    assert dict(ours) == dict(theirs)


def test_floors_on_amazon(protocol):
    protocol = protocol.restrict(protocol.config["eval_users"])
    assert len(protocol.users) == protocol.config["eval_users"]
    result, mean = training_mean_rating(protocol)
    assert 1 <= mean <= 5 and 0 < result["rmse"] < 4 and 0 < result["mae"] <= result["rmse"]
    floors, notes = explanation_floors(protocol)
    assert set(floors) == {"item", "global"} and notes["samples"] > 0
    assert floors["global"]["distinct-1"] <= floors["item"]["distinct-1"]
    assert set(floors["item"]) == {"bleu-1", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "distinct-1", "distinct-2"}
