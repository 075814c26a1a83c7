"""Where does CKF cross its backbone with more training budget? Trains CKF (Gemma-3-270M) once per budget point
(``train_samples_per_task`` 48 -> 192 -> 768 ..., one epoch each, everything else the data set's defaults) and
records the validation metrics the trainer reports (ctr AUC, sequential NDCG@3 and the backbone's NDCG@3 on the
same lists, rating RMSE) and the wall clock of each point (its log has the training tokens/s).

    python benchmarks/learning_curve.py --dataset amazon-instruments --points 48,192,768 --threads 1
    python benchmarks/learning_curve.py --points 96,384,1536 --set tasks=[ctr,rating] --set valid_users=512 \
        --tag ctr-rating     # the pointwise tasks alone (a quarter of the cost of a point)

``--set key=value`` (YAML values) changes any config key at every point; the backbone is trained once, at the
first point, and loaded from its checkpoint at the others (the same seed would train the same one).

Writes ``benchmarks/results/learning_curve_<dataset>.json`` after every point (a stopped run keeps what it has;
``--append`` adds points measured later, each with its own commit, machine and command)
and ``learning_curve_<dataset>.png``. A point longer than a sitting (hours of one epoch on CPU) is run with a
kept work folder and checkpoints within the epoch; the same command continues it where it was stopped::

    python benchmarks/learning_curve.py --points 7403 --append --work ~/curve --set checkpoint_steps=100

(its ``seconds`` then add the training time of the earlier sittings up to their last checkpoint; a finished
point's run folder is removed, the backbone kept). Validation users only (``valid_users``, the same users at every
point); the test split is evaluated on a handful of users only because a run always ends with a test (not reported).
"""

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

from common import RESULTS, config_settings, machine_info  # noqa: E402  (puts the repository on sys.path)

import torch  # noqa: E402

from recbole_ckf.utils import atomic_write_json  # noqa: E402

METRICS = [("sequential:ndcg@3", "sequential:ndcg@3[backbone]", "NDCG@3 (sequential)"),
           ("ctr:auc", None, "AUC (ctr)"),
           ("rating:rmse", None, "RMSE (rating)")]


def run_point(dataset, samples, epochs, llm, work, settings):
    from recbole_ckf.quick_start import run_recbole_ckf

    folder = os.path.join(work, f"point-{samples}")  # this point's run folder (and, at the first point, the backbone)
    overrides = {"llm": llm, "train_samples_per_task": samples, "epochs": epochs, "eval_step": epochs, "eval_users": 16,
                 "show_progress": False, "checkpoint_dir": folder, **settings}
    backbones = sorted(glob.glob(os.path.join(work, "point-*", "*.pth")))
    if backbones and "backbone_checkpoint" not in settings:
        overrides["backbone_checkpoint"] = backbones[0]
    point = {"train_samples_per_task": samples, "epochs": epochs}
    earlier = 0.0
    stopped = sorted(glob.glob(os.path.join(folder, "CKF-*", "last", "trainer_state.pt")))
    if stopped:  # an earlier sitting of this point was stopped: continue it
        overrides["resume"] = os.path.dirname(os.path.dirname(stopped[-1]))
        partial = torch.load(stopped[-1], weights_only=False).get("partial") or {}
        earlier = partial.get("seconds", 0.0)
        point["resumed"] = {"after_batch": partial.get("batch"), "of": partial.get("batches"),
                            "earlier_training_seconds": round(earlier, 1)}
    start = time.perf_counter()
    result = run_recbole_ckf("CKF", dataset, config_dict=overrides)
    for run in glob.glob(os.path.join(folder, "CKF-*")):  # done: a later sitting must not resume it
        shutil.rmtree(run)
    return {**point, "seconds": round(time.perf_counter() - start + earlier, 1),
            "valid": {k: float(v) for k, v in result["best_valid_result"].items()}}


def plot(store, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = store["points"]
    xs = [p["train_samples_per_task"] for p in points]
    metrics = [m for m in METRICS if any(m[0] in p["valid"] for p in points)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, (key, ref, title) in zip(axes[0], metrics):
        ax.plot(xs, [p["valid"].get(key) for p in points], "o-", label="CKF")
        if ref:
            ax.plot(xs, [p["valid"].get(ref) for p in points], "s--", label="backbone, same lists")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("training samples per task (1 epoch)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    threads = sorted({p["machine"].get("torch_threads") for p in points})
    fig.suptitle(f"CKF validation metrics vs budget: {store['dataset']}, {store['llm']}, torch threads "
                 f"{'/'.join(map(str, threads))}", fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="amazon-instruments")
    p.add_argument("--points", default="48,192,768", help="train_samples_per_task values")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llm", default="gemma-3-270m", help="tiny: a smoke test of this script, not a result")
    p.add_argument("--append", action="store_true", help="add the points to the stored file (same data set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config key for every point")
    p.add_argument("--tag", default="", help="results file learning_curve_<dataset>_<tag>.json")
    p.add_argument("--work", default=None, help="a folder to keep the points' runs in (a stopped point continues "
                   "there when the command is run again); default: a temporary folder, removed at the end")
    args = p.parse_args(argv)
    settings = config_settings(p, args.set)
    command = "python benchmarks/learning_curve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    sys.argv = sys.argv[:1]  # the run's Config reads --key=value from sys.argv
    info = machine_info()
    info["torch_threads"] = args.threads
    name = f"learning_curve_{args.dataset}{'_' + args.tag if args.tag else ''}"
    path = os.path.join(RESULTS, f"{name}.json")
    if args.llm != "gemma-3-270m":
        path = os.path.join(tempfile.gettempdir(), f"{name}_{args.llm}.json")
    store = {"dataset": args.dataset, "llm": args.llm, "settings": settings, "points": []}
    if args.append and os.path.isfile(path):
        store = json.load(open(path))
    # every point records the commit, machine and command it was measured with
    point_info = {"machine": info, "command": command}
    work = os.path.abspath(os.path.expanduser(args.work or tempfile.mkdtemp(prefix="recbole_ckf_curve_")))
    os.makedirs(work, exist_ok=True)
    try:
        for samples in (int(x) for x in args.points.split(",")):
            store["points"].append(dict(run_point(args.dataset, samples, args.epochs, args.llm, work, settings),
                                        **point_info))
            store["points"].sort(key=lambda p: p["train_samples_per_task"])
            atomic_write_json(path, store)
            plot(store, path[:-5] + ".png")
            print(f"{samples} samples per task done", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
