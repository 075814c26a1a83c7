"""Every fix RecBole 1.2.1 needs against current numpy, scipy, pandas and torch; nothing else patches RecBole.

Import this module before anything from ``recbole`` (``recbole_ckf/__init__.py`` does). Each fix is idempotent
and says why it is needed:

* numpy: RecBole uses the aliases ``np.float_``/``np.bool``/... (removed in numpy 1.24 / 2.0). ``setup.py``
  pins ``numpy<2``; the aliases removed in 1.24 are restored here (RecBole's Config does the same, but only
  once a Config exists, while ``recbole.evaluator.metrics`` needs ``np.bool`` at call time).
* scipy: ``dok_matrix._update`` (used by LightGCN, NGCF, ... to build the adjacency) is gone in scipy 1.13;
  ``setup.py`` pins ``scipy<1.13`` and a replacement is installed only where it is missing.
* torch >= 2.6: ``torch.load`` defaults to ``weights_only=True``, which cannot read RecBole's own
  checkpoints (they pickle the Config and numpy state). RecBole's trainer loads only the checkpoint files it
  wrote itself, so its module gets a ``torch.load`` that passes ``weights_only=False``; torch's global
  default stays untouched for everybody else.
* autograd anomaly detection: importing ``recbole.model`` runs ``torch.autograd.set_detect_anomaly(True)``
  (in ``sequential_recommender/sine.py``), which makes every model about 2x slower; it is switched off
  right after that import.
* pandas: RecBole's ``token_seq`` fields break silently under pandas 3; ``setup.py`` pins ``pandas<3`` and
  :func:`check_versions` refuses to run on a version outside the pins.
"""

import functools

import numpy as np

_APPLIED = False


def _numpy_aliases():
    for name, value in (
        ("bool", np.bool_),
        ("int", np.int_),
        ("float", np.float64),
        ("complex", np.complex128),
        ("object", np.object_),
        ("str", np.str_),
        ("long", np.int_),
        ("unicode", np.str_),
    ):
        if name not in np.__dict__:
            setattr(np, name, value)
    if not hasattr(np, "float_"):
        np.float_ = np.float64


def _scipy_dok_update():
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):

        def _update(self, data):
            for key, value in data.items():
                self[key] = value

        sp.dok_matrix._update = _update


def _torch_load_for_recbole():
    import torch
    import recbole.trainer.trainer as recbole_trainer

    if getattr(recbole_trainer.torch, "_recbole_ckf_patched", False):
        return

    class _TorchProxy:
        """``torch`` as seen by RecBole's trainer module, with a ``load`` that reads its own checkpoints."""

        _recbole_ckf_patched = True

        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        @functools.wraps(torch.load)
        def load(*args, **kwargs):
            kwargs.setdefault("weights_only", False)
            return torch.load(*args, **kwargs)

    recbole_trainer.torch = _TorchProxy()


def _no_anomaly_detection():
    import torch
    import recbole.model.sequential_recommender  # noqa: F401  (runs set_detect_anomaly(True))

    torch.autograd.set_detect_anomaly(False)


def check_versions():
    """Fail early, with one line, on a numpy/pandas/scipy outside the versions RecBole 1.2.1 works with."""
    import pandas
    import scipy
    from packaging.version import Version

    from recbole_ckf.errors import CKFError

    for module, bound in ((np, "2"), (pandas, "3")):
        if Version(module.__version__) >= Version(bound):
            raise CKFError(
                f"{module.__name__} {module.__version__} is installed, but RecBole 1.2.1 needs "
                f"{module.__name__}<{bound}: run `pip install -e .` to get the pinned versions"
            )
    del scipy  # any scipy works: a missing dok_matrix._update is restored above


def apply():
    """Apply every fix once."""
    global _APPLIED
    if _APPLIED:
        return
    _numpy_aliases()
    _scipy_dok_update()
    _no_anomaly_detection()
    _torch_load_for_recbole()
    _APPLIED = True
