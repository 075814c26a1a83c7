"""The compatibility module (recbole_ckf/compat.py): RecBole 1.2.1 on current numpy, scipy and torch."""

import inspect
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import recbole_ckf  # noqa: F401  (applies the fixes)
from conftest import REPO, small_config
from recbole_ckf import compat


def test_anomaly_detection_off_after_importing_recbole_models():
    # the trap is real: RecBole's sequential package switches anomaly detection on when imported
    from recbole.model.sequential_recommender import sine

    assert "set_detect_anomaly(True)" in inspect.getsource(sine)
    # in a fresh interpreter: the plugin first, then RecBole's model packages, in any way a user imports them
    script = (
        "import torch, recbole_ckf\n"
        "import recbole.model.sequential_recommender\n"
        "from recbole.model.sequential_recommender import SASRec\n"
        "from recbole.utils import get_model\n"
        "get_model('SINE'); get_model('BPR')\n"
        "from recbole_ckf.registry import get_model as plugin_get_model\n"
        "plugin_get_model('GRU4Rec')\n"
        "print('anomaly', torch.is_anomaly_enabled())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "anomaly False"
    assert not torch.is_anomaly_enabled()  # and in this process too


def test_numpy_aliases_and_scipy_dok_update():
    for name, value in (("float_", np.float64), ("bool", np.bool_), ("int", np.int_), ("float", np.float64),
                        ("complex", np.complex128), ("object", np.object_), ("str", np.str_),
                        ("long", np.int_), ("unicode", np.str_)):
        assert getattr(np, name) is value, name
    import scipy.sparse as sp

    m = sp.dok_matrix((3, 3), dtype=np.float32)
    m._update({(0, 1): 1.0, (2, 2): 3.0})
    assert m[0, 1] == 1.0 and m[2, 2] == 3.0 and m.nnz == 2
    compat.apply()  # idempotent
    compat.check_versions()  # the installed numpy/pandas are inside the pins


def test_recbole_trainer_reloads_its_own_checkpoint():
    """torch >= 2.6 loads with weights_only=True by default, which cannot read RecBole's checkpoints (they
    pickle the Config); RecBole's trainer gets a torch.load that can, torch's global default is untouched."""
    from recbole.utils import get_trainer

    from recbole_ckf.config import Config
    from recbole_ckf.data import load_data

    config = Config("BPR", "amazon-instruments", config_dict=small_config())
    _, train, valid, test = load_data(config)
    model = config.model_class(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    assert os.path.isfile(trainer.saved_model_file)

    # scramble the weights: evaluate() must restore them from the checkpoint
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    assert set(result) >= {"hit@1", "ndcg@3", "mrr@10"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key

    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(trainer.saved_model_file)  # the global default still refuses pickles


@pytest.mark.parametrize("given, expected", [(None, "128"), ("512", "512")])
def test_onednn_primitive_cache_capped_unless_the_environment_sets_it(given, expected):
    """Importing the plugin caps oneDNN's primitive cache (resident memory grew with every new matmul shape);
    a value the user set wins."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if given is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = given
    script = "import os, recbole_ckf; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == expected
