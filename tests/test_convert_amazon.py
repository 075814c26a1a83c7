"""Any Amazon review file as a data set: ``python -m recbole_ckf.data.convert_amazon``.

Small synthetic Amazon-style files (2014: JSON reviews, Python-literal meta; 2018: JSON reviews and meta; gzipped
and plain; with and without meta; a fixed random generator) are converted and read back through the project's
Config and RecBole's loader: users, items, ratings, times and texts round-trip, a user-item pair reviewed twice
keeps its latest review, rows are in (timestamp, user_id, item_id) order, meta titles become the items' text.
Bad input is one ``error: <file>, line N: ...`` line, exit status 2 and nothing written. One end-to-end run
trains CKF (tiny LM, tiny budgets) on a converted file.
"""

import gzip
import json
import os
import random
import re
import subprocess
import sys

import pytest

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
from conftest import REPO, small_config
from recbole_ckf.data import convert_amazon
from test_amazon_dataset import _rows_by_pair

NAME = "amazon-synth"
BASE_TIME = 1_262_304_000  # 2010-01-01, midnight UTC: Amazon dates reviews by day
DAY = 86400
WORDS = ("great", "strings", "tone", "cheap", "solid", "pick", "cable", "\"loud\"", "stand", "tuner", "caf\u00e9",
         "works", "broke", "fine", "'quiet'", "pedal")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ---- synthetic Amazon files --------------------------------------------------------------------------------
def _asin(i):
    return f"{i:010d}" if i % 3 == 0 else f"B00{i:07d}X"  # 2014 ASINs with leading zeros stay tokens


