"""Put the text metrics into RecBole's metric registry.

RecBole builds four module-level objects in ``recbole.evaluator.register`` once, at import time, from the
classes of ``recbole.evaluator.metrics``:

* ``metrics_dict`` (name -> class): used by ``Evaluator`` (``recbole/evaluator/evaluator.py`` imported it
  by value: ``from recbole.evaluator.register import metrics_dict``);
* ``metric_information`` (name -> ``metric_need``): used by ``Register``, which tells the ``Collector``
  what to gather;
* ``metric_types`` (name -> ``EvaluatorType``) and ``smaller_metrics`` (names where smaller is better):
  used by ``Config`` (``recbole/config/configurator.py`` imported both by value, through
  ``from recbole.evaluator import metric_types, smaller_metrics``), which rejects unknown metric names and
  sets ``valid_metric_bigger``.

Every importer holds a reference to the same dict/list object, so :func:`register_text_metrics` changes
those objects in place (``dict[key] = ...``, ``list.append``) and never rebinds a name: every module sees
the new metrics, whenever it was imported. Nothing else in RecBole 1.2.1 reads these registries.
"""

from recbole_ckf.errors import CKFError
from recbole_ckf.evaluator.text_metrics import TEXT_METRIC_CLASSES


def _same_class(a, b):
    # a reloaded module makes new class objects with the same qualified name
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_text_metrics():
    """Add the text metrics to RecBole's registries, in place. Idempotent; returns the names registered.

    Raises :class:`CKFError` if a different metric already uses one of the names.
    """
    from recbole.evaluator import register as recbole_register

    metrics_dict = recbole_register.metrics_dict
    for cls in TEXT_METRIC_CLASSES:
        existing = metrics_dict.get(cls.name)
        if existing is not None and not _same_class(existing, cls):
            raise CKFError(
                f"cannot register text metric '{cls.name}': RecBole's registry already maps it to "
                f"{existing.__module__}.{existing.__qualname__}"
            )
    for cls in TEXT_METRIC_CLASSES:
        metrics_dict[cls.name] = cls
        recbole_register.metric_information[cls.name] = cls.metric_need
        recbole_register.metric_types[cls.name] = cls.metric_type
        smaller = recbole_register.smaller_metrics
        if cls.smaller and cls.name not in smaller:
            smaller.append(cls.name)
        elif not cls.smaller and cls.name in smaller:
            smaller.remove(cls.name)
    return [cls.name for cls in TEXT_METRIC_CLASSES]
