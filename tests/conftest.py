"""Shared test fixtures.

* Nothing is ever fetched from a model hub (``HF_HUB_OFFLINE=1``).
* Every test runs in its own ``tmp_path`` as current folder (RecBole writes ``log/``, ``saved/`` and
  ``log_tensorboard/`` into the current folder) with ``sys.argv == ["pytest"]`` (RecBole's own Config parses
  ``--key=value`` from ``sys.argv``, and would read pytest's own options); ``CUDA_VISIBLE_DEVICES``, which
  RecBole's Config sets, is restored afterwards.
* :func:`small_config` builds the small, fast config dicts the RecBole runs of the tests use.
"""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Small models and one epoch: every RecBole run of the suite takes seconds on 2 CPU cores.
SMALL = {
    "epochs": 1,
    "show_progress": False,
    "train_batch_size": 4096,
    "eval_batch_size": 4096,
    "embedding_size": 16,  # BPR, DeepFM, ...
    "mlp_hidden_size": [16],  # DeepFM, WideDeep, ...
    "n_layers": 1,  # SASRec
    "n_heads": 2,
    "hidden_size": 16,
    "inner_size": 32,
    "MAX_ITEM_LIST_LENGTH": 20,
    "state": "WARNING",  # keep RecBole's console logging short
}


def small_config(**overrides):
    """A fresh config dict with :data:`SMALL`'s settings, updated with ``overrides``."""
    config = {k: (list(v) if isinstance(v, list) else v) for k, v in SMALL.items()}
    config.update(overrides)
    return config


@pytest.fixture(autouse=True)
def _isolated_run(tmp_path, monkeypatch):
    """Run each test in ``tmp_path`` with a clean ``sys.argv``; restore ``CUDA_VISIBLE_DEVICES`` afterwards."""
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    if cuda_visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible


@pytest.fixture
def make_small_config():
    """The :func:`small_config` helper as a fixture."""
    return small_config


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): the
    tiny LM gains nothing from a second thread; on a busy 2-core machine, it only spins."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs the real Gemma-3-270M (minutes); run with RECBOLE_CKF_SLOW=1")
