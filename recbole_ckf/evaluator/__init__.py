"""Evaluation: text metrics registered into RecBole's evaluator, warm/cold user groups.

Importing this package registers the text metrics (``bleu-1``, ``bleu-4``, ``rouge-1``, ``rouge-2``,
``rouge-l``, ``distinct-1``, ``distinct-2``) into RecBole's metric registry, so that RecBole's ``Config``
accepts them in ``metrics:`` and RecBole's ``Evaluator`` computes them.
"""

import recbole_ckf  # noqa: F401  (compatibility fixes before anything from recbole)
from recbole_ckf.evaluator.groups import evaluate_by_group, split_by_activity
from recbole_ckf.evaluator.register import register_text_metrics
from recbole_ckf.evaluator.text_metrics import (
    BLEU1,
    BLEU4,
    ROUGE1,
    ROUGE2,
    ROUGEL,
    TEXT_METRIC_CLASSES,
    Distinct1,
    Distinct2,
    distinct_n,
)

register_text_metrics()

__all__ = [
    "BLEU1",
    "BLEU4",
    "ROUGE1",
    "ROUGE2",
    "ROUGEL",
    "Distinct1",
    "Distinct2",
    "TEXT_METRIC_CLASSES",
    "distinct_n",
    "register_text_metrics",
    "split_by_activity",
    "evaluate_by_group",
]
