"""The comparison users will cite: CKF and RecBole baselines on the same split, the same test users and the same
candidate lists, on ml-100k (ctr, sequential, rating) and amazon-instruments (ctr, sequential, rating,
explanation).

    python benchmarks/run_benchmarks.py                                   # baselines on both data sets
    python benchmarks/run_benchmarks.py --ckf                             # + CKF (Gemma-3-270M), 9-13 min/data set
    python benchmarks/run_benchmarks.py --ckf --ablations                 # + the four ablations (9-13 min each)
    python benchmarks/run_benchmarks.py --datasets amazon-instruments --skip-baselines \
        --ckf-results benchmarks/results/ckf_amazon-instruments_main.log --variants no_cf,single_lora   # some only
    python benchmarks/run_benchmarks.py --ckf-results FILE [FILE ...]     # CKF numbers from an earlier run
    python benchmarks/run_benchmarks.py --datasets ml-100k --models BPR,LightGCN --epochs 50   # a part

Protocol (identical for every model; see benchmarks/README.md):

* RecBole's split of the plugin (``recbole_ckf/properties/overall.yaml``): leave-one-out by time, seed 2020.
* Ranking (sequential task): every model ranks CKF's lists ``candidate_lists(test_data, seed)`` (RecBole's uni9,
  1 true + 9 negatives) of CKF's test users ``sample_users(test users, eval_users, seed)``
  (:mod:`recbole_ckf.evaluator.protocol`): Hit@1, Hit@3, NDCG@3, MRR. Also reported: the same lists over all test users, and
  RecBole's own standard test result (its own uni9 draw, all users; for sequential models RecBole's negatives
  exclude only the target item).
* ctr: labeled context models (rating >= 4), AUC and LogLoss on every test interaction of CKF's test users
  (and of all users: that is RecBole's own test result, labeled evaluation samples nothing).
* rating: context models with the rating as label (``baseline_task: rating``), RMSE/MAE rescaled to 1-5; and
  the training-mean rating.
* explanation: the item's most frequent training headline and the global most frequent training headline,
  scored with the project's text metrics through RecBole's Evaluator.
* Budgets are chosen on the validation split only: every trained baseline uses early stopping on its validation
  metric (NDCG@3, AUC or RMSE) with ``stopping_step`` 20, up to ``--epochs`` epochs; the checkpoint with the best
  validation score is tested. Nothing is tuned on the test split.

Writes ``benchmarks/results/comparison_<dataset>.md`` / ``.json`` and ``benchmarks/results/comparison.png``;
CKF runs started here also write ``benchmarks/results/ckf_<dataset>.json`` (usable later with --ckf-results).
"""

import argparse
import ast
import contextlib
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time

from common import REPO, RESULTS, machine_info  # noqa: E402  (puts the repository on sys.path, offline hub)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import recbole_ckf  # noqa: E402,F401
from recbole.utils import get_trainer, init_seed  # noqa: E402

from recbole_ckf.config import Config  # noqa: E402
from recbole_ckf.data import load_data  # noqa: E402
from recbole_ckf.utils import atomic_write_json, atomic_write_text  # noqa: E402
from report import HEADLINE, METRICS, markdown, plot  # noqa: E402
from recbole_ckf.evaluator.protocol import (check_same_split, ckf_protocol,  # noqa: E402
                                            evaluate_pointwise_on_users, evaluate_ranking_on_lists,
                                            explanation_floors, split_overrides, task_samples, training_mean_rating)

DATASETS = {"ml-100k": ["ctr", "sequential", "rating"],
            "amazon-instruments": ["ctr", "sequential", "rating", "explanation"]}
