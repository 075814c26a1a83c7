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
ctr            P(Yes) against P(No) at the answer position (Platt-calibrated)      AUC, LogLoss (+ GAUC)
rating         expectation over the five digit tokens (linear map)                 RMSE, MAE (1-5 scale)
sequential     pointwise: logit(Yes) - logit(No) after each candidate's block of   Hit@1, Hit@3, NDCG@3, MRR
               one packed row per user; ``label``: the logits of the candidate
               letters; ``title``: likelihood of each candidate's text
explanation    greedy decoding (KV cache), new tokens only, stop at eos/newline     BLEU-1/4, ROUGE-1/2/L,
                                                                                   Distinct-1/2
=============  ==================================================================  ===========================

Two stages: :func:`score_tasks` runs the model once over the samples (the expensive part) and keeps the raw
scores (:class:`TaskScores`); :func:`task_metrics` turns scores into metrics, optionally with the calibration
and the backbone fusion fitted on validation scores (:func:`fit_adjustments`). Result keys: ``task:metric``
(pure CKF, calibrated where a calibration is given), ``task:metric[warm]`` / ``[cold]`` (user groups),
``[uncalibrated]`` (ctr/rating before calibration), ``[backbone]`` (the frozen backbone's own ranking of the
same lists) and ``[fusion]`` (``score_fusion: backbone``, see :mod:`~recbole_ckf.evaluator.fusion`).

The scorers live beside this module, one per task: :mod:`~recbole_ckf.evaluator.pointwise` (ctr and rating),
:mod:`~recbole_ckf.evaluator.sequential` (pointwise, listwise and by title), :mod:`~recbole_ckf.evaluator.explanation`
(headline generation); they batch and collect, the model scores (:class:`~recbole_ckf.model.ckf.CKF`).

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
from recbole_ckf.evaluator.groups import DEFAULT_COLD_THRESHOLD, evaluate_by_group, split_by_activity
from recbole_ckf.evaluator.calibration import apply_linear, apply_platt, fit_linear, fit_platt
from recbole_ckf.evaluator.fusion import apply_pointwise, blend_lists, fit_list_weight, fit_pointwise
from recbole_ckf.evaluator.common import config_value
from recbole_ckf.evaluator.explanation import DEFAULT_EXPLANATION_TOKENS, generate_explanations
from recbole_ckf.evaluator.pointwise import predict_answer_logits
from recbole_ckf.evaluator.sequential import ranking_scores, score_candidates, score_listwise
from recbole_ckf.evaluator.text_metrics import PRED_KEY, REF_KEY
from recbole_ckf.trainer.runtime import peak_rss_gib, release_memory

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
RATING_RANGE = (1.0, 5.0)


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


@dataclasses.dataclass
class TaskScores:
    """The raw output of one task's scoring pass: one entry per sample."""
    task: str
    users: list
    items: list
    labels: torch.Tensor = None   # ctr 0/1, rating stars, sequential: index of the true candidate
    raw: object = None            # ctr: logit(Yes) - logit(No); rating: E[stars]; sequential: [K] scores per
                                  # sample; explanation: generated texts
    backbone: object = None       # the backbone's e_u . e_v: [N] (ctr, rating) or [K] per sample (sequential)
    refs: list = None             # explanation: the reference headlines
    positives: list = None        # sequential: the indices of the true candidates of each sample (None: labels)

    def true_candidates(self):
        """Sequential: the true candidates' indices per sample (one per sample unless ``positives`` says more)."""
        return self.positives if self.positives is not None else [[int(k)] for k in self.labels.tolist()]


