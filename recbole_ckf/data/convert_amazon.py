"""Convert an Amazon review file (2014 or 2018 dump, e.g. a per-category 5-core file) into a RecBole data set.

Usage (from the repository root)::

    python -m recbole_ckf.data.convert_amazon --reviews FILE.json.gz [--meta META.json.gz] --name NAME
        [--out DIR] [--properties DIR] [--na-texts refuse|empty]

It writes, all or nothing (see *Writing* below):

* ``OUT/NAME/NAME.inter``: one row per (user, item) pair (``--out`` default: the project's ``dataset/``);
* ``OUT/NAME/NAME.item``: ``item_id`` and ``title`` of every item of the ``.inter`` file (only with ``--meta``);
* ``OUT/NAME/README.md``: counts, provenance (source files, sizes, sha256, date converted) and these rules;
* ``PROPERTIES/dataset/NAME.yaml``: the data set's fields and its ``text_fields`` for CKF (``--properties``
  default: the project's ``properties/``, where ``--dataset=NAME`` finds it).

Input: one record per line, gzipped or plain (told by the file's first bytes), UTF-8. A line is a JSON object
(2014 and 2018 reviews, 2018 meta) or a Python dict literal (2014 meta, read with ``ast.literal_eval``); blank
lines are skipped. A review needs ``reviewerID``, ``asin``, ``overall`` (a number from 1 to 5) and
``unixReviewTime`` (whole seconds); ``reviewText`` and ``summary`` are optional (missing = empty). A meta record
needs ``asin``; ``title`` is optional. Other fields (``reviewerName``, ``helpful``/``vote``, ``style``, ``brand``,
``categories``/``category``, ...) are not kept: the project reads nothing but the title of an item. Meta records
of items without a review are ignored; an item listed more than once gets its first non-empty title.

What the ``.inter`` file holds; the rules are those of the shipped amazon-instruments data set
(``dataset/amazon-instruments/README.md``), which ``python dataset/convert_amazon.py`` regenerates with this
module byte for byte:

* header ``user_id:token  item_id:token  rating:float  timestamp:float  review:token  summary:token`` (tab
  separated, ``\\n`` line ends, UTF-8); ``review`` is ``reviewText``, ``summary`` the review's own headline;
  ``rating`` is ``overall`` (``5.0``), ``timestamp`` is ``unixReviewTime`` written as an integer (Amazon dates
  reviews by day: always midnight UTC).
* **one row per (user, item) pair**: a user who reviewed an item more than once keeps only the latest review
  (the largest ``unixReviewTime``; on a tie, the later line of the file). The README counts the dropped ones.
* row order: sorted by ``(timestamp, user_id, item_id)``, ids compared as plain strings. RecBole's ``order: TO``
  sorts with a stable sort, so this order also breaks the (common) same-day ties inside RecBole's splits.
* text normalisation (reviews, headlines, titles): each run of tabs, newlines and carriage returns inside a text
  becomes one space (a TSV cannot hold them); nothing else is changed (no trimming, no case folding, no
  unescaping).
* quoting: RecBole reads atomic files with ``pd.read_csv(engine="python", delimiter="\\t")``, which follows
  CSV quoting rules. A text that contains ``"`` is therefore written CSV-quoted: wrapped in ``"`` with every
  inner ``"`` doubled. pandas gives back the text exactly; all other texts are written as they are.
* empty texts are written as empty fields. pandas reads an empty field as missing, and RecBole maps a missing
  token to id 0, whose token is ``[PAD]``: code that reads texts through RecBole tells an empty text by
  token id 0 (``dataset.inter_feat[field] == 0``), never by comparing strings. A non-empty text that pandas
  would also read as missing (``NA``, ``null``, ``N/A``, ...) or that equals ``[PAD]`` could not be told from
  an empty one: the converter refuses it (``--na-texts refuse``, the default) or, with ``--na-texts empty``,
  writes it as an empty text and counts it in the README. Ids must be non-empty strings without tabs,
  newlines or ``"`` that pandas would not read as missing.

The ``.item`` file (``item_id:token  title:token``) lists every item of the ``.inter`` file, sorted by id, with the
same text rules; an item the meta file has no title for gets an empty title. The yaml names it as
``text_fields.title`` (and ``review``/``summary`` as those of the ``.inter`` file), which is where
``recbole_ckf.data.item_text`` takes item descriptions from.

Bad input (a line that is not a JSON object or dict literal, a missing field, a non-numeric rating or time,
a file without reviews, ...) raises :class:`ConvertError`, reported by :func:`main` as one line
``error: <file>, line N: ...`` with exit status 2, before anything is written. Existing files are overwritten
only when this converter wrote them (a hand-written README or yaml of the same name is refused).

Writing: every output is written to a temporary file beside its target, and only when all are complete are
they moved into place with ``os.replace``; an error leaves no half-written file behind.

This module and its two helpers, :mod:`recbole_ckf.data.amazon_reader` (reading and checking the dumps) and
:mod:`recbole_ckf.data.amazon_writer` (the files' text, writing them), use only the Python standard library
(``dataset/convert_amazon.py`` loads them without the project's dependencies); :func:`main` asks
``recbole_ckf.config`` for the project's folders.
"""

