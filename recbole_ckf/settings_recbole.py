"""Checks of RecBole's own evaluation and sampling settings, as :mod:`recbole_ckf.settings_check` runs them.

``eval_args`` (split, order, group_by, mode), ``metrics``/``topk`` (known to RecBole's registry, of one kind),
``valid_metric`` (one of the keys the run's metrics produce), metric kind against evaluation mode,
``train_neg_sample_args`` and ``threshold``: each wrong value is refused with one :class:`~recbole_ckf.errors.CKFError`
line naming the key and what would work. Also the helpers the other checks share (:func:`parse_mode`,
:func:`eval_modes`, :func:`result_keys`).
"""

import difflib
import numbers

from recbole.utils import EvaluatorType, ModelType

from recbole_ckf.errors import CKFError

EVAL_ARGS_KEYS = ("split", "order", "group_by", "mode")
NEG_SAMPLE_KEYS = ("distribution", "sample_num", "alpha", "dynamic", "candidate_num")
MODE_EXAMPLE = "uni9"



def _q(value):
    """A value as the user wrote it (``--key=value`` strings are Python literals)."""
    return repr(value)


def _registry():
    from recbole.evaluator.register import metric_information, metric_types

    return metric_types, metric_information


# ---- eval_args ----------------------------------------------------------------------------------------------
def parse_mode(mode):
    """``('full'|'labeled'|'uni'|'pop', N or None)`` of one eval mode string, or None when it does not parse."""
    if not isinstance(mode, str):
        return None
    if mode in ("full", "labeled"):
        return mode, None
    kind, digits = mode[:3], mode[3:]
    if kind in ("uni", "pop") and digits.isdigit() and int(digits) >= 1:
        return kind, int(digits)
    return None


def eval_modes(eval_args):
    """``{'valid': mode, 'test': mode}`` as RecBole reads ``eval_args['mode']`` (a string, or a dict of one or
    both phases)."""
    mode = eval_args.get("mode", "full")
    if isinstance(mode, dict):
        default = mode.get("valid", mode.get("test", "full"))
        return {"valid": mode.get("valid", default), "test": mode.get("test", default)}
    return {"valid": mode, "test": mode}


def _mode_name(modes, phase=None):
    """How to name the mode in a message: ``mode 'full'`` when both phases share it, else ``mode.test 'full'``."""
    if modes["valid"] == modes["test"]:
        return f"mode '{modes['valid']}'"
    return f"mode.{phase} '{modes[phase]}'"


def _check_ratios(split, kind, ratios):
    if not isinstance(ratios, (list, tuple)) or len(ratios) != 3:
        raise CKFError(f"eval_args split {_q(split)}: {kind} takes three ratios [train, valid, test] "
                       f"(e.g. {{'{kind}': [0.8, 0.1, 0.1]}})")
    if not all(isinstance(r, numbers.Real) and not isinstance(r, bool) and r >= 0 for r in ratios):
        raise CKFError(f"eval_args split {_q(split)}: the ratios must be numbers >= 0 "
                       f"(e.g. {{'{kind}': [0.8, 0.1, 0.1]}})")
    if ratios[0] <= 0:
        raise CKFError(f"eval_args split {_q(split)}: the train ratio is 0, so there is nothing to train on: "
                       f"give it a share (e.g. {{'{kind}': [0.8, 0.1, 0.1]}})")
    if ratios[2] <= 0:
        raise CKFError(f"eval_args split {_q(split)}: the test ratio is 0, so there is no test split: give it a "
                       f"share (e.g. {{'{kind}': [0.8, 0.1, 0.1]}})")


