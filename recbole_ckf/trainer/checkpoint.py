"""CKF checkpoints: only what was trained (LoRA adapters, bridge), the frozen CF tables and the config.

A checkpoint is a small folder written atomically (built next to its target, then renamed), so a reader
never sees a half-written one::

    <dir>/meta.json           model, data set, user/item counts, tasks, LLM, config
    <dir>/adapters.pt         LoRA weights of every adapter (shared + per task)
    <dir>/bridge.pt           meta-network bridge (MetaNet, Proj_user, Proj_item)
    <dir>/cf_tables.pt        frozen e_u / e_v tables of the backbone
    <dir>/answer_head.pt      the answer-head rows per task (``answer_head: True``)
    <dir>/trainer_state.pt    optional: optimizer, scheduler, epoch, RNG states (for --resume)
"""

import json
import os
import shutil

import torch

from recbole_ckf.errors import CKFError
from recbole_ckf.model.multi_lora import load_lora_state_dict, lora_state_dict
from recbole_ckf.utils import atomic_path, atomic_write_json

FILES = ("meta.json", "adapters.pt", "bridge.pt", "cf_tables.pt")
_CONFIG_KEYS = ("llm", "tasks", "backbone", "use_cf", "meta_network", "multi_lora", "pooling", "lora_r_shared",
                "lora_r_task", "lora_alpha", "lora_target_modules", "max_history", "pool_history", "prompt_templates",
                "sequential_answer", "n_candidates", "prompt_stats", "exclude_own_review", "item_text_words",
                "item_text_reviews", "ctr_threshold", "max_length", "explanation_max_tokens", "precision",
                "answer_head", "bridge_stats", "bridge_anchor", "seed")


def save_checkpoint(model, path, trainer_state=None, extra=None):
    meta = {
        "model": "CKF",
        "dataset": model.config["dataset"],
        "n_users": int(model.n_users),
        "n_items": int(model.n_items),
        "tasks": list(model.tasks),
        "llm": model.llm_name,
        "config": {k: model.config[k] for k in _CONFIG_KEYS if k in model.config},
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        os.makedirs(tmp)
        torch.save(lora_state_dict(model.llm), os.path.join(tmp, "adapters.pt"))
        torch.save(model.bridge.state_dict(), os.path.join(tmp, "bridge.pt"))
        torch.save({"user": model.user_table.cpu(), "item": model.item_table.cpu()}, os.path.join(tmp, "cf_tables.pt"))
        if len(model.answer_head):
            torch.save(model.answer_head.state_dict(), os.path.join(tmp, "answer_head.pt"))
        if trainer_state is not None:
            torch.save(trainer_state, os.path.join(tmp, "trainer_state.pt"))
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)


def record_adjustments(path, adjust):
    """Add the calibration / fusion fitted on validation to a checkpoint's meta.json (atomically), so that a
    program using the checkpoint later (``recommend``) applies what the evaluation applied."""
    meta = read_meta(path)
    meta["adjust"] = adjust
    atomic_write_json(os.path.join(path, "meta.json"), meta)