def _phrase(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_reviews(style, seed=0, n_users=36, n_items=24):
    """~250 reviews, every user 6-9 of them, plus duplicates: (user, item) reviewed again later, on the same day
    (the later line counts) and earlier (in a later line; the first one counts)."""
    rng = random.Random(seed)
    reviews = []
    for u in range(n_users):
        for i in rng.sample(range(n_items), rng.randint(6, 9)):
            day = rng.randrange(40)
            summary = _phrase(rng, rng.randint(1, 4))
            review = {
                "reviewerID": f"A{u:03d}R{seed}",
                "asin": _asin(i),
                "reviewerName": f"user {u}",
                "overall": float(rng.randint(1, 5)),
                "unixReviewTime": BASE_TIME + DAY * day,
                "reviewText": _phrase(rng, rng.randint(3, 12)),
                "summary": summary,
            }
            if style == "2014":
                review.update(helpful=[rng.randint(0, 3), 3], reviewTime="01 1, 2010")
            else:
                review.update(verified=True, reviewTime="01 1, 2010", style={"Size:": " Large"})
                if rng.random() < 0.3:
                    review["vote"] = str(rng.randint(2, 9))
            reviews.append(review)
    # texts a TSV/CSV makes hard, and missing ones
    reviews[0]["reviewText"] = 'says "hi"\tand\nbye\r\n'
    reviews[1]["summary"] = '"quoted whole"'
    reviews[2].pop("reviewText")
    reviews[3]["summary"] = ""
    reviews[4]["overall"] = 4  # an integer rating is a rating too
    # duplicates of (user, item) pairs
    later = dict(reviews[10], unixReviewTime=reviews[10]["unixReviewTime"] + 3 * DAY, summary="changed my mind",
                 overall=1.0)
    same_day = dict(reviews[20], summary="same day, later line", overall=2.0)
    earlier = dict(reviews[30], unixReviewTime=reviews[30]["unixReviewTime"] - 5 * DAY, summary="an older review")
    reviews += [later, same_day, earlier]
    rng.shuffle(reviews)
    return reviews


def make_meta(style, reviews, seed=0):
    """A meta record per reviewed item (some without a title, one listed twice) and one for an unreviewed item."""
    rng = random.Random(seed + 1)
    asins = sorted({r["asin"] for r in reviews})
    meta = []
    for k, asin in enumerate(asins):
        title = f"Item {k} {_phrase(rng, rng.randint(1, 3))}"
        if style == "2014":
            record = {"asin": asin, "title": title, "price": 9.99, "imUrl": "http://x/y.jpg",
                      "related": {"also_bought": asins[:2]}, "salesRank": {"Musical Instruments": k},
                      "categories": [["Musical Instruments", "Guitars"]]}
        else:
            record = {"category": ["Musical Instruments", "Guitars"], "description": ["d"], "title": title,
                      "brand": "Acme", "asin": asin, "also_buy": asins[:2], "price": "$9.99"}
        if k % 5 == 4:
            record.pop("title")  # an item without a title
        meta.append(record)
    meta[1]["title"] = 'Cable 1/4" "Pro"\twith tab'
    meta.append({"asin": asins[0], "title": "a second record of the same item (ignored)"})
    meta.append({"asin": "B0NOTREVIEW", "title": "never reviewed (ignored)"})
    return meta


def write_records(path, records, style, gz):
    """One record a line: JSON, or (2014 meta) Python literals; a blank line in the middle."""
    lines = [repr(r) if style == "literal" else json.dumps(r) for r in records]
    lines.insert(len(lines) // 2, "")
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return str(path)


def write_dataset_files(tmp_path, style, gz, meta, seed=0):
    suffix = ".json.gz" if gz else ".json"
    reviews = make_reviews(style, seed)
    reviews_path = write_records(tmp_path / f"reviews_{style}{suffix}", reviews, "json", gz)
    meta_records = make_meta(style, reviews, seed) if meta else None
    meta_path = (write_records(tmp_path / f"meta_{style}{suffix}", meta_records,
                               "literal" if style == "2014" else "json", gz) if meta else None)
    return reviews, reviews_path, meta_records, meta_path


def run_main(capsys, reviews_path, out, props, meta_path=None, *extra):
    argv = ["--reviews", reviews_path, "--name", NAME, "--out", str(out), "--properties", str(props), *extra]
    if meta_path:
        argv += ["--meta", meta_path]
    capsys.readouterr()
    status = convert_amazon.main(argv)
    return status, capsys.readouterr()


# ---- what the files should hold, computed independently of the converter ---------------------------------
def _text(value):
    return re.sub(r"[\t\n\r]+", " ", value or "")


def expected_rows(reviews):
    """{(user, item): (rating, time, review, summary)}: the latest review of each pair, the later line on a tie."""
    latest = {}
    for r in reviews:
        key = (r["reviewerID"], r["asin"])
        if key not in latest or r["unixReviewTime"] >= latest[key]["unixReviewTime"]:
            latest[key] = r
    return {k: (float(r["overall"]), float(r["unixReviewTime"]), _text(r.get("reviewText")), _text(r.get("summary")))
            for k, r in latest.items()}


def expected_titles(meta):
    titles = {}
    for m in meta:
        if not titles.get(m["asin"]):
            titles[m["asin"]] = _text(m.get("title"))
    return titles


def load(data_path, yaml_path, **overrides):
    """The converted data set through the project's Config (CKF: text columns loaded) and RecBole's loader."""
    from recbole_ckf.config import Config
    from recbole_ckf.data import load_data

    config = Config("CKF", NAME, config_file_list=[str(yaml_path)],
                    config_dict=small_config(data_path=str(data_path), llm="tiny", **overrides))
    dataset, train_data, _, _ = load_data(config)
    return config, dataset, train_data.dataset


def _listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else None


# ---- round trip ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("style,gz,meta", [("2014", True, True), ("2018", False, True), ("2018", True, False),
                                           ("2014", False, False)],
                         ids=["2014-gz-meta", "2018-plain-meta", "2018-gz-no-meta", "2014-plain-no-meta"])
