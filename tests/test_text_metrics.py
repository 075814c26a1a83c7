"""Text metrics of the explanation task, their registration into RecBole, warm/cold groups, and RecBole's own
AUC / NDCG checked against independent computations."""

import math
import sys

import numpy as np
import pytest
import torch

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
import recbole_ckf.evaluator as ckf_eval
from recbole_ckf.evaluator import (
    BLEU1,
    BLEU4,
    ROUGE1,
    ROUGE2,
    ROUGEL,
    Distinct1,
    Distinct2,
    distinct_n,
    evaluate_by_group,
    register_text_metrics,
    split_by_activity,
)

import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import roc_auc_score

from recbole.config import Config
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import Collector, DataStruct

PREDS = [
    "Great strings, great price!",
    "",  # an empty generation: a (bad) prediction, never dropped
    "Très bon produit \u2014 works well.",
    "good value for the money",
    "Not bad...",
    "Perfect for my guitar's tuning; strings stay put",
]
REFS = [
    "Great strings for the price",
    "Works as expected.",
    "très bon produit",
    "Good value for money!",
    "Not bad at all, but noisy",
    "Great guitar strings",
]
TEXT_NAMES = ["bleu-1", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "distinct-1", "distinct-2"]
CONFIG_NAMES = ["BLEU-1", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Distinct-1", "Distinct-2"]


@pytest.fixture
def make_config(monkeypatch):
    """RecBole Config without pytest's argv; restores CUDA_VISIBLE_DEVICES, which Config sets."""
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def make(argv=(), **config_dict):
        monkeypatch.setattr(sys, "argv", ["pytest", *argv])
        config_dict.setdefault("metric_decimal_place", 10)
        return Config(model="BPR", dataset="ml-100k", config_dict=config_dict)

    return make


class _Cfg(dict):
    """Stand-in for a RecBole Config in direct metric calls (missing keys read as None, like Config)."""

    def __getitem__(self, key):
        return self.get(key)


def _cfg(**kw):
    return _Cfg(metric_decimal_place=10, **kw)


def _struct(preds, refs):
    ds = DataStruct()
    ds.set("text.pred", list(preds))
    ds.set("text.ref", list(refs))
    return ds


def _value(cls, preds=PREDS, refs=REFS, **cfg):
    return cls(_cfg(**cfg)).calculate_metric(_struct(preds, refs))[cls.name]


def _rouge(rouge_type, preds, refs):
    scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=True)
    return 100 * np.mean([scorer.score(r, p)[rouge_type].fmeasure for p, r in zip(preds, refs)])


# ---------------------------------------------------------------- equality with sacrebleu / rouge-score


@pytest.mark.parametrize("lowercase", [True, False])
def test_bleu_equals_sacrebleu(lowercase):
    b4 = sacrebleu.corpus_bleu(PREDS, [REFS], lowercase=lowercase, tokenize="13a", smooth_method="exp").score
    b1 = sacrebleu.metrics.BLEU(lowercase=lowercase, max_ngram_order=1).corpus_score(PREDS, [REFS]).score
    assert _value(BLEU4, text_metric_lowercase=lowercase) == pytest.approx(b4, abs=1e-8)
    assert _value(BLEU1, text_metric_lowercase=lowercase) == pytest.approx(b1, abs=1e-8)
    assert 0 < b4 < b1 < 100


def test_bleu_default_lowercases_and_reports_signature():
    assert _value(BLEU4) == _value(BLEU4, text_metric_lowercase=True)
    sig = BLEU4(_cfg()).signature()
    assert "case:lc" in sig and "tok:13a" in sig and "smooth:exp" in sig
    assert "case:mixed" in BLEU1(_cfg(text_metric_lowercase=False)).signature()


@pytest.mark.parametrize("cls,rouge_type", [(ROUGE1, "rouge1"), (ROUGE2, "rouge2"), (ROUGEL, "rougeL")])
def test_rouge_equals_rouge_score(cls, rouge_type):
    assert _value(cls) == pytest.approx(_rouge(rouge_type, PREDS, REFS), abs=1e-8)


