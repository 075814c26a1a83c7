"""Checks of CKF's own settings, as :mod:`recbole_ckf.settings_check` runs them for ``--model=CKF``.

CKF scores RecBole's ``uniN``/``popN`` candidate lists with its own task metrics (``ctr:auc``,
``sequential:ndcg@3``, ...; see :mod:`recbole_ckf.evaluator.task_eval`): here ``full``/``labeled`` evaluation is
refused, ``valid_metric`` must name a metric CKF reports (its default follows the tasks run), a validation split
must exist, the sequential candidates must fit ``n_candidates``, and the keys with a fixed set of values
(:data:`CKF_CHOICES`) must hold one of them.
"""

from recbole_ckf.errors import CKFError
from recbole_ckf.settings_recbole import MODE_EXAMPLE, _mode_name, _q, eval_modes, parse_mode

# CKF's validation metrics per task (recbole_ckf/evaluator/task_eval.py: TASK_METRICS and the sequential task's
# kept keys); "mrr@{width}" is completed with the number of candidates per list
CKF_TASK_KEYS = {
    "ctr": ("auc", "logloss"),
    "sequential": ("hit@1", "hit@3", "ndcg@3", "mrr@{width}"),
    "rating": ("rmse", "mae"),
    "explanation": ("bleu-1", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "distinct-1", "distinct-2"),
}
CKF_TASK_ORDER = ("sequential", "ctr", "rating", "explanation")  # the default valid_metric follows this order


def check_ckf_modes(modes):
    """CKF scores RecBole's uniN/popN candidate lists: a full ranking or labeled evaluation has none."""
    for phase in ("valid", "test"):
        kind = parse_mode(modes[phase])[0]
        if kind == "full":
            raise CKFError(f"eval_args {_mode_name(modes, phase)}: CKF ranks the candidate lists of RecBole's "
                           f"uniN/popN samplers (the true item among N sampled ones), scoring each candidate "
                           f"with the language model, and cannot rank every item for every user: use "
                           f"--eval_args=\"{{'mode': '{MODE_EXAMPLE}'}}\" (or popN)")
        if kind == "labeled":
            raise CKFError(f"eval_args {_mode_name(modes, phase)}: CKF ranks the candidate lists of RecBole's "
                           f"uniN/popN samplers and reads the labels of its ctr/rating tasks itself (ctr_threshold): "
                           f"use --eval_args=\"{{'mode': '{MODE_EXAMPLE}'}}\" (or popN)")



def ckf_validation_keys(config, tasks):
    """``[(task, key)]`` CKF's validation reports (key pattern ``mrr@*`` where the list width is data-dependent),
    in the result's task order."""
    modes = eval_modes(config["eval_args"])
    _, n = parse_mode(modes["valid"])
    leave_one_out = isinstance(config["eval_args"]["split"], dict) and "LS" in config["eval_args"]["split"]
    width = str(n + 1) if leave_one_out else "*"  # other splits: several positives per list
    keys = []
    for task in tasks:
        for key in CKF_TASK_KEYS.get(task, ()):
            keys.append((task, key.format(width=width)))
        if task == "ctr" and not leave_one_out:  # GAUC needs users with several validation samples
            keys.append((task, "gauc"))
    return keys


def _matches(wanted, task, key):
    def same(name):
        return name == key or (key.endswith("@*") and name.startswith(key[:-1]) and name[len(key) - 1:].isdigit())

    if ":" in wanted:
        prefix, _, name = wanted.partition(":")
        return prefix == task and same(name)
    return same(wanted)


