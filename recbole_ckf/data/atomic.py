"""Checks of RecBole atomic files before RecBole reads them.

RecBole's loader fails deep inside pandas (or silently mis-types a column) on a malformed file; these checks
name the file, the column and what was expected in one line instead.
"""

import csv
import os

import pandas as pd

from recbole_ckf.errors import CKFError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def read_header(path, sep="\t"):
    """The ``[(name, type), ...]`` columns of an atomic file's header, checked."""
    with open(path, "r", encoding="utf-8") as f:
        line = f.readline().rstrip("\r\n")
    if not line:
        raise CKFError(f"atomic file '{path}' is empty: expected a header line of 'name:type' columns")
    columns = []
    for column in line.split(sep):
        name, _, ftype = column.partition(":")
        if not name or ftype not in FIELD_TYPES:
            raise CKFError(
                f"atomic file '{path}': header column '{column}' should be 'name:type' with type one of "
                f"{', '.join(FIELD_TYPES)} (columns are separated by a tab)"
            )
        columns.append((name, ftype))
    return columns


def _check_split_fields(config, path, columns, wanted):
    """The fields RecBole's split and labels read must be loaded (RecBole fails deep inside otherwise)."""
    needed = []
    if (config["eval_args"] or {}).get("order") == "TO" and config["TIME_FIELD"]:
        needed.append((config["TIME_FIELD"], "eval_args.order TO sorts by the time field"))
    threshold = config["threshold"]
    for field in threshold if isinstance(threshold, dict) else ():
        needed.append((field, "threshold labels interactions by the field"))
    for field, why in needed:
        if field not in wanted:
            problem = "load_col.inter does not load it" if field in columns else "the file has no such column"
            raise CKFError(
                f"atomic file '{path}': {why} '{field}', but {problem} (the header has: {', '.join(columns)}; "
                f"add it to load_col.inter or change eval_args.order / threshold)"
            )


def validate_atomic_files(config):
    """Check the header, the columns asked for in ``load_col`` and the numeric columns of each atomic file."""
    folder, name = config["data_path"], config["dataset"]
    sep = config["field_separator"] or "\t"
    load_col = config["load_col"]  # None: RecBole loads every column of every file
    suffixes = ["inter", "user", "item"] + list(config["additional_feat_suffix"] or [])
    for suffix in suffixes:
        path = os.path.join(folder, f"{name}.{suffix}")
        if not os.path.isfile(path):
            if suffix == "inter":
                raise CKFError(f"atomic file '{path}' not found")
            continue
        columns = dict(read_header(path, sep))
        wanted = load_col.get(suffix) if isinstance(load_col, dict) else None
        if isinstance(load_col, dict) and suffix not in load_col:
            continue  # RecBole does not load this file
        wanted = list(columns) if wanted is None else list(wanted)
        if suffix == "inter":
            for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
                if config[key] and config[key] not in wanted:
                    wanted.append(config[key])
            _check_split_fields(config, path, columns, wanted)
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise CKFError(
                f"atomic file '{path}' has no column '{missing[0]}' (asked for by load_col.{suffix}; "
                f"the header has: {', '.join(columns)})"
            )
        numeric = [c for c in wanted if columns[c] == "float"]
        frame = pd.read_csv(path, sep=sep, usecols=[f"{c}:float" for c in numeric] or [0], dtype=str,
                            engine="python", quoting=csv.QUOTE_MINIMAL, keep_default_na=False)
        if len(frame) == 0:
            raise CKFError(f"atomic file '{path}' has a header but no rows")
        for column in numeric:
            values = frame[f"{column}:float"]
            bad = pd.to_numeric(values, errors="coerce").isna() & (values != "")
            if bad.any():
                row = int(bad.values.argmax())
                raise CKFError(
                    f"atomic file '{path}', column '{column}' (float): line {row + 2} holds "
                    f"'{values.iloc[row]}', expected a number"
                )
