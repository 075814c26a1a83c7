"""Deterministic evaluation of CKF's four tasks through RecBole's evaluator.

:func:`evaluate_tasks` scores every test sample with the model, hands the scores to RecBole's own
:class:`~recbole.evaluator.collector.Collector` (which builds ``rec.score`` / ``data.label`` / ``rec.topk`` /
``rec.meanrank`` exactly as RecBole's trainer does) or, for the generated texts, puts them into a
:class:`~recbole.evaluator.collector.DataStruct` as ``text.pred`` / ``text.ref``, and lets RecBole's
:class:`~recbole.evaluator.Evaluator` compute the metrics, for all users and for warm / cold users
(:func:`recbole_ckf.evaluator.groups.evaluate_by_group`). Nothing is sampled: two evaluations of one model give
identical numbers.

=============  ==================================================================  ===========================
task           score                                                               RecBole metrics
=============  ==================================================================  ===========================
ctr            ``model.predict_ctr``: P(Yes) against P(No) at the answer position   AUC, LogLoss (+ GAUC)
rating         ``model.predict_rating``: expectation over the five digit tokens     RMSE, MAE (1-5 scale)
sequential     likelihood of each candidate's text as the answer (see below)       Hit@1, Hit@3, NDCG@3, MRR
explanation    greedy decoding (KV cache), new tokens only, stop at eos             BLEU-1/4, ROUGE-1/2/L,
                                                                                   Distinct-1/2
=============  ==================================================================  ===========================

The scorers live beside this module: :mod:`~recbole_ckf.evaluator.inference` (ctr and rating),
:mod:`~recbole_ckf.evaluator.candidate_scoring` (sequential), :mod:`~recbole_ckf.evaluator.generation`
(explanation).

GAUC needs users with several ctr test samples of both labels; with leave-one-out every user has one, so it is
left out of the result and logged as "n/a". Where some users qualify, RecBole's GAUC gets ``rec.meanrank`` of
exactly those users (RecBole's GAUC would drop the others itself, with a warning).
"""

import collections
import dataclasses
import logging
import time

import torch
from recbole.evaluator import Evaluator
from recbole.evaluator.collector import Collector, DataStruct

import recbole_ckf.evaluator  # noqa: F401  (registers the text metrics into RecBole's registry)
from recbole_ckf.evaluator.candidate_scoring import ranking_scores, score_candidates
from recbole_ckf.evaluator.generation import DEFAULT_EXPLANATION_TOKENS, generate_explanations
from recbole_ckf.evaluator.groups import DEFAULT_COLD_THRESHOLD, evaluate_by_group, split_by_activity
from recbole_ckf.evaluator.inference import config_value, predict_points
from recbole_ckf.evaluator.text_metrics import PRED_KEY, REF_KEY

logger = logging.getLogger(__name__)