def check_ckf(config, tasks, explicit_valid_metric):
    """CKF: the sequential candidates fit its answer set, and ``valid_metric`` names a metric it reports; the
    default (``ndcg@3`` in properties/CKF.yaml) follows the tasks when the sequential task is not run."""
    modes = eval_modes(config["eval_args"])
    split = config["eval_args"].get("split")
    (kind, value), = split.items() if isinstance(split, dict) and len(split) == 1 else ((None, None),)
    no_valid = (kind == "LS" and value == "test_only") or (kind in ("RS", "TS") and not value[1])
    if no_valid and not config["benchmark_filename"]:
        raise CKFError(f"eval_args split {_q(split)} leaves no validation split, which CKF needs (it picks its best "
                       f"epoch on the validation split): use {{'LS': 'valid_and_test'}} or give "
                       f"valid a share (e.g. {{'{kind if kind != 'LS' else 'RS'}': [0.8, 0.1, 0.1]}})")
    if "sequential" in tasks and config["sequential_answer"] == "label" and config["n_candidates"]:
        for phase in ("valid", "test"):
            n = parse_mode(modes[phase])[1]
            if n + 1 > config["n_candidates"]:
                raise CKFError(
                    f"eval_args {_mode_name(modes, phase)} gives CKF's sequential task {n + 1} candidates per list, "
                    f"but n_candidates is {config['n_candidates']} (sequential_answer 'label' letters at most "
                    f"n_candidates candidates): use mode 'uni{config['n_candidates'] - 1}', raise --n_candidates "
                    f"(at most 26) or set --sequential_answer=title")
    if config["eval_only"]:
        return
    if config["epochs"] == 0 and not config["resume"]:
        raise CKFError("epochs 0: a CKF run trains at least one epoch; to evaluate a saved CKF model without "
                       "training use --checkpoint=DIR --eval_only=True")
    keys = ckf_validation_keys(config, tasks)
    wanted = str(config["valid_metric"]).lower()
    if any(_matches(wanted, task, key) for task, key in keys):
        chosen = wanted
    elif not explicit_valid_metric:
        task = next(t for t in CKF_TASK_ORDER if t in tasks)
        chosen = f"{task}:{CKF_TASK_KEYS[task][0]}"
        config["valid_metric"] = chosen
    else:
        name = wanted.partition(":")[2] or wanted
        same = [f"{t}:{k}" for t, k in keys if k.split("@")[0] == name.split("@")[0] and "*" not in k]
        first = next(t for t in CKF_TASK_ORDER if t in tasks)
        suggestion = same[0] if same else f"{first}:{CKF_TASK_KEYS[first][0]}"
        reported = ", ".join(f"{t}:{k}" for t, k in keys)
        raise CKFError(f"valid_metric '{config['valid_metric']}' is not a metric CKF reports with tasks "
                       f"{', '.join(tasks)} (CKF evaluates its own task metrics and ignores metrics/topk; it reports "
                       f"{reported}): set --valid_metric={suggestion}")
    from recbole.evaluator.register import smaller_metrics

    name = chosen.partition(":")[2] if ":" in chosen else chosen
    config["valid_metric_bigger"] = name.split("@")[0] not in smaller_metrics


# CKF keys with a fixed set of values (checked before anything is read; ~ means the key's default)
CKF_CHOICES = {
    "precision": ("auto", "fp32", "bf16"),
    "sequential_answer": ("label", "title", "pointwise"),
    "sequential_score": ("mean", "sum"),
    "score_fusion": ("none", "backbone"),
    "test_history": ("train_valid", "train"),
    "bridge_schedule": ("constant", "cosine"),
    "pooling": ("mean", "attention"),
}


# CKF's own learning rates (RecBole's learning_rate is checked with RecBole's keys)
CKF_RATES = ("bridge_learning_rate", "answer_head_learning_rate")


def check_ckf_choices(config):
    for key, choices in CKF_CHOICES.items():
        value = config[key]
        if value is not None and str(value) not in choices:
            raise CKFError(f"{key}: expected one of {', '.join(choices)}, got {_q(value)}")
    for key, none_means in (("backbone_threads", "torch's thread count"), ("max_tokens_per_pass", "no limit")):
        value = config[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CKFError(f"{key}: expected an integer >= 1 (or ~ for {none_means}), got {_q(value)}")
    for key in CKF_RATES:
        value = config[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise CKFError(f"config key '{key}': expected a number > 0, got {_q(value)}")
