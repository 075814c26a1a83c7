"""Interruption and reproducibility of CKF runs (tiny LM, CPU, ``run_recbole_ckf.py`` as a subprocess).

Four runs of the same config and seed start together:

* ``reference`` and ``again`` run uninterrupted: the same seed gives identical test metrics (10 decimals) and
  bitwise identical checkpoints;
* ``sigterm`` is killed during epoch 1 (once its ``last`` checkpoint of epoch 0 exists), ``sigkill`` within
  an epoch (it saves ``last`` after every batch, ``checkpoint_steps: 1``, and is killed once one within epoch 1
  or 2 exists); both are started again with ``--resume=<run folder>`` and end with exactly the reference's test
  metrics and weights.
  SIGTERM stops a run cleanly (exit status 143, no traceback, no half-written checkpoint); after SIGKILL a
  half-written checkpoint folder is left beside ``last`` on purpose, and the resumed run removes it.

Validation runs only after the last epoch (``eval_step`` = ``epochs``), so the best checkpoint, and with it the
test metrics, comes from the very end of training: every replayed batch, dropout mask and curriculum draw counts.
"""

import collections
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from recbole_ckf.errors import CKFError
from recbole_ckf.trainer.checkpoint import FILES, read_meta, resume_folder

EPOCHS = 3
SETTINGS = {
    "dataset": "amazon-instruments", "llm": "tiny", "epochs": EPOCHS, "eval_step": EPOCHS,
    "train_samples_per_task": 8, "valid_users": 8, "eval_users": 8, "tasks": "['ctr','sequential','rating']",
    "backbone": "BPR", "backbone_config": "{'embedding_size': 16, 'epochs': 1}", "learning_rate": 0.01,
    "metric_decimal_place": 10, "show_progress": False, "state": "INFO", "seed": 2020, "device": "cpu",
}
# one thread per run: the four runs share the machine's cores (the thread count is part of the setup
# a bitwise comparison needs)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "HF_HUB_OFFLINE": "1"}
TIMEOUT = 900


def _start(folder, *extra, log="stderr.txt"):
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, os.path.join(REPO, "run_recbole_ckf.py"), "--model=CKF",
            *[f"--{k}={v}" for k, v in SETTINGS.items()],
            f"--llm_cache_dir={folder / 'cache'}", f"--checkpoint_dir={folder / 'saved'}", *extra]
    err = open(folder / log, "w+", encoding="utf-8")
    proc = subprocess.Popen(argv, cwd=folder, env=ENV, stdout=subprocess.DEVNULL, stderr=err, text=True)
    proc.err_file = err
    return proc


def _finish(proc):
    """Wait for ``proc``; return (exit status, stderr)."""
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.err_file.seek(0)
    text = proc.err_file.read()
    proc.err_file.close()
    return proc.returncode, text


def _run_folder(folder):
    runs = glob.glob(str(folder / "saved" / "CKF-*"))
    return runs[0] if len(runs) == 1 else None


def _test_result(stderr):
    """The ``test result`` dict the run logged (RecBole's OrderedDict), or None."""
    match = re.search(r"test result\S*: (OrderedDict\(\[.*\]\))", stderr)
    if match is None:
        return None
    return dict(eval(match.group(1), {"OrderedDict": collections.OrderedDict, "nan": math.nan}))


def _same(a, b):
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def _weights(checkpoint):
    return {name: torch.load(os.path.join(checkpoint, name), weights_only=False)
            for name in ("adapters.pt", "bridge.pt", "cf_tables.pt")}


def _bitwise_equal(a, b):
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}: {key}"


def _last_meta(run):
    """The ``last`` checkpoint's meta.json, or None (none yet, or being replaced at this instant)."""
    try:
        return read_meta(os.path.join(run, "last"))
    except CKFError:
        return None


