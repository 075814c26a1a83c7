"""Quick start: ``run_recbole_ckf`` runs any model (CKF or a RecBole model) the way ``run_recbole`` does,
and ``run_comparison`` runs several on the very same split and writes one table.

The flow is RecBole's own (seed, dataset, split, model, trainer.fit, trainer.evaluate) so that a RecBole model
run through the plugin gives the same numbers as ``recbole.quick_start.run_recbole`` with the same config.
"""

import datetime
import json
import logging
import os
import sys
from logging import getLogger

from recbole.utils import init_logger, init_seed, set_color

from recbole_ckf.config import Config
from recbole_ckf.data import load_data
from recbole_ckf.errors import CKFError
from recbole_ckf.registry import get_trainer
from recbole_ckf.utils import atomic_write_json, atomic_write_text


_RUN_HANDLERS = []  # the root logger's handlers that RecBole's init_logger installed for the previous run


def _init_logging(config):
    """RecBole's init_logger, once per run: it uses logging.basicConfig, which does nothing while the root
    logger has any handler. Drop the previous run's handlers (so that every run gets its own log file) and
    install this run's, keeping the handlers of the program that called us (or of pytest)."""
    root = logging.getLogger()
    for handler in _RUN_HANDLERS:
        root.removeHandler(handler)
        handler.close()
    _RUN_HANDLERS.clear()
    host = root.handlers[:]
    for handler in host:
        root.removeHandler(handler)
    try:
        # RecBole's ensure_dir checks, then creates: two processes of one launch can race between the two
        os.makedirs(os.path.join("log", config["model"]), exist_ok=True)
        init_logger(config)
    except OSError as err:  # RecBole always logs into ./log/<model>/ of the current folder
        raise CKFError(f"cannot write RecBole's log folder '{os.path.abspath('log')}' ({err.strerror}): RecBole "
                       f"logs into ./log of the current folder; run from a folder you can write to") from None
    finally:
        _RUN_HANDLERS.extend(h for h in root.handlers if h not in host)
        for handler in host:
            root.addHandler(handler)


