"""The shipped Amazon Musical Instruments atomic file: it round-trips through RecBole's own loader, text exact.

RecBole reads atomic files with ``pd.read_csv(engine="python", delimiter="\\t")``: the converter CSV-quotes
texts that contain ``"``, folds tabs/newlines/carriage returns into spaces and writes empty texts as empty
fields (which RecBole gives token id 0, ``[PAD]``). These tests load the converted file with
``recbole.config.Config`` + ``recbole.data.create_dataset`` and compare every row with the raw reviews.
"""

import gzip
import importlib.util
import json
import os
import re
import sys

import numpy as np
import pytest

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = os.path.normpath(
    os.path.join(REPO, "..", "shared", "data", "amazon-instruments", "reviews_Musical_Instruments_5.json.gz")
)
SHIPPED = os.path.join(REPO, "dataset", "amazon-instruments", "amazon-instruments.inter")
TEXT_FIELDS = ("review", "summary")
LOAD_COL = {"inter": ["user_id", "item_id", "rating", "timestamp", "review", "summary"]}

needs_raw = pytest.mark.skipif(not os.path.exists(RAW), reason=f"raw file {RAW} is not there")


def _load_converter():
    spec = importlib.util.spec_from_file_location("convert_amazon", os.path.join(REPO, "dataset", "convert_amazon.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_amazon = _load_converter()


def _expected_text(text):
    # written independently of the converter: each run of tab/newline/carriage return becomes one space
    return re.sub(r"[\t\n\r]+", " ", text or "")


def _read_raw(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_raw(path, reviews):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in reviews:
            f.write(json.dumps(r) + "\n")


def _column(feat, field):
    values = feat[field]
    return values.numpy() if hasattr(values, "numpy") and not hasattr(values, "to_numpy") else np.asarray(values)


def _load_with_recbole(data_path, monkeypatch):
    """Load ``data_path/amazon-instruments`` with RecBole's own Config and create_dataset."""
    from recbole.config import Config
    from recbole.data import create_dataset

    monkeypatch.setattr(sys, "argv", ["pytest"])  # Config parses --key=value from sys.argv
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # Config sets it; restored after the test
    config = Config(
        model="BPR",
        dataset="amazon-instruments",
        config_dict={
            "data_path": str(data_path),
            "load_col": LOAD_COL,
            "show_progress": False,
            "use_gpu": False,
            "save_dataset": False,
        },
    )
    return create_dataset(config)


def _rows_by_pair(dataset):
    """{(user, item): (rating, timestamp, review, summary)} as the project's code sees them through RecBole.

    An empty text arrives as token id 0 (``[PAD]``) and is given back as ``""``.
    """
    feat = dataset.inter_feat
    users = dataset.field2id_token["user_id"][_column(feat, "user_id")]
    items = dataset.field2id_token["item_id"][_column(feat, "item_id")]
    texts = {}
    for field in TEXT_FIELDS:
        ids = _column(feat, field)
        tokens = dataset.field2id_token[field][ids]
        assert dataset.field2id_token[field][0] == "[PAD]"
        texts[field] = np.where(ids == 0, "", tokens)
    ratings, times = _column(feat, "rating"), _column(feat, "timestamp")
    rows = {}
    for i, pair in enumerate(zip(users.tolist(), items.tolist())):
        assert pair not in rows, f"duplicate pair {pair}"
        rows[pair] = (float(ratings[i]), float(times[i]), str(texts["review"][i]), str(texts["summary"][i]))
    return rows


def _assert_round_trip(reviews, dataset):
    loaded = _rows_by_pair(dataset)
    assert len(loaded) == len(reviews)
    for r in reviews:
        got = loaded[(r["reviewerID"], r["asin"])]
        want = (
            float(r["overall"]),
            float(r["unixReviewTime"]),
            _expected_text(r.get("reviewText")),
            _expected_text(r.get("summary")),
        )
        assert got == want, (r["reviewerID"], r["asin"])


@pytest.fixture(scope="module")
def raw_reviews():
    return _read_raw(RAW)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A fresh conversion of the raw file, through the command line: (data_path, path of the .inter)."""
    data_path = tmp_path_factory.mktemp("data")
    out = data_path / "amazon-instruments"
    assert convert_amazon.main(["--raw", RAW, "--out", str(out)]) == 0
    return data_path, out / "amazon-instruments.inter"


@needs_raw
def test_round_trip_through_recbole(converted, raw_reviews, monkeypatch):
    data_path, _ = converted
    texts = [r.get(f) or "" for r in raw_reviews for f in ("reviewText", "summary")]
    # the raw data holds every case the quoting and the empty-text rule are for
    assert sum(t.startswith('"') for t in texts) >= 5
    assert sum('"' in t for t in texts) >= 800
    assert sum(t == "" for t in texts) == 7
    dataset = _load_with_recbole(data_path, monkeypatch)
    assert dataset.inter_num == len(raw_reviews) == 10261
    assert dataset.user_num - 1 == 1429 and dataset.item_num - 1 == 900  # RecBole counts [PAD]
    _assert_round_trip(raw_reviews, dataset)


@needs_raw
def test_shipped_file_equals_fresh_conversion(converted):
    _, fresh = converted
    with open(SHIPPED, "rb") as f:
        shipped = f.read()
    with open(fresh, "rb") as f:
        assert f.read() == shipped, "dataset/amazon-instruments is stale: run python dataset/convert_amazon.py"


@needs_raw
def test_row_order_is_timestamp_user_item(converted):
    _, fresh = converted
    with open(fresh, encoding="utf-8") as f:
        header = f.readline().rstrip("\n")
        keys = [(int(c[3]), c[0], c[1]) for c in (line.split("\t", 4) for line in f)]
    assert header == convert_amazon.HEADER
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == 10261


def test_hard_texts_round_trip(tmp_path, monkeypatch):
    """Texts that TSV/CSV make hard: quotes anywhere, tabs, newlines, CR, empties, spaces, non-ASCII."""
    hard = [
        '"starts with a quote',
        'ends with a quote"',
        '"quoted whole"',
        '"',
        '""',
        'XLR Female To 1/4"" Male',
        'a\ttab',
        "two\n\nnewlines",
        "crlf\r\nline\rend",
        '"quote and\ttab"',
        "",
        " leading and trailing spaces ",
        "back\\slash \\\" and \\t",
        "caf\u00e9 \u2014 \U0001f3b8",
        "#not a comment",
        "\t",
        "NAN-like but not NA",
    ]
    reviews = []
    for i, text in enumerate(hard):
        for j in range(2):
            reviews.append(
                {
                    "reviewerID": f"U{i}",
                    "asin": f"I{j}",
                    "overall": float(1 + (i + j) % 5),
                    "unixReviewTime": 1_000_000_000 + 86400 * (i % 3),
                    "reviewText": text if j == 0 else hard[(i + 1) % len(hard)],
                    "summary": hard[(i + 3) % len(hard)] if j == 0 else text,
                }
            )
    reviews[0].pop("reviewText")  # a missing field is an empty text
    raw = tmp_path / "raw.json.gz"
    _write_raw(raw, reviews)
    out = tmp_path / "data" / "amazon-instruments"
    path = convert_amazon.convert(str(raw), str(out))
    assert sorted(os.listdir(out)) == ["amazon-instruments.inter"]  # no temporary left behind
    dataset = _load_with_recbole(tmp_path / "data", monkeypatch)
    _assert_round_trip(reviews, dataset)
    with open(path, "rb") as f:
        assert b"\r" not in f.read()


@pytest.mark.parametrize("text", ["NA", "null", "N/A", "nan", "None", "[PAD]"])
def test_texts_recbole_would_read_as_empty_are_refused(tmp_path, text):
    raw = tmp_path / "raw.json.gz"
    _write_raw(
        raw,
        [{"reviewerID": "U", "asin": "I", "overall": 5.0, "unixReviewTime": 0, "reviewText": "ok", "summary": text}],
    )
    with pytest.raises(ValueError, match="empty text"):
        convert_amazon.convert(str(raw), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "amazon-instruments.inter")
