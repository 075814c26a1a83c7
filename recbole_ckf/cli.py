"""Command line of recbole-ckf, with RecBole's flags (``run_recbole_ckf.py`` in a checkout, ``python -m
recbole_ckf`` or the ``recbole-ckf`` console script after ``pip install``).

    python run_recbole_ckf.py --model=CKF --dataset=amazon-instruments
    python run_recbole_ckf.py --model=BPR,LightGCN,SASRec,DeepFM --dataset=ml-100k   # one comparison table
    python run_recbole_ckf.py --model=BPR --dataset=ml-100k --config_files="a.yaml b.yaml" --epochs=50
    python run_recbole_ckf.py --checkpoint=saved/CKF-ml-100k-<time> --recommend --users=1,2 --topk=10 --output=r.md

Any other ``--key=value`` overrides a config key, as in RecBole.
"""

import argparse
import signal
import sys
import threading


class UsageError(Exception):
    """A malformed command line: printed as one ``error:`` line, exit status 2 (as for every user mistake)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C: ``finally`` blocks run, so an atomic checkpoint write
    in progress removes its temporary folder, and the run stops with exit status 143 without a traceback."""


def _on_sigterm(signum, frame):
    raise Terminated()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage block and exit itself
        raise UsageError(message)


def parse_args(argv):
    parser = _Parser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", "-m", type=str, default=None, help="CKF, a RecBole model, or a comma list")
    parser.add_argument("--dataset", "-d", type=str, default=None, help="data set name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated yaml files")
    parser.add_argument("--recommend", nargs="?", const="True", default=None,
                        help="recommend for --users from --checkpoint=DIR (--topk=10, --output=FILE.json|.md)")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not key or not sep:
            raise UsageError(f"unrecognised argument '{arg}' (expected --key=value)")
        overrides[key] = value
    flag = None if args.recommend is None else str(args.recommend).strip().lower()
    if flag in ("false", "0", "no"):
        args.recommend = None
    elif flag is not None and flag not in ("true", "1", "yes"):
        raise UsageError(f"--recommend takes no value (got '{args.recommend}')")
    if args.recommend is not None:
        # --users / --topk / --output belong to the recommendation, not to the config (RecBole's topk is a metric key)
        args.users, args.topk, args.output = (overrides.pop(k, None) for k in ("users", "topk", "output"))
        if args.users is None:
            raise UsageError("--recommend needs --users=ID[,ID...] (the data set's original user ids)")
        args.topk = 10 if args.topk is None else args.topk
    else:
        for key in ("users", "output"):
            if key in overrides:
                raise UsageError(f"--{key} is an option of --recommend")
    return args, overrides


def main(argv=None):
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"error: {err} (see --help)", file=sys.stderr)
        return 2
    from recbole_ckf.errors import CKFError

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        from recbole_ckf.quick_start import run_comparison, run_recbole_ckf

        config_files = args.config_files.strip().split(" ") if args.config_files else None
        if args.recommend is not None:
            from recbole_ckf.recommend import run_cli

            run_cli(args.users, args.topk, args.output, config_files, cmd_args=overrides, model=args.model,
                    dataset=args.dataset)
            return 0
        models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else [None]
        if len(models) > 1:
            run_comparison(models, args.dataset, config_files, cmd_args=overrides)
        else:
            run_recbole_ckf(models[0], args.dataset, config_files, cmd_args=overrides)
    except CKFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
