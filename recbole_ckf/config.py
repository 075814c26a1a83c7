"""Config: RecBole's Config that also knows the plugin's models and property files.

Differences from ``recbole.config.Config`` (each for a reason a RecBole user would otherwise trip on):

* models are looked up in the plugin first (``CKF``), then in RecBole, with a clear error naming the closest
  known models (:mod:`recbole_ckf.registry`);
* after RecBole's own property files, the plugin's (package data in ``recbole_ckf/properties/``) are loaded.
  RecBole's layering order is kept, lowest priority first:

  1. RecBole's own ``recbole/properties/overall.yaml``, ``model/<model>.yaml`` and ``dataset/<name>.yaml``
     (and its sample dataset files), as ``recbole.config.Config._load_internal_config_dict`` reads them;
  2. the plugin's ``properties/overall.yaml`` < ``properties/model_type/<type>.yaml`` <
     ``properties/dataset/<name>.yaml`` < ``properties/<model>.yaml`` < ``properties/<model>/<name>.yaml`` (a
     model's budget for one data set, e.g. the CKF backbone's epochs on ml-100k): the internal config;
  3. then, as in RecBole, the external config: the user's ``config_file_list`` < ``config_dict`` < command line
     (``cmd_args``); RecBole merges internal < external in ``_get_final_config_dict``;
* command-line overrides are passed in explicitly (``cmd_args``) instead of being read from ``sys.argv``, so
  that the Config can be built under pytest or inside another program;
* data sets are found in the project's ``dataset/`` folder unless ``data_path`` is given (``ml-100k`` comes
  from RecBole's wheel, as in RecBole);
* devices are left to Accelerate: RecBole's Config would set ``CUDA_VISIBLE_DEVICES`` and start its own
  distributed group from ``local_rank``;
* ``eval_args`` given in part (``--eval_args="{'mode': 'pop9'}"``) changes only those keys: the others keep the
  property files' values (RecBole would fill them with its own defaults, a random 8:1:1 split);
* user mistakes (missing or malformed yaml, unknown model or data set, out-of-range values) raise
  :class:`~recbole_ckf.errors.CKFError` with one line; so do RecBole settings that RecBole would accept and then
  fail on after the data is read (``valid_metric`` not among ``metrics``/``topk``, ranking metrics in ``labeled``
  mode, malformed ``eval_args`` or ``train_neg_sample_args``, ``load_col`` without the fields the split needs, a
  CKF run in ``full`` mode, ...): :mod:`recbole_ckf.settings_check`, run while the Config is built.
"""

import copy
import os

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_ckf import settings_check
from recbole_ckf.errors import CKFError
from recbole_ckf.registry import get_model

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(PACKAGE_DIR)
# the plugin's property files are package data: found the same way in a checkout and after `pip install .`
PROPERTIES_DIR = os.path.join(PACKAGE_DIR, "properties")
# data sets: the checkout's dataset/ (amazon-instruments ships there); installed without a checkout, RecBole's
# own default, dataset/ of the current folder (ml-100k comes from RecBole's wheel either way)
_CHECKOUT_DATASETS = os.path.join(PROJECT_ROOT, "dataset")
DATASET_DIR = _CHECKOUT_DATASETS if os.path.isfile(os.path.join(PROJECT_ROOT, "setup.py")) and os.path.isdir(
    _CHECKOUT_DATASETS) else "dataset"

_MODEL_TYPE_FILES = {
    ModelType.GENERAL: "general.yaml",
    ModelType.SEQUENTIAL: "sequential.yaml",
    ModelType.CONTEXT: "context.yaml",
    ModelType.DECISIONTREE: "context.yaml",
}

