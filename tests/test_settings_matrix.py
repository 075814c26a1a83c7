"""RecBole settings a user carries over (``metrics``, ``topk``, ``valid_metric``, ``eval_args``,
``train_neg_sample_args``, ``load_col``, ``threshold``, ``repeatable``) for a general (BPR), a sequential (SASRec),
a context (FM) model and CKF: every combination ends in a result (its metric keys are checked) or in ONE
``error:`` line with exit status 2, found before any data is read or anything written (no ``log/``, no
``saved/``), never a traceback. See :mod:`recbole_ckf.settings_check`.

Settings are given as the command line gives them (``--key=value`` strings). Runs that work go in-process
through ``run_recbole_ckf`` (small models, one epoch, the small amazon-instruments data set; CKF with the tiny
LM); mistakes go through the CLI's ``main`` in-process, and two of them through a real subprocess.
"""

import logging
import os
import subprocess
import sys

import pytest

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
import run_recbole_ckf as cli
from conftest import REPO, small_config
from recbole_ckf.config import Config
from recbole_ckf.quick_start import run_recbole_ckf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATASET = "amazon-instruments"
CKF_BASE = {
    "llm": "tiny", "epochs": "1", "eval_step": "1", "train_samples_per_task": "8", "valid_users": "8",
    "eval_users": "8", "backbone_config": "{'embedding_size': 16, 'epochs': 1}", "show_progress": "False",
    "state": "WARNING", "tasks": "['ctr', 'sequential']",
}
DEFAULT_RANKING = {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (1, 3, 10)}  # properties/overall.yaml
LS = "'split': {'LS': 'valid_and_test'}"


@pytest.fixture(autouse=True)
def _close_run_log_handlers():
    """Each in-process run leaves RecBole's log handlers on the root logger (their stream is this test's
    captured stderr): drop them afterwards."""
    yield
    from recbole_ckf import quick_start

    for handler in quick_start._RUN_HANDLERS:
        logging.getLogger().removeHandler(handler)
        handler.close()
    quick_start._RUN_HANDLERS.clear()


@pytest.fixture(scope="module")
def llm_cache(tmp_path_factory):
    """One cache for the tiny LM and the encoded task samples of every CKF run of this module."""
    return str(tmp_path_factory.mktemp("llm-cache"))


def _settings(model, settings, llm_cache):
    base = dict(CKF_BASE, llm_cache_dir=llm_cache) if model == "CKF" else {}
    return {**base, **settings}


# ---- runs that work: their result's metric keys -------------------------------------------------------------
WORKS = [
    # general
    ("BPR", {"metrics": "['NDCG']", "topk": "[10]", "valid_metric": "ndcg@10"}, {"ndcg@10"}),
    ("BPR", {"metrics": "['AUC', 'LogLoss']", "valid_metric": "auc"}, {"auc", "logloss"}),
    ("BPR", {"eval_args": "{'split': {'RS': [0.8, 0.1, 0.1]}, 'order': 'RO', 'mode': 'pop9'}"}, DEFAULT_RANKING),
    ("BPR", {"eval_args": "{'mode': 'full'}", "metrics": "['Recall', 'NDCG']", "topk": "[10]",
             "valid_metric": "recall@10"}, {"recall@10", "ndcg@10"}),
    ("BPR", {"train_neg_sample_args": "{'distribution': 'popularity', 'sample_num': 2}"}, DEFAULT_RANKING),
    # sequential
    ("SASRec", {"eval_args": "{'mode': 'full'}", "metrics": "['Hit', 'NDCG']", "topk": "[5]",
                "valid_metric": "hit@5"}, {"hit@5", "ndcg@5"}),
    ("SASRec", {"loss_type": "BPR", "train_neg_sample_args": "{'distribution': 'uniform', 'sample_num': 1}"},
     DEFAULT_RANKING),
    ("SASRec", {"eval_args": "{'split': {'RS': [0.8, 0.1, 0.1]}}", "metrics": "['AUC']", "valid_metric": "AUC"},
     {"auc"}),
    # context
    ("FM", {}, {"auc", "logloss"}),
    ("FM", {"eval_args": "{'mode': 'uni9'}", "metrics": "['NDCG', 'Hit']", "topk": "[3]", "valid_metric": "ndcg@3"},
     {"ndcg@3", "hit@3"}),
    ("FM", {"eval_args": "{'mode': 'uni9'}", "metrics": "['GAUC']", "valid_metric": "gauc"}, {"gauc"}),
    ("FM", {"eval_args": "{'order': 'RO'}", "load_col": "{'inter': ['user_id', 'item_id', 'rating']}"},
     {"auc", "logloss"}),
    # CKF: its own task metrics (RecBole's metrics/topk are ignored); uni4 lists have 5 candidates
    ("CKF", {"eval_args": "{'mode': 'uni4'}"},
     {"ctr:auc", "ctr:logloss", "sequential:hit@1", "sequential:hit@3", "sequential:ndcg@3", "sequential:mrr@5"}),
    ("CKF", {"tasks": "['ctr', 'rating']", "valid_metric": "rating:rmse", "metrics": "['NDCG']", "topk": "[10]",
             "eval_args": "{'mode': 'pop9'}"},
     {"ctr:auc", "ctr:logloss", "rating:rmse", "rating:mae"}),
]


