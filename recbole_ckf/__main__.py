"""``python -m recbole_ckf --model=... --dataset=...``: the command line (:mod:`recbole_ckf.cli`)."""

import sys

from recbole_ckf.cli import main

sys.exit(main())
