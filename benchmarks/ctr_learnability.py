"""Can CKF's training learn a ctr answer from a number its prompt shows, within the CPU budget? A controlled test.

The ctr task alone (``train_samples_per_task`` 384, 1 epoch, 512 validation users, Gemma-3-270M), once per
variant, each in its own process. With ``--rule user_mean`` every ctr label, training and validation, is replaced
by a deterministic function of the prompt: Yes when the user's earlier mean rating, which the prompt shows after
``{user}`` ("(12 ratings, avg 4.7 stars)", ``prompt_stats``), is at least ``--threshold``. A model that reads its
prompt reaches a validation AUC near 1 on it; on amazon-instruments the real labels (``--rule none``) carry a weak
signal only (the prompts' two means in a logistic regression: validation AUC 0.654, ``probe_answer_features.py``).
Variants:

* ``default``: the data set's defaults (CF slots, the curriculum);
* ``text_only``: ``use_cf: False`` (no slot tokens);
* ``anchor``: ``bridge_anchor: True`` (slot tokens start as the LLM's embedding of " user" / " item").

The rule is applied by wrapping ``TaskBuilder._point_samples`` in this process only (a benchmark's instrument,
not a feature), with a private sample cache so that no relabelled sample reaches the shared one. Each run records
its training losses in blocks of 24 steps, split by prompt form (slotted / text-only).

    python benchmarks/ctr_learnability.py --rule user_mean --variants default,text_only,anchor
    python benchmarks/ctr_learnability.py --rule none --variants default,text_only,anchor

Writes ``benchmarks/results/ctr_learnability_<dataset>_<rule>.json`` (commit, command, machine).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import RESULTS, config_settings, machine_info  # noqa: E402  (puts the repository on sys.path)

from recbole_ckf.utils import atomic_write_json  # noqa: E402

VARIANTS = {"default": {}, "text_only": {"use_cf": False}, "anchor": {"bridge_anchor": True}}
BLOCK = 24  # training steps per reported loss block


def run_one(args, variant):
    """Train and validate one variant in this process; returns its record."""
    import numpy as np

    from recbole_ckf.data import tasks as task_module
    from recbole_ckf.model.ckf import CKF
    from recbole_ckf.quick_start import run_recbole_ckf
    from recbole_ckf.trainer.trainer import CKFTrainer

    steps = []
    loss_of = CKF.calculate_loss

    def recorded(self, batch, slotted=True):
        loss = loss_of(self, batch, slotted)
        steps.append((float(loss.detach()), bool(slotted)))
        return loss
    CKF.calculate_loss = recorded

    if args.rule == "user_mean":
        point_samples = task_module.TaskBuilder._point_samples

        def relabelled(self, u, item, rating, head, history, hist_ratings, pool, stats):
            out = point_samples(self, u, item, rating, head, history, hist_ratings, pool, stats)
            if "ctr" in out:  # stats = (earlier count, earlier mean or None): what {user} shows
                like = stats[1] is not None and stats[1] >= args.threshold
                out["ctr"].label, out["ctr"].answer = float(like), "Yes" if like else "No"
            return out
        task_module.TaskBuilder._point_samples = relabelled
    cache = tempfile.mkdtemp(prefix="ckf_learnability_")
    CKFTrainer._cache_dir = lambda self: cache

    work = tempfile.mkdtemp(prefix="ckf_learnability_run_")
    config = {"tasks": ["ctr"], "train_samples_per_task": args.samples, "epochs": 1, "eval_step": 1,
              "valid_users": args.valid_users, "eval_users": 8, "score_fusion": "none", "show_progress": False,
              "checkpoint_dir": os.path.join(work, "saved"), **VARIANTS[variant], **args.settings}
    start = time.perf_counter()
    result = run_recbole_ckf("CKF", args.dataset, config_dict=config)
    seconds = time.perf_counter() - start

    def mean(xs):
        return round(float(np.mean(xs)), 3) if xs else None
    blocks = [steps[i:i + BLOCK] for i in range(0, len(steps), BLOCK)]
    valid = result["best_valid_result"]
    return {"variant": variant, "settings": config, "seconds": round(seconds, 1),
            "valid": {k: float(v) for k, v in valid.items() if "[" not in k},
            "loss_blocks": [{"all": mean([x for x, _ in b]), "slotted": mean([x for x, s in b if s]),
                             "text": mean([x for x, s in b if not s]), "slotted_steps": sum(s for _, s in b)}
                            for b in blocks]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="amazon-instruments")
    p.add_argument("--rule", choices=("user_mean", "none"), default="user_mean")
    p.add_argument("--threshold", type=float, default=4.6)
    p.add_argument("--variants", default="default,text_only,anchor")
    p.add_argument("--samples", type=int, default=384)
    p.add_argument("--valid-users", type=int, default=512)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config key for every run")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print its record
    args = p.parse_args(argv)
    args.settings = config_settings(p, args.set)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown '{unknown[0]}' (expected {', '.join(VARIANTS)})")
    if args.one:
        sys.argv = sys.argv[:1]  # the run's Config reads --key=value from sys.argv
        print("RECORD " + json.dumps(run_one(args, args.one)), flush=True)
        return 0

    info = machine_info()
    own = list(argv if argv is not None else sys.argv[1:])
    path = os.path.join(RESULTS, f"ctr_learnability_{args.dataset}_{args.rule}.json")
    if args.settings.get("llm", "gemma-3-270m") != "gemma-3-270m":  # e.g. tiny: a smoke test, not a result
        path = os.path.join(tempfile.gettempdir(), os.path.basename(path))
    store = {"dataset": args.dataset, "rule": args.rule, "threshold": args.threshold if args.rule != "none" else None,
             "machine": info, "runs": []}
    for variant in variants:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *own, "--one", variant],
                             capture_output=True, text=True)
        record = next((json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RECORD ")), None)
        if record is None:
            sys.stderr.write(out.stderr[-3000:])
            print(f"{variant}: failed (exit {out.returncode})", file=sys.stderr)
            return 1
        store["runs"].append(record)
        atomic_write_json(path, store)
        print(f"{variant}: valid AUC {record['valid'].get('ctr:auc')}, {record['seconds']} s, loss blocks "
              f"{[b['all'] for b in record['loss_blocks']]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
