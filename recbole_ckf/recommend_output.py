"""Output of :mod:`recbole_ckf.recommend`: the columns, the markdown table, the ``.json`` / ``.md`` files (written
atomically) and what ``run_recbole_ckf.py --recommend`` runs (:func:`run_cli`)."""

import os
import sys
import time

from recbole_ckf.errors import CKFError

#: output columns: (row key, header)
COLUMNS = (("user", "user"), ("rank", "rank"), ("item", "item"), ("item_text", "item text"),
           ("backbone_score", "backbone score"), ("ckf_score", "CKF score"), ("fused_score", "fused score"),
           ("rating", "rating"), ("p_like", "P(like)"), ("explanation", "explanation"))
OUTPUT_SUFFIXES = (".json", ".md")


def check_output(path):
    if path is None:
        return None
    if os.path.splitext(str(path))[1].lower() not in OUTPUT_SUFFIXES:
        raise CKFError(f"output: '{path}' should end with .json or .md")
    return str(path)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _columns(rows):
    """The columns to show: ``fused score`` only where some row has one."""
    return [(k, h) for k, h in COLUMNS if k != "fused_score" or any(r.get(k) is not None for r in rows)]


def format_table(rows):
    """A markdown table of :func:`~recbole_ckf.recommend.recommend` rows (what the CLI prints)."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def write_recommendations(rows, path, settings=None):
    """Write ``rows`` atomically to ``path``: ``.json`` (``{"settings": ..., "rows": [...]}``) or ``.md``
    (a heading with the settings, then :func:`format_table`)."""
    from recbole_ckf.utils import atomic_write_json, atomic_write_text

    check_output(path)
    settings = dict(settings or {})
    try:
        if str(path).lower().endswith(".json"):
            atomic_write_json(path, {"settings": settings, "rows": rows})
        else:
            head = "# CKF recommendations\n\n" + "".join(f"* {k}: {v}\n" for k, v in settings.items())
            atomic_write_text(path, head + "\n" + format_table(rows))
    except OSError as err:
        raise CKFError(f"output: cannot write '{path}': {err.strerror or err}") from None
    return path


def print_recommendations(rows, output=None, settings=None, file=None):
    """Print the table; with ``output``, also write it (see :func:`write_recommendations`)."""
    print(format_table(rows), end="", file=file or sys.stdout)
    if output:
        write_recommendations(rows, output, settings)
        print(f"recommendations written to {output}", file=file or sys.stdout)


def run_cli(users, topk=10, output=None, config_file_list=None, cmd_args=None, model=None, dataset=None):
    """What ``run_recbole_ckf.py --recommend`` runs: ``cmd_args`` holds ``checkpoint`` and config overrides;
    ``model`` / ``dataset``, if given, must be CKF and the checkpoint's data set."""
    from recbole_ckf.recommend import Recommender, _int, checkpoint_folder, parse_users

    cmd_args = dict(cmd_args or {})
    if model not in (None, "CKF"):
        raise CKFError(f"recommend: only CKF checkpoints recommend (got --model={model})")
    checkpoint = cmd_args.pop("checkpoint", None)
    if not checkpoint:
        raise CKFError("recommend needs --checkpoint=DIR (a CKF run folder saved/CKF-<dataset>-<time>, or its "
                       "'best' checkpoint folder)")
    for key in ("model", "eval_only", "resume"):
        cmd_args.pop(key, None)
    users = parse_users(users)
    topk = _int(topk, "topk", 1)
    check_output(output)
    if dataset is not None:
        from recbole_ckf.trainer.checkpoint import read_meta

        trained_on = read_meta(checkpoint_folder(checkpoint)).get("dataset")
        if dataset != trained_on:
            raise CKFError(f"checkpoint '{checkpoint}' was trained on data set '{trained_on}', not '{dataset}' "
                           f"(--dataset can be left out: the checkpoint names its data set)")
    start = time.perf_counter()
    rec = Recommender(checkpoint, config_file_list, cmd_args=cmd_args, users=users)
    loaded = time.perf_counter()
    rows = rec.recommend(users, topk)
    print_recommendations(rows, output, rec.last_settings)
    print(f"recommended for {len(users)} user(s) in {time.perf_counter() - loaded:.1f} s after loading the model "
          f"and data in {loaded - start:.1f} s", file=sys.stderr)
    return rows
