"""Text metrics of the explanation task, as RecBole metric classes.

Every metric reads two lists of strings from RecBole's :class:`~recbole.evaluator.collector.DataStruct`:

* ``text.pred``: the generated explanation of each test sample (greedy decoding), one string per sample;
* ``text.ref``: the reference explanation (the review's headline) of the same sample, in the same order.

An empty generated text is a prediction like any other (a bad one): it is scored, never dropped. Both lists
must hold ``str`` only and be equally long; anything else raises, so that a lost sample cannot silently change
a score.

Names. RecBole lower-cases every entry of ``metrics:`` and looks it up in
``recbole.evaluator.register.metrics_dict``; the result dict is keyed by the name a metric returns, and the
trainer picks ``valid_metric`` (lower-cased) out of that dict. So each metric here is registered under one
lower-case name and returns its result under that very name:

====================  ==========================  ==========
config (any case)     registry / result-dict key  scale
====================  ==========================  ==========
``BLEU-1``            ``bleu-1``                  0-100
``BLEU-4``            ``bleu-4``                  0-100
``ROUGE-1``           ``rouge-1``                 0-100
``ROUGE-2``           ``rouge-2``                 0-100
``ROUGE-L``           ``rouge-l``                 0-100
``Distinct-1``        ``distinct-1``              0-1
``Distinct-2``        ``distinct-2``              0-1
====================  ==========================  ==========

The hyphenated names survive RecBole's parsing: ``Config`` runs ``eval`` on string values from the command
line and from ``config_dict``, and ``eval("bleu-4")`` raises ``NameError``, upon which the string is kept
as is; ``valid_metric`` is split at ``@`` only (``valid_metric: bleu-4`` works); ``dict2str`` prints keys
verbatim. BLEU and ROUGE are on sacrebleu's 0-100 scale (the scale explanation-generation papers report);
distinct-n is the ratio it is defined as. All values are rounded to ``metric_decimal_place`` like RecBole's
own metrics.

All text metrics are ``EvaluatorType.VALUE`` metrics: RecBole's ``Config`` refuses to mix them with ranking
metrics (NDCG, Hit, ...) in one ``metrics:`` list, and refuses ``full`` evaluation mode with them.

Case. ``rouge-score``'s tokenizer always lower-cases. For BLEU and distinct-n, the optional config key
``text_metric_lowercase`` (default ``True``) lower-cases too, so that all text metrics agree on what a word
is and a generated "great strings" matches a headline "Great Strings".
"""

import logging

from sacrebleu.metrics import BLEU as _SacreBLEU
from sacrebleu.metrics.helpers import extract_all_word_ngrams
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from rouge_score import rouge_scorer

from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

# rouge-score logs "Using default tokenizer." through absl at INFO on every scorer it builds
logging.getLogger("absl").setLevel(logging.WARNING)

PRED_KEY = "text.pred"
REF_KEY = "text.ref"

#: sacrebleu tokenizer used by BLEU and distinct-n (the WMT standard, mteval-v13a).
BLEU_TOKENIZER = "13a"
#: sacrebleu smoothing used by BLEU (sacrebleu's default).
BLEU_SMOOTHING = "exp"


def _lowercase_option(config):
    value = config["text_metric_lowercase"]
    return True if value is None else bool(value)


class _TextMetric(AbstractMetric):
    """Base class: reads and checks ``text.pred`` / ``text.ref``, rounds and names the result."""

    metric_type = EvaluatorType.VALUE
    metric_need = [PRED_KEY, REF_KEY]
    smaller = False
    #: registry and result-dict key (lower case)
    name = None

    def __init__(self, config):
        super().__init__(config)
        self.lowercase = _lowercase_option(config)

    @staticmethod
    def used_info(dataobject):
        """Return ``(preds, refs)`` as two equally long lists of strings."""
        preds = list(dataobject.get(PRED_KEY))
        refs = list(dataobject.get(REF_KEY))
        if len(preds) != len(refs):
            raise ValueError(
                f"{PRED_KEY} holds {len(preds)} texts but {REF_KEY} holds {len(refs)}: every sample needs both"
            )
        if not preds:
            raise ValueError(f"{PRED_KEY} is empty: there is nothing to score")
        for key, texts in ((PRED_KEY, preds), (REF_KEY, refs)):
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(
                        f"{key}[{i}] is {type(text).__name__}, not str (an empty prediction must be '')"
                    )
        return preds, refs

    def calculate_metric(self, dataobject):
        preds, refs = self.used_info(dataobject)
        return {self.name: round(float(self.metric_info(preds, refs)), self.decimal_place)}

    def metric_info(self, preds, refs):
        raise NotImplementedError