def check_eval_args(eval_args, model_type, benchmark=False):
    """The shape of ``eval_args`` (RecBole ignores unknown keys and fails on bad values only while splitting)."""
    if not isinstance(eval_args, dict):
        raise CKFError(f"eval_args: expected a mapping such as {{'split': {{'LS': 'valid_and_test'}}, 'order': "
                       f"'TO', 'mode': '{MODE_EXAMPLE}'}}, got {_q(eval_args)} (on the command line, quote it: "
                       f"--eval_args=\"{{'mode': '{MODE_EXAMPLE}'}}\")")
    unknown = [k for k in eval_args if k not in EVAL_ARGS_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), EVAL_ARGS_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CKFError(f"eval_args: unknown key '{unknown[0]}'{hint}; expected some of {', '.join(EVAL_ARGS_KEYS)}")

    if not benchmark:  # with benchmark_filename, RecBole takes the split from the files and ignores these
        split = eval_args.get("split")
        if not isinstance(split, dict) or len(split) != 1:
            raise CKFError(f"eval_args split {_q(split)}: expected one of {{'LS': 'valid_and_test'}}, "
                           f"{{'RS': [0.8, 0.1, 0.1]}} or {{'TS': [0.8, 0.1, 0.1]}}")
        (kind, value), = split.items()
        if kind in ("RS", "TS"):
            _check_ratios(split, kind, value)
        elif kind == "LS":
            if value == "valid_only":
                raise CKFError(f"eval_args split {_q(split)}: 'valid_only' leaves no test split: use "
                               f"{{'LS': 'valid_and_test'}} (or 'test_only')")
            if value not in ("valid_and_test", "test_only"):
                raise CKFError(f"eval_args split {_q(split)}: LS (leave one out) takes 'valid_and_test' or "
                               f"'test_only'")
        else:
            raise CKFError(f"eval_args split {_q(split)}: unknown split '{kind}'; expected {{'LS': "
                           f"'valid_and_test'}}, {{'RS': [0.8, 0.1, 0.1]}} or {{'TS': [0.8, 0.1, 0.1]}}")

        order = eval_args.get("order", "RO")
        if order not in ("RO", "TO"):
            raise CKFError(f"eval_args order {_q(order)}: expected 'RO' (random order) or 'TO' (time order)")
        if model_type == ModelType.SEQUENTIAL and order != "TO":
            raise CKFError("eval_args order 'RO': sequential models need order 'TO' (RecBole builds each "
                           "history from the user's interactions in time order); set order 'TO'")
        group_by = eval_args.get("group_by", "user")
        if not (group_by is None or group_by == "user" or (isinstance(group_by, str) and group_by.lower() == "none")):
            raise CKFError(f"eval_args group_by {_q(group_by)}: expected 'user' or 'none'")

    mode = eval_args.get("mode", "full")
    if isinstance(mode, dict):
        unknown = [k for k in mode if k not in ("valid", "test")]
        if unknown or not mode:
            raise CKFError(f"eval_args mode {_q(mode)}: expected a mode string such as '{MODE_EXAMPLE}' or "
                           f"{{'valid': '{MODE_EXAMPLE}', 'test': '{MODE_EXAMPLE}'}}")
    for phase, value in eval_modes(eval_args).items():
        if parse_mode(value) is None:
            where = "mode" if not isinstance(mode, dict) else f"mode.{phase}"
            raise CKFError(f"eval_args {where} {_q(value)} is not an evaluation mode: expected 'full', 'labeled', "
                           f"'uniN' or 'popN' with N >= 1 sampled negatives per positive (e.g. '{MODE_EXAMPLE}': "
                           f"the true item among 9 sampled ones)")


# ---- metrics ------------------------------------------------------------------------------------------------
def _metric_list(metrics):
    return [metrics] if isinstance(metrics, str) else metrics


def _kind(metric_type):
    return "ranking" if metric_type == EvaluatorType.RANKING else "value"