@pytest.mark.parametrize("model, settings, keys", WORKS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(WORKS)])
def test_settings_that_work(model, settings, keys, llm_cache):
    config = small_config(**({"epochs": 1} if model != "CKF" else {}))
    result = run_recbole_ckf(model, DATASET, config_dict=config, cmd_args=_settings(model, settings, llm_cache),
                             saved=model != "CKF")
    assert {k for k in result["test_result"] if "[" not in k and not k.endswith("_1_5")} == keys
    assert {k for k in result["best_valid_result"] if "[" not in k} == keys


def test_ckf_valid_metric_follows_the_tasks_unless_given():
    """properties/CKF.yaml's default valid_metric (ndcg@3) names the sequential task: without it, CKF validates
    on the first task it runs; a valid_metric the user gives is kept, and its direction is the metric's."""
    tasks = {"llm": "tiny", "tasks": "['ctr', 'rating']"}
    config = Config("CKF", DATASET, cmd_args=tasks)
    assert config["valid_metric"] == "ctr:auc" and config["valid_metric_bigger"] is True
    config = Config("CKF", DATASET, cmd_args={**tasks, "valid_metric": "rating:rmse"})
    assert config["valid_metric"] == "rating:rmse" and config["valid_metric_bigger"] is False
    config = Config("CKF", DATASET, cmd_args={"llm": "tiny"})
    assert config["valid_metric"] == "ndcg@3" and config["valid_metric_bigger"] is True


def test_switches_read_true_and_false_in_any_case():
    """RecBole evaluates ``--use_cf=false`` to the (truthy) string 'false': a True/False key reads it as False."""
    config = Config("CKF", DATASET, cmd_args={"llm": "tiny", "use_cf": "false", "balance_ctr": "FALSE",
                                               "bridge_anchor": "true", "multi_lora": "False"})
    assert (config["use_cf"], config["balance_ctr"], config["bridge_anchor"], config["multi_lora"]) == (
        False, False, True, False)
    assert Config("CKF", DATASET, cmd_args={"llm": "tiny"})["use_cf"] is True


def test_partial_eval_args_keep_the_plugin_split():
    """``--eval_args="{'mode': 'pop9'}"`` changes the mode only: the split stays leave-one-out by time
    (RecBole would fill the missing keys with its own defaults, RS 8:1:1 in random order)."""
    config = Config("BPR", DATASET, cmd_args={"eval_args": "{'mode': 'pop9'}"})
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["order"] == "TO"
    assert config["eval_args"]["mode"] == {"valid": "pop9", "test": "pop9"}


