"""Which text fields a data set offers, and what that means for CKF's tasks.

The dataset yaml names them under ``text_fields`` (``title``, ``year``, ``genres`` in the item file; ``review``
and ``summary`` in the interaction file); ``~`` or a column the atomic files lack means "not available".
"""

import os

from recbole_ckf.data.atomic import read_header
from recbole_ckf.errors import CKFError

TASKS = ("ctr", "sequential", "rating", "explanation")
ITEM_FIELDS = ("title", "year", "genres")
INTER_FIELDS = ("review", "summary")


def _headers(config):
    folder, name = config["data_path"], config["dataset"]
    sep = config["field_separator"] or "\t"
    found = {}
    for suffix in ("inter", "item"):
        path = os.path.join(folder, f"{name}.{suffix}")
        if os.path.isfile(path):
            found[suffix] = dict(read_header(path, sep))
    return found


def resolve_text_fields(config):
    """``{role: (suffix, column)}`` of the text fields that exist, e.g. ``{"summary": ("inter", "summary")}``."""
    wanted = config["text_fields"] or {}
    headers = _headers(config)
    resolved = {}
    for role, column in wanted.items():
        if not column:
            continue
        suffix = "item" if role in ITEM_FIELDS else "inter"
        if column in headers.get(suffix, {}):
            resolved[role] = (suffix, column)
    return resolved


def add_text_columns(config):
    """Extend ``load_col`` with the text columns CKF reads (baselines never load them)."""
    load_col = dict(config["load_col"] or {})
    for suffix, column in resolve_text_fields(config).values():
        columns = list(load_col.get(suffix, []))
        if suffix == "item" and config["ITEM_ID_FIELD"] not in columns:
            columns.insert(0, config["ITEM_ID_FIELD"])
        if column not in columns:
            columns.append(column)
        load_col[suffix] = columns
    config["load_col"] = load_col


def available_tasks(config):
    """``(tasks, unavailable)``: the tasks to run and ``{task: reason}`` for those the data cannot support.

    A task the user asked for by name (``tasks: [...]``) that the data cannot support is an error.
    """
    asked = config["tasks"]
    if asked is None:
        asked, explicit = list(TASKS), False
    else:
        asked, explicit = ([asked] if isinstance(asked, str) else list(asked)), True
    unknown = [t for t in asked if t not in TASKS]
    if unknown:
        raise CKFError(f"tasks: unknown task '{unknown[0]}' (expected some of {', '.join(TASKS)})")
    fields = resolve_text_fields(config)
    reasons = {}
    if "summary" not in fields:
        reasons["explanation"] = "the data set has no review headline field (text_fields.summary)"
    if not config["RATING_FIELD"]:
        reasons["ctr"] = reasons["rating"] = "the data set has no rating field (RATING_FIELD)"
    for task in asked:
        if task in reasons and explicit:
            raise CKFError(f"task '{task}' was asked for but is unavailable: {reasons[task]}")
    tasks = [t for t in asked if t not in reasons]
    if not tasks:
        raise CKFError(f"no task can run on data set '{config['dataset']}': {reasons}")
    return tasks, {t: r for t, r in reasons.items() if t in asked}
