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

This module uses only the Python standard library (``dataset/convert_amazon.py`` loads it without the
project's dependencies); :func:`main` asks ``recbole_ckf.config`` for the project's folders.
"""

import argparse
import ast
import collections
import datetime
import gzip
import hashlib
import json
import math
import os
import re
import shlex
import sys
import tempfile
import zlib

HEADER = "\t".join(
    ("user_id:token", "item_id:token", "rating:float", "timestamp:float", "review:token", "summary:token")
)
ITEM_HEADER = "item_id:token\ttitle:token"
REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")  # required in every review
RATING_RANGE = (1, 5)
MARK = "recbole_ckf.data.convert_amazon"  # in the first line of every README and yaml this converter writes
NA_POLICIES = ("refuse", "empty")

# the strings pandas' read_csv reads as missing by default (pandas._libs.parsers.STR_NA_VALUES), quoted or not
PANDAS_NA_STRINGS = frozenset(
    {
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    }
)
PAD_TOKEN = "[PAD]"

_BREAKING_WHITESPACE = re.compile(r"[\t\n\r]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConvertError(ValueError):
    """Unusable input or output (a user's mistake): one line naming the file (and line) and what was expected."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


Review = collections.namedtuple("Review", "timestamp user item rating review summary line")


class Reviews:
    """The rows of the ``.inter`` file (sorted, deduplicated, texts normalised) and what reading them found."""

    def __init__(self, path, rows, records, duplicates, na_mapped):
        self.path, self.rows, self.records = path, rows, records
        self.duplicates = duplicates  # reviews dropped because the same user reviewed the same item later
        self.na_mapped = na_mapped  # {field: texts written as empty because pandas would read them as missing}


def normalize_text(text):
    """The text as the atomic file holds it: each run of tabs/newlines/carriage returns becomes one space."""
    return _BREAKING_WHITESPACE.sub(" ", text)


def quote_field(text):
    """CSV-quote ``text`` when it contains ``"`` (wrap in quotes, double inner quotes); else return it as is."""
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def reads_as_missing(text):
    """Whether RecBole would read the (non-empty) ``text`` as a missing value, i.e. as token id 0."""
    return text in PANDAS_NA_STRINGS or text == PAD_TOKEN


# ---- reading -------------------------------------------------------------------------------------------------
def _excerpt(text, limit=60):
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_lines(path):
    """Yield ``(line number, text)`` of a file, gzipped or plain (told by its first two bytes), UTF-8."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
    except OSError as err:
        raise ConvertError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    raise ConvertError(
                        f"{path}, line {number}: not UTF-8 text ({err.reason} at byte {err.start})"
                    ) from None
                yield number, text
    except (OSError, EOFError, zlib.error) as err:
        raise ConvertError(f"{path}: not a readable gzip file ({err})") from None


def parse_record(path, number, text):
    """The dict of one line (JSON object or Python dict literal); None for a blank line."""
    text = text.strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        try:
            record = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ConvertError(
                f"{path}, line {number}: not a JSON object (nor a Python dict literal): {_excerpt(text)}"
            ) from None
    if not isinstance(record, dict):
        raise ConvertError(f"{path}, line {number}: expected one object {{...}} per line, found a "
                           f"{type(record).__name__}: {_excerpt(text)}")
    return record


def _field(path, number, record, key, what):
    if key not in record:
        raise ConvertError(f"{path}, line {number}: no '{key}' field ({what})")
    return record[key]


def _id(path, number, record, key, what):
    value = _field(path, number, record, key, what)
    if not isinstance(value, str) or not value:
        raise ConvertError(f"{path}, line {number}: '{key}' is {value!r}, expected a non-empty string")
    if _BREAKING_WHITESPACE.search(value) or '"' in value:
        raise ConvertError(f"{path}, line {number}: '{key}' {value!r} holds a tab, newline or '\"', which an id "
                           f"of an atomic file cannot")
    if reads_as_missing(value):
        raise ConvertError(f"{path}, line {number}: '{key}' {value!r} would be read by RecBole as a missing id")
    return value


def _number(path, number, record, key, what, expected):
    value = _field(path, number, record, key, what)
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        as_float = float(value)
        if not math.isfinite(as_float):
            raise ValueError
    except ValueError:
        raise ConvertError(f"{path}, line {number}: '{key}' is {value!r}, expected {expected}") from None
    return value, as_float


def _rating(path, number, record, what):
    _, rating = _number(path, number, record, "overall", what, "a number from 1 to 5")
    if not RATING_RANGE[0] <= rating <= RATING_RANGE[1]:
        raise ConvertError(f"{path}, line {number}: 'overall' is {rating!r}, expected a number from 1 to 5")
    return rating


def _seconds(path, number, record, what):
    value, as_float = _number(path, number, record, "unixReviewTime", what, "whole seconds since 1970")
    if isinstance(value, int):
        return value
    if not as_float.is_integer():
        raise ConvertError(f"{path}, line {number}: 'unixReviewTime' is {value!r}, expected whole seconds since 1970")
    return int(as_float)


def _text(path, number, record, key):
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConvertError(f"{path}, line {number}: '{key}' is a {type(value).__name__}, expected text")
    return normalize_text(value)


def _na_text(path, number, key, text, na_texts):
    """``text`` or, for a text RecBole would read as missing, "" (``na_texts='empty'``) or an error."""
    if not text or not reads_as_missing(text):
        return text
    if na_texts == "empty":
        return ""
    raise ConvertError(f"{path}, line {number}: '{key}' is {text!r}, which RecBole would read as an empty text "
                       f"(pandas reads it as missing); pass --na-texts=empty to write such texts as empty")


def read_reviews(path, na_texts="refuse"):
    """Read, check and deduplicate the reviews of ``path``: :class:`Reviews`, rows in the ``.inter`` file's order."""
    what = "every review needs " + ", ".join(REVIEW_FIELDS)
    kept, records, duplicates = {}, 0, 0
    for number, text in read_lines(path):
        record = parse_record(path, number, text)
        if record is None:
            continue
        records += 1
        user = _id(path, number, record, "reviewerID", what)
        item = _id(path, number, record, "asin", what)
        row = Review(
            timestamp=_seconds(path, number, record, what),
            user=user,
            item=item,
            rating=_rating(path, number, record, what),
            review=_text(path, number, record, "reviewText"),
            summary=_text(path, number, record, "summary"),
            line=number,
        )
        old = kept.get((user, item))
        if old is not None:
            duplicates += 1
            if row.timestamp < old.timestamp:
                continue  # keep the latest review; on a tie the later line
        kept[(user, item)] = row
    if not kept:
        raise ConvertError(f"{path}: holds no reviews (expected one JSON object per line with "
                           f"{', '.join(REVIEW_FIELDS)})")
    na_mapped = {"review": 0, "summary": 0}
    rows = []
    for row in sorted(kept.values(), key=lambda r: r.line):  # the first offending line is reported
        review = _na_text(path, row.line, "reviewText", row.review, na_texts)
        summary = _na_text(path, row.line, "summary", row.summary, na_texts)
        na_mapped["review"] += review != row.review
        na_mapped["summary"] += summary != row.summary
        rows.append(row._replace(review=review, summary=summary))
    rows.sort(key=lambda r: (r.timestamp, r.user, r.item))
    return Reviews(path, rows, records, duplicates, na_mapped)


def read_titles(path, items, reviews_path, na_texts="refuse"):
    """``({asin: title}, stats)`` for the ``items`` (a set of asins) from the meta file ``path``."""
    titles, found, records = {}, set(), 0
    mapped = 0
    for number, text in read_lines(path):
        record = parse_record(path, number, text)
        if record is None:
            continue
        records += 1
        asin = _field(path, number, record, "asin", "every meta record needs asin")
        if not isinstance(asin, str):
            raise ConvertError(f"{path}, line {number}: 'asin' is {asin!r}, expected a non-empty string")
        if asin not in items:  # an item without a review (its asin passed the checks of the reviews' ids)
            continue
        found.add(asin)
        if titles.get(asin):
            continue
        title = _text(path, number, record, "title")
        titles[asin] = _na_text(path, number, "title", title, na_texts)
        mapped += titles[asin] != title
    if not records:
        raise ConvertError(f"{path}: holds no meta records (expected one object per line with asin and title)")
    if not found:
        raise ConvertError(f"{path}: none of its {records} items is reviewed in {reviews_path} (a meta file of "
                           f"another category?)")
    stats = {"records": records, "found": len(found), "titled": sum(1 for t in titles.values() if t),
             "na_mapped": mapped}
    return titles, stats


# ---- formatting ----------------------------------------------------------------------------------------------
def inter_lines(rows):
    """The ``.inter`` file, line by line."""
    yield HEADER + "\n"
    for row in rows:
        yield "\t".join((row.user, row.item, repr(row.rating), str(row.timestamp), quote_field(row.review),
                         quote_field(row.summary))) + "\n"


def item_lines(items, titles):
    """The ``.item`` file, line by line: every item of ``items`` (sorted), its title or an empty field."""
    yield ITEM_HEADER + "\n"
    for item in sorted(items):
        yield item + "\t" + quote_field(titles.get(item, "")) + "\n"


def yaml_text(name, date, has_title, has_review, has_summary):
    def field(present, column):
        return column if present else "~"

    return (
        f"# {name}: Amazon reviews converted on {date} by {MARK} (converting again overwrites this file);\n"
        f"# counts, provenance and text rules: the README.md beside {name}.inter\n"
        "USER_ID_FIELD: user_id\n"
        "ITEM_ID_FIELD: item_id\n"
        "RATING_FIELD: rating\n"
        "TIME_FIELD: timestamp\n"
        "load_col:\n"
        "  inter: [user_id, item_id, rating, timestamp]\n"
        f"rating_range: [{RATING_RANGE[0]}, {RATING_RANGE[1]}]\n"
        "# Fields the CKF tasks read; ~ means the data set has none (the task or text that needs it is disabled).\n"
        + ("# title: the .item file's column (from the meta file); items without one have an empty title.\n"
           if has_title else
           "# No item titles (converted without --meta): item text is derived from the item's training-split "
           "reviews only.\n")
        + "text_fields:\n"
        f"  title: {field(has_title, 'title')}\n"
        f"  review: {field(has_review, 'review')}\n"
        f"  summary: {field(has_summary, 'summary')}\n"
    )


def _file_facts(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return os.path.basename(path), os.path.getsize(path), digest.hexdigest()


def _range(counts):
    return f"{min(counts.values())} .. {max(counts.values())}"


def _day(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def readme_text(name, date, command, reviews, sources, title_stats, na_texts):
    rows = reviews.rows
    users = collections.Counter(r.user for r in rows)
    items = collections.Counter(r.item for r in rows)
    ratings = collections.Counter(r.rating for r in rows)
    n = len(rows)
    lines = [
        f"# {name}: Amazon reviews as RecBole atomic files (written by {MARK})",
        "",
        f"`{name}.inter` holds the reviews of the source file below, one (user, item) pair a row, for RecBole 1.2.1 "
        f"and the recbole-ckf plugin" + (f"; `{name}.item` the title of every item." if title_stats else
                                        "; there is no `.item` file (converted without a meta file)."),
        "Converting again overwrites every file of this folder that the converter writes.",
        "",
        "## Provenance",
        "",
        f"- Converted on {date} (UTC) by `{MARK}` with",
        "",
        "  ```",
        f"  {command}",
        "  ```",
        "",
        "- Source files (the \"Amazon product data\" / \"Amazon Review Data\" collections of J. McAuley's lab, UCSD; "
        "use them under their terms and cite their papers):",
        "",
        "| role | file | bytes | sha256 |",
        "|---|---|---|---|",
    ]
    for role, (base, size, sha) in sources:
        lines.append(f"| {role} | `{base}` | {size:,} | `{sha}` |")
    lines += [
        "",
        "## Fields",
        "",
        "Tab separated, UTF-8, `\\n` line ends, one header line.",
        "",
        "| file | field | type | raw field | meaning |",
        "|---|---|---|---|---|",
        f"| `{name}.inter` | `user_id` | token | `reviewerID` | the reviewer |",
        f"| `{name}.inter` | `item_id` | token | `asin` | the product |",
        f"| `{name}.inter` | `rating` | float | `overall` | 1.0 .. 5.0 stars |",
        f"| `{name}.inter` | `timestamp` | float | `unixReviewTime` | seconds since 1970, written as an integer |",
        f"| `{name}.inter` | `review` | token | `reviewText` | the review's text |",
        f"| `{name}.inter` | `summary` | token | `summary` | the review's own headline (the `explanation` task's "
        "answer) |",
    ]
    if title_stats:
        lines.append(f"| `{name}.item` | `title` | token | `title` (meta) | the product's title; empty when the meta "
                     f"file has none |")
    lines += [
        "",
        "## Rules",
        "",
        "- **One row per (user, item) pair.** A user who reviewed an item more than once keeps only the latest "
        "review (the largest `unixReviewTime`; on a tie, the later line of the source file).",
        "- **Row order** is `(timestamp, user_id, item_id)`, the ids compared as plain strings. RecBole's "
        "`order: TO` sorts with a stable sort, so on a same-day tie it keeps this order (with the leave-one-out "
        "split a user's last row is the test case). Do not re-sort the file.",
        "- **Texts** (reviews, headlines, titles): each run of tabs, newlines and carriage returns becomes one "
        "space; nothing else is changed. A text that contains `\"` is CSV-quoted (wrapped in `\"`, inner `\"` "
        "doubled), which RecBole's pandas reader undoes exactly. An empty text is an empty field, which RecBole "
        "reads as token id 0 (`[PAD]`): test `dataset.inter_feat[field] == 0`, not the string.",
        "- **Texts pandas would read as missing** (`NA`, `null`, `N/A`, `None`, `[PAD]`, ...): "
        + ("refused (`--na-texts refuse`); this data set has none." if na_texts == "refuse" else
           "written as empty texts (`--na-texts empty`): "
           f"{reviews.na_mapped['review']} reviews, {reviews.na_mapped['summary']} headlines"
           + (f", {title_stats['na_mapped']} titles" if title_stats else "") + "."),
        "- Not kept: every other field (`reviewerName`, `helpful`/`vote`, `verified`, `style`, `reviewTime`, and of "
        "the meta file everything but `title`).",
        "",
        "## Counts",
        "",
        "| | |",
        "|---|---|",
        f"| review records read | {reviews.records:,} |",
        f"| duplicates dropped (same user and item, an earlier review) | {reviews.duplicates:,} |",
        f"| interactions | {n:,} |",
        f"| users | {len(users):,} ({_range(users)} interactions each; {sum(c < 5 for c in users.values()):,} with "
        f"fewer than 5) |",
        f"| items | {len(items):,} ({_range(items)} interactions each; {sum(c < 5 for c in items.values()):,} with "
        f"fewer than 5) |",
        f"| density | {100 * n / (len(users) * len(items)):.2f} % |",
        "| ratings | " + ", ".join(f"{r:g}★ {c:,}" for r, c in sorted(ratings.items())) + " |",
        f"| time range | {_day(rows[0].timestamp)} .. {_day(rows[-1].timestamp)} |",
    ]
    for field in ("review", "summary"):
        texts = [getattr(r, field) for r in rows]
        lines.append(f"| `{field}` | {sum(not t for t in texts):,} empty; {sum(chr(34) in t for t in texts):,} "
                     f"contain `\"`; {len(set(texts)):,} distinct |")
    if title_stats:
        lines.append(f"| titles | {title_stats['titled']:,} of {len(items):,} items have one ({title_stats['found']:,} "
                     f"found among the meta file's {title_stats['records']:,} records) |")
    lines += [
        "",
        "RecBole's own summary counts one more user and item: its counts include the padding id 0. Leave-one-out "
        "(the project's split) needs at least 3 interactions per user for a training, validation and test case.",
        "",
    ]
    return "\n".join(lines)


# ---- writing -------------------------------------------------------------------------------------------------
def write_files(files):
    """Write ``[(path, iterable of str), ...]`` all or nothing.

    Each file is written to a temporary file beside its target; only once every one is complete are they moved
    into place with ``os.replace``. On an error the temporary files are removed and no target is touched.
    """
    temps = []
    try:
        for path, chunks in files:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=folder)
            temps.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as err:
        raise ConvertError(f"cannot write '{err.filename or path}' ({err.strerror or err})") from None
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def _first_line(path):
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        return f.readline()


def _check_overwrite(folder, name, yaml_path):
    """Refuse to overwrite files this converter did not write (a hand-written README or yaml, another data set)."""
    readme = os.path.join(folder, "README.md")
    ours = os.path.isfile(readme) and MARK in _first_line(readme)
    for path in (os.path.join(folder, f"{name}.inter"), os.path.join(folder, f"{name}.item"), readme):
        if os.path.exists(path) and not ours:
            raise ConvertError(f"'{path}' exists and was not written by this converter (its folder has no "
                               f"README.md written by it): choose another --name or --out, or remove the folder")
    if os.path.exists(yaml_path) and MARK not in _first_line(yaml_path):
        raise ConvertError(f"'{yaml_path}' exists and was not written by this converter: choose another --name "
                           f"or --properties")


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
