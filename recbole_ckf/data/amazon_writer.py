"""Writing a converted Amazon data set for :mod:`recbole_ckf.data.convert_amazon`: the text of each file (the
``.inter`` and ``.item`` atomic files with their CSV quoting, the README with provenance and counts, the
properties yaml), all files written at once or none (:func:`write_files`), and the refusal to overwrite files
this converter did not write. Standard library only (see :mod:`recbole_ckf.data.convert_amazon`).
"""

import collections
import datetime
import hashlib
import os
import tempfile

from .amazon_reader import RATING_RANGE, ConvertError  # relative: dataset/convert_amazon.py loads the folder bare

HEADER = "\t".join(
    ("user_id:token", "item_id:token", "rating:float", "timestamp:float", "review:token", "summary:token")
)
ITEM_HEADER = "item_id:token\ttitle:token"
MARK = "recbole_ckf.data.convert_amazon"  # in the first line of every README and yaml this converter writes


def quote_field(text):
    """CSV-quote ``text`` when it contains ``"`` (wrap in quotes, double inner quotes); else return it as is."""
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


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