def test_round_trip_through_recbole(tmp_path, capsys, style, gz, meta):
    from recbole_ckf.data.fields import resolve_text_fields
    from recbole_ckf.data.item_text import build_item_texts

    reviews, reviews_path, meta_records, meta_path = write_dataset_files(tmp_path, style, gz, meta)
    out, props = tmp_path / "data", tmp_path / "props"
    status, captured = run_main(capsys, reviews_path, out, props, meta_path)
    assert status == 0, captured.err
    folder = out / NAME
    yaml_path = props / "dataset" / f"{NAME}.yaml"
    assert _listing(folder) == sorted([f"{NAME}.inter", "README.md"] + ([f"{NAME}.item"] if meta else []))
    assert _listing(props / "dataset") == [f"{NAME}.yaml"]

    config, dataset, train = load(out, yaml_path)
    want = expected_rows(reviews)
    assert len(want) == len(reviews) - 3  # the three duplicates
    assert _rows_by_pair(dataset) == want
    assert dataset.user_num - 1 == len({u for u, _ in want}) and dataset.item_num - 1 == len({i for _, i in want})

    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert f"| interactions | {len(want):,} |" in readme and "| duplicates dropped" in readme
    assert os.path.basename(reviews_path) in readme and "sha256" in readme

    texts, note = build_item_texts(config, dataset, train)
    item_tokens = dataset.field2id_token["item_id"]
    if meta:
        assert resolve_text_fields(config)["title"] == ("item", "title")
        titles = expected_titles(meta_records)
        item_feat = dataset.item_feat
        loaded = {item_tokens[i]: ("" if t == 0 else dataset.field2id_token["title"][t])
                  for i, t in zip(item_feat["item_id"].tolist(), item_feat["title"].tolist()) if i != 0}
        assert loaded == {asin: titles.get(asin, "") for asin in loaded}  # every title exact, tab folded
        assert 'Cable 1/4" "Pro" with tab' in loaded.values()
        untitled = {asin for asin, title in loaded.items() if not title}
        assert untitled and "title" in note
        for item in range(1, dataset.item_num):
            asin = item_tokens[item]
            if asin in untitled:
                assert texts[item] and texts[item] not in titles.values()  # item_text.py's fallback
            elif len(titles[asin].split()) <= config["item_text_words"]:
                assert texts[item] == titles[asin]  # the title is the item's text
    else:
        assert "title" not in resolve_text_fields(config)
        assert not os.path.exists(folder / f"{NAME}.item")
        summaries = {s for *_, s in want.values() if s}
        assert any(any(s in texts[item] for s in summaries) for item in range(1, dataset.item_num))


def test_yaml_names_the_text_fields(tmp_path, capsys):
    _, reviews_path, _, meta_path = write_dataset_files(tmp_path, "2018", True, True)
    assert run_main(capsys, reviews_path, tmp_path / "data", tmp_path / "props", meta_path)[0] == 0
    from recbole_ckf.config import read_yaml

    content = read_yaml(str(tmp_path / "props" / "dataset" / f"{NAME}.yaml"))
    assert content["text_fields"] == {"title": "title", "review": "review", "summary": "summary"}
    assert content["load_col"] == {"inter": ["user_id", "item_id", "rating", "timestamp"]}
    assert (content["USER_ID_FIELD"], content["ITEM_ID_FIELD"], content["RATING_FIELD"], content["TIME_FIELD"]) == (
        "user_id", "item_id", "rating", "timestamp")
    with open(tmp_path / "data" / NAME / f"{NAME}.item", encoding="utf-8") as f:
        assert f.readline() == "item_id:token\ttitle:token\n"

    # converting again without meta: the yaml says so and the .item file of the first conversion is gone
    assert run_main(capsys, reviews_path, tmp_path / "data", tmp_path / "props")[0] == 0
    content = read_yaml(str(tmp_path / "props" / "dataset" / f"{NAME}.yaml"))
    assert content["text_fields"]["title"] is None
    assert _listing(tmp_path / "data" / NAME) == sorted([f"{NAME}.inter", "README.md"])


