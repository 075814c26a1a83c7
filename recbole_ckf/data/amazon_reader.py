"""Reading an Amazon review or meta dump for :mod:`recbole_ckf.data.convert_amazon`: lines of a gzipped or plain
file, each a JSON object or Python dict literal, checked field by field (ids, rating, time, texts), reviews
deduplicated per (user, item) and sorted into the ``.inter`` file's row order (:func:`read_reviews`), titles of
the reviewed items from a meta file (:func:`read_titles`); with the text rules both share
(:func:`normalize_text`, :func:`reads_as_missing`) and :class:`ConvertError`. Standard library only (see
:mod:`recbole_ckf.data.convert_amazon` for the rules and why).
"""

import ast
import collections
import gzip
import json
import math
import re
import zlib

REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")  # required in every review
RATING_RANGE = (1, 5)
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