def _within_later_epoch(meta):
    """A checkpoint within epoch 1 or 2 (after a completed epoch): the resumed run replays a partial epoch."""
    return meta is not None and meta["epoch"] in range(EPOCHS - 1) and "batch" in meta


def _leftovers(run):
    """Temporary folders of atomic checkpoint writes (``.<name>.tmp-*``, ``.<name>.old-*``) in a run folder."""
    return [e for e in os.listdir(run) if ".tmp-" in e or ".old-" in e]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    t0 = time.time()
    within_epoch = {"sigkill": ["--checkpoint_steps=1"]}  # the other runs save 'last' at epoch ends only
    procs = {name: _start(root / name, *within_epoch.get(name, []))
             for name in ("reference", "again", "sigterm", "sigkill")}
    out = {}
    # sigterm: killed as soon as its epoch-0 'last' exists; sigkill: at a 'last' saved within epoch 1 or 2
    pending = {"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}
    alive = {}
    while pending and time.time() - t0 < TIMEOUT:
        for name in list(pending):
            run = _run_folder(root / name)
            meta = _last_meta(run) if run else None
            if meta is not None and (name != "sigkill" or _within_later_epoch(meta)):
                alive[name] = procs[name].poll() is None  # False: it ended before it could be killed
                procs[name].send_signal(pending.pop(name))
            elif procs[name].poll() is not None:
                alive[name] = False
                pending.pop(name)
        time.sleep(0.05)
    resumed = {}
    for name in ("sigterm", "sigkill"):
        status, stderr = _finish(procs[name])
        run = _run_folder(root / name)
        out[name] = {"status": status, "stderr": stderr, "run": run, "alive_when_killed": alive.get(name, False),
                     "leftovers_before_resume": _leftovers(run) if run else None,
                     "last_meta": _last_meta(run) if run else None}
        if run:
            if name == "sigkill":  # what a SIGKILL during a checkpoint write leaves beside 'last'
                half = os.path.join(run, ".last.tmp-killed", "out")
                os.makedirs(half)
                with open(os.path.join(half, "adapters.pt"), "wb") as f:
                    f.write(b"PK\x03\x04 half a file")
            resumed[name] = _start(root / name, *within_epoch.get(name, []), f"--resume={run}",
                                   log="stderr-resumed.txt")
    for name in ("reference", "again"):
        status, stderr = _finish(procs[name])
        out[name] = {"status": status, "stderr": stderr, "run": _run_folder(root / name)}
    # evaluation alone, from the reference's best checkpoint
    best = os.path.join(out["reference"]["run"] or "", "best")
    evaluation = _start(root / "eval_only", f"--checkpoint={best}", "--eval_only=True")
    for name, proc in resumed.items():
        status, stderr = _finish(proc)
        out[f"{name}_resumed"] = {"status": status, "stderr": stderr, "run": out[name]["run"]}
    status, stderr = _finish(evaluation)
    out["eval_only"] = {"status": status, "stderr": stderr, "run": _run_folder(root / "eval_only")}
    print(f"test_resume: all runs took {time.time() - t0:.0f} s")
    return out


def _completed(runs, name):
    run = runs[name]
    assert run["status"] == 0, run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"]
    result = _test_result(run["stderr"])
    assert result and "ctr:logloss" in result and "rating:rmse" in result and "sequential:ndcg@3" in result
    return result


def test_same_seed_gives_identical_metrics_and_weights(runs):
    reference, again = _completed(runs, "reference"), _completed(runs, "again")
    assert _same(reference, again), (reference, again)
    for name in ("best", "last"):
        _bitwise_equal(_weights(os.path.join(runs["reference"]["run"], name)),
                       _weights(os.path.join(runs["again"]["run"], name)))
    assert read_meta(os.path.join(runs["reference"]["run"], "best"))["epoch"] == EPOCHS - 1


def test_sigterm_stops_the_run_cleanly(runs):
    killed = runs["sigterm"]
    assert killed["alive_when_killed"], killed["stderr"][-3000:]
    assert killed["status"] == 143, killed["stderr"][-3000:]
    lines = killed["stderr"].strip().splitlines()
    assert lines[-1] == "error: terminated (SIGTERM)" and "Traceback" not in killed["stderr"]
    assert f"--resume={killed['run']}" in killed["stderr"]  # the run folder is logged, with how to resume
    assert _test_result(killed["stderr"]) is None  # it stopped mid-run
    assert killed["last_meta"]["epoch"] in range(EPOCHS - 1) and "batch" not in killed["last_meta"]
    assert killed["leftovers_before_resume"] == []  # nothing half-written


def test_resume_after_sigterm_matches_the_uninterrupted_run(runs):
    resumed = _completed(runs, "sigterm_resumed")
    assert "resuming from" in runs["sigterm_resumed"]["stderr"]
    assert _same(resumed, _completed(runs, "reference")), (resumed, _test_result(runs["reference"]["stderr"]))
    _bitwise_equal(_weights(os.path.join(runs["sigterm"]["run"], "last")),
                   _weights(os.path.join(runs["reference"]["run"], "last")))
    assert _leftovers(runs["sigterm"]["run"]) == []


def test_resume_after_sigkill_matches_the_uninterrupted_run(runs):
    killed = runs["sigkill"]
    assert killed["alive_when_killed"] and killed["status"] == -signal.SIGKILL, killed["stderr"][-3000:]
    assert _within_later_epoch(killed["last_meta"]), killed["last_meta"]  # killed mid-epoch: resumed mid-epoch
    resumed = _completed(runs, "sigkill_resumed")
    batch = killed["last_meta"]["batch"]
    epoch = killed["last_meta"]["epoch"] + 1
    logged = rf"resuming from .*\(epoch {epoch}, after batch {batch} of \d+\)"
    assert re.search(logged, runs["sigkill_resumed"]["stderr"])
    assert _same(resumed, _completed(runs, "reference"))
    _bitwise_equal(_weights(os.path.join(killed["run"], "best")),
                   _weights(os.path.join(runs["reference"]["run"], "best")))
    assert _leftovers(killed["run"]) == []  # the half-written folder left by the kill is gone


def test_eval_only_from_the_checkpoint_gives_the_runs_metrics(runs):
    assert _same(_completed(runs, "eval_only"), _completed(runs, "reference"))
    assert runs["eval_only"]["run"] is None  # evaluation writes no run folder


# ---- stale leftovers of an interrupted checkpoint write (no subprocess) --------------------------------------
def _fake_checkpoint(path, epoch):
    os.makedirs(path)
    for name in FILES + ("trainer_state.pt",):
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(json.dumps({"model": "CKF", "epoch": epoch}) if name == "meta.json" else "x")


def test_resume_cleans_leftovers_and_restores_a_checkpoint_moved_aside(tmp_path):
    run = tmp_path / "CKF-run"
    # killed between the two renames of atomic_path: the previous 'last' is aside, the new one was never placed
    _fake_checkpoint(run / ".last.old-abc" / "x", epoch=4)
    _fake_checkpoint(run / ".last.tmp-def" / "out", epoch=5)
    _fake_checkpoint(run / "best", epoch=3)
    (run / ".best.tmp-ghi").mkdir()
    assert resume_folder(run / "last") == str(run)  # the 'last' folder itself names its run
    assert sorted(os.listdir(run)) == ["best", "last"]
    assert read_meta(str(run / "last"))["epoch"] == 4

    # 'last' in place: an old copy beside it is dropped, never put back
    _fake_checkpoint(run / ".last.old-jkl" / "x", epoch=2)
    assert resume_folder(str(run)) == str(run)
    assert sorted(os.listdir(run)) == ["best", "last"] and read_meta(str(run / "last"))["epoch"] == 4

    shutil.rmtree(run / "last")
    with pytest.raises(CKFError, match="has no 'last' checkpoint"):
        resume_folder(str(run))