def check_metrics(metrics, topk):
    """``metrics`` known to RecBole's registry and of one kind, ``topk`` positive integers. Returns the kind."""
    metric_types, metric_information = _registry()
    listed = _metric_list(metrics)
    if not isinstance(listed, (list, tuple)) or not listed or not all(isinstance(m, str) for m in listed):
        raise CKFError(f"metrics: expected a list of metric names such as ['NDCG', 'Hit'], got {_q(metrics)} (on "
                       f"the command line, quote it: --metrics=\"['NDCG', 'Hit']\")")
    for metric in listed:
        if metric.lower() not in metric_types:
            if any(c in metric for c in ",[]"):
                raise CKFError(f"metrics: '{metric}' is not a metric name; write a list: "
                               f"--metrics=\"['NDCG', 'Hit']\" (quoted, each name in quotes)")
            close = difflib.get_close_matches(metric.lower(), list(metric_types), n=3)
            hint = f"; closest known: {', '.join(close)}" if close else ""
            raise CKFError(f"metrics: unknown metric '{metric}'{hint} (RecBole's metrics: "
                           f"{', '.join(sorted(metric_types))})")
    kinds = {}
    for metric in listed:
        kinds.setdefault(_kind(metric_types[metric.lower()]), []).append(metric)
    if len(kinds) > 1:
        raise CKFError(f"metrics {_q(list(listed))} mix value metrics ({', '.join(kinds['value'])}) and ranking "
                       f"metrics ({', '.join(kinds['ranking'])}); RecBole evaluates one kind per run: keep one kind")
    for metric in listed:
        need = metric_information[metric.lower()]
        if "data.num_items" in need or "data.count_items" in need:
            raise CKFError(f"metrics: RecBole 1.2.1 cannot compute '{metric}' (its evaluation collector fails on "
                           f"the item counts that metric needs); remove it (ShannonEntropy and the accuracy "
                           f"metrics work)")
    ks = [topk] if isinstance(topk, int) and not isinstance(topk, bool) else topk
    if not isinstance(ks, (list, tuple)) or not ks or not all(
            isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks):
        raise CKFError(f"topk: expected a positive integer or a list of them (e.g. [1, 3, 10]), got {_q(topk)}")
    return next(iter(kinds))


def _display_name(name):
    """RecBole's own spelling of a metric (``ndcg`` -> ``NDCG``), as users write it in ``metrics``."""
    from recbole.evaluator.register import metrics_dict

    cls = metrics_dict.get(name)
    if cls is None:
        return name
    return getattr(cls, "name", None) or cls.__name__  # the plugin's text metrics carry their own name


def _keyed_by_topk(name):
    _, metric_information = _registry()
    need = metric_information.get(name, [])
    return "rec.topk" in need or "rec.items" in need


def result_keys(metrics, topk):
    """The keys of RecBole's result dict for ``metrics`` and ``topk`` (``ndcg@10``, ``auc``, ``gauc``, ...)."""
    ks = [topk] if isinstance(topk, int) else list(topk)
    keys = []
    for metric in _metric_list(metrics):
        name = metric.lower()
        keys += [f"{name}@{k}" for k in ks] if _keyed_by_topk(name) else [name]
    return keys


def check_valid_metric(valid_metric, metrics, topk):
    """``valid_metric`` must be one of the keys the run's metrics produce (RecBole finds out after an epoch)."""
    metric_types, _ = _registry()
    if not isinstance(valid_metric, str) or not valid_metric:
        raise CKFError(f"valid_metric: expected a metric name such as ndcg@10 or auc, got {_q(valid_metric)}")
    listed = list(_metric_list(metrics))
    ks = [topk] if isinstance(topk, int) else list(topk)
    keys = result_keys(listed, ks)
    wanted = valid_metric.lower()
    if wanted in keys:
        return
    name, at, k = wanted.partition("@")
    same_name = [key for key in keys if key.split("@")[0] == name]
    same_k = [key for key in keys if at and key.endswith(f"@{k}")]
    suggestion = (same_name[-1:] or same_k or keys)[0]  # the largest cutoff of the same metric, if any
    where = f"metrics {_q(listed)} at topk {_q(ks)}" if any("@" in key for key in keys) else f"metrics {_q(listed)}"
    if name not in metric_types:
        raise CKFError(f"valid_metric '{valid_metric}' is not a RecBole metric: set --valid_metric={suggestion} "
                       f"(one of {', '.join(keys)}, from {where})")
    kind, run_kind = _kind(metric_types[name]), _kind(metric_types[listed[0].lower()])
    if kind != run_kind:
        raise CKFError(f"valid_metric '{valid_metric}' is a {kind} metric, but {where} are {run_kind} metrics "
                       f"(RecBole evaluates one kind per run): set --valid_metric={suggestion}")
    label = _display_name(name)
    if at and not _keyed_by_topk(name):
        raise CKFError(f"valid_metric '{valid_metric}': {label} takes no @k; set --valid_metric={name}"
                       + ("" if name in keys else f" and add '{label}' to metrics"))
    if not at and _keyed_by_topk(name):
        raise CKFError(f"valid_metric '{valid_metric}' needs a cutoff @k: set --valid_metric={suggestion} "
                       f"(one of {', '.join(keys)}, from {where})")
    if same_name:  # the metric is evaluated, at other cutoffs
        raise CKFError(f"valid_metric '{valid_metric}' is not among {where}: set --valid_metric={suggestion} or "
                       f"add {k} to topk")
    raise CKFError(f"valid_metric '{valid_metric}' is not among {where}: set --valid_metric={suggestion} or add "
                   f"'{label}' to metrics" + (f" (and {k} to topk)" if at and not same_k else ""))


