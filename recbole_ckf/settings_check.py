"""RecBole settings a user carries over, checked before any data is read or anything written.

RecBole 1.2.1 accepts many combinations of ``metrics``, ``topk``, ``valid_metric``, ``eval_args``,
``train_neg_sample_args``, ``load_col`` and ``threshold`` that then end in a traceback: at the end of the first
epoch (``KeyError: 'ndcg@3'`` when ``valid_metric`` is not among the metrics evaluated), deep inside its
dataloaders (``KeyError: 'neg_item_id'``, ``'label'``), in its evaluator (ranking metrics in ``labeled`` mode) or
in its Config (``ValueError`` on a mode such as ``uni``). Each such combination is refused here with one line
(:class:`~recbole_ckf.errors.CKFError`) naming the key(s) and what would work. What RecBole computes, even where
it is unusual (AUC on ``uni9`` candidate lists, RMSE of a general model's scores), is left alone.

Two stages, both called by :class:`recbole_ckf.config.Config`:

* :func:`check_raw` runs on the merged settings *before* RecBole's own ``_set_default_parameters`` (which raises
  ``ValueError``/``TypeError`` with RecBole's wording, or, for some keys, nothing at all);
* :func:`check_config` runs on the finished Config (RecBole's defaults filled in, CKF's tasks known).

CKF evaluates its own task metrics (``ctr:auc``, ``sequential:ndcg@3``, ...; see
:mod:`recbole_ckf.evaluator.task_eval`) on RecBole's ``uniN``/``popN`` candidate lists: ``metrics`` and ``topk``
do not apply to it, ``valid_metric`` must name one of its task metrics, and ``full``/``labeled`` evaluation is
refused.

This module holds the two stages and the checks that read both RecBole's and CKF's settings (``load_col`` and
labels, pairwise training input); the checks of RecBole's own keys are in :mod:`recbole_ckf.settings_recbole`,
those of CKF's in :mod:`recbole_ckf.settings_ckf` (their names are importable from here too).
"""

import os

from recbole.utils import InputType, ModelType

from recbole_ckf.errors import CKFError
from recbole_ckf.settings_ckf import (  # noqa: F401  (re-exported: the CKF checks once lived here)
    CKF_CHOICES, CKF_TASK_KEYS, CKF_TASK_ORDER, check_ckf, check_ckf_choices, check_ckf_modes, ckf_validation_keys,
)
from recbole_ckf.settings_recbole import (  # noqa: F401  (re-exported: RecBole's checks once lived here)
    EVAL_ARGS_KEYS, MODE_EXAMPLE, NEG_SAMPLE_KEYS, _mode_name, _q, _samples_negatives, check_eval_args,
    check_metrics, check_metrics_fit_modes, check_threshold, check_train_neg_sample_args, check_valid_metric,
    eval_modes, parse_mode, result_keys,
)


# ---- stage 1: before RecBole's own checks ----------------------------------------------------------------
def check_raw(final, model, model_class):
    """Checks on the merged settings before RecBole's ``_set_default_parameters`` reads them."""
    model_type = final.get("MODEL_TYPE")
    ckf = model == "CKF"
    eval_args = final.get("eval_args")
    check_eval_args(eval_args, model_type, benchmark=bool(final.get("benchmark_filename")))
    modes = eval_modes(eval_args)
    if ckf:
        check_ckf_modes(modes)
    run_kind = check_metrics(final.get("metrics"), final.get("topk"))
    if not ckf:  # CKF ignores metrics/topk (it evaluates its own task metrics)
        check_metrics_fit_modes(run_kind, modes)
    check_train_neg_sample_args(final.get("train_neg_sample_args"))
    check_threshold(final.get("threshold"))
    if model_type == ModelType.SEQUENTIAL:
        if not final.get("repeatable"):
            raise CKFError(f"repeatable {_q(final.get('repeatable'))}: RecBole's sequential models ({model}) only "
                           f"support repeatable recommendation: set --repeatable=True")
        if (not hasattr(model_class, "input_type") and final.get("loss_type") == "CE"
                and _samples_negatives(final.get("train_neg_sample_args"))):
            raise CKFError(f"train_neg_sample_args: {model} with loss_type CE scores all items and takes no sampled "
                           f"negatives: set --train_neg_sample_args=None, or --loss_type=BPR to train on them")


