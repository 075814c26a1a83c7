"""The frozen collaborative-filtering backbone of CKF (step 1 of the method: collaborative knowledge).

A RecBole general recommender (``backbone``: LightGCN by default; BPR, NeuMF, NGCF, SGL, NCL, ... by config) is
trained with RecBole's own trainer on the CKF run's training split, or loaded from a RecBole checkpoint
(``backbone_checkpoint``), then frozen. It gives the tables e_u (``[n_users, d]``) and e_v (``[n_items, d]``),
indexed by RecBole's internal ids (row 0 is the padding id ``[PAD]``).

Same data, same split
    :func:`build_backbone_config` gives the backbone a Config of its own (its model parameters from RecBole's
    and the plugin's property files, then ``backbone_config``), with the CKF config's data, filtering and split
    keys copied over; the CKF run's *training* keys (LLM batch size, learning rate, epochs, ...) are not.
    :func:`train_backbone` never splits again: it trains on the very split datasets inside the CKF run's
    dataloaders. It does not reuse those dataloaders as they are, because they carry the CKF config (the LLM's
    ``train_batch_size``/``eval_batch_size`` and a pairwise input type, while NeuMF, for one, is pointwise):
    it builds the backbone's loaders around the same split datasets with the backbone's Config, the train
    loader with a fresh train-phase negative sampler built from the training split only (the sampler RecBole
    gives general models: negatives exclude the user's training items), the valid loader with the CKF run's
    own valid sampler (so the validation candidates are the CKF run's).

Final tables (:func:`export_tables`, in :mod:`recbole_ckf.model.backbone_tables`)
    the propagated tables of propagating models (LightGCN, NGCF, SGL, ...), NeuMF's GMF and MLP tables side by
    side, the embedding weights of embedding models (BPR, ...), copied to the CPU as frozen float32 tensors:
    later training of CKF can neither move them nor send gradient into the backbone.

Training is bitwise reproducible: it runs with ``backbone_threads`` torch CPU threads (1 by default). RecBole's
LightGCN trained on amazon-instruments with 2 threads gave tables that differed by up to 1.5e-7 from one process
to the next (the same seed, the same split), which CKF's training then amplifies; with 1 thread two processes
give identical tables, and the backbone takes seconds (amazon) to a minute (ml-100k) either way.

Training a backbone leaves the caller's random state (python, numpy, torch) as it was: it seeds RecBole's way
(``init_seed(seed)``) inside, so CKF's own initialisation does not depend on whether the backbone was trained
here or loaded from a checkpoint.
"""

import contextlib
import os
import random
from dataclasses import dataclass, field
from logging import getLogger
from typing import Optional

import numpy as np
import torch
from recbole.data.utils import get_dataloader
from recbole.sampler import Sampler
from recbole.utils import ModelType, get_trainer, init_seed
from recbole.utils.argument_list import dataset_arguments, training_arguments

from recbole_ckf.errors import CKFError
from recbole_ckf.model.backbone_tables import export_tables

DEFAULT_BACKBONE = "LightGCN"

# General settings the backbone shares with the CKF run (where it reads data, saves, logs, runs).
_SHARED_GENERAL_KEYS = (
    "seed", "reproducibility", "state", "checkpoint_dir", "show_progress", "use_gpu", "device", "gpu_id", "worker",
    "shuffle", "field_separator", "seq_separator",
)
# Evaluation settings that define the split and the validation candidates; metrics/topk/valid_metric are the
# backbone's own (the CKF config's may name task metrics such as AUC or ROUGE that a ranking model lacks).
_SHARED_EVAL_KEYS = ("eval_args", "repeatable")
# Keys of the backbone_config that would change the data or the split: they belong on the CKF config.
_FORBIDDEN_BACKBONE_KEYS = set(dataset_arguments) | set(_SHARED_EVAL_KEYS) | {"model", "dataset", "data_path"}
# Settings that shape the data (ids) and the split: a checkpoint must agree with the CKF run on all of them.
_CHECKPOINT_DATA_KEYS = (
    "dataset", "USER_ID_FIELD", "ITEM_ID_FIELD", "rm_dup_inter", "val_interval", "filter_inter_by_user_or_item",
    "user_inter_num_interval", "item_inter_num_interval",
)


