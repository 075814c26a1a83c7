"""Convert the Amazon Musical Instruments 5-core reviews (2014) into a RecBole atomic ``.inter`` file.

Usage (from the repository root)::

    python dataset/convert_amazon.py [--raw PATH] [--out DIR]

defaults: ``--raw ../shared/data/amazon-instruments/reviews_Musical_Instruments_5.json.gz`` and
``--out dataset/amazon-instruments``; writes ``DIR/amazon-instruments.inter``. Only the standard library is
used, so the converter runs without the project installed.

What the file holds (see ``dataset/amazon-instruments/README.md``):

* header ``user_id:token  item_id:token  rating:float  timestamp:float  review:token  summary:token`` (tab
  separated, ``\\n`` line ends, UTF-8); ``review`` is ``reviewText``, ``summary`` the review's own headline;
  ``rating`` is ``overall`` (``5.0``), ``timestamp`` is ``unixReviewTime`` (whole seconds, always midnight
  UTC: Amazon dates reviews by day).
* every 5-core row, in a deterministic order: sorted by ``(timestamp, user_id, item_id)``, ids compared as
  plain strings. RecBole's ``order: TO`` sorts with a stable sort, so this order also breaks the (common)
  same-day ties inside RecBole's splits.
* text normalisation: each run of tabs, newlines and carriage returns inside a text becomes one space (a TSV
  cannot hold them); nothing else is changed (no trimming, no case folding, no unescaping).
* quoting: RecBole reads atomic files with ``pd.read_csv(engine="python", delimiter="\\t")``, which follows
  CSV quoting rules. A text that contains ``"`` is therefore written CSV-quoted: wrapped in ``"`` with every
  inner ``"`` doubled. pandas gives back the text exactly; all other texts are written as they are.
* empty texts are written as empty fields. pandas reads an empty field as missing, and RecBole maps a missing
  token to id 0, whose token is ``[PAD]``: code that reads texts through RecBole tells an empty text by
  token id 0 (``dataset.inter_feat[field] == 0``), never by comparing strings. A non-empty text that pandas
  would also read as missing (``NA``, ``null``, ``N/A``, ...) or that equals ``[PAD]`` could not be told from
  an empty one, so the converter refuses it (this data set has none).
"""

import argparse
import gzip
import json
import os
import re
import sys
import tempfile

DATASET = "amazon-instruments"
FIELDS = ("user_id", "item_id", "rating", "timestamp", "review", "summary")
HEADER = "\t".join(
    ("user_id:token", "item_id:token", "rating:float", "timestamp:float", "review:token", "summary:token")
)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RAW = os.path.normpath(
    os.path.join(_REPO_ROOT, "..", "shared", "data", "amazon-instruments", "reviews_Musical_Instruments_5.json.gz")
)
DEFAULT_OUT = os.path.join(_REPO_ROOT, "dataset", DATASET)

# the strings pandas' read_csv reads as missing by default (pandas._libs.parsers.STR_NA_VALUES), quoted or not
PANDAS_NA_STRINGS = frozenset(
    {
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    }
)
PAD_TOKEN = "[PAD]"

_BREAKING_WHITESPACE = re.compile(r"[\t\n\r]+")


def normalize_text(text):
    """The text as the atomic file holds it: each run of tabs/newlines/carriage returns becomes one space."""
    return _BREAKING_WHITESPACE.sub(" ", text)


def quote_field(text):
    """CSV-quote ``text`` when it contains ``"`` (wrap in quotes, double inner quotes); else return it as is."""
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def read_raw(raw_path):
    """Yield the raw reviews (dicts) of the gzipped JSON-lines file."""
    with gzip.open(raw_path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{raw_path}:{line_no}: not a JSON object ({e})") from None


def to_rows(reviews):
    """The atomic rows (dicts of FIELDS, texts normalised, not yet quoted) in the file's order."""
    rows = []
    seen = set()
    for r in reviews:
        user, item = r["reviewerID"], r["asin"]
        for name, value in (("reviewerID", user), ("asin", item)):
            if not isinstance(value, str) or not value or _BREAKING_WHITESPACE.search(value) or '"' in value:
                raise ValueError(f"unusable {name} {value!r}")
        if (user, item) in seen:
            raise ValueError(f"duplicate review of item {item} by user {user}")
        seen.add((user, item))
        row = {
            "user_id": user,
            "item_id": item,
            "rating": float(r["overall"]),
            "timestamp": int(r["unixReviewTime"]),
            "review": normalize_text(r.get("reviewText") or ""),
            "summary": normalize_text(r.get("summary") or ""),
        }
        for field in ("review", "summary"):
            text = row[field]
            if text and (text in PANDAS_NA_STRINGS or text == PAD_TOKEN):
                raise ValueError(
                    f"{field} of ({user}, {item}) is {text!r}: RecBole would read it as an empty text"
                )
        rows.append(row)
    rows.sort(key=lambda row: (row["timestamp"], row["user_id"], row["item_id"]))
    return rows


def format_row(row):
    return "\t".join(
        (
            row["user_id"],
            row["item_id"],
            repr(row["rating"]),
            str(row["timestamp"]),
            quote_field(row["review"]),
            quote_field(row["summary"]),
        )
    )


def convert(raw_path=DEFAULT_RAW, out_dir=DEFAULT_OUT):
    """Convert ``raw_path`` into ``out_dir/amazon-instruments.inter`` (written atomically); return that path."""
    rows = to_rows(read_raw(raw_path))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, DATASET + ".inter")
    fd, tmp = tempfile.mkstemp(prefix="." + DATASET + ".inter.tmp-", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(HEADER + "\n")
            for row in rows:
                f.write(format_row(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=DEFAULT_RAW, help="the gzipped JSON-lines reviews (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the folder to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    path = convert(args.raw, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
