"""Command line of recbole-ckf (kept at the repository root for the README's commands); the code is
:mod:`recbole_ckf.cli`, also run as ``python -m recbole_ckf`` or ``recbole-ckf`` after ``pip install .``.

    python run_recbole_ckf.py --model=CKF --dataset=amazon-instruments
"""

import sys

from recbole_ckf.cli import Terminated, UsageError, main, parse_args  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