@dataclass
class CFTables:
    """The frozen collaborative knowledge: e_u and e_v of a trained RecBole general model."""

    user_emb: torch.Tensor  # [n_users, d] float32, frozen (RecBole ids: row 0 is padding)
    item_emb: torch.Tensor  # [n_items, d]
    model_name: str  # e.g. "LightGCN"
    valid_result: dict = field(default_factory=dict)  # the backbone's best validation result; {} when loaded
    checkpoint: Optional[str] = None  # the RecBole .pth the tables come from (None: nothing was saved)

    @property
    def dim(self):
        """d, the width of the tables."""
        return int(self.user_emb.shape[1])


# ---- config ---------------------------------------------------------------------------------------------
def _backbone_name(ckf_config):
    name = ckf_config["backbone"] or DEFAULT_BACKBONE
    if not isinstance(name, str):
        raise CKFError(f"config key 'backbone': expected a RecBole general model name such as LightGCN, got {name!r}")
    return name


def _backbone_params(ckf_config):
    params = ckf_config["backbone_config"] or {}
    if not isinstance(params, dict):
        raise CKFError(f"config key 'backbone_config': expected a mapping of the backbone's own parameters "
                       f"(e.g. {{embedding_size: 64, epochs: 100}}), got {params!r}")
    bad = sorted(k for k in params if k in _FORBIDDEN_BACKBONE_KEYS)
    if bad:
        raise CKFError(f"backbone_config may not set '{bad[0]}': the backbone always uses the CKF run's data and "
                       f"split; set it on the CKF config instead")
    return dict(params)


def check_backbone_class(name):
    """The RecBole model class called ``name``, or a one-line CKFError if it is not a general recommender."""
    from recbole_ckf.registry import PLUGIN_MODELS, get_model

    if name in PLUGIN_MODELS:
        raise CKFError(f"backbone '{name}' is a plugin model; the backbone must be a RecBole general recommender "
                       f"(BPR, LightGCN, NeuMF, NGCF, ...)")
    model_class = get_model(name)
    if getattr(model_class, "type", None) != ModelType.GENERAL:
        kind = getattr(getattr(model_class, "type", None), "name", "unknown").lower()
        raise CKFError(f"backbone '{name}' is a {kind} model; CKF's backbone must be a RecBole general "
                       f"recommender with user and item embeddings (BPR, LightGCN, NeuMF, NGCF, ...)")
    return model_class


def build_backbone_config(ckf_config):
    """The backbone's own :class:`recbole_ckf.config.Config`, on the CKF run's data and split.

    ``model`` is ``ckf_config['backbone']``; its parameters come from RecBole's and the plugin's property files
    for that model, then from ``ckf_config['backbone_config']``. Copied from the CKF config: the data set, its
    folder, every data/filtering key (RecBole's Dataset category: ``load_col``, ``*_inter_num_interval``, ...),
    ``eval_args``/``repeatable`` (split and validation mode), seed and the general run settings. Not copied:
    training keys (``epochs``, ``train_batch_size``, ``learning_rate``, ...) and ``metrics``/``valid_metric``,
    which are the backbone's own.
    """
    from recbole_ckf.config import Config

    name = _backbone_name(ckf_config)
    check_backbone_class(name)
    config_dict = {}
    for key in _SHARED_GENERAL_KEYS:
        if key in ckf_config:
            config_dict[key] = ckf_config[key]
    training = set(training_arguments)
    for key in ckf_config.parameters["Dataset"]:
        if key in ckf_config and key not in training:
            config_dict[key] = ckf_config[key]
    for key in _SHARED_EVAL_KEYS:
        if key in ckf_config:
            config_dict[key] = ckf_config[key]
    # RecBole's Config appends the data set name to data_path: hand it the parent folder
    config_dict["data_path"] = os.path.dirname(os.path.normpath(ckf_config["data_path"]))
    config_dict.update(_backbone_params(ckf_config))
    return Config(model=name, dataset=ckf_config["dataset"], config_dict=config_dict)