def score_tasks(model, samples, encoder, config, slotted=True, show_progress=False, batch_size=None,
                autocast=False):
    """Run the model over ``{task: [Sample, ...]}``: ``{task: TaskScores}`` (tasks without samples skipped)."""
    batch_size = int(batch_size or config_value(config, "eval_batch_size", 16))
    out = collections.OrderedDict()
    for task, task_samples in samples.items():
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
        if not task_samples:
            continue
        if task not in model.tasks:
            raise ValueError(f"the model was not built for task {task!r} (its tasks: {model.tasks})")
        start = time.perf_counter()
        users, items = [s.user for s in task_samples], [s.item for s in task_samples]
        labels = torch.tensor([s.label for s in task_samples], dtype=torch.float)
        scores = TaskScores(task, users, items, labels)
        args = (model, encoder, task_samples, slotted, batch_size)
        if task in ("ctr", "rating"):
            logits = predict_answer_logits(*args, autocast, show_progress)
            if task == "ctr":
                scores.raw = logits[:, 0] - logits[:, 1]
            else:
                scores.raw = logits.softmax(-1) @ torch.arange(1, 6, dtype=torch.float)
            scores.backbone = model.backbone_scores(users, items)
        elif task == "sequential":
            if "sequential" in model.answer_ids:
                scores.raw = score_listwise(*args, autocast, show_progress)
            else:
                reduction = config_value(config, "sequential_score", "mean")
                scores.raw = score_candidates(*args, reduction, autocast, show_progress)
            scores.backbone = [model.backbone_scores([s.user] * len(s.candidates), s.candidates) for s in task_samples]
            scores.positives = [list(s.positives) if s.positives else [int(s.label)] for s in task_samples]
        else:
            max_tokens = config_value(config, "explanation_max_tokens", DEFAULT_EXPLANATION_TOKENS)
            scores.raw = generate_explanations(*args, max_tokens, autocast, show_progress)
            scores.refs = [s.answer for s in task_samples]
        out[task] = scores
        release_memory()
        logger.info("%s: %d samples scored in %.1f s (peak RSS so far %.2f GiB)", task, len(task_samples),
                    time.perf_counter() - start, peak_rss_gib())
    return out


def fit_adjustments(valid_scores, fusion=False):
    """Calibration (and, with ``fusion``, the backbone blend) fitted on validation :class:`TaskScores`."""
    adjust = {}
    if "ctr" in valid_scores:
        v = valid_scores["ctr"]
        adjust["ctr"] = {"platt": fit_platt(v.raw, v.labels)}
        if fusion:
            adjust["ctr"]["fusion"] = fit_pointwise("ctr", v.raw, v.backbone, v.labels)
    if "rating" in valid_scores:
        v = valid_scores["rating"]
        adjust["rating"] = {"linear": fit_linear(v.raw, v.labels)}
        if fusion:
            calibrated = apply_linear(v.raw, adjust["rating"]["linear"], *RATING_RANGE)
            adjust["rating"]["fusion"] = fit_pointwise("rating", calibrated, v.backbone, v.labels)
    if fusion and "sequential" in valid_scores:
        v = valid_scores["sequential"]
        adjust["sequential"] = {"backbone_weight": fit_list_weight(v.raw, v.backbone, v.true_candidates())}
    return adjust


def _point_part(config, task, scores, labels, users):
    mconfig = metric_config(config, TASK_METRICS[task])
    return _Part(mconfig, _collect(mconfig, scores, labels), users, min_rows=2)


def _gauc_part(config, scores, labels, samples_users):
    """GAUC: users with several test samples of both labels (RecBole's rec.meanrank, -inf padded rows)."""
    by_user = collections.OrderedDict()
    for k, u in enumerate(samples_users):
        by_user.setdefault(u, []).append(k)
    eligible = [u for u, ks in by_user.items() if len({labels[k].item() for k in ks}) == 2]
    if not eligible:
        logger.info("ctr: gauc n/a (no user has several test samples with both labels; leave-one-out gives one)")
        return None
    width = max(len(by_user[u]) for u in eligible) + 1  # >= one -inf column: RecBole reads the length there
    matrix = torch.full((len(eligible), width), float("-inf"))
    pos_u, pos_i = [], []
    for r, u in enumerate(eligible):
        for j, k in enumerate(by_user[u]):
            matrix[r, j] = scores[k]
            if labels[k] > 0.5:
                pos_u.append(r), pos_i.append(j)
    gconfig = metric_config(config, ["GAUC"])
    return _Part(gconfig, _collect(gconfig, matrix, positive_u=torch.tensor(pos_u), positive_i=torch.tensor(pos_i)),
                 eligible)