def check_metrics_fit_modes(run_kind, modes):
    """Ranking metrics need candidate lists (uniN/popN/full); value metrics need scores against labels, which a
    full ranking does not give (RecBole itself refuses that one, in other words)."""
    for phase in ("valid", "test"):
        kind = parse_mode(modes[phase])[0]
        if run_kind == "ranking" and kind == "labeled":
            raise CKFError(f"eval_args {_mode_name(modes, phase)} scores each interaction against its label, "
                           f"without candidate lists, so it cannot compute ranking metrics: use value metrics "
                           f"(--metrics=\"['AUC', 'LogLoss']\" --valid_metric=auc) or mode '{MODE_EXAMPLE}'")
        if run_kind == "value" and kind == "full":
            raise CKFError(f"eval_args {_mode_name(modes, phase)} ranks every item without labels, so it cannot "
                           f"compute value metrics: use mode '{MODE_EXAMPLE}' or 'labeled', or ranking metrics "
                           f"(--metrics=\"['NDCG', 'Hit']\" --valid_metric=ndcg@10)")


# ---- negative sampling ----------------------------------------------------------------------------------------
def check_train_neg_sample_args(args):
    """The shape of ``train_neg_sample_args`` (``None`` = no sampled negatives)."""
    if args is None or args == "None":
        return
    if not isinstance(args, dict):
        raise CKFError(f"train_neg_sample_args: expected a mapping such as {{'distribution': 'uniform', "
                       f"'sample_num': 1}} or None, got {_q(args)} (on the command line, quote it: "
                       f"--train_neg_sample_args=\"{{'distribution': 'uniform', 'sample_num': 1}}\")")
    unknown = [k for k in args if k not in NEG_SAMPLE_KEYS]
    if unknown:
        raise CKFError(f"train_neg_sample_args: unknown key '{unknown[0]}'; expected some of "
                       f"{', '.join(NEG_SAMPLE_KEYS)}")
    distribution = args.get("distribution", "uniform")
    if distribution not in ("uniform", "popularity", "none", "None", None):
        raise CKFError(f"train_neg_sample_args distribution {_q(distribution)}: expected 'uniform', 'popularity' "
                       f"or None")
    if distribution in ("none", "None", None):
        return
    checks = (
        ("sample_num", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
        ("alpha", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
        ("dynamic", lambda v: isinstance(v, bool), "True or False"),
        ("candidate_num", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    )
    for key, ok, expected in checks:
        if key in args and not ok(args[key]):
            raise CKFError(f"train_neg_sample_args {key}: expected {expected}, got {_q(args[key])}")
    if args.get("dynamic") and args.get("candidate_num", 0) < 1:
        raise CKFError("train_neg_sample_args: dynamic negative sampling draws from candidate_num candidates: "
                       "set candidate_num >= 1 (e.g. 'candidate_num': 4) or dynamic False")


def check_threshold(threshold):
    """``threshold`` labels each interaction 1 when its field reaches the value: one ``{field: value}``."""
    if threshold is None or threshold == {}:
        return
    if not (isinstance(threshold, dict) and len(threshold) == 1 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in threshold.values())):
        raise CKFError(f"threshold: expected one {{field: value}} such as {{'rating': 4}} (an interaction whose "
                       f"field reaches the value is labelled 1) or None, got {_q(threshold)}")


def _samples_negatives(args):
    return isinstance(args, dict) and args.get("distribution", "uniform") not in ("none", "None", None)