RANKING_MODELS = ["BPR", "LightGCN", "NeuMF", "SASRec", "GRU4Rec"]
CONTEXT_MODELS = ["FM", "DeepFM", "WideDeep"]
SEED = 2020
# Budget shared by every trained baseline (validation-only model selection): early stopping with a patience of
# 20 validations, at most 300 epochs, and a wall-clock cap per model (checked before each epoch; the checkpoint
# with the best validation score so far is tested). The caps keep the whole baselines part near 25 minutes on
# 2 shared CPU cores; rows that hit a cap say so ("stopped by").
BUDGET = {"epochs": 300, "stopping_step": 20, "eval_step": 1}
CAP_MINUTES = {"general": 2.0, "sequential": 3.0, "context": 1.0, "LightGCN": 4.0}  # LightGCN: slow to converge
SEQUENTIAL = {"MAX_ITEM_LIST_LENGTH": 20}  # RecBole's default 50 costs 2.5x on CPU; CKF's prompts show 3 items
# Batch sizes: amazon-instruments has ~7.4k training interactions, so 256 gives ~29 steps per epoch (its
# dataset yaml); ml-100k's ~80k at 2048 give ~40 (its dataset yaml). Sequential models train on one sample
# per training interaction, the same counts.
QUIET = {"show_progress": False, "state": "WARNING"}
# name in the tables -> CKF config overrides; VARIANTS: short names for --variants
ABLATIONS = {
    "CKF": {},
    "CKF w/o CF (use_cf=False)": {"use_cf": False},
    "CKF single LoRA (multi_lora=False)": {"multi_lora": False},
    "CKF w/o meta-network (meta_network=False)": {"meta_network": False},
    "CKF backbone BPR": {"backbone": "BPR"},
    # each learning fix switched off alone (same budget and seed)
    "CKF listwise letters (sequential_answer=label)": {"sequential_answer": "label"},
    "CKF title answers (sequential_answer=title)": {"sequential_answer": "title"},
    "CKF old curriculum (midpoint 0.5, no floor, cosine bridge rate)": {
        "curriculum_midpoint": 0.5, "curriculum_floor": 0.0, "bridge_schedule": "cosine"},
    "CKF own review in item text (exclude_own_review=False)": {"exclude_own_review": False},
    "CKF full-vocabulary loss (restricted_loss=False)": {"restricted_loss": False},
    "CKF unbalanced ctr (balance_ctr=False)": {"balance_ctr": False},
    "CKF training-only test history (test_history=train)": {"test_history": "train"},
    "CKF w/o rating counts in prompts (prompt_stats=False)": {"prompt_stats": False},
    "CKF independent projections (bridge_tied_init=False)": {"bridge_tied_init": False},
    # an addition switched on alone
    "CKF anchored slot tokens (bridge_anchor=True)": {"bridge_anchor": True},
}
VARIANTS = dict(zip(["ckf", "no_cf", "single_lora", "no_meta", "bpr", "label", "title", "old_curriculum", "own_review",
                     "full_vocab_loss", "unbalanced_ctr", "train_history", "no_stats", "untied", "anchor"], ABLATIONS))
SETTING_KEYS = {
    "all": ["epochs", "stopping_step", "eval_step", "train_batch_size", "learning_rate", "learner", "weight_decay",
            "embedding_size", "valid_metric"],
    "general": ["n_layers", "reg_weight", "mf_embedding_size", "mlp_embedding_size", "mlp_hidden_size",
                "dropout_prob"],
    "sequential": ["n_layers", "n_heads", "hidden_size", "inner_size", "num_layers", "dropout_prob",
                   "hidden_dropout_prob", "attn_dropout_prob", "MAX_ITEM_LIST_LENGTH", "loss_type"],
    "context": ["mlp_hidden_size", "dropout_prob", "threshold", "baseline_task", "normalize_field"],
}


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def _plain(v):
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return round(v, 4)
    return v


def _clean(result):
    return {str(k): _plain(v) for k, v in dict(result or {}).items()}


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


# ---------------------------------------------------------------------------------------------------------
# baselines
def _rescale(config, result):
    """Rating-as-label results are on the min-max scaled rating: bring RMSE/MAE back to the 1-5 scale."""
    low, high = config["rating_range"] or (1, 5)
    return {k: (round(float(v) * (high - low), 4) if k in ("rmse", "mae") else v) for k, v in result.items()}


class _TimeCap(Exception):
    pass