import argparse
import datetime
import os
import re
import shlex
import sys

# relative imports: dataset/convert_amazon.py loads this folder as a bare package, without recbole_ckf/__init__
from .amazon_reader import (  # noqa: F401  (re-exported: they were defined here)
    NA_POLICIES, PAD_TOKEN, PANDAS_NA_STRINGS, RATING_RANGE, REVIEW_FIELDS, ConvertError, Review, Reviews,
    normalize_text, parse_record, read_lines, read_reviews, read_titles, reads_as_missing,
)
from .amazon_writer import (  # noqa: F401  (re-exported: they were defined here)
    HEADER, ITEM_HEADER, MARK, _check_overwrite, _file_facts, inter_lines, item_lines, quote_field, readme_text,
    write_files, yaml_text,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def convert(reviews_path, name, out, properties, meta_path=None, na_texts="refuse", command=None):
    """Convert ``reviews_path`` (and ``meta_path``) into ``out/name/`` and ``properties/dataset/name.yaml``.

    Returns ``(paths written, Reviews)``. Raises :class:`ConvertError` before writing anything on bad input.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConvertError(f"--name {name!r}: expected a name of letters, digits, '.', '_' and '-' (the data "
                           f"set's name, e.g. amazon-toys)")
    if na_texts not in NA_POLICIES:
        raise ConvertError(f"--na-texts {na_texts!r}: expected one of {', '.join(NA_POLICIES)}")
    folder = os.path.join(out, name)
    yaml_path = os.path.join(properties, "dataset", f"{name}.yaml")
    _check_overwrite(folder, name, yaml_path)
    reviews = read_reviews(reviews_path, na_texts)
    items = {r.item for r in reviews.rows}
    titles = title_stats = None
    if meta_path is not None:
        titles, title_stats = read_titles(meta_path, items, reviews_path, na_texts)
    sources = [("reviews", _file_facts(reviews_path))]
    if meta_path is not None:
        sources.append(("meta", _file_facts(meta_path)))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if command is None:
        command = shlex.join(["python", "-m", MARK, "--reviews", reviews_path]
                             + (["--meta", meta_path] if meta_path else []) + ["--name", name])
    readme_path = os.path.join(folder, "README.md")
    inter_path = os.path.join(folder, f"{name}.inter")
    item_path = os.path.join(folder, f"{name}.item")
    files = [
        (inter_path, inter_lines(reviews.rows)),
        (readme_path, [readme_text(name, date, command, reviews, sources, title_stats, na_texts)]),
        (yaml_path, [yaml_text(name, date, titles is not None, any(r.review for r in reviews.rows),
                               any(r.summary for r in reviews.rows))]),
    ]
    if titles is not None:
        files.insert(1, (item_path, item_lines(items, titles)))
    write_files(files)
    if titles is None and os.path.exists(item_path):  # a stale .item of an earlier conversion with --meta
        os.remove(item_path)
    return [path for path, _ in files], reviews


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other mistake
        raise ConvertError(f"{message} (see --help)")


def main(argv=None):
    from recbole_ckf.config import DATASET_DIR, PROPERTIES_DIR

    parser = _Parser(prog=f"python -m {MARK}", description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", required=True, help="the reviews: JSON lines, gzipped or plain (2014 or 2018)")
    parser.add_argument("--meta", help="the category's meta file (item titles): JSON or Python-literal lines")
    parser.add_argument("--name", required=True, help="the data set's name (--dataset=NAME)")
    parser.add_argument("--out", default=DATASET_DIR, help="writes OUT/NAME/ (default: %(default)s)")
    parser.add_argument("--properties", default=PROPERTIES_DIR,
                        help="writes PROPERTIES/dataset/NAME.yaml (default: %(default)s)")
    parser.add_argument("--na-texts", default="refuse", choices=NA_POLICIES,
                        help="texts pandas would read as missing (NA, null, ...): refuse them (default) or write "
                             "them as empty texts")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        command = shlex.join(["python", "-m", MARK] + argv)
        paths, reviews = convert(args.reviews, args.name, args.out, args.properties, args.meta, args.na_texts,
                                 command)
    except ConvertError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    users = len({r.user for r in reviews.rows})
    items = len({r.item for r in reviews.rows})
    print(f"{len(reviews.rows):,} interactions, {users:,} users, {items:,} items "
          f"({reviews.duplicates:,} duplicate reviews dropped)")
    for path in paths:
        print(f"wrote {path}")
    run = f"python run_recbole_ckf.py --model=CKF --dataset={args.name}"
    if os.path.abspath(args.out) != os.path.abspath(DATASET_DIR):
        run += f" --data_path={shlex.quote(args.out)}"
    if os.path.abspath(args.properties) != os.path.abspath(PROPERTIES_DIR):
        run += f" --config_files={shlex.quote(os.path.join(args.properties, 'dataset', args.name + '.yaml'))}"
    print(f"next: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
