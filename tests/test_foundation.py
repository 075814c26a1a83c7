"""The plugin foundation: RecBole parity, one split for every model type, the CLI's errors, comparison runs.

* A RecBole model run through ``run_recbole_ckf`` gives exactly RecBole's own ``run_recbole`` numbers.
* General (BPR), sequential (SASRec) and context (DeepFM, labeled) models see the very same train/valid/test
  interactions: leave-one-out by time, one valid and one test interaction per user, none earlier than training.
* Every user mistake on the command line is one ``error:`` line with exit status 2, never a traceback.
* ``run_comparison`` writes one markdown and one JSON table, and refuses an unwritable ``output_dir`` up front.
"""

import collections
import glob
import io
import json
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
import run_recbole_ckf as cli
from conftest import REPO, small_config
from recbole_ckf.config import Config
from recbole_ckf.errors import CKFError
from recbole_ckf.data import load_data
from recbole_ckf.quick_start import run_comparison, run_recbole_ckf

DATASET = "amazon-instruments"

# The plugin's property values (properties/overall.yaml) that differ from RecBole's own defaults
PLUGIN_DEFAULTS = {
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni9"},
    "metrics": ["Hit", "NDCG", "MRR"],
    "topk": [1, 3, 10],
    "valid_metric": "NDCG@3",
    "stopping_step": 20,
    "seed": 2020,
}


def _recbole_run_recbole(monkeypatch):
    """RecBole's own ``run_recbole``. Its module imports ``ray.tune``, used only for hyper-parameter tuning:
    a stand-in is given instead. The real ray 2.6 fails to import under setuptools >= 81 (no
    ``pkg_resources``), and its half-finished import can close pytest's captured stderr on the way."""
    if "recbole.quick_start.quick_start" not in sys.modules:
        ray = types.ModuleType("ray")
        ray.tune = types.ModuleType("ray.tune")
        monkeypatch.setitem(sys.modules, "ray", ray)
        monkeypatch.setitem(sys.modules, "ray.tune", ray.tune)
    from recbole.quick_start import run_recbole

    return run_recbole


# ---- 1. parity with RecBole's run_recbole ------------------------------------------------------------------
def test_bpr_on_ml100k_matches_recbole_run_recbole(monkeypatch):
    settings = small_config(metric_decimal_place=10)
    ours = run_recbole_ckf(model="BPR", dataset="ml-100k", config_dict=dict(settings))
    saved = sorted(os.listdir("saved"))
    assert len(saved) == 1 and saved[0].startswith("BPR-")  # trainer.evaluate reloaded it (torch.load)

    run_recbole = _recbole_run_recbole(monkeypatch)
    theirs = run_recbole(model="BPR", dataset="ml-100k", config_dict={**settings, **PLUGIN_DEFAULTS})

    assert set(ours["test_result"]) == {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (1, 3, 10)}
    assert ours["test_result"] == theirs["test_result"]
    assert ours["best_valid_result"] == theirs["best_valid_result"]
    assert ours["best_valid_score"] == theirs["best_valid_score"]
    assert 0 < ours["test_result"]["ndcg@3"] < 1


@pytest.mark.parametrize("model, model_type", [("SASRec", "sequential"), ("DeepFM", "context")])
def test_sequential_and_context_models_match_recbole_run_recbole(monkeypatch, model, model_type):
    """RecBole's run_recbole, given the plugin's property files as config files, trains the same model."""
    settings = small_config(metric_decimal_place=10, data_path=os.path.join(REPO, "dataset"))
    ours = run_recbole_ckf(model=model, dataset=DATASET, config_dict=dict(settings))
    from recbole_ckf.config import PROPERTIES_DIR as properties
    files = [os.path.join(properties, "overall.yaml"), os.path.join(properties, "model_type", f"{model_type}.yaml"),
             os.path.join(properties, "dataset", f"{DATASET}.yaml")]
    theirs = _recbole_run_recbole(monkeypatch)(model=model, dataset=DATASET, config_file_list=files,
                                                config_dict=dict(settings))
    assert ours["test_result"] == theirs["test_result"]
    assert ours["best_valid_result"] == theirs["best_valid_result"]