def test_empty_prediction_counts_and_is_not_dropped():
    keep = [i for i, p in enumerate(PREDS) if p]
    preds_wo = [PREDS[i] for i in keep]
    refs_wo = [REFS[i] for i in keep]
    # ROUGE: the empty prediction scores 0 and is averaged in
    for cls in (ROUGE1, ROUGE2, ROUGEL):
        assert _value(cls) == pytest.approx(_value(cls, preds_wo, refs_wo) * len(keep) / len(PREDS), abs=1e-8)
    # BLEU: the empty prediction's reference still counts towards the brevity penalty
    preds, refs = ["great strings", ""], ["great strings", "works as expected"]
    assert _value(BLEU1, preds[:1], refs[:1]) == pytest.approx(100.0)
    assert _value(BLEU1, preds, refs) == pytest.approx(100 * math.exp(1 - 5 / 2))  # hyp 2 words, refs 5
    # all-empty output is the worst output, not an error
    for cls in (BLEU1, BLEU4, ROUGE1, ROUGE2, ROUGEL, Distinct1, Distinct2):
        assert _value(cls, [""] * len(REFS)) == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        _value(BLEU4, PREDS[:-1], REFS)
    with pytest.raises(TypeError):
        _value(ROUGE1, [None] + PREDS[1:], REFS)
    with pytest.raises(ValueError):
        _value(Distinct1, [], [])


# ---------------------------------------------------------------- distinct-n


def test_distinct_n_hand_checked():
    texts = ["the cat sat", "The CAT ran!", ""]
    # 13a tokens, lower-cased: [the cat sat] [the cat ran !] []
    # unigrams: 7 in all, unique {the, cat, sat, ran, !} = 5
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) (ran !) = 5 in all, 4 unique
    assert distinct_n(texts, 1) == pytest.approx(5 / 7)
    assert distinct_n(texts, 2) == pytest.approx(4 / 5)
    # case kept: every unigram and bigram differs
    assert distinct_n(texts, 1, lowercase=False) == 1.0
    assert distinct_n(texts, 2, lowercase=False) == 1.0
    refs = ["x"] * 3
    assert _value(Distinct1, texts, refs) == pytest.approx(5 / 7)
    assert _value(Distinct2, texts, refs) == pytest.approx(4 / 5)
    assert _value(Distinct1, texts, refs, text_metric_lowercase=False) == 1.0


def test_distinct_n_independent_count_on_fixed_inputs():
    # independent count: sacrebleu's tokenizer, n-grams by zip
    tok = sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()
    for n, cls in ((1, Distinct1), (2, Distinct2)):
        grams = []
        for p in PREDS:
            words = tok(p.lower()).split()
            grams += list(zip(*[words[i:] for i in range(n)]))
        assert _value(cls) == pytest.approx(len(set(grams)) / len(grams), abs=1e-8)


# ---------------------------------------------------------------- registration and RecBole's evaluator


def test_registration_is_in_place_and_idempotent():
    import recbole.config.configurator as configurator
    import recbole.evaluator as recbole_evaluator
    import recbole.evaluator.evaluator as evaluator_module
    import recbole.evaluator.register as register_module

    before = (dict(register_module.metrics_dict), list(register_module.smaller_metrics))
    assert register_text_metrics() == TEXT_NAMES
    assert register_text_metrics() == TEXT_NAMES
    assert (dict(register_module.metrics_dict), list(register_module.smaller_metrics)) == before
    for name, cls in zip(TEXT_NAMES, ckf_eval.TEXT_METRIC_CLASSES):
        assert evaluator_module.metrics_dict[name] is cls
        assert register_module.metric_information[name] == ["text.pred", "text.ref"]
        assert configurator.metric_types[name] is cls.metric_type
        assert recbole_evaluator.metric_types is register_module.metric_types
        assert name not in configurator.smaller_metrics
    assert "auc" in register_module.metrics_dict  # RecBole's own metrics are untouched


