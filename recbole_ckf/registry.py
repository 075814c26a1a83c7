"""Model and trainer lookup: the plugin's first, then RecBole's (as RecBole-GNN does).

RecBole's own ``get_model`` knows only ``recbole.model.*``: ``get_model('CKF')`` fails there with a
misleading error, so every entry point of the plugin looks models up here. Trainers are named by string too
(:data:`PLUGIN_TRAINERS`) and imported only when asked for: a model module never imports its trainer
(the layering is trainer -> model, never model -> trainer).
"""

import difflib
import importlib
import os
import pkgutil

from recbole_ckf.errors import CKFError

# plugin models: name -> "module:Class" (imported lazily: the LLM stack is heavy)
PLUGIN_MODELS = {"CKF": "recbole_ckf.model.ckf:CKF"}
# plugin trainers: model name -> "module.Class" (RecBole's trainers for every other model)
PLUGIN_TRAINERS = {"CKF": "recbole_ckf.trainer.trainer.CKFTrainer"}

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def _recbole_modules():
    """{lower-case model name: module path} for every model file shipped with RecBole."""
    import recbole.model

    found = {}
    root = os.path.dirname(recbole.model.__file__)
    for sub in _RECBOLE_SUBMODULES:
        for info in pkgutil.iter_modules([os.path.join(root, sub)]):
            found.setdefault(info.name.lower(), f"recbole.model.{sub}.{info.name}")
    return found


def _class_in(module_path, name):
    try:
        module = importlib.import_module(module_path)
    except ImportError as err:  # e.g. LightGBM/XGBoost without their packages
        raise CKFError(f"model '{name}' needs the package '{err.name}': pip install {err.name}") from None
    for attr in dir(module):
        obj = getattr(module, attr)
        if isinstance(obj, type) and attr.lower() == name.lower() and obj.__module__ == module.__name__:
            return obj
    return None


def known_model_names():
    """Plugin model names plus RecBole's model file names (RecBole names a file after its model, lower-cased)."""
    return sorted(PLUGIN_MODELS) + sorted(_recbole_modules())


def get_model(name):
    """Return the model class called ``name`` (case-sensitive like RecBole, with a clear error otherwise)."""
    if not isinstance(name, str):
        return name  # already a class
    if name in PLUGIN_MODELS:
        module_path, cls = PLUGIN_MODELS[name].split(":")
        return getattr(importlib.import_module(module_path), cls)
    modules = _recbole_modules()
    module_path = modules.get(name.lower())
    model_class = _class_in(module_path, name) if module_path else None
    if model_class is None or model_class.__name__ != name:
        if model_class is not None:
            raise CKFError(f"unknown model '{name}': did you mean '{model_class.__name__}'? (model names are case-sensitive)")
        close = difflib.get_close_matches(name.lower(), list(modules) + [m.lower() for m in PLUGIN_MODELS], n=3, cutoff=0.6)
        names = []
        for low in close:
            plugin = [m for m in PLUGIN_MODELS if m.lower() == low]
            try:
                names.append(plugin[0] if plugin else getattr(_class_in(modules[low], low), "__name__", low))
            except CKFError:
                names.append(low)
        hint = f"; closest known: {', '.join(names)}" if names else "; see RecBole's model list or use CKF"
        raise CKFError(f"unknown model '{name}'{hint}")
    return model_class


def _import_path(path):
    """``"package.module.Class"`` (or ``"package.module:Class"``) -> the class."""
    module_path, _, cls = path.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module_path), cls)


def get_trainer(model_type, model_name):
    """The trainer class of ``model_name``: the plugin's (:data:`PLUGIN_TRAINERS`), else RecBole's own
    ``recbole.utils.get_trainer(model_type, model_name)``."""
    if model_name in PLUGIN_TRAINERS:
        return _import_path(PLUGIN_TRAINERS[model_name])
    from recbole.utils import get_trainer as recbole_get_trainer

    return recbole_get_trainer(model_type, model_name)