# ---- mistakes: one line, exit status 2, nothing read or written ---------------------------------------------
MISTAKES = [
    # valid_metric against metrics/topk
    ("BPR", {"valid_metric": "ndcg"},
     "error: valid_metric 'ndcg' needs a cutoff @k: set --valid_metric=ndcg@10 (one of hit@1, hit@3, hit@10, "
     "ndcg@1, ndcg@3, ndcg@10, mrr@1, mrr@3, mrr@10, from metrics ['Hit', 'NDCG', 'MRR'] at topk [1, 3, 10])"),
    ("BPR", {"valid_metric": "AUC"},
     "error: valid_metric 'AUC' is a value metric, but metrics ['Hit', 'NDCG', 'MRR'] at topk [1, 3, 10] are "
     "ranking metrics (RecBole evaluates one kind per run): set --valid_metric=hit@1"),
    ("BPR", {"metrics": "['NDCG']", "topk": "[10]", "valid_metric": "MRR@10"},
     "error: valid_metric 'MRR@10' is not among metrics ['NDCG'] at topk [10]: set --valid_metric=ndcg@10 or add "
     "'MRR' to metrics"),
    ("FM", {"valid_metric": "AUC@3"}, "error: valid_metric 'AUC@3': AUC takes no @k; set --valid_metric=auc"),
    # metrics and topk
    ("BPR", {"metrics": "['AUC', 'NDCG']"},
     "error: metrics ['AUC', 'NDCG'] mix value metrics (AUC) and ranking metrics (NDCG); RecBole evaluates one "
     "kind per run: keep one kind"),
    ("BPR", {"metrics": "NDCG,Hit"},
     "error: metrics: 'NDCG,Hit' is not a metric name; write a list: --metrics=\"['NDCG', 'Hit']\" (quoted, each "
     "name in quotes)"),
    ("BPR", {"metrics": "['ItemCoverage', 'NDCG']"},
     "error: metrics: RecBole 1.2.1 cannot compute 'ItemCoverage' (its evaluation collector fails on the item "
     "counts that metric needs); remove it (ShannonEntropy and the accuracy metrics work)"),
    ("BPR", {"topk": "[0]"}, "error: topk: expected a positive integer or a list of them (e.g. [1, 3, 10]), got [0]"),
    # metric types against the model type / eval mode
    ("BPR", {"eval_args": "{'mode': 'labeled'}"},
     "error: eval_args mode 'labeled' scores each interaction against its label, without candidate lists, so it "
     "cannot compute ranking metrics: use value metrics (--metrics=\"['AUC', 'LogLoss']\" --valid_metric=auc) or "
     "mode 'uni9'"),
    ("FM", {"metrics": "['NDCG']", "topk": "[3]", "valid_metric": "ndcg@3"},
     "error: eval_args mode 'labeled' scores each interaction against its label, without candidate lists, so it "
     "cannot compute ranking metrics: use value metrics (--metrics=\"['AUC', 'LogLoss']\" --valid_metric=auc) or "
     "mode 'uni9'"),
    ("FM", {"eval_args": "{'mode': 'full'}"},
     "error: eval_args mode 'full' ranks every item without labels, so it cannot compute value metrics: use mode "
     "'uni9' or 'labeled', or ranking metrics (--metrics=\"['NDCG', 'Hit']\" --valid_metric=ndcg@10)"),
    # eval_args that do not parse
    ("BPR", {"eval_args": "{'mode': 'uni'}"},
     "error: eval_args mode 'uni' is not an evaluation mode: expected 'full', 'labeled', 'uniN' or 'popN' with "
     "N >= 1 sampled negatives per positive (e.g. 'uni9': the true item among 9 sampled ones)"),
    ("SASRec", {"eval_args": "{'mode': {'valid': 'uni9', 'test': 'pop0'}}"},
     "error: eval_args mode.test 'pop0' is not an evaluation mode: expected 'full', 'labeled', 'uniN' or 'popN' "
     "with N >= 1 sampled negatives per positive (e.g. 'uni9': the true item among 9 sampled ones)"),
    ("BPR", {"eval_args": "{'spilt': {'RS': [0.8, 0.1, 0.1]}}"},
     "error: eval_args: unknown key 'spilt' (did you mean 'split'?); expected some of split, order, group_by, mode"),
    ("BPR", {"eval_args": "{'split': {'RS': [0.8, 0.2]}}"},
     "error: eval_args split {'RS': [0.8, 0.2]}: RS takes three ratios [train, valid, test] (e.g. {'RS': [0.8, "
     "0.1, 0.1]})"),
    ("FM", {"eval_args": "{'split': {'RS': [0.9, 0.1, 0]}}"},
     "error: eval_args split {'RS': [0.9, 0.1, 0]}: the test ratio is 0, so there is no test split: give it a "
     "share (e.g. {'RS': [0.8, 0.1, 0.1]})"),
    ("BPR", {"eval_args": "{'split': {'LS': 'valid_only'}}"},
     "error: eval_args split {'LS': 'valid_only'}: 'valid_only' leaves no test split: use {'LS': "
     "'valid_and_test'} (or 'test_only')"),
    ("BPR", {"eval_args": "{'order': 'XO'}"},
     "error: eval_args order 'XO': expected 'RO' (random order) or 'TO' (time order)"),
    ("SASRec", {"eval_args": "{'order': 'RO'}"},
     "error: eval_args order 'RO': sequential models need order 'TO' (RecBole builds each history from the "
     "user's interactions in time order); set order 'TO'"),
    ("SASRec", {"repeatable": "False"},
     "error: repeatable False: RecBole's sequential models (SASRec) only support repeatable recommendation: set "
     "--repeatable=True"),
    # load_col and labels
    ("BPR", {"load_col": "{'inter': ['user_id', 'item_id']}"},
     "error: load_col: eval_args order 'TO' sorts the interactions by 'timestamp', but load_col.inter ['user_id', "
     "'item_id'] does not load it: add 'timestamp' to load_col.inter or use order 'RO'"),
    ("FM", {"load_col": "{'inter': ['user_id', 'item_id', 'timestamp']}"},
     "error: load_col: threshold labels the interactions by 'rating', but load_col.inter ['user_id', 'item_id', "
     "'timestamp'] does not load it: add 'rating' to load_col.inter or change threshold"),
    ("FM", {"threshold": "4"},
     "error: threshold: expected one {field: value} such as {'rating': 4} (an interaction whose field reaches the "
     "value is labelled 1) or None, got 4"),
    ("FM", {"threshold": "None"},
     "error: eval_args mode 'labeled' scores each interaction against its label, but the interactions have none: "
     "set threshold (e.g. --threshold=\"{'rating': 4}\") or load a 'label' column (LABEL_FIELD)"),
    # train_neg_sample_args
    ("BPR", {"train_neg_sample_args": "None"},
     "error: train_neg_sample_args: BPR trains on (user, positive item, negative item) triples and needs sampled "
     "negatives: set --train_neg_sample_args=\"{'distribution': 'uniform', 'sample_num': 1}\""),
    ("BPR", {"train_neg_sample_args": "uniform"},
     "error: train_neg_sample_args: expected a mapping such as {'distribution': 'uniform', 'sample_num': 1} or "
     "None, got 'uniform' (on the command line, quote it: --train_neg_sample_args=\"{'distribution': 'uniform', "
     "'sample_num': 1}\")"),
    ("BPR", {"train_neg_sample_args": "{'distribution': 'uniform', 'sample_num': 0}"},
     "error: train_neg_sample_args sample_num: expected an integer >= 1, got 0"),
    ("SASRec", {"train_neg_sample_args": "{'distribution': 'uniform', 'sample_num': 1}"},
     "error: train_neg_sample_args: SASRec with loss_type CE scores all items and takes no sampled negatives: set "
     "--train_neg_sample_args=None, or --loss_type=BPR to train on them"),
    # CKF
    ("CKF", {"eval_args": "{'mode': {'valid': 'uni9', 'test': 'labeled'}}"},
     "error: eval_args mode.test 'labeled': CKF ranks the candidate lists of RecBole's uniN/popN samplers and "
     "reads the labels of its ctr/rating tasks itself (ctr_threshold): use --eval_args=\"{'mode': 'uni9'}\" "
     "(or popN)"),
    ("CKF", {"eval_args": "{'split': {'LS': 'test_only'}}"},
     "error: eval_args split {'LS': 'test_only'} leaves no validation split, which CKF needs (it picks its best "
     "epoch on the validation split): use {'LS': 'valid_and_test'} or give valid a share (e.g. {'RS': [0.8, 0.1, "
     "0.1]})"),
    ("CKF", {"valid_metric": "ndcg@10"},
     "error: valid_metric 'ndcg@10' is not a metric CKF reports with tasks ctr, sequential (CKF evaluates its own "
     "task metrics and ignores metrics/topk; it reports ctr:auc, ctr:logloss, sequential:hit@1, sequential:hit@3, "
     "sequential:ndcg@3, sequential:mrr@10): set --valid_metric=sequential:ndcg@3"),
    ("CKF", {"tasks": "['ctr', 'rating']", "valid_metric": "ndcg@3"},
     "error: valid_metric 'ndcg@3' is not a metric CKF reports with tasks ctr, rating (CKF evaluates its own task "
     "metrics and ignores metrics/topk; it reports ctr:auc, ctr:logloss, rating:rmse, rating:mae): set "
     "--valid_metric=ctr:auc"),
    ("CKF", {"eval_args": "{'mode': 'uni19'}", "sequential_answer": "label"},
     "error: eval_args mode 'uni19' gives CKF's sequential task 20 candidates per list, but n_candidates is 10 "
     "(sequential_answer 'label' letters at most n_candidates candidates): use mode 'uni9', raise --n_candidates "
     "(at most 26) or set --sequential_answer=title"),
    ("CKF", {"load_col": "{'inter': ['user_id', 'item_id', 'timestamp']}"},
     "error: load_col: CKF's ctr task reads 'rating', but load_col.inter ['user_id', 'item_id', 'timestamp', "
     "'review', 'summary'] does not load it: add 'rating' to load_col.inter or choose other --tasks"),
    ("CKF", {"precision": "fp16"}, "error: precision: expected one of auto, fp32, bf16, got 'fp16'"),
    ("CKF", {"answer_head_learning_rate": -1}, "error: config key 'answer_head_learning_rate': expected a number > 0, got -1"),
    ("CKF", {"bridge_anchor": "maybe"}, "error: config key 'bridge_anchor': expected True or False, got 'maybe'"),
    ("BPR", {"show_progress": 1}, "error: config key 'show_progress': expected True or False, got 1"),
    ("CKF", {"sequential_answer": "letters"},
     "error: sequential_answer: expected one of label, title, pointwise, got 'letters'"),
    ("CKF", {"backbone_threads": 0},
     "error: backbone_threads: expected an integer >= 1 (or ~ for torch's thread count), got 0"),
    ("CKF", {"max_tokens_per_pass": "abc"},
     "error: max_tokens_per_pass: expected an integer >= 1 (or ~ for no limit), got 'abc'"),
]