# (key, predicate, what is expected): checked on the final config
_RANGE_CHECKS = (
    ("epochs", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("train_batch_size", lambda v: isinstance(v, int) and v > 0, "an integer > 0"),
    ("eval_batch_size", lambda v: isinstance(v, int) and v > 0, "an integer > 0"),
    ("learning_rate", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
    ("stopping_step", lambda v: isinstance(v, int) and v > 0, "an integer > 0"),
    ("eval_step", lambda v: isinstance(v, int) and v > 0, "an integer > 0"),
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    ("checkpoint_steps", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
     "an integer > 0 or ~"),
)


def read_yaml(path, loader=yaml.FullLoader):
    """Read one yaml property file as a dict, or raise a one-line CKFError naming the file."""
    if not os.path.isfile(path):
        raise CKFError(f"config file '{path}' not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            content = yaml.load(f.read(), Loader=loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CKFError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise CKFError(f"config file '{path}' must hold 'key: value' lines, found a {type(content).__name__}")
    return content


class Config(RecBoleConfig):
    """RecBole's Config, extended with the plugin's models and property files (see the module docstring)."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None):
        self._cmd_args = dict(cmd_args or {})
        try:
            super().__init__(model, dataset, config_file_list, config_dict)
        except (NotImplementedError, RuntimeError, TypeError, ValueError) as err:
            # RecBole's own checks that settings_check does not anticipate: a user's config mistake
            raise CKFError(f"config: {err}") from None
        self._check_values()
        self._check_dataset_folder()
        ckf_tasks = None
        if getattr(self.model_class, "type", None) is not None and self.model == "CKF":
            from recbole_ckf.data.fields import add_text_columns

            add_text_columns(self)  # CKF reads titles/reviews; baselines never load them
            # CKF's ctr/rating tasks read the raw rating (1-5): RecBole's own ml-100k yaml sets normalize_all, which
            # would min-max scale it to [0, 1] (every ctr label "No", rating answers "0"/"1")
            rating = self["RATING_FIELD"]
            self["normalize_all"] = False
            self["normalize_field"] = [f for f in (self["normalize_field"] or []) if f != rating] or None
            from recbole_ckf.data.fields import available_tasks

            ckf_tasks, _ = available_tasks(self)  # an unknown or unavailable task fails here, before anything is read
        # RecBole settings that would end in a traceback (or in nothing) after the data is read: refused here
        settings_check.check_config(self, ckf_tasks, explicit_valid_metric="valid_metric" in self.external_config_dict)

    # ---- where values come from -------------------------------------------------------------------
    def _init_parameters_category(self):
        super()._init_parameters_category()
        # RecBole appends a dataset yaml's keys to its module-level argument lists in place; work on copies
        self.parameters = {k: list(v) for k, v in self.parameters.items()}

    def _load_config_files(self, file_list):
        merged = {}
        for file in file_list or []:
            merged.update(read_yaml(file, self.yaml_loader))
        return merged

    def _load_cmd_line(self):
        return self._convert_config_dict(dict(self._cmd_args))

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise CKFError("no model given: pass --model=NAME (e.g. --model=CKF or --model=BPR)")
        model_class = get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise CKFError("no data set given: pass --dataset=NAME (e.g. --dataset=amazon-instruments)")
        return model_class.__name__, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = DATASET_DIR
        files = [
            os.path.join(PROPERTIES_DIR, "overall.yaml"),
            os.path.join(PROPERTIES_DIR, "model_type", _MODEL_TYPE_FILES.get(model_class.type, "")),
            os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml"),
            os.path.join(PROPERTIES_DIR, f"{model}.yaml"),
            os.path.join(PROPERTIES_DIR, model, f"{dataset}.yaml"),
        ]
        for file in files:
            if os.path.isfile(file):
                content = read_yaml(file, self.yaml_loader)
                self.internal_config_dict.update(content)
                if os.path.basename(os.path.dirname(file)) == "dataset":
                    self.parameters["Dataset"] += [k for k in content if k not in self.parameters["Dataset"]]

    def _get_final_config_dict(self):
        final = super()._get_final_config_dict()
        # eval_args: the user's keys over the property files' (RecBole would fill the missing ones with its own
        # defaults, RS 8:1:1 in random order, silently replacing the plugin's leave-one-out split)
        base, given = self.internal_config_dict.get("eval_args"), self.external_config_dict.get("eval_args")
        if isinstance(base, dict) and isinstance(given, dict):
            final["eval_args"] = {**copy.deepcopy(base), **given}
        self._check_switches(final)
        if final.get("MODEL_TYPE") in (ModelType.CONTEXT, ModelType.DECISIONTREE):
            self._set_context_task(final)
        return final

    def _check_switches(self, final):
        """A key whose property-file default is True/False takes True/False. RecBole evaluates ``--key=value``
        as Python, so ``--use_cf=false`` would stay the string 'false', which is truthy: read any case of
        true/false as the switch, refuse anything else."""
        for key, default in self.internal_config_dict.items():
            if key not in final or not isinstance(default, bool) or isinstance(final[key], bool):
                continue
            value = final[key]
            text = str(value).strip().lower()
            if text not in ("true", "false"):
                raise CKFError(f"config key '{key}': expected True or False, got {value!r}")
            final[key] = text == "true"

    @staticmethod
    def _set_context_task(final):
        """Context models run in one of two settings on the same split: ``ctr`` (labeled, rating >= threshold)
        or ``rating`` (the rating itself as label, min-max scaled to [0, 1]; RMSE/MAE are rescaled to 1-5)."""
        task = final.get("baseline_task", "ctr")
        if task == "ctr":
            return
        if task != "rating":
            raise CKFError(f"baseline_task: expected 'ctr' or 'rating', got '{task}'")
        rating = final.get("RATING_FIELD", "rating")
        final["threshold"] = None
        final["LABEL_FIELD"] = rating
        final["normalize_field"] = [f for f in (final.get("normalize_field") or []) if f != rating] + [rating]
        final["normalize_all"] = False
        final["metrics"] = ["RMSE", "MAE"]
        final["valid_metric"] = "RMSE"

    def _set_default_parameters(self):
        # before RecBole reads metrics, eval_args and train_neg_sample_args (it raises ValueError, or nothing)
        settings_check.check_raw(self.final_config_dict, self.model, self.model_class)
        super()._set_default_parameters()

    # ---- devices: Accelerate owns them ----------------------------------------------------------------
    def _init_device(self):
        import torch

        gpu_id = self.final_config_dict.get("gpu_id", "")
        self.final_config_dict["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (list, tuple)) else str(gpu_id)
        self.final_config_dict["single_spec"] = True
        self.final_config_dict["local_rank"] = int(os.environ.get("LOCAL_RANK", 0))
        if int(os.environ.get("RANK", 0)) != 0:  # `accelerate launch`: one log; the other processes report errors
            self.final_config_dict["state"] = "ERROR"
        # device: auto | cpu | cuda (properties/overall.yaml): auto takes CUDA when torch sees a GPU (and use_gpu is
        # not False); cuda without a GPU is a user's mistake. use_gpu follows, so that Accelerate agrees.
        requested = self.final_config_dict.get("device") or "auto"
        requested = requested.type if isinstance(requested, torch.device) else str(requested).strip().lower()
        if requested not in ("auto", "cpu", "cuda"):
            raise CKFError(f"config key 'device': expected auto, cpu or cuda, got {requested!r}")
        if requested == "cuda" and not torch.cuda.is_available():
            raise CKFError(f"device: cuda was asked for, but torch {torch.__version__} sees no CUDA GPU on this "
                           f"machine; use --device=cpu or --device=auto")
        if requested == "auto":
            use_gpu = bool(self.final_config_dict.get("use_gpu", True)) and torch.cuda.is_available()
        else:
            use_gpu = requested == "cuda"
        self.final_config_dict["use_gpu"] = use_gpu
        self.final_config_dict["device"] = torch.device("cuda") if use_gpu else torch.device("cpu")

    # ---- checks -------------------------------------------------------------------------------------
    def _check_values(self):
        for key, ok, expected in _RANGE_CHECKS:
            if key in self.final_config_dict and not ok(self.final_config_dict[key]):
                raise CKFError(f"config key '{key}': expected {expected}, got {self.final_config_dict[key]!r}")

    def _check_dataset_folder(self):
        path = self.final_config_dict["data_path"]
        inter = os.path.join(path, f"{self.dataset}.inter")
        if not os.path.isfile(inter):
            shipped = sorted(d for d in (os.listdir(DATASET_DIR) if os.path.isdir(DATASET_DIR) else [])
                             if os.path.isdir(os.path.join(DATASET_DIR, d)))
            known = ", ".join(["ml-100k"] + [d for d in shipped if d != "ml-100k"])
            raise CKFError(
                f"unknown data set '{self.dataset}': no atomic file '{inter}' (shipped data sets: {known}; "
                f"for your own data set pass --data_path=FOLDER holding {self.dataset}/{self.dataset}.inter)"
            )