def test_registration_refuses_a_foreign_metric_under_our_name():
    import recbole.evaluator.register as register_module
    from recbole_ckf.errors import CKFError

    class Foreign:
        pass

    register_module.metrics_dict["bleu-4"] = Foreign
    try:
        with pytest.raises(CKFError):
            register_text_metrics()
    finally:
        register_module.metrics_dict["bleu-4"] = BLEU4
    register_text_metrics()


def test_text_metrics_through_recbole_evaluator(make_config):
    config = make_config(metrics=CONFIG_NAMES, valid_metric="BLEU-4", eval_args={"mode": "labeled"})
    assert config["valid_metric_bigger"] is True
    collector = Collector(config)
    assert collector.register.need("text.pred") and collector.register.need("text.ref")

    result = Evaluator(config).evaluate(_struct(PREDS, REFS))
    assert list(result) == TEXT_NAMES
    expected = {
        "bleu-1": sacrebleu.metrics.BLEU(lowercase=True, max_ngram_order=1).corpus_score(PREDS, [REFS]).score,
        "bleu-4": sacrebleu.corpus_bleu(PREDS, [REFS], lowercase=True).score,
        "rouge-1": _rouge("rouge1", PREDS, REFS),
        "rouge-2": _rouge("rouge2", PREDS, REFS),
        "rouge-l": _rouge("rougeL", PREDS, REFS),
        "distinct-1": distinct_n(PREDS, 1),
        "distinct-2": distinct_n(PREDS, 2),
    }
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-8), name
    # the trainer picks the lower-cased valid_metric out of the result dict
    assert result[config["valid_metric"].lower()] == result["bleu-4"]


def test_names_survive_command_line_parsing_and_rounding(make_config):
    config = make_config(
        argv=["--metrics=['bleu-4','ROUGE-L','distinct-2']", "--valid_metric=rouge-l", "--metric_decimal_place=4"],
        eval_args={"mode": "uni9"},
    )
    assert config["metrics"] == ["bleu-4", "ROUGE-L", "distinct-2"]
    assert config["valid_metric"] == "rouge-l"
    result = Evaluator(config).evaluate(_struct(PREDS, REFS))
    assert list(result) == ["bleu-4", "rouge-l", "distinct-2"]
    assert result["rouge-l"] == round(_rouge("rougeL", PREDS, REFS), 4)


def test_text_metrics_refuse_full_ranking_and_mixing(make_config):
    with pytest.raises(NotImplementedError):  # RecBole: value metrics need a non-full eval mode
        make_config(metrics=["BLEU-4"], valid_metric="bleu-4")
    with pytest.raises(RuntimeError):  # RecBole: value and ranking metrics in one list
        make_config(metrics=["BLEU-4", "NDCG"], valid_metric="bleu-4", eval_args={"mode": "uni9"})


# ---------------------------------------------------------------- RecBole's own AUC and NDCG


def test_recbole_auc_equals_sklearn(make_config):
    config = make_config(metrics=["AUC"], valid_metric="AUC", eval_args={"mode": "labeled"})
    scores = torch.tensor([0.9, 0.8, 0.8, 0.7, 0.6, 0.4, 0.4, 0.3, 0.2, 0.1])  # with ties
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    ds = DataStruct()
    ds.set("rec.score", scores)  # what Collector gathers for LossMetric: rec.score + data.label
    ds.set("data.label", labels)
    result = Evaluator(config).evaluate(ds)
    assert result["auc"] == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-9)