class _BLEU(_TextMetric):
    """Corpus BLEU from ``sacrebleu.metrics.BLEU`` with ``max_ngram_order`` = :attr:`order`, on 0-100.

    Tokenizer ``13a`` (mteval-v13a, sacrebleu's default and the WMT standard: splits punctuation from words,
    so "good!" and "good" share the unigram "good"); smoothing ``exp`` (sacrebleu's default; with corpus BLEU
    it only matters when a whole n-gram order has no match anywhere in the test set, and then keeps the score
    from collapsing to exactly 0), no ``effective_order`` (that is meant for sentence BLEU). These are
    sacrebleu's standard settings, so the score is reproducible from :meth:`signature`. Lower-cased when
    ``text_metric_lowercase`` is true (the default). One reference per sample.
    """

    order = None

    def _bleu(self):
        return _SacreBLEU(
            lowercase=self.lowercase,
            tokenize=BLEU_TOKENIZER,
            smooth_method=BLEU_SMOOTHING,
            max_ngram_order=self.order,
        )

    def signature(self):
        """sacrebleu's signature of the exact BLEU computed (for reports), e.g. ``nrefs:1|case:lc|eff:no|...``."""
        bleu = self._bleu()
        bleu.corpus_score([""], [[""]])  # sacrebleu knows the number of references only after scoring
        return str(bleu.get_signature())

    def metric_info(self, preds, refs):
        return self._bleu().corpus_score(preds, [refs]).score


class BLEU1(_BLEU):
    __doc__ = _BLEU.__doc__
    name = "bleu-1"
    order = 1


class BLEU4(_BLEU):
    __doc__ = _BLEU.__doc__
    name = "bleu-4"
    order = 4


class _ROUGE(_TextMetric):
    """ROUGE F-measure from ``rouge_score.rouge_scorer.RougeScorer``, averaged over samples, on 0-100.

    ``use_stemmer=True`` (Porter stemming, as in the original ROUGE-1.5.5 ``-m`` option that
    explanation-generation papers use: "strings" matches "string"). rouge-score's own default tokenizer is
    kept, so numbers are comparable with other rouge-score users; it lower-cases and keeps only ``[a-z0-9]``
    runs, so non-ASCII letters split words (fine for the English data sets shipped here). ROUGE-L is the
    sentence-level ``rougeL`` (headlines are single sentences). An empty prediction scores 0 and is averaged in.
    """

    rouge_type = None

    def metric_info(self, preds, refs):
        scorer = rouge_scorer.RougeScorer([self.rouge_type], use_stemmer=True)
        total = 0.0
        for pred, ref in zip(preds, refs):
            total += scorer.score(ref, pred)[self.rouge_type].fmeasure
        return 100.0 * total / len(preds)


class ROUGE1(_ROUGE):
    __doc__ = _ROUGE.__doc__
    name = "rouge-1"
    rouge_type = "rouge1"


class ROUGE2(_ROUGE):
    __doc__ = _ROUGE.__doc__
    name = "rouge-2"
    rouge_type = "rouge2"


class ROUGEL(_ROUGE):
    __doc__ = _ROUGE.__doc__
    name = "rouge-l"
    rouge_type = "rougeL"


def distinct_n(texts, n, lowercase=True):
    """Distinct-n of a corpus: unique n-grams / total n-grams over all ``texts`` (0.0 if there are none).

    Words come from sacrebleu's 13a tokenizer (the one BLEU uses) and n-grams from sacrebleu's
    ``extract_all_word_ngrams``. An empty text has no n-grams, so it adds nothing to either count.
    """
    tokenize = Tokenizer13a()
    seen = set()
    total = 0
    for text in texts:
        tokenized = tokenize(text.lower() if lowercase else text)
        counts, _ = extract_all_word_ngrams(tokenized, n, n)
        seen.update(counts)
        total += sum(counts.values())
    return len(seen) / total if total else 0.0


class _Distinct(_TextMetric):
    """Distinct-n over all generated texts (``text.pred``): unique n-grams / total n-grams, in [0, 1].

    Tokenized with sacrebleu's 13a tokenizer (lower-cased when ``text_metric_lowercase`` is true), n-grams
    from sacrebleu's ``extract_all_word_ngrams``; see :func:`distinct_n`. ``text.ref`` is only checked.
    """

    n = None

    def metric_info(self, preds, refs):
        return distinct_n(preds, self.n, lowercase=self.lowercase)


class Distinct1(_Distinct):
    __doc__ = _Distinct.__doc__
    name = "distinct-1"
    n = 1


class Distinct2(_Distinct):
    __doc__ = _Distinct.__doc__
    name = "distinct-2"
    n = 2


TEXT_METRIC_CLASSES = (BLEU1, BLEU4, ROUGE1, ROUGE2, ROUGEL, Distinct1, Distinct2)