TASKS = ("ctr", "sequential", "rating", "explanation")
#: RecBole metric names per task (``metrics:`` of the per-task evaluator config)
TASK_METRICS = {
    "ctr": ["AUC", "LogLoss"],
    "rating": ["RMSE", "MAE"],
    "sequential": ["Hit", "NDCG", "MRR"],
    "explanation": ["BLEU-1", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Distinct-1", "Distinct-2"],
}
LABEL_FIELD = "label"


# ---------------------------------------------------------------------------------------------------------
# RecBole evaluator plumbing

class MetricConfig(dict):
    """A plain dict that RecBole's Evaluator, Collector and metric classes accept as their config.

    They only index it (``config["metrics"]``, ``config["topk"]``, ``config["metric_decimal_place"]``, ...);
    keys not set here are looked up in ``base`` (the run's Config, or a dict), and are ``None`` when absent,
    as with RecBole's Config.
    """

    def __init__(self, base=None, **values):
        super().__init__(values)
        self.base = base

    def __missing__(self, key):
        if self.base is None:
            return None
        try:
            return self.base[key]
        except KeyError:
            return None


def metric_config(config, metrics, topk=None):
    """The evaluator config of one task: ``metrics``, ``topk``, the run's ``metric_decimal_place``."""
    decimals = config_value(config, "metric_decimal_place", 4)
    return MetricConfig(
        config, metrics=list(metrics), topk=list(topk or [1]), metric_decimal_place=decimals,
        eval_args={"mode": "uni"}, device=torch.device("cpu"), LABEL_FIELD=LABEL_FIELD)


def _collect(mconfig, scores, labels=None, positive_u=None, positive_i=None):
    """RecBole's Collector turns scores into the DataStruct its metrics read (as in RecBole's trainer)."""
    collector = Collector(mconfig)
    if scores.dim() == 1:  # value metrics squeeze(-1) what they read: [N, 1] keeps a one-sample group 1-D
        scores, labels = scores.unsqueeze(-1), (labels.unsqueeze(-1) if labels is not None else None)
    interaction = {LABEL_FIELD: labels if labels is not None else torch.zeros(scores.shape[0])}
    if positive_u is None:
        positive_u = positive_i = torch.zeros(0, dtype=torch.long)
    collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
    return collector.get_data_struct()


@dataclasses.dataclass
class _Part:
    """One evaluator call: its config, the collected data (one row per entry of ``users``), kept keys."""
    mconfig: MetricConfig
    data: DataStruct
    users: list
    keep: tuple = None
    min_rows: int = 1  # RecBole's LogLoss cannot take a single sample (np.float64 turns it into a scalar)


def _ctr_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    scores = predict_points(model, encoder, samples, slotted, batch_size, autocast, show_progress)
    labels = torch.tensor([s.label for s in samples], dtype=torch.float)
    users = [s.user for s in samples]
    mconfig = metric_config(config, TASK_METRICS["ctr"])
    parts = [_Part(mconfig, _collect(mconfig, scores, labels), users, min_rows=2)]
    # GAUC: users with several test samples of both labels (RecBole's rec.meanrank, -inf padded rows)
    by_user = collections.OrderedDict()
    for k, s in enumerate(samples):
        by_user.setdefault(s.user, []).append(k)
    eligible = [u for u, ks in by_user.items() if len({labels[k].item() for k in ks}) == 2]
    if eligible:
        width = max(len(by_user[u]) for u in eligible) + 1  # >= one -inf column: RecBole reads the length there
        matrix = torch.full((len(eligible), width), float("-inf"))
        pos_u, pos_i = [], []
        for r, u in enumerate(eligible):
            for j, k in enumerate(by_user[u]):
                matrix[r, j] = scores[k]
                if labels[k] > 0.5:
                    pos_u.append(r), pos_i.append(j)
        gconfig = metric_config(config, ["GAUC"])
        parts.append(_Part(gconfig, _collect(gconfig, matrix, positive_u=torch.tensor(pos_u),
                                             positive_i=torch.tensor(pos_i)), eligible))
    else:
        logger.info("ctr: gauc n/a (no user has several test samples with both labels; leave-one-out gives one)")
    return parts


def _rating_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    scores = predict_points(model, encoder, samples, slotted, batch_size, autocast, show_progress)
    labels = torch.tensor([s.label for s in samples], dtype=torch.float)
    mconfig = metric_config(config, TASK_METRICS["rating"])
    return [_Part(mconfig, _collect(mconfig, scores, labels), [s.user for s in samples], min_rows=2)]


def _sequential_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    reduction = config_value(config, "sequential_score", "mean")
    scores = score_candidates(model, encoder, samples, slotted, batch_size, reduction, autocast, show_progress)
    width = max(len(s.candidates) for s in samples)
    topk = sorted({1, 3, width})
    mconfig = metric_config(config, TASK_METRICS["sequential"], topk)
    matrix = ranking_scores(scores, width)
    positive_u = torch.arange(len(samples))
    positive_i = torch.tensor([int(s.label) for s in samples])
    keep = ("hit@1", "hit@3", "ndcg@3", f"mrr@{width}")
    return [_Part(mconfig, _collect(mconfig, matrix, positive_u=positive_u, positive_i=positive_i),
                  [s.user for s in samples], keep)]


def _explanation_parts(model, encoder, samples, config, slotted, batch_size, autocast, show_progress):
    max_tokens = config_value(config, "explanation_max_tokens", DEFAULT_EXPLANATION_TOKENS)
    preds = generate_explanations(model, encoder, samples, slotted, batch_size, max_tokens, autocast, show_progress)
    data = DataStruct()
    data.set(PRED_KEY, preds)
    data.set(REF_KEY, [s.answer for s in samples])
    return [_Part(metric_config(config, TASK_METRICS["explanation"]), data, [s.user for s in samples])]


_PARTS = {"ctr": _ctr_parts, "rating": _rating_parts, "sequential": _sequential_parts,
          "explanation": _explanation_parts}


def evaluate_tasks(model, samples, encoder, config, train_counts, slotted=True, show_progress=False,
                   batch_size=None, autocast=False):
    """Evaluate CKF on the test (or validation) samples of each task, deterministically.

    Args:
        model: a :class:`~recbole_ckf.model.ckf.CKF` with its CF tables set.
        samples: ``{task: [Sample, ...]}`` (``TaskBuilder.eval_samples``); tasks without samples are skipped.
        encoder: the :class:`~recbole_ckf.data.collate.Encoder` of the model's tokenizer and renderer.
        config: the run's Config (or a dict): ``cold_user_threshold``, ``eval_batch_size``,
            ``explanation_max_tokens`` (default 24), ``metric_decimal_place``, ``sequential_score``
            (``mean``, the default, or ``sum``).
        train_counts: training interactions per user id (mapping or array), for the warm / cold split.
        slotted: prompts with the h_u / h_v slots (True) or text-only prompts.
        batch_size: samples per forward pass (default ``eval_batch_size``).
        autocast: run under bf16 autocast. Default off: the caller's precision (float32, exact, unless the
            caller is inside an autocast context, e.g. the trainer's ``accelerator.autocast()``).

    Returns:
        an OrderedDict ``{"task:metric": value}`` for all users, then ``"task:metric[warm]"`` and
        ``"task:metric[cold]"`` (cold: fewer than ``cold_user_threshold`` training interactions). A group without
        samples has no keys; GAUC has keys only where some user qualifies (see the module docstring).
    """
    batch_size = int(batch_size or config_value(config, "eval_batch_size", 16))
    threshold = config_value(config, "cold_user_threshold", DEFAULT_COLD_THRESHOLD)
    result = collections.OrderedDict()
    for task, task_samples in samples.items():
        if task not in _PARTS:
            raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        if not task_samples:
            continue
        if task not in model.tasks:
            raise ValueError(f"the model was not built for task {task!r} (its tasks: {model.tasks})")
        start = time.perf_counter()
        parts = _PARTS[task](model, encoder, task_samples, config, slotted, batch_size, autocast, show_progress)
        grouped = collections.OrderedDict((g, collections.OrderedDict()) for g in ("all", "warm", "cold"))
        for part in parts:
            if len(part.users) < part.min_rows:
                logger.warning("%s: %s need at least %d samples, got %d: left out", task,
                               ", ".join(part.mconfig["metrics"]), part.min_rows, len(part.users))
                continue
            evaluator = Evaluator(part.mconfig)
            masks = split_by_activity(part.users, train_counts, threshold)
            for group, mask in masks.items():
                if 0 < mask.sum() < part.min_rows:
                    logger.info("%s: only %d %s sample(s): %s left out for them", task, mask.sum(), group,
                                ", ".join(part.mconfig["metrics"]))
                    mask[:] = False
            for group, res in evaluate_by_group(evaluator, part.data, masks).items():
                if res is None:
                    continue
                for key, value in res.items():
                    if part.keep is None or key in part.keep:
                        grouped[group][key] = value
        for group, values in grouped.items():
            suffix = "" if group == "all" else f"[{group}]"
            if not values:
                logger.info("%s: no %s users among the %d samples", task, group, len(task_samples))
            for key, value in values.items():
                result[f"{task}:{key}{suffix}"] = value
        logger.info("%s: %d samples evaluated in %.1f s", task, len(task_samples), time.perf_counter() - start)
    return result


def format_results(result):
    """A compact table of :func:`evaluate_tasks` output: one line per task and metric, columns all/warm/cold."""
    rows = collections.OrderedDict()
    for key, value in result.items():
        name, group = key, "all"
        if key.endswith("]") and "[" in key:
            name, group = key[:-1].split("[", 1)
        rows.setdefault(name, {})[group] = value
    width = max([len(n) for n in rows] + [len("task:metric")])

    def cell(v):
        if v is None:
            return f"{'n/a':>9}"
        try:
            return f"{float(v):>9.4f}"
        except (TypeError, ValueError):
            return f"{str(v):>9}"

    lines = [f"{'task:metric':<{width}} {'all':>9} {'warm':>9} {'cold':>9}"]
    for name, groups in rows.items():
        lines.append(f"{name:<{width}} " + " ".join(cell(groups.get(g)) for g in ("all", "warm", "cold")))
    return "\n".join(lines)