def _ranking_part(config, scores_list, positives, users):
    """RecBole's ranking metrics of one list per user; ``positives``: the true candidates' indices per list."""
    width = max(len(s) for s in scores_list)
    topk = sorted({1, 3, width})
    mconfig = metric_config(config, TASK_METRICS["sequential"], topk)
    matrix = ranking_scores(scores_list, width)
    positive_u = torch.tensor([b for b, pos in enumerate(positives) for _ in pos], dtype=torch.long)
    positive_i = torch.tensor([k for pos in positives for k in pos], dtype=torch.long)
    keep = ("hit@1", "hit@3", "ndcg@3", f"mrr@{width}")
    return _Part(mconfig, _collect(mconfig, matrix, positive_u=positive_u, positive_i=positive_i), users, keep)


def _ckf_parts(config, s, adjust):
    """The parts of pure CKF (calibrated where ``adjust`` has the task's map) and of its raw scores."""
    a = (adjust or {}).get(s.task, {})
    if s.task == "ctr":
        raw = torch.sigmoid(s.raw.double()).float()
        prob = apply_platt(s.raw, a["platt"]) if "platt" in a else raw
        parts = [_point_part(config, "ctr", prob, s.labels, s.users)]
        gauc = _gauc_part(config, prob, s.labels, s.users)
        return parts + ([gauc] if gauc else []), ([_point_part(config, "ctr", raw, s.labels, s.users)]
                                                  if "platt" in a else [])
    if s.task == "rating":
        pred = apply_linear(s.raw, a["linear"], *RATING_RANGE) if "linear" in a else s.raw
        return [_point_part(config, "rating", pred, s.labels, s.users)], (
            [_point_part(config, "rating", s.raw, s.labels, s.users)] if "linear" in a else [])
    if s.task == "sequential":
        return [_ranking_part(config, s.raw, s.true_candidates(), s.users)], []
    data = DataStruct()
    data.set(PRED_KEY, s.raw)
    data.set(REF_KEY, s.refs)
    return [_Part(metric_config(config, TASK_METRICS["explanation"]), data, s.users)], []


def _fusion_parts(config, s, adjust):
    a = (adjust or {}).get(s.task, {})
    if s.task == "sequential":
        parts = {"backbone": [_ranking_part(config, s.backbone, s.true_candidates(), s.users)]}
        if "backbone_weight" in a:
            fused = blend_lists(s.raw, s.backbone, a["backbone_weight"])
            parts["fusion"] = [_ranking_part(config, fused, s.true_candidates(), s.users)]
        return parts
    if a.get("fusion"):
        ckf = s.raw if s.task == "ctr" else apply_linear(s.raw, a["linear"], *RATING_RANGE)
        fused = apply_pointwise(a["fusion"], ckf, s.backbone, *RATING_RANGE)
        return {"fusion": [_point_part(config, s.task, fused, s.labels, s.users)]}
    return {}


def _run_parts(parts, train_counts, threshold, groups=True):
    """Metrics of each part for all users and (``groups``) warm / cold users."""
    grouped = collections.OrderedDict((g, collections.OrderedDict()) for g in ("all", "warm", "cold"))
    for part in parts:
        if len(part.users) < part.min_rows:
            logger.warning("%s need at least %d samples, got %d: left out", ", ".join(part.mconfig["metrics"]),
                           part.min_rows, len(part.users))
            continue
        evaluator = Evaluator(part.mconfig)
        masks = split_by_activity(part.users, train_counts, threshold) if groups else {}
        for group, mask in masks.items():
            if 0 < mask.sum() < part.min_rows:
                logger.info("only %d %s sample(s): %s left out for them", mask.sum(), group,
                            ", ".join(part.mconfig["metrics"]))
                mask[:] = False
        for group, res in evaluate_by_group(evaluator, part.data, masks).items():
            if res is None:
                continue
            for key, value in res.items():
                if part.keep is None or key in part.keep:
                    grouped[group][key] = value
    return grouped