def test_runs_keep_the_host_programs_logging_handlers():
    """Each run gets its own log file, and a program (or pytest) that calls run_recbole_ckf keeps its own
    logging handlers: RecBole's init_logger would do nothing while the root logger has any."""
    root = logging.getLogger()
    stream = io.StringIO()
    host = logging.StreamHandler(stream)
    root.addHandler(host)
    try:
        for model in ("BPR", "DeepFM"):
            run_recbole_ckf(model=model, dataset=DATASET, config_dict=small_config(state="INFO"))
            assert host in root.handlers and not stream.closed
            logs = glob.glob(os.path.join("log", model, "*.log"))
            assert len(logs) == 1 and "test result" in open(logs[0], encoding="utf-8").read()
        assert "test result" in stream.getvalue()
        logging.getLogger("host").warning("the host still logs")
        assert "the host still logs" in stream.getvalue()
    finally:
        root.removeHandler(host)


# ---- 2. one split for every model type --------------------------------------------------------------------
def _triples(data, rows=None, column=None):
    """Multiset of (user token, item token, timestamp) of a split's interactions (optionally of a
    sequential dataset's history column ``column``, position 0, for ``rows``)."""
    feat = data.inter_feat
    uid, iid, time = data.uid_field, data.iid_field, data.time_field
    users = feat[uid].numpy()
    if column is None:
        items, times = feat[iid].numpy(), feat[time].numpy()
    else:
        items, times = feat[f"{iid}{column}"][:, 0].numpy(), feat[f"{time}{column}"][:, 0].numpy()
    if rows is not None:
        users, items, times = users[rows], items[rows], times[rows]
    return collections.Counter(
        zip(data.id2token(uid, users).tolist(), data.id2token(iid, items).tolist(), times.tolist())
    )


def _split_of(model):
    config = Config(model, DATASET, config_dict=small_config())
    dataset, train, valid, test = load_data(config)
    parts = {"train": train._dataset, "valid": valid._dataset, "test": test._dataset}
    split = {name: _triples(data) for name, data in parts.items()}
    if config["MODEL_TYPE"].name == "SEQUENTIAL":
        # RecBole augments sequential data *before* splitting: each row is (history -> target), and a
        # user's first interaction is never a target. The un-augmented training interactions are the train
        # rows' targets plus, from each user's first row (history length 1), its one history item.
        data = parts["train"]
        first = (data.inter_feat[config["ITEM_LIST_LENGTH_FIELD"]] == 1).numpy()
        split["train"] = split["train"] + _triples(data, rows=first, column=config["LIST_SUFFIX"])
        _check_sequential_histories(config, parts, split)
    return dataset, split


def _check_sequential_histories(config, parts, split):
    """A valid row's history is the user's training interactions (the latest MAX_ITEM_LIST_LENGTH of them);
    a test row's history ends with the user's valid interaction: nothing from valid/test leaks backwards."""
    valid, test = parts["valid"], parts["test"]
    iid, time, suffix = valid.iid_field, valid.time_field, config["LIST_SUFFIX"]
    length_field, max_len = config["ITEM_LIST_LENGTH_FIELD"], config["MAX_ITEM_LIST_LENGTH"]
    train_by_user = collections.defaultdict(collections.Counter)
    for (user, item, ts), n in split["train"].items():
        train_by_user[user][(item, ts)] += n
    users = valid.id2token(valid.uid_field, valid.inter_feat[valid.uid_field].numpy())
    for row, user in enumerate(users):
        n = int(valid.inter_feat[length_field][row])
        items = valid.id2token(iid, valid.inter_feat[iid + suffix][row, :n].numpy()).tolist()
        times = valid.inter_feat[time + suffix][row, :n].tolist()
        history = collections.Counter(zip(items, times))
        assert n == min(sum(train_by_user[user].values()), max_len)
        assert not history - train_by_user[user], f"user {user}: valid history holds non-training items"
    valid_of = {u: (i, t) for (u, i, t) in split["valid"]}
    users = test.id2token(test.uid_field, test.inter_feat[test.uid_field].numpy())
    for row, user in enumerate(users):
        n = int(test.inter_feat[length_field][row])
        last_item = test.id2token(iid, test.inter_feat[iid + suffix][row, n - 1].item())
        assert (last_item, test.inter_feat[time + suffix][row, n - 1].item()) == valid_of[user]