CKF_FULL = ("error: eval_args mode 'full': CKF ranks the candidate lists of RecBole's uniN/popN samplers (the true "
            "item among N sampled ones), scoring each candidate with the language model, and cannot rank every item "
            "for every user: use --eval_args=\"{'mode': 'uni9'}\" (or popN)")


def _argv(model, settings, dataset=DATASET):
    return [f"--model={model}", f"--dataset={dataset}"] + [f"--{k}={v}" for k, v in settings.items()]


@pytest.mark.parametrize("model, settings, message", MISTAKES,
                         ids=[f"{m}-{next(iter(s))}-{i}" for i, (m, s, _) in enumerate(MISTAKES)])
def test_mistakes_end_in_one_line(capsys, model, settings, message, llm_cache):
    capsys.readouterr()
    assert cli.main(_argv(model, _settings(model, settings, llm_cache))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == [message]
    assert not os.path.exists("log") and not os.path.exists("saved")  # refused before anything was written


def _run_cli(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_ckf.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("argv, message", [
    # the issue's command: RecBole itself ends in "KeyError: 'ndcg@3'" after the first epoch
    (["--model=BPR", "--dataset=ml-100k", "--metrics=['NDCG']", "--topk=[10]"],
     "error: valid_metric 'NDCG@3' is not among metrics ['NDCG'] at topk [10]: set --valid_metric=ndcg@10 or add 3 "
     "to topk"),
    (["--model=CKF", f"--dataset={DATASET}", "--llm=tiny", "--eval_args={'mode': 'full'}"], CKF_FULL),
], ids=["BPR-issue-15", "CKF-full"])
def test_mistakes_from_a_real_process(tmp_path, argv, message):
    proc = _run_cli(tmp_path, *argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [message] and proc.stdout == ""
    assert os.listdir(tmp_path) == []  # no log/, no saved/