def task_metrics(scores, config, train_counts, adjust=None):
    """RecBole-evaluator metrics of :func:`score_tasks` output (see the module docstring for the keys)."""
    threshold = config_value(config, "cold_user_threshold", DEFAULT_COLD_THRESHOLD)
    result = collections.OrderedDict()
    for task, s in scores.items():
        ckf, raw = _ckf_parts(config, s, adjust)
        for group, values in _run_parts(ckf, train_counts, threshold).items():
            suffix = "" if group == "all" else f"[{group}]"
            if not values:
                logger.info("%s: no %s users among the %d samples", task, group, len(s.users))
            for key, value in values.items():
                result[f"{task}:{key}{suffix}"] = value
        extra = {"uncalibrated": raw, **_fusion_parts(config, s, adjust)} if s.backbone is not None else {"uncalibrated": raw}
        for row, parts in extra.items():
            for key, value in _run_parts(parts, train_counts, threshold, groups=False)["all"].items():
                result[f"{task}:{key}[{row}]"] = value
    return result


def evaluate_tasks(model, samples, encoder, config, train_counts, slotted=True, show_progress=False,
                   batch_size=None, autocast=False, adjust=None):
    """Evaluate CKF on the test (or validation) samples of each task, deterministically.

    Args:
        model: a :class:`~recbole_ckf.model.ckf.CKF` with its CF tables set.
        samples: ``{task: [Sample, ...]}`` (``TaskBuilder.eval_samples``); tasks without samples are skipped.
        encoder: the :class:`~recbole_ckf.data.collate.Encoder` of the model's tokenizer and renderer.
        config: the run's Config (or a dict): ``cold_user_threshold``, ``eval_batch_size``,
            ``explanation_max_tokens`` (default 24), ``metric_decimal_place``, ``sequential_score``.
        train_counts: training interactions per user id (mapping or array), for the warm / cold split.
        slotted: prompts with the h_u / h_v slots (True) or text-only prompts.
        batch_size: samples per forward pass (default ``eval_batch_size``).
        autocast: run under bf16 autocast (default off: the model's own precision).
        adjust: calibration / fusion from :func:`fit_adjustments` (default none: raw scores).

    Returns:
        an OrderedDict ``{"task:metric": value}``, see the module docstring.
    """
    scores = score_tasks(model, samples, encoder, config, slotted, show_progress, batch_size, autocast)
    return task_metrics(scores, config, train_counts, adjust)


def format_results(result):
    """A compact table of :func:`evaluate_tasks` output: one line per task and metric, one column per group
    (all, warm, cold, then uncalibrated / backbone / fusion where present)."""
    rows, groups = collections.OrderedDict(), ["all", "warm", "cold"]
    for key, value in result.items():
        name, group = key, "all"
        if key.endswith("]") and "[" in key:
            name, group = key[:-1].split("[", 1)
        if group not in groups:
            groups.append(group)
        rows.setdefault(name, {})[group] = value
    width = max([len(n) for n in rows] + [len("task:metric")])
    widths = [max(9, len(g)) for g in groups]

    def cell(v, w):
        if v is None:
            return f"{'-':>{w}}"
        try:
            return f"{float(v):>{w}.4f}"
        except (TypeError, ValueError):
            return f"{str(v):>{w}}"

    lines = [f"{'task:metric':<{width}} " + " ".join(f"{g:>{w}}" for g, w in zip(groups, widths))]
    for name, values in rows.items():
        lines.append(f"{name:<{width}} " + " ".join(cell(values.get(g), w) for g, w in zip(groups, widths)))
    return "\n".join(lines)