def test_general_sequential_and_context_models_share_one_split():
    splits = {}
    for model in ("BPR", "SASRec", "DeepFM"):
        dataset, splits[model] = _split_of(model)
    bpr = splits["BPR"]
    for model in ("SASRec", "DeepFM"):
        for part in ("train", "valid", "test"):
            assert splits[model][part] == bpr[part], f"{model} {part} differs from BPR's"

    # leave-one-out by time: one valid and one test interaction per user, none earlier than training
    total = sum(sum(c.values()) for c in bpr.values())
    assert total == dataset.inter_num
    users = set(dataset.id2token(dataset.uid_field, np.arange(1, dataset.user_num)).tolist())
    for part in ("valid", "test"):
        per_user = collections.Counter(u for (u, _, _), n in bpr[part].items() for _ in range(n))
        assert set(per_user) == users and set(per_user.values()) == {1}, part
    latest_train = collections.defaultdict(lambda: float("-inf"))
    for user, _, ts in bpr["train"]:
        latest_train[user] = max(latest_train[user], ts)
    valid_ts = {u: t for (u, _, t) in bpr["valid"]}
    test_ts = {u: t for (u, _, t) in bpr["test"]}
    assert set(latest_train) == users
    for user in users:
        assert test_ts[user] >= valid_ts[user] >= latest_train[user], user


def test_a_models_per_dataset_property_file_overrides_its_model_file_for_that_dataset_only():
    """properties/CKF/ml-100k.yaml (the backbone's budget on ml-100k) wins over properties/CKF.yaml on ml-100k,
    is not read for other data sets, and the command line still wins over both."""
    import yaml

    from recbole_ckf.config import PROPERTIES_DIR

    with open(os.path.join(PROPERTIES_DIR, "CKF", "ml-100k.yaml")) as f:
        ml_backbone = yaml.safe_load(f)["backbone_config"]
    with open(os.path.join(PROPERTIES_DIR, "CKF.yaml")) as f:
        default_backbone = yaml.safe_load(f)["backbone_config"]
    assert ml_backbone != default_backbone
    assert Config("CKF", "ml-100k", config_dict={"llm": "tiny"})["backbone_config"] == ml_backbone
    assert Config("CKF", DATASET, config_dict={"llm": "tiny"})["backbone_config"] == default_backbone
    override = Config("CKF", "ml-100k", cmd_args={"llm": "tiny", "backbone_config": "{'epochs': 1}"})
    assert override["backbone_config"] == {"epochs": 1}


# ---- 3. the command line's errors ---------------------------------------------------------------------------
def _write_inter(root, name, text):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"{name}.inter").write_text(text, encoding="utf-8")
    return str(root)


HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def _cli_error(capsys, argv):
    """Run the CLI in-process; return its one ``error:`` line (the last line of stderr)."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def test_cli_errors_in_process(capsys, tmp_path):
    base = ["--dataset=ml-100k", "--epochs=1", "--show_progress=False"]

    msg = _cli_error(capsys, ["--model=LightGCM", *base])
    assert "LightGCM" in msg and "LightGCN" in msg
    msg = _cli_error(capsys, ["--model=lightgcn", *base])
    assert "LightGCN" in msg and "case-sensitive" in msg

    msg = _cli_error(capsys, ["--model=BPR", "--dataset=no-such-data"])
    assert "no-such-data" in msg and "amazon-instruments" in msg and "--data_path" in msg

    msg = _cli_error(capsys, ["--model=BPR", *base, "--config_files=missing.yaml"])
    assert "missing.yaml" in msg and "not found" in msg
    (tmp_path / "bad.yaml").write_text("epochs: 1\nmetrics: [Hit, NDCG\nlearning_rate: 0.1\n")
    msg = _cli_error(capsys, ["--model=BPR", *base, "--config_files=bad.yaml"])
    assert "bad.yaml" in msg and "line 3" in msg

    msg = _cli_error(capsys, ["--model=BPR", *base, "--train_batch_size=0"])
    assert "train_batch_size" in msg and "0" in msg
    msg = _cli_error(capsys, ["--model=BPR", *base, "--learning_rate=-1"])
    assert "learning_rate" in msg and "-1" in msg

    data = tmp_path / "data"
    path = _write_inter(data, "badheader", "user_id:token\titem_id\trating:float\ttimestamp:float\n1\t2\t3\t4\n")
    msg = _cli_error(capsys, ["--model=BPR", "--dataset=badheader", f"--data_path={path}", *base[1:]])
    assert "badheader.inter" in msg and "item_id" in msg and "name:type" in msg

    _write_inter(data, "badfloat", HEADER + "u1\ti1\t4\t100\nu1\ti2\tfive\t101\nu2\ti1\t3\t102\n")
    msg = _cli_error(capsys, ["--model=BPR", "--dataset=badfloat", f"--data_path={path}", *base[1:]])
    assert "badfloat.inter" in msg and "'rating'" in msg and "line 3" in msg and "five" in msg

    _write_inter(data, "empty", "")
    msg = _cli_error(capsys, ["--model=BPR", "--dataset=empty", f"--data_path={path}", *base[1:]])
    assert "empty.inter" in msg and "empty" in msg
    _write_inter(data, "headeronly", HEADER)
    msg = _cli_error(capsys, ["--model=BPR", "--dataset=headeronly", f"--data_path={path}", *base[1:]])
    assert "headeronly.inter" in msg and "no rows" in msg

    msg = _cli_error(capsys, ["--model=BPR", *base, "epochs=3"])
    assert "epochs=3" in msg and "--key=value" in msg
    assert not os.path.exists("saved")  # no run started


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "run_recbole_ckf.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=LightGCM", "--dataset=ml-100k"], "LightGCN"),
        (["--model=BPR", "--dataset=ml-100k", "--epochs"], "--epochs"),
    ],
)
def test_cli_error_exit_status_and_one_line(args, expected):
    proc = _run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], proc.stderr


def test_cli_data_error_exit_status(tmp_path):
    path = _write_inter(tmp_path, "badfloat", HEADER + "u1\ti1\t4\t100\nu1\ti2\t4.5x\t101\n")
    proc = _run_cli("--model=BPR", "--dataset=badfloat", f"--data_path={path}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and proc.stderr.strip().splitlines()[-1] == error_lines[0]
    assert "'rating'" in error_lines[0] and "line 3" in error_lines[0] and "4.5x" in error_lines[0]


# ---- 4. comparison runs -------------------------------------------------------------------------------------
def test_comparison_writes_markdown_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    rows, (md_path, json_path) = run_comparison(["BPR", "DeepFM"], DATASET, config_dict=small_config(output_dir=str(out)))
    assert [r["model"] for r in rows] == ["BPR", "DeepFM"]
    files = sorted(os.listdir(out / DATASET))
    assert [f for f in files if not f.startswith(".")] == sorted(os.path.basename(p) for p in (md_path, json_path))
    assert md_path.endswith(".md") and json_path.endswith(".json")

    with open(json_path, encoding="utf-8") as f:
        table = json.load(f)
    assert table["dataset"] == DATASET and [r["model"] for r in table["rows"]] == ["BPR", "DeepFM"]
    bpr, deepfm = table["rows"]
    assert {"hit@1", "ndcg@3", "mrr@10"} <= set(bpr["test_result"])
    assert {"auc", "logloss"} <= set(deepfm["test_result"])
    assert deepfm["setting"].startswith("labeled")

    with open(md_path, encoding="utf-8") as f:
        markdown = f.read()
    table_rows = [line for line in markdown.splitlines() if line.startswith("| BPR") or line.startswith("| DeepFM")]
    assert len(table_rows) == 2
    assert f"{bpr['test_result']['ndcg@3']}" in table_rows[0]
    assert f"{deepfm['test_result']['auc']}" in table_rows[1]


def test_comparison_unwritable_output_dir_fails_before_training(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    config = small_config(output_dir=str(tmp_path / "a-file" / "out"))
    with pytest.raises(CKFError, match="output_dir"):
        run_comparison(["BPR", "DeepFM"], DATASET, config_dict=config)
    assert not os.path.exists("saved")  # refused before any model was trained


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_hands_freed_heap_pages_back():
    """Freed tensors in the middle of the C heap stay resident until release_memory() (a fresh process, so the
    heap is the test's own)."""
    code = (
        "import torch\n"
        "from recbole_ckf.trainer.runtime import release_memory\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "warm = torch.empty(2**20); del warm\n"  # frees an mmapped chunk: glibc raises its mmap threshold to 4 MB
        "keep = [torch.ones(2**20 - 1024) for _ in range(200)]\n"  # ~4 MB each, now on the heap
        "last = keep.pop()\n"  # still live at the top of the heap: only a trim can release what lies below it
        "del keep\n"
        "before = rss(); release_memory(); print(before, rss())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    before, after = map(float, out.stdout.split())
    assert before - after > 300, (before, after)  # MiB: most of the ~800 MB freed