# ---- dataloaders ------------------------------------------------------------------------------------------
def backbone_dataloaders(backbone_config, train_data, valid_data=None):
    """The backbone's (train, valid) loaders around the CKF run's own split datasets (see the module docstring).

    The training loader holds the training split only: ``train_data``'s dataset, with negatives from a
    train-phase sampler built from that split alone.
    """
    train_dataset = train_data._dataset
    neg_args = backbone_config["train_neg_sample_args"] or {"distribution": "none"}
    sampler = None
    if neg_args.get("distribution", "none") != "none":
        sampler = Sampler(["train"], [train_dataset], neg_args["distribution"], neg_args.get("alpha", 1.0))
        sampler = sampler.set_phase("train")
    train_loader = get_dataloader(backbone_config, "train")(
        backbone_config, train_dataset, sampler, shuffle=backbone_config["shuffle"])
    valid_loader = None
    if valid_data is not None:
        valid_loader = get_dataloader(backbone_config, "valid")(
            backbone_config, valid_data._dataset, valid_data._sampler, shuffle=False)
    return train_loader, valid_loader


# ---- training -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n):
    """``torch.set_num_threads(n)`` inside (``n`` None: unchanged), the caller's count restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _preserved_random_state():
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _unique_path(path):
    """RecBole names checkpoints ``<model>-<local time to the second>.pth``: two backbones trained within the
    same second would overwrite each other."""
    stem, ext = os.path.splitext(path)
    candidate, i = path, 1
    while os.path.exists(candidate):
        candidate, i = f"{stem}-{i}{ext}", i + 1
    return candidate


def _load_state(model, checkpoint):
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))


def train_backbone(ckf_config, train_data, valid_data, saved_dir=None):
    """Train the backbone with RecBole's trainer on the CKF run's training split; return its frozen tables.

    ``train_data``/``valid_data`` are the CKF run's loaders (from :func:`recbole_ckf.quick_start.load_data`);
    the backbone gets its own loaders around the same split datasets (:func:`backbone_dataloaders`). Training
    stops early on the backbone's ``valid_metric`` (``stopping_step``), RecBole's trainer saves the best
    epoch to ``<saved_dir or checkpoint_dir>/<model>-<time>.pth``, and the tables are exported from that best
    epoch (RecBole's ``fit`` leaves the model at its *last* epoch).
    """
    logger = getLogger()
    config = build_backbone_config(ckf_config)
    if saved_dir is not None:
        config["checkpoint_dir"] = saved_dir
    with _preserved_random_state(), _torch_threads(ckf_config["backbone_threads"]):
        init_seed(config["seed"], config["reproducibility"])
        train_loader, valid_loader = backbone_dataloaders(config, train_data, valid_data)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = config.model_class(config, train_loader._dataset).to(config["device"])
        export_tables(model)  # a model without user/item tables fails here, before any training
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        trainer.saved_model_file = _unique_path(trainer.saved_model_file)
        logger.info(f"CKF backbone: training {config['model']} on the training split "
                    f"({len(train_loader._dataset)} interactions), checkpoint {trainer.saved_model_file}")
        try:
            _, best_valid_result = trainer.fit(train_loader, valid_loader, saved=True,
                                               show_progress=config["show_progress"])
        except ModuleNotFoundError as err:  # e.g. NCL's clustering step needs faiss
            raise CKFError(f"backbone '{config['model']}' needs the package '{err.name}', which is not "
                           f"installed") from None
    checkpoint = trainer.saved_model_file
    if os.path.isfile(checkpoint):
        _load_state(model, torch.load(checkpoint, map_location=config["device"], weights_only=False))
    else:  # epochs: 0 - nothing was trained or saved
        logger.warning(f"CKF backbone: {config['model']} was not trained (epochs: {config['epochs']}); "
                       f"its tables are the initial ones")
        checkpoint = None
    user_emb, item_emb = export_tables(model)
    valid_result = {k: float(v) for k, v in (best_valid_result or {}).items()}
    return CFTables(user_emb, item_emb, config["model"], valid_result, checkpoint)


# ---- checkpoints ----------------------------------------------------------------------------------------
def _rows(state_dict, model_state, n, word):
    """The checkpoint's row count of the ``word`` (user/item) tables that have ``n`` rows in the model."""
    for key, value in model_state.items():
        if word in key.lower() and value.dim() >= 1 and value.shape[0] == n and key in state_dict:
            return int(state_dict[key].shape[0])
    return None


def _split_of(config):
    args = config["eval_args"] or {}
    return {k: args.get(k) for k in ("split", "order", "group_by")}


def load_backbone_checkpoint(ckf_config, path, dataset):
    """Load a RecBole checkpoint of the backbone model and return its frozen tables.

    ``dataset`` is the dataset the CKF model is built on: the *training split* (``train_data.dataset``).
    Propagating models rebuild their graph from it, so with the training split their tables see no
    valid/test interaction. The checkpoint must hold the ``backbone`` model, the data set's user and item
    counts, and the CKF run's data and split settings (a checkpoint trained on another split may have seen the
    CKF run's test interactions); any mismatch is a one-line CKFError naming the checkpoint.
    """
    config = build_backbone_config(ckf_config)
    name = config["model"]
    if not os.path.isfile(str(path)):
        raise CKFError(f"backbone_checkpoint '{path}' not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # RecBole pickles its Config
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CKFError(f"backbone_checkpoint '{path}' is not a readable RecBole checkpoint: {err}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise CKFError(f"backbone_checkpoint '{path}' is not a RecBole checkpoint (no 'state_dict' and 'config')")
    saved_config = checkpoint["config"]
    saved_model = saved_config["model"]
    if saved_model != name:
        raise CKFError(f"backbone_checkpoint '{path}' holds a {saved_model} model, but backbone is '{name}' "
                       f"(set backbone: {saved_model}, or train a {name})")

    model = config.model_class(config, dataset).to(config["device"])
    state_dict, model_state = checkpoint["state_dict"], model.state_dict()
    n_users, n_items = dataset.user_num, dataset.item_num
    ckpt_users = _rows(state_dict, model_state, n_users, "user")
    ckpt_items = _rows(state_dict, model_state, n_items, "item")
    mismatched = [k for k, v in state_dict.items() if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)]
    if ckpt_users != n_users or ckpt_items != n_items or mismatched:
        have = f"{ckpt_users if ckpt_users is not None else '?'} users and {ckpt_items if ckpt_items is not None else '?'} items"
        raise CKFError(f"backbone_checkpoint '{path}' was trained on {have} (data set "
                       f"'{saved_config['dataset']}'), but data set '{ckf_config['dataset']}' has {n_users} users and "
                       f"{n_items} items (counts include RecBole's padding id); "
                       f"{'parameter ' + repr(mismatched[0]) + ' differs in shape; ' if mismatched else ''}"
                       f"train the backbone on this data set")
    for key in _CHECKPOINT_DATA_KEYS:
        if saved_config[key] != ckf_config[key]:
            raise CKFError(f"backbone_checkpoint '{path}' was trained with {key}={saved_config[key]!r}, this run "
                           f"uses {key}={ckf_config[key]!r}: its ids or training interactions may differ")
    if _split_of(saved_config) != _split_of(ckf_config):
        raise CKFError(f"backbone_checkpoint '{path}' was trained on the split {_split_of(saved_config)}, this run "
                       f"uses {_split_of(ckf_config)}: it may have trained on this run's valid/test interactions")
    if (ckf_config["eval_args"] or {}).get("order") == "RO" and saved_config["seed"] != ckf_config["seed"]:
        raise CKFError(f"backbone_checkpoint '{path}' was trained with seed {saved_config['seed']} on a random "
                       f"split, this run uses seed {ckf_config['seed']}: its training split differs")
    try:
        _load_state(model, checkpoint)
    except RuntimeError as err:
        raise CKFError(f"backbone_checkpoint '{path}' does not fit a {name} built from the backbone_config: "
                       f"{str(err).splitlines()[0]}") from None
    user_emb, item_emb = export_tables(model)
    return CFTables(user_emb, item_emb, name, {}, str(path))