def _uni_scores(positive_ranks, n_candidates=10, seed=0):
    """One row per user, one column per candidate (1 true item + negatives, as with uni9); the true item
    of row u sits at descending rank positive_ranks[u]. Columns are shuffled so position means nothing."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.zeros(len(positive_ranks), n_candidates)
    positive_cols = []
    for u, rank in enumerate(positive_ranks):
        perm = torch.randperm(n_candidates, generator=gen)
        scores[u, perm] = torch.arange(n_candidates, 0, -1, dtype=torch.float)  # perm[i] has rank i + 1
        positive_cols.append(int(perm[rank - 1]))
    return scores, torch.arange(len(positive_ranks)), torch.tensor(positive_cols)


def test_recbole_ndcg_hit_mrr_on_uni_ranking(make_config):
    config = make_config(
        metrics=["NDCG", "Hit", "MRR"], topk=[3], valid_metric="NDCG@3", eval_args={"mode": "uni9"}
    )
    ranks = [1, 2, 3, 7]
    scores, pos_u, pos_i = _uni_scores(ranks)
    collector = Collector(config)  # NDCG/Hit/MRR need rec.topk: top-k hit flags + number of positives
    collector.eval_batch_collect(scores, None, pos_u, pos_i)
    ds = collector.get_data_struct()
    result = Evaluator(config).evaluate(ds)
    ndcg3 = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4) + 0) / 4  # one relevant item: IDCG = 1
    assert ndcg3 == pytest.approx(0.5327324383928644)
    assert result["ndcg@3"] == pytest.approx(ndcg3, abs=1e-9)
    assert result["hit@3"] == pytest.approx(3 / 4)
    assert result["mrr@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)


# ---------------------------------------------------------------- warm / cold groups


def test_split_by_activity():
    users = torch.tensor([1, 2, 3, 1, 4])
    counts = {1: 10, 2: 5, 3: 4}  # user 4 has no training interactions
    masks = split_by_activity(users, counts, cold_threshold=5)
    assert masks["warm"].tolist() == [True, True, False, True, False]
    assert masks["cold"].tolist() == [False, False, True, False, True]
    table = np.array([0, 10, 5, 4, 0])  # indexed by user id
    masks_arr = split_by_activity(users.numpy(), table)  # default threshold 5
    assert masks_arr["cold"].tolist() == masks["cold"].tolist()
    assert ckf_eval.groups.DEFAULT_COLD_THRESHOLD == 5
    assert split_by_activity([], table)["cold"].tolist() == []


def test_evaluate_by_group_text(make_config):
    config = make_config(metrics=["BLEU-4", "ROUGE-1"], valid_metric="bleu-4", eval_args={"mode": "labeled"})
    users = [0, 1, 2, 0, 1, 3]
    masks = split_by_activity(users, {0: 9, 1: 2, 2: 7, 3: 1}, cold_threshold=5)
    results = evaluate_by_group(Evaluator(config), _struct(PREDS, REFS), masks)
    assert list(results) == ["all", "warm", "cold"]
    for group, mask in (("warm", masks["warm"]), ("cold", masks["cold"])):
        p = [x for x, m in zip(PREDS, mask) if m]
        r = [x for x, m in zip(REFS, mask) if m]
        assert results[group]["bleu-4"] == pytest.approx(sacrebleu.corpus_bleu(p, [r], lowercase=True).score)
        assert results[group]["rouge-1"] == pytest.approx(_rouge("rouge1", p, r))
    none_cold = split_by_activity(users, {0: 9, 1: 9, 2: 9, 3: 9})
    assert evaluate_by_group(Evaluator(config), _struct(PREDS, REFS), none_cold)["cold"] is None


def test_evaluate_by_group_ranking(make_config):
    config = make_config(metrics=["NDCG"], topk=[3], valid_metric="ndcg@3", eval_args={"mode": "uni9"})
    scores, pos_u, pos_i = _uni_scores([1, 2, 3, 7])
    collector = Collector(config)
    collector.eval_batch_collect(scores, None, pos_u, pos_i)
    ds = collector.get_data_struct()
    masks = split_by_activity(torch.tensor([10, 11, 12, 13]), {10: 1, 11: 8, 12: 8, 13: 0})
    results = evaluate_by_group(Evaluator(config), ds, masks)
    assert results["all"]["ndcg@3"] == pytest.approx(0.5327324383928644)
    assert results["warm"]["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    assert results["cold"]["ndcg@3"] == pytest.approx(1 / 2)