def test_duplicates_keep_the_latest_review(tmp_path, capsys):
    base = {"reviewerID": "U1", "asin": "I1", "reviewText": "r"}
    reviews = [
        dict(base, overall=5.0, unixReviewTime=BASE_TIME + 2 * DAY, summary="latest by time"),
        dict(base, overall=1.0, unixReviewTime=BASE_TIME, summary="older, later line"),
        dict(base, asin="I2", overall=3.0, unixReviewTime=BASE_TIME, summary="first of a tie"),
        dict(base, asin="I2", overall=4.0, unixReviewTime=BASE_TIME, summary="second of a tie"),
        dict(base, asin="I3", overall=2.0, unixReviewTime=BASE_TIME + DAY, summary="single"),
    ]
    path = write_records(tmp_path / "r.json", reviews, "json", gz=False)
    status, captured = run_main(capsys, path, tmp_path / "data", tmp_path / "props")
    assert status == 0 and "2 duplicate reviews dropped" in captured.out
    with open(tmp_path / "data" / NAME / f"{NAME}.inter", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    assert [(r[1], r[2], r[5]) for r in rows] == [("I2", "4.0", "second of a tie"), ("I3", "2.0", "single"),
                                                 ("I1", "5.0", "latest by time")]
    readme = (tmp_path / "data" / NAME / "README.md").read_text(encoding="utf-8")
    assert "| duplicates dropped (same user and item, an earlier review) | 2 |" in readme
    assert "keeps only the latest review" in readme


def test_row_order_is_timestamp_user_item(tmp_path, capsys):
    reviews, reviews_path, _, _ = write_dataset_files(tmp_path, "2018", True, False, seed=3)
    assert run_main(capsys, reviews_path, tmp_path / "data", tmp_path / "props")[0] == 0
    with open(tmp_path / "data" / NAME / f"{NAME}.inter", encoding="utf-8") as f:
        assert f.readline().rstrip("\n") == convert_amazon.HEADER
        keys = [(int(c[3]), c[0], c[1]) for c in (line.split("\t", 4) for line in f)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == len(expected_rows(reviews))
    assert len({t for t, _, _ in keys}) < len(keys)  # same-day ties are there, ordered by user and item


# ---- bad input: one line, exit status 2, nothing written -------------------------------------------------
GOOD = {"reviewerID": "U1", "asin": "I1", "overall": 5.0, "unixReviewTime": BASE_TIME, "summary": "s"}


def _bad_lines(case):
    """(reviews file lines, meta file lines or None, the expected message after 'error: <file>')."""
    good = [json.dumps(dict(GOOD, asin=f"I{k}")) for k in range(3)]
    if case == "not-json":
        return good[:2] + ["{'reviewerID': 'U1', oops"] + good[2:], None, \
            ", line 3: not a JSON object (nor a Python dict literal): \"{'reviewerID': 'U1', oops\""
    if case == "not-a-dict":
        return good[:1] + ["[1, 2]"] + good[1:], None, \
            ", line 2: expected one object {...} per line, found a list: '[1, 2]'"
    if case == "missing-field":
        missing = dict(GOOD)
        missing.pop("asin")
        return good + [json.dumps(missing)], None, \
            ", line 4: no 'asin' field (every review needs reviewerID, asin, overall, unixReviewTime)"
    if case == "bad-rating":
        return good[:1] + [json.dumps(dict(GOOD, overall="five"))], None, \
            ", line 2: 'overall' is 'five', expected a number from 1 to 5"
    if case == "bad-time":
        return good[:2] + [json.dumps(dict(GOOD, unixReviewTime="yesterday"))], None, \
            ", line 3: 'unixReviewTime' is 'yesterday', expected whole seconds since 1970"
    if case == "na-text":
        return good + [json.dumps(dict(GOOD, asin="I9", summary="NA"))], None, \
            (", line 4: 'summary' is 'NA', which RecBole would read as an empty text (pandas reads it as missing); "
             "pass --na-texts=empty to write such texts as empty")
    if case == "empty":
        return ["", "  "], None, ": holds no reviews (expected one JSON object per line with reviewerID, asin, " \
                                 "overall, unixReviewTime)"
    if case == "bad-meta":
        return good, [json.dumps({"asin": "I0", "title": "t"}), "{\"asin\": \"I1\", \"title\": "], \
            ", line 2: not a JSON object (nor a Python dict literal): '{\"asin\": \"I1\", \"title\":'"
    if case == "meta-of-another-category":
        return good, [json.dumps({"asin": "X1", "title": "t"}), repr({"asin": "X2"})], \
            ": none of its 2 items is reviewed in {reviews} (a meta file of another category?)"
    raise AssertionError(case)


def _write_bad(tmp_path, case):
    reviews, meta, message = _bad_lines(case)
    reviews_path = tmp_path / "reviews.json.gz"
    with gzip.open(reviews_path, "wt", encoding="utf-8") as f:
        f.write("\n".join(reviews) + "\n")
    meta_path = None
    if meta is not None:
        meta_path = tmp_path / "meta.json"
        meta_path.write_text("\n".join(meta) + "\n", encoding="utf-8")
    return str(reviews_path), (str(meta_path) if meta_path else None), message.replace("{reviews}", str(reviews_path))


@pytest.mark.parametrize("case", ["not-json", "not-a-dict", "missing-field", "bad-rating", "bad-time", "na-text",
                                  "empty", "bad-meta", "meta-of-another-category"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    reviews_path, meta_path, message = _write_bad(tmp_path, case)
    out, props = tmp_path / "data", tmp_path / "props"
    status, captured = run_main(capsys, reviews_path, out, props, meta_path)
    assert status == 2
    assert captured.err == f"error: {meta_path or reviews_path}{message}\n"
    assert captured.out == "" and not out.exists() and not props.exists()


def test_na_texts_can_be_written_as_empty(tmp_path, capsys):
    reviews = [dict(GOOD, asin=f"I{k}", summary=s, reviewText=r)
               for k, (s, r) in enumerate([("ok", "null"), ("N/A", "fine"), ("[PAD]", "good")])]
    path = write_records(tmp_path / "r.json", reviews, "json", gz=False)
    status, captured = run_main(capsys, path, tmp_path / "data", tmp_path / "props", None, "--na-texts=empty")
    assert status == 0, captured.err
    with open(tmp_path / "data" / NAME / f"{NAME}.inter", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    assert [(r[4], r[5]) for r in rows] == [("", "ok"), ("fine", ""), ("good", "")]
    assert "1 reviews, 2 headlines" in (tmp_path / "data" / NAME / "README.md").read_text(encoding="utf-8")


def test_hand_written_files_are_not_overwritten(tmp_path, capsys):
    _, reviews_path, _, _ = write_dataset_files(tmp_path, "2018", False, False)
    props = tmp_path / "props"
    (props / "dataset").mkdir(parents=True)
    hand = props / "dataset" / f"{NAME}.yaml"
    hand.write_text("# written by hand\nUSER_ID_FIELD: user_id\n", encoding="utf-8")
    status, captured = run_main(capsys, reviews_path, tmp_path / "data", props)
    assert status == 2 and captured.err.count("\n") == 1
    assert f"'{hand}' exists and was not written by this converter" in captured.err
    assert hand.read_text(encoding="utf-8") == "# written by hand\nUSER_ID_FIELD: user_id\n"
    assert not (tmp_path / "data").exists()

    folder = tmp_path / "data2" / NAME
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("# my own data set\n", encoding="utf-8")
    (folder / f"{NAME}.inter").write_text("user_id:token\titem_id:token\n", encoding="utf-8")
    status, captured = run_main(capsys, reviews_path, tmp_path / "data2", tmp_path / "props2")
    assert status == 2 and "was not written by this converter" in captured.err
    assert (folder / f"{NAME}.inter").read_text(encoding="utf-8") == "user_id:token\titem_id:token\n"
    assert not (tmp_path / "props2").exists()


def test_command_line_exit_status_and_no_traceback(tmp_path):
    reviews_path, _, message = _write_bad(tmp_path, "not-json")
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "recbole_ckf.data.convert_amazon", "--reviews", reviews_path,
                           "--name", NAME, "--out", str(out), "--properties", str(tmp_path / "props")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr == f"error: {reviews_path}{message}\n" and proc.stdout == ""
    assert os.listdir(tmp_path) == ["reviews.json.gz"]

    # the shipped data set's regenerator: the same rules, the same one-line error
    proc = subprocess.run([sys.executable, os.path.join(REPO, "dataset", "convert_amazon.py"), "--raw", reviews_path,
                           "--out", str(out)], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr == f"error: {reviews_path}{message}\n"
    assert os.listdir(tmp_path) == ["reviews.json.gz"]


# ---- end to end: convert, then train CKF on it ------------------------------------------------------------
@pytest.mark.usefixtures("one_torch_thread")
def test_ckf_trains_on_a_converted_file(tmp_path, capsys):
    from recbole_ckf.quick_start import run_recbole_ckf

    _, reviews_path, _, meta_path = write_dataset_files(tmp_path, "2018", True, True)
    out, props = tmp_path / "data", tmp_path / "props"
    assert run_main(capsys, reviews_path, out, props, meta_path)[0] == 0
    config = small_config(
        data_path=str(out), llm="tiny", llm_cache_dir=str(tmp_path / "cache"), train_samples_per_task=4,
        train_batch_size=4, valid_users=4, eval_users=4, explanation_max_tokens=2, eval_batch_size=16, eval_step=1,
        backbone="BPR", backbone_config={"embedding_size": 16, "epochs": 1, "train_batch_size": 8192})
    result = run_recbole_ckf(model="CKF", dataset=NAME, config_file_list=[str(props / "dataset" / f"{NAME}.yaml")],
                             config_dict=config)
    for key in ("ctr:auc", "sequential:ndcg@3", "rating:rmse", "explanation:rouge-l"):
        assert key in result["test_result"] and key in result["best_valid_result"], result