def _check_writable_folder(key, path):
    """Refuse a folder that cannot be created or written, without creating anything."""
    probe = os.path.abspath(str(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise CKFError(f"{key}: cannot create the folder '{path}': '{probe}' is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CKFError(f"{key}: cannot write the folder '{path}': '{probe}' is not writable")


def check_run_inputs(config):
    """The run's own inputs and outputs, checked before any data is read or anything written: ``eval_only``
    needs a ``checkpoint`` that exists (CKF: a complete checkpoint folder), ``resume`` a CKF run folder with a
    complete ``last`` checkpoint (normalised to the run folder), and ``checkpoint_dir`` must be writable."""
    from recbole_ckf.trainer.checkpoint import read_meta, resume_folder

    ckf = config["model"] == "CKF"
    if config["eval_only"]:
        if not config["checkpoint"]:
            raise CKFError("eval_only needs --checkpoint=PATH (a checkpoint saved by an earlier run: for CKF its "
                           "run folder's 'best' folder)")
        if ckf:
            read_meta(config["checkpoint"])
        elif not os.path.isfile(str(config["checkpoint"])):
            raise CKFError(f"checkpoint '{config['checkpoint']}' not found (expected a RecBole .pth file)")
    if config["resume"]:
        if not ckf:
            raise CKFError(f"resume: only CKF runs can be resumed (model '{config['model']}' is trained by "
                           f"RecBole's own trainer)")
        config["resume"] = resume_folder(config["resume"])
    _check_writable_folder("checkpoint_dir", config["checkpoint_dir"])


def _rescale_rating(config, result):
    """Rating-as-label baselines predict the min-max scaled rating: add RMSE/MAE on the 1-5 scale."""
    if config["baseline_task"] != "rating" or not result:
        return result
    low, high = config["rating_range"] or (1, 5)
    scaled = dict(result)
    for key in ("rmse", "mae"):
        if key in result:
            scaled[f"{key}_1_5"] = round(float(result[key]) * (high - low), config["metric_decimal_place"])
    return scaled


def run_recbole_ckf(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                    cmd_args=None, config=None):
    """Train and test one model; returns RecBole's result dict
    (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``, ``test_result``)."""
    config = config or Config(model, dataset, config_file_list, config_dict, cmd_args)
    check_run_inputs(config)  # before anything is read, trained or written
    init_seed(config["seed"], config["reproducibility"])
    _init_logging(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset, train_data, valid_data, test_data = load_data(config)
    logger.info(dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = config.model_class(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    if config["eval_only"]:
        # evaluate a saved model without training it (CKF: --checkpoint=DIR --eval_only)
        if hasattr(trainer, "setup"):
            trainer.setup(train_data, valid_data)
        best_valid_score, best_valid_result = None, {}
        test_result = trainer.evaluate(test_data, model_file=config["checkpoint"], show_progress=config["show_progress"])
    else:
        try:
            best_valid_score, best_valid_result = trainer.fit(
                train_data, valid_data, saved=saved, show_progress=config["show_progress"]
            )
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into KeyboardInterrupt)
            run_dir = getattr(trainer, "run_dir", None)
            if run_dir and os.path.isdir(os.path.join(run_dir, "last")):
                logger.warning(f"interrupted: continue this run with --resume={run_dir}")
            raise
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    best_valid_result = _rescale_rating(config, best_valid_result)
    test_result = _rescale_rating(config, test_result)

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


# ---- comparison of several models on one split ---------------------------------------------------------
def _plain(value):
    try:
        return round(float(value), 4)
    except (TypeError, ValueError):
        return value


def comparison_table(rows):
    """A markdown table: one row per model, one column per metric any model reported (test split)."""
    metrics = []
    for row in rows:
        for key in row["test_result"]:
            if key not in metrics:
                metrics.append(key)
    header = "| model | setting | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for row in rows:
        cells = [str(_plain(row["test_result"].get(m, ""))) if m in row["test_result"] else "" for m in metrics]
        lines.append(f"| {row['model']} | {row['setting']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_comparison(models, dataset, config_file_list=None, config_dict=None, cmd_args=None, saved=True):
    """Run every model of ``models`` on the same data set and split; print and write one table.

    Returns ``(rows, paths)``, ``paths`` being the markdown and JSON files written under
    ``<output_dir>/<dataset>/``.
    """
    configs = [Config(m, dataset, config_file_list, config_dict, cmd_args) for m in models]  # fail fast
    out_dir = os.path.join(configs[0]["output_dir"], configs[0]["dataset"])
    try:  # before any training: an unwritable output_dir should not cost the runs
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise CKFError(f"output_dir: cannot write '{out_dir}': {err.strerror}") from None
    rows = []
    for config in configs:
        result = run_recbole_ckf(config=config, saved=saved)
        setting = config["eval_args"]["mode"]["test"]
        if config["MODEL_TYPE"].name in ("CONTEXT", "DECISIONTREE"):
            setting = f"labeled ({config['baseline_task']})"
        rows.append({
            "model": config["model"],
            "setting": setting,
            "best_valid_result": {k: _plain(v) for k, v in result["best_valid_result"].items()},
            "test_result": {k: _plain(v) for k, v in result["test_result"].items()},
        })
    first = configs[0]
    table = comparison_table(rows)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.join(first["output_dir"], first["dataset"])
    md_path = os.path.join(out_dir, f"comparison-{stamp}.md")
    json_path = os.path.join(out_dir, f"comparison-{stamp}.json")
    split = json.dumps(first["eval_args"]["split"])
    header = (f"# {first['dataset']}: test results\n\nSplit: {split}, order {first['eval_args']['order']}, "
              f"seed {first['seed']}; every model sees the same train/valid/test interactions.\n\n")
    try:
        atomic_write_text(md_path, header + table)
        atomic_write_json(json_path, {"dataset": first["dataset"], "seed": first["seed"],
                                      "eval_args": first["eval_args"], "rows": rows})
    except OSError as err:
        raise CKFError(f"output_dir: cannot write '{out_dir}': {err.strerror}") from None
    print(table)
    print(f"comparison written to {md_path} and {json_path}")
    return rows, (md_path, json_path)