def read_meta(path):
    if not os.path.isdir(path):
        raise CKFError(f"checkpoint '{path}' is not a folder (expected a CKF checkpoint folder)")
    missing = [f for f in FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise CKFError(f"checkpoint '{path}' is incomplete or corrupt: '{missing[0]}' is missing")
    try:
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise CKFError(f"checkpoint '{path}': meta.json is unreadable ({err})") from None
    if not isinstance(meta, dict) or meta.get("model") != "CKF":
        raise CKFError(f"checkpoint '{path}': meta.json is not the description of a CKF checkpoint")
    return meta


def clean_stale(path):
    """Remove what an interrupted atomic write of the checkpoint ``path`` left beside it (see
    :func:`recbole_ckf.utils.atomic_path`): ``.<name>.tmp-*`` folders (never complete) and ``.<name>.old-*``
    folders (the previous checkpoint, moved aside just before the new one was renamed into place: put back when
    the process died between the two renames, so that ``path`` is missing)."""
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        full = os.path.join(parent, entry)
        if entry.startswith(f".{name}.old-"):
            previous = os.path.join(full, "x")
            if not os.path.exists(path) and os.path.isdir(previous):
                try:
                    os.replace(previous, path)
                except OSError:  # another process of the same run put it back first
                    pass
            shutil.rmtree(full, ignore_errors=True)
        elif entry.startswith(f".{name}.tmp-"):
            shutil.rmtree(full, ignore_errors=True)


def resume_folder(path):
    """The run folder to continue for ``--resume=PATH`` (the run folder, or its ``last`` checkpoint), checked:
    its ``last`` checkpoint must be complete and hold the trainer state. Leftovers of an interrupted checkpoint
    write are cleaned first."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.basename(path) == "last":
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise CKFError(f"resume: '{path}' is not a folder (expected a CKF run folder such as "
                       f"saved/CKF-<dataset>-<time>, logged at the start of the run)")
    for name in ("last", "best"):
        clean_stale(os.path.join(path, name))
    last = os.path.join(path, "last")
    if not os.path.isdir(last):
        raise CKFError(f"resume: '{path}' has no 'last' checkpoint (a run saves one at the end of every epoch "
                       f"and every checkpoint_steps batches; a run stopped before its first one must start again)")
    read_meta(last)
    if not os.path.isfile(os.path.join(last, "trainer_state.pt")):
        raise CKFError(f"resume: checkpoint '{last}' is incomplete or corrupt: 'trainer_state.pt' is missing")
    return path


def _load(path, name):
    try:
        return torch.load(os.path.join(path, name), map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign file
        raise CKFError(f"checkpoint '{path}': '{name}' is corrupt ({type(err).__name__})") from None


def load_checkpoint(model, path):
    """Load a checkpoint into ``model`` (built for the same data set); returns the trainer state or None."""
    meta = read_meta(path)
    if (meta.get("n_users"), meta.get("n_items")) != (int(model.n_users), int(model.n_items)):
        raise CKFError(
            f"checkpoint '{path}' was trained on data set '{meta.get('dataset')}' with {meta.get('n_users')} users "
            f"and {meta.get('n_items')} items, but '{model.config['dataset']}' has {model.n_users} users and "
            f"{model.n_items} items")
    if sorted(meta.get("tasks", [])) != sorted(model.tasks):
        raise CKFError(f"checkpoint '{path}' has tasks {meta.get('tasks')}, the config asks for {model.tasks}")
    anchored = bool(meta.get("config", {}).get("bridge_anchor", False))  # anchors are rebuilt, not saved
    if anchored != bool(model.config["bridge_anchor"]):
        raise CKFError(f"checkpoint '{path}' was trained with bridge_anchor {anchored}: set "
                       f"--bridge_anchor={anchored}")
    tables = _load(path, "cf_tables.pt")
    model.set_cf_tables(tables["user"], tables["item"])
    try:
        bridge = _load(path, "bridge.pt")
        if ("stats_item.weight" in bridge) != bool(model.bridge.n_stats):
            raise ValueError("its bridge has no rating-statistics maps: set --bridge_stats=False"
                             if model.bridge.n_stats else
                             "its bridge takes rating statistics, but bridge_stats is False: set --bridge_stats=True")
        model.bridge.load_state_dict(bridge)
        load_lora_state_dict(model.llm, _load(path, "adapters.pt"))
        saved_head = os.path.isfile(os.path.join(path, "answer_head.pt"))
        if saved_head != bool(len(model.answer_head)):
            raise ValueError("it has no answer head (answer_head.pt): set --answer_head=False" if not saved_head else
                             "it has an answer head (answer_head.pt), but answer_head is False: drop that setting")
        if saved_head:
            model.answer_head.load_state_dict(_load(path, "answer_head.pt"))
    except (RuntimeError, ValueError) as err:
        raise CKFError(f"checkpoint '{path}' does not fit this model configuration: {str(err).splitlines()[0]}") from None
    state = os.path.join(path, "trainer_state.pt")
    return _load(path, "trainer_state.pt") if os.path.isfile(state) else None