# ---- stage 2: on the finished Config --------------------------------------------------------------------------
def _inter_columns(config):
    """The interaction columns RecBole will load: ``load_col['inter']`` when given, else the file's header
    (None when it cannot be read here; the atomic-file checks report that)."""
    load_col = config["load_col"]
    if isinstance(load_col, dict) and isinstance(load_col.get("inter"), (list, tuple)):
        return list(load_col["inter"]), True
    from recbole_ckf.data.atomic import read_header

    path = os.path.join(config["data_path"], f"{config['dataset']}.inter")
    try:
        return [name for name, _ in read_header(path, config["field_separator"] or "\t")], False
    except (OSError, CKFError, UnicodeDecodeError):
        return None, False


def check_fields(config, ckf_tasks=None):
    """The columns the split, the labels and CKF's tasks read must be loaded (``load_col``), and a label must
    exist where the evaluation or the training reads one."""
    columns, from_load_col = _inter_columns(config)
    if columns is None:
        return
    eval_args = config["eval_args"]
    split_kind = next(iter(eval_args["split"])) if isinstance(eval_args.get("split"), dict) else None
    needed = []
    time_field = config["TIME_FIELD"]
    if time_field and not config["benchmark_filename"]:
        if eval_args.get("order") == "TO":
            needed.append((time_field, "eval_args order 'TO' sorts the interactions by", "or use order 'RO'"))
        elif split_kind == "TS":
            needed.append((time_field, "eval_args split TS splits the interactions by", "or use split RS or LS"))
    threshold = config["threshold"]
    for field in threshold if isinstance(threshold, dict) else ():
        needed.append((field, "threshold labels the interactions by", "or change threshold"))
    if ckf_tasks and config["RATING_FIELD"] and {"ctr", "rating"} & set(ckf_tasks):
        tasks = " and ".join(t for t in ("ctr", "rating") if t in ckf_tasks)
        needed.append((config["RATING_FIELD"], f"CKF's {tasks} task{'s read' if ' and ' in tasks else ' reads'}",
                       "or choose other --tasks"))
    if from_load_col:
        for field, why, alternative in needed:
            if field not in columns:
                raise CKFError(f"load_col: {why} '{field}', but load_col.inter {_q(columns)} does not load it: add "
                               f"'{field}' to load_col.inter {alternative}")
    if config["model"] == "CKF":
        return  # CKF builds its own labels (ctr_threshold); the rest concerns RecBole's trainers
    has_label = (isinstance(threshold, dict) and bool(threshold)) or config["LABEL_FIELD"] in columns
    if has_label:
        return
    modes = eval_modes(eval_args)
    label = config["LABEL_FIELD"]
    how = (f"set threshold (e.g. --threshold=\"{{'{config['RATING_FIELD'] or 'rating'}': 4}}\") or load a "
           f"'{label}' column (LABEL_FIELD)")
    for phase in ("valid", "test"):
        if parse_mode(modes[phase])[0] == "labeled":
            raise CKFError(f"eval_args {_mode_name(modes, phase)} scores each interaction against its label, but "
                           f"the interactions have none: {how}")
    if config["MODEL_TYPE"] in (ModelType.CONTEXT, ModelType.DECISIONTREE) and not _samples_negatives(
            config["train_neg_sample_args"]):
        raise CKFError(f"{config['model']} trains on each interaction's label, but the interactions have none: "
                       f"{how}, or sample negatives with --train_neg_sample_args=\"{{'distribution': 'uniform', "
                       f"'sample_num': 1}}\"")


def check_training_input(config):
    """A pairwise model learns from (user, positive item, negative item) triples: it needs sampled negatives."""
    if config["MODEL_INPUT_TYPE"] == InputType.PAIRWISE and not _samples_negatives(config["train_neg_sample_args"]):
        raise CKFError(f"train_neg_sample_args: {config['model']} trains on (user, positive item, negative item) "
                       f"triples and needs sampled negatives: set --train_neg_sample_args=\"{{'distribution': "
                       f"'uniform', 'sample_num': 1}}\"")


def check_config(config, ckf_tasks=None, explicit_valid_metric=True):
    """Checks on the finished Config (RecBole's defaults filled in; ``ckf_tasks``: the tasks a CKF run runs)."""
    if config["model"] == "CKF":
        check_ckf_choices(config)
        check_fields(config, ckf_tasks)
        check_ckf(config, ckf_tasks, explicit_valid_metric)
        return
    check_training_input(config)
    check_fields(config)
    if not config["eval_only"]:
        check_valid_metric(config["valid_metric"], config["metrics"], config["topk"])