def _family(model_name):
    if model_name in CONTEXT_MODELS:
        return "context"
    return "sequential" if model_name in ("SASRec", "GRU4Rec") else "general"


def train_baseline(model_name, dataset, task, protocol, all_protocol, budget, caps, workdir):
    """Train one RecBole model with the plugin's flow (as run_recbole_ckf), test it the standard way and on
    CKF's users/lists. Returns a result row."""
    overrides = dict(QUIET, **budget, **split_overrides(protocol), checkpoint_dir=os.path.join(workdir, "saved"))
    family = _family(model_name)
    if family == "context":
        overrides["baseline_task"] = task
    if family == "sequential":
        overrides.update(SEQUENTIAL)
    config = Config(model_name, dataset, config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, valid_data, test_data = load_data(config)
    check_same_split(test_data, protocol)  # the same test interactions as CKF's, or an error
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = config.model_class(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_epoch = []
    save = trainer._save_checkpoint

    def _save(epoch, *args, **kwargs):  # records which epoch the tested checkpoint comes from
        best_epoch.append(epoch + 1)  # RecBole counts epochs from 0; reported: the checkpoint after epoch N
        return save(epoch, *args, **kwargs)

    trainer._save_checkpoint = _save
    cap_min = caps.get(model_name, caps.get(family)) or 0  # a model's own cap wins over its family's
    cap_s = cap_min * 60
    train_epoch = trainer._train_epoch

    def _train_epoch(*args, **kwargs):  # the wall-clock cap, checked before each epoch
        if cap_s and time.perf_counter() - start > cap_s:
            raise _TimeCap()
        return train_epoch(*args, **kwargs)

    trainer._train_epoch = _train_epoch
    start = time.perf_counter()
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        stopped_by = "epoch limit" if len(trainer.train_loss_dict) >= config["epochs"] else "early stopping"
    except _TimeCap:
        stopped_by = f"time cap ({cap_min:g} min)"
    best_valid = trainer.best_valid_result
    train_s = time.perf_counter() - start
    standard = trainer.evaluate(test_data, load_best_model=True)  # RecBole's own test result (all users)
    if task == "sequential":
        ckf_users = evaluate_ranking_on_lists(model, config, test_data, protocol)
        all_users = evaluate_ranking_on_lists(model, config, test_data, all_protocol)
    else:
        ckf_users = evaluate_pointwise_on_users(model, config, test_data, protocol)
        all_users = evaluate_pointwise_on_users(model, config, test_data, all_protocol)
    if task == "rating":
        standard, ckf_users, all_users, best_valid = (_rescale(config, r) for r in (standard, ckf_users, all_users,
                                                                                    best_valid))
    keys = SETTING_KEYS["all"] + ["normalize_all"] + [k for k in SETTING_KEYS[family]
                                                      if k in config.final_config_dict]
    settings = {k: _jsonable(config[k]) for k in keys if config[k] is not None}
    neg = config["train_neg_sample_args"] or {}
    settings["train_negatives"] = (f"{neg.get('sample_num')} {neg.get('distribution')}"
                                   if neg.get("distribution") not in (None, "none") else "none")
    settings.update(epochs_trained=len(trainer.train_loss_dict), best_epoch=best_epoch[-1] if best_epoch else None,
                    cap_minutes=cap_min or None, stopped_by=stopped_by, train_seconds=round(train_s, 1),
                    parameters=sum(p.numel() for p in model.parameters()), torch_threads=torch.get_num_threads())
    if model_name in CONTEXT_MODELS:
        settings["features"] = list(getattr(model, "token_field_names", [])) + list(
            getattr(model, "float_field_names", []))
    return {"model": model_name, "task": task, "kind": "baseline",
            "ckf_users": _clean(ckf_users), "all_users": _clean(all_users), "recbole_standard": _clean(standard),
            "best_valid": _clean(best_valid), "settings": settings}


def random_ranking_row(n_candidates=10):
    """The expected metrics of a uniformly random ranking of ``n_candidates`` with one true item."""
    import math

    k = n_candidates
    values = {"hit@1": 1 / k, "hit@3": min(3, k) / k,
              "ndcg@3": sum(1 / math.log2(r + 1) for r in range(1, min(3, k) + 1)) / k,
              "mrr@10": sum(1 / r for r in range(1, k + 1)) / k}
    values = {m: round(v, 4) for m, v in values.items()}
    return {"model": "random ranking (expected)", "task": "sequential", "kind": "floor", "ckf_users": values,
            "all_users": dict(values), "recbole_standard": {},
            "settings": {"from": f"expectation over uniformly random orders of {k} candidates (no model)"}}


def floor_rows(dataset, tasks, protocol, all_protocol):
    rows = [random_ranking_row()] if "sequential" in tasks else []
    if "rating" in tasks:
        sub, mean = training_mean_rating(protocol)
        full, _ = training_mean_rating(all_protocol)
        rows.append({"model": "training mean", "task": "rating", "kind": "floor", "ckf_users": _clean(sub),
                     "all_users": _clean(full), "recbole_standard": {},
                     "settings": {"prediction": round(mean, 4), "from": "mean rating of the training split"}})
    if "explanation" in tasks:
        sub, notes = explanation_floors(protocol)
        full, full_notes = explanation_floors(all_protocol)
        names = {"item": "item's most frequent headline", "global": "global most frequent headline"}
        for key, name in names.items():
            settings = {"from": "training-split headlines", "global_headline": notes["global_headline"]}
            if key == "item":
                settings["fallback"] = ("global headline for items without a training headline "
                                        f"({notes['items_without_training_headline']} of {notes['samples']} "
                                        "test samples of CKF's users)")
            rows.append({"model": name, "task": "explanation", "kind": "floor", "ckf_users": _clean(sub[key]),
                         "all_users": _clean(full[key]), "recbole_standard": {}, "settings": settings})
    return rows


# ---------------------------------------------------------------------------------------------------------
# CKF
def _ckf_rows(name, result, settings, source):
    """Rows of one CKF result: pure CKF (its ``task:metric`` keys, with warm/cold groups), and, for the main CKF
    run, its fused row (``[fusion]``: ``score_fusion: backbone``) and its own frozen backbone's ranking of the
    same lists (``[backbone]``), each labelled as such."""
    rows = []
    test = result.get("test_result", result)
    extra = {"fusion": f"{name} + backbone fusion (score_fusion: backbone)",
             "backbone": f"{name}'s own frozen backbone ({settings.get('backbone', 'LightGCN')}, e_u.e_v)"}
    for task in METRICS:
        values = {k.split(":", 1)[1]: _plain(v) for k, v in test.items()
                  if k.startswith(f"{task}:") and "[" not in k}
        if values:
            groups = {g: {k.split(":", 1)[1][:-len(g) - 2]: _plain(v) for k, v in test.items()
                          if k.startswith(f"{task}:") and k.endswith(f"[{g}]")} for g in ("warm", "cold")}
            rows.append({"model": name, "task": task, "kind": "ckf", "ckf_users": values, "all_users": {},
                         "recbole_standard": {}, "groups": groups, "settings": dict(settings, source=source)})
        if name != "CKF":
            continue
        for group, label in extra.items():
            values = {k.split(":", 1)[1][:-len(group) - 2]: _plain(v) for k, v in test.items()
                      if k.startswith(f"{task}:") and k.endswith(f"[{group}]")}
            if values:
                rows.append({"model": label, "task": task, "kind": "ckf_" + group, "ckf_users": values,
                             "all_users": {}, "recbole_standard": {}, "groups": {},
                             "settings": dict(settings, source=source)})
    return rows


def run_ckf(dataset, variants, ckf_overrides, workdir):
    from recbole_ckf.quick_start import run_recbole_ckf

    path = os.path.join(RESULTS, f"ckf_{dataset}.json")
    store = json.load(open(path)) if os.path.isfile(path) else {"dataset": dataset, "runs": {}}
    for name in variants:
        overrides = {**QUIET, **ckf_overrides, **ABLATIONS[name],
                     "checkpoint_dir": os.path.join(REPO, "saved", "benchmarks")}
        log(f"{dataset}: {name} (a CKF run: 9-13 minutes with Gemma-3-270M on 2 quiet CPU cores)")
        start = time.perf_counter()
        result = run_recbole_ckf("CKF", dataset, config_dict=overrides)
        config = Config("CKF", dataset, config_dict=overrides)
        keys = ["llm", "backbone", "use_cf", "multi_lora", "meta_network", "epochs", "train_samples_per_task",
                "train_batch_size", "learning_rate", "lora_r_shared", "lora_r_task", "max_history", "valid_users",
                "eval_users", "stopping_step", "valid_metric", "seed", "mixed_precision"]
        store["runs"][name] = {"test_result": _clean(result["test_result"]),
                               "best_valid_result": _clean(result["best_valid_result"]),
                               "settings": {k: _jsonable(config[k]) for k in keys},
                               "seconds": round(time.perf_counter() - start, 1),
                               "finished": datetime.datetime.now().isoformat(timespec="seconds")}
        atomic_write_json(path, store)
    return path


def load_ckf_results(path, dataset):
    """CKF numbers from an earlier run: this script's ckf_<dataset>.json, run_recbole_ckf's result dict as JSON,
    run_comparison's JSON, or a RecBole/CKF log file (its ``test result`` line). Returns ``{name: (result,
    settings)}`` for ``dataset`` (empty if the file is about another data set)."""
    text = open(path, encoding="utf-8").read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        if data.get("dataset") not in (None, dataset):
            return {}
        if "runs" in data:
            return {n: (r, r.get("settings", {})) for n, r in data["runs"].items()}
        if "rows" in data:
            return {r["model"]: (r, {}) for r in data["rows"] if r["model"] == "CKF"}
        if "test_result" in data:
            settings = data.get("settings") or {k: v for k, v in data.items() if isinstance(v, (str, int, float))
                                                and k not in ("model", "dataset")}
            return {str(data.get("name") or "CKF"): (data, settings)}
        raise ValueError(f"{path}: no CKF test result found")
    # a log file: "dataset = X", "eval_users = N", ... and "test result: OrderedDict([...])"
    found = re.search(r"^\s*dataset\s*=\s*(\S+)", text, re.M)
    if found and found.group(1) != dataset:
        return {}
    match = re.findall(r"test result\S*\s*:\s*(?:OrderedDict\()?(.*?)\)?\s*$", text, re.M)
    if not match:
        raise ValueError(f"{path}: no 'test result' line")
    raw = re.sub(r"\bnan\b", "None", match[-1])  # a metric with no samples in a group is logged as nan
    value = ast.literal_eval(raw)
    result = dict(value) if not isinstance(value, dict) else value
    settings = {}
    for key in ("llm", "backbone", "eval_users", "epochs", "train_samples_per_task", "seed", "use_cf", "multi_lora",
                "meta_network"):
        m = re.search(rf"^\s*{key}\s*=\s*(.+?)\s*$", text, re.M)
        if m:
            settings[key] = m.group(1)
    return {log_variant(text): ({"test_result": result}, settings)}


def log_variant(text):
    """The ABLATIONS name of a CKF log: the variant whose overrides its config dump ("key = value" lines) shows,
    the one with the most keys if several do; "CKF" if none does."""
    logged = dict(re.findall(r"^(\w+) = (.*?)\s*$", text, re.M))
    found = [name for name, overrides in ABLATIONS.items()
             if overrides and all(logged.get(k) == str(v) for k, v in overrides.items())]
    return max(found, key=lambda name: len(ABLATIONS[name])) if found else "CKF"


# ---------------------------------------------------------------------------------------------------------
# reports
def ctr_label_counts(protocol, all_protocol):
    out = {}
    for key, p in (("ckf_users", protocol), ("all_users", all_protocol)):
        labels = [s.label for s in task_samples(p, "ctr", p.users)]
        out[key] = [int(sum(labels)), int(len(labels) - sum(labels))]
    return out


# ---------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--models", default=",".join(RANKING_MODELS + CONTEXT_MODELS),
                   help="comma list of baselines (ranking: %s; context: %s)" % (RANKING_MODELS, CONTEXT_MODELS))
    p.add_argument("--epochs", type=int, default=BUDGET["epochs"], help="most epochs per baseline (early stopping)")
    p.add_argument("--stopping-step", type=int, default=BUDGET["stopping_step"])
    p.add_argument("--cap-minutes", default=",".join(f"{k}={v:g}" for k, v in CAP_MINUTES.items()),
                   help="wall-clock cap per model family or model, e.g. general=2,sequential=3,context=1,"
                        "LightGCN=6 (0: no cap)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other rows of the existing comparison_<dataset>.json (re-run some models only; "
                        "each row's settings hold its own budget)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine 2 threads oversubscribe, up to 6x slower)")
    p.add_argument("--eval-users", default="config",
                   help="CKF's test-user sample (default: CKF.yaml's eval_users; 'all' for every user)")
    p.add_argument("--ckf", action="store_true", help="also train and test CKF (Gemma-3-270M)")
    p.add_argument("--ablations", action="store_true", help="with --ckf: also the four ablations")
    p.add_argument("--variants", default="",
                   help=f"run only these CKF variants (implies --ckf), comma-separated: {', '.join(VARIANTS)}; "
                        f"runs already in ckf_<dataset>.json stay")
    p.add_argument("--ckf-results", nargs="+", default=[], help="CKF results of earlier runs (JSON or log)")
    p.add_argument("--ckf-config", default="{}", help="JSON dict of CKF config overrides (also used for the "
                   "protocol: they must match the CKF run's)")
    p.add_argument("--skip-baselines", action="store_true",
                   help="reuse the baseline rows of the existing comparison_<dataset>.json (e.g. to add CKF)")
    return p.parse_args(argv)


def _ckf_eval_users(sources, dataset, requested):
    """The eval_users of the CKF results (so that the baselines are tested on CKF's users), else ``requested``."""
    found = set()
    for src, runs in sources:
        for _, (_, settings) in runs.items():
            if "eval_users" in settings:
                found.add(str(settings["eval_users"]))
    if requested != "config" or not found:
        return requested
    if len(found) > 1:
        sys.exit(f"error: {dataset}: the CKF results were tested on different eval_users ({sorted(found)}); "
                 f"pass --eval-users to choose")
    value = found.pop()
    log(f"{dataset}: eval_users={value}, as in the CKF results")
    return None if value in ("None", "~", "null") else int(value)


def _settings(args):
    """The run's settings from the command line: baselines, budget, caps, eval_users, CKF overrides, variants."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in RANKING_MODELS + CONTEXT_MODELS]
    if unknown:
        sys.exit(f"error: unknown baseline(s) {unknown}")
    budget = dict(BUDGET, epochs=args.epochs, stopping_step=args.stopping_step)
    caps = dict(CAP_MINUTES)
    for part in filter(None, args.cap_minutes.split(",")):
        key, _, value = part.partition("=")
        if key not in caps and key not in RANKING_MODELS + CONTEXT_MODELS:
            sys.exit(f"error: --cap-minutes: {key!r} is neither a family (general, sequential, context) nor a model")
        caps[key] = float(value)
    eval_users = {"config": "config", "all": None}.get(args.eval_users, None)
    if args.eval_users not in ("config", "all"):
        eval_users = int(args.eval_users)
    bad = [v for v in filter(None, args.variants.split(",")) if v not in VARIANTS]
    if bad:
        sys.exit(f"error: --variants: unknown {bad}; expected some of {', '.join(VARIANTS)}")
    variants = [VARIANTS[v] for v in filter(None, args.variants.split(","))]
    return models, budget, caps, eval_users, json.loads(args.ckf_config), variants


def _stored_baselines(old_path, protocol, tasks, budget, caps):
    """``--skip-baselines``: the baseline rows (and their budget and run) of the stored comparison file."""
    old = json.load(open(old_path))
    rows = [r for r in old["rows"] if not r["kind"].startswith("ckf")]
    if protocol.eval_users is None:  # CKF tested on every test user: compare with the all-user numbers
        for r in rows:
            if r.get("all_users"):
                r["ckf_users"] = dict(r["all_users"])
    if "sequential" in tasks and not any(r["model"] == "random ranking (expected)" for r in rows):
        rows.insert(0, random_ranking_row())
    run = old.get("baselines_run") or {"command": old["command"], "generated": old["generated"],
                                       "machine": old["machine"]}
    return rows, old.get("baseline_minutes"), old.get("budget", budget), old.get("cap_minutes", caps), run


def _train_baselines(dataset, tasks, models, protocol, all_protocol, budget, caps, workdir, merge, start):
    """The floors and every baseline trained here (``--merge``: the other baselines kept from the stored file).
    Returns ``(rows, baseline_minutes)``."""
    old_path = os.path.join(RESULTS, f"comparison_{dataset}.json")
    rows = floor_rows(dataset, tasks, protocol, all_protocol)
    kept, kept_minutes = [], 0.0
    if merge and os.path.isfile(old_path):
        old = json.load(open(old_path))
        if old["protocol"]["ckf_user_tokens"] != protocol.user_tokens:
            sys.exit(f"error: --merge: {old_path} was computed on other test users")
        kept = [r for r in old["rows"] if r["kind"] == "baseline" and r["model"] not in models]
        kept_minutes = sum(r["settings"].get("train_seconds", 0) for r in kept) / 60
    plan = [(m, "sequential") for m in models if m in RANKING_MODELS]
    plan += [(m, t) for t in ("ctr", "rating") if t in tasks for m in models if m in CONTEXT_MODELS]
    for model_name, task in plan:
        t0 = time.perf_counter()
        row = train_baseline(model_name, dataset, task, protocol, all_protocol, budget, caps, workdir)
        rows.append(row)
        head = HEADLINE[task]
        log(f"{dataset}: {model_name:<9} {task:<10} {head}={row['ckf_users'].get(head)} "
            f"(all users {row['all_users'].get(head)}, RecBole standard "
            f"{row['recbole_standard'].get(head)}), epochs {row['settings']['epochs_trained']} "
            f"(best {row['settings']['best_epoch']}), {time.perf_counter() - t0:.0f} s")
    rows += kept
    order = {m: k for k, m in enumerate(RANKING_MODELS + CONTEXT_MODELS)}
    rows.sort(key=lambda r: (r["kind"] != "floor", order.get(r["model"], -1)))
    return rows, round((time.perf_counter() - start) / 60 + kept_minutes, 1)


def _with_ckf_rows(rows, given, protocol, here):
    """``rows`` with the CKF rows of every source (the latest source of a name wins); warns when a source was
    tested on other users than the baselines."""
    for src, runs in given:
        for name, (result, settings) in runs.items():
            for key, want in (("eval_users", protocol.eval_users), ("seed", protocol.seed)):
                got = settings.get(key, want)
                if str(got) != str(want):
                    log(f"warning: {src}: CKF was tested with {key}={got}, the baselines with {want}: "
                        f"not the same test users")
            rows = [r for r in rows if r["model"] != name and not r["model"].startswith(name + " ")
                    and not r["model"].startswith(name + "'s ")]
            full = os.path.abspath(os.path.join(here, src))
            shown = os.path.relpath(full, REPO) if full.startswith(REPO + os.sep) else full
            rows += _ckf_rows(name, result, settings, shown)
    return rows


def _report(dataset, tasks, command, baselines_run, machine, budget, caps, baseline_minutes, protocol,
            all_protocol, ckf_overrides, rows):
    """The comparison file's content: every number, the settings, the machine and the protocol."""
    return {
        "dataset": dataset, "tasks": tasks,
        "generated": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
        "baselines_run": baselines_run,
        "machine": machine, "budget": budget, "cap_minutes": caps, "sequential_settings": SEQUENTIAL,
        "baseline_minutes": baseline_minutes,
        "protocol": {"seed": protocol.seed, "split": protocol.config["eval_args"]["split"],
                     "order": protocol.config["eval_args"]["order"],
                     "mode": protocol.config["eval_args"]["mode"], "eval_users": protocol.eval_users,
                     "ckf_test_users": len(protocol.users), "all_test_users": len(all_protocol.users),
                     "ckf_user_tokens": protocol.user_tokens,
                     "ctr_labels": ctr_label_counts(protocol, all_protocol),
                     "ckf_config_overrides": ckf_overrides,
                     "normalize_all": protocol.config["normalize_all"]},
        "rows": rows,
    }


def run_dataset(dataset, args, settings, command, machine, workdir, here):
    """One data set: CKF's protocol, the baselines (trained or stored), the CKF rows; writes its comparison
    files and returns the report."""
    models, budget, caps, eval_users, ckf_overrides, variants = settings
    tasks = DATASETS[dataset]
    start = time.perf_counter()
    given = [(src, load_ckf_results(os.path.join(here, src), dataset)) for src in args.ckf_results]
    eval_users_ds = eval_users if (args.ckf or variants) else _ckf_eval_users(given, dataset, eval_users)
    protocol = ckf_protocol(dataset, dict(QUIET, **ckf_overrides), eval_users_ds)
    all_protocol = protocol.restrict(None)
    log(f"{dataset}: CKF's test users: {len(protocol.users)} of {len(all_protocol.users)} "
        f"(eval_users={protocol.eval_users}, seed={protocol.seed})")
    if args.skip_baselines:
        rows, baseline_minutes, budget, caps, baselines_run = _stored_baselines(
            os.path.join(RESULTS, f"comparison_{dataset}.json"), protocol, tasks, budget, caps)
    else:
        baselines_run = {"command": command, "machine": machine,
                         "generated": datetime.datetime.now().isoformat(timespec="seconds")}
        rows, baseline_minutes = _train_baselines(dataset, tasks, models, protocol, all_protocol, budget, caps,
                                                  workdir, args.merge, start)
    if args.ckf or variants:
        variants = variants or (list(ABLATIONS) if args.ablations else ["CKF"])
        path = run_ckf(dataset, variants, dict(ckf_overrides, eval_users=protocol.eval_users), workdir)
        given.append((path, load_ckf_results(path, dataset)))
    rows = _with_ckf_rows(rows, given, protocol, here)
    report = _report(dataset, tasks, command, baselines_run, machine, budget, caps, baseline_minutes, protocol,
                     all_protocol, ckf_overrides, rows)
    atomic_write_json(os.path.join(RESULTS, f"comparison_{dataset}.json"), _jsonable(report))
    atomic_write_text(os.path.join(RESULTS, f"comparison_{dataset}.md"), markdown(report))
    log(f"{dataset}: written benchmarks/results/comparison_{dataset}.md/.json (baselines part {baseline_minutes} min)")
    return report


def write_plot(reports):
    """The plot shows every data set that has a comparison file, not only this run's."""
    done = {r["dataset"] for r in reports}
    for ds in DATASETS:
        path = os.path.join(RESULTS, f"comparison_{ds}.json")
        if ds not in done and os.path.isfile(path):
            reports.append(json.load(open(path)))
    reports.sort(key=lambda r: list(DATASETS).index(r["dataset"]))
    plot(reports, os.path.join(RESULTS, "comparison.png"))
    log("written benchmarks/results/comparison.png")


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/run_benchmarks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.argv = sys.argv[:1]  # RecBole's Config would parse our flags
    os.makedirs(RESULTS, exist_ok=True)
    settings = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    workdir = tempfile.mkdtemp(prefix="recbole_ckf_bench_")
    here = os.getcwd()
    os.chdir(workdir)  # RecBole writes log_tensorboard/ into the current folder
    try:
        reports = [run_dataset(dataset, args, settings, command, machine, workdir, here) for dataset in args.datasets]
        write_plot(reports)
    finally:
        os.chdir(here)
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
