"""Speed of two-stage recommendation (recbole_ckf.recommend) from a trained CKF checkpoint: load time, then N users
with the batched path (every LM stage runs all users' prompts together, ``eval_batch_size`` per forward pass) and,
with ``--compare``, one user at a time (the path before batching), in the same process, on the same users.

    python benchmarks/bench_recommend.py --checkpoint=saved/CKF-amazon-instruments-<time> --compare \
        --eval_batch_size=64
    python benchmarks/bench_recommend.py --checkpoint=DIR --users=20 --output=/tmp/r.json   # a tiny-LM check

``eval_batch_size`` is the number of prompts per forward pass of the batched path (the rating / P(like) /
explanation chunks hold whole users: at least one user's top-k, more users while they fit); at the default 16
and ``--topk=10`` a chunk is one user, so the explanations of several users are decoded together only from 20 up.

Users: a seeded (``--seed``, default 0) permutation of the data set's test users (users with a test interaction),
the first ``--users`` (default 100) of it. ``--topk`` (default 10) as the CLI; the number retrieved, the re-rank mode
and everything else come from the checkpoint's config (``--key=value`` overrides any config key, as the CLI).
A one-user warm-up runs first and is not timed. Reported: load seconds, seconds for the N users per path, split
into stages (retrieve, CKF re-rank, rating + P(like), explanation), users per second, the speed-up, and, with
``--compare``, whether both paths gave the same rows (ranking, explanations; largest score difference).

Writes ``benchmarks/results/recommend_speed.json`` (``--output`` elsewhere; with the commit and machine) and prints
a summary. Keep tiny-LM runs out of benchmarks/results (use ``--output``).
"""

import argparse
import os
import sys
import time

from common import RESULTS, machine_info  # noqa: E402  (puts the repository on sys.path)

import numpy as np  # noqa: E402

import recbole_ckf  # noqa: E402,F401
from recbole_ckf.utils import atomic_write_json  # noqa: E402

RESULT = os.path.join(RESULTS, "recommend_speed.json")
STAGES = {"retrieve": "retrieve", "ckf_scores_many": "rerank", "point_predictions": "rating_p_like",
          "explanations": "explanation"}
SCORES = ("backbone_score", "ckf_score", "fused_score", "rating", "p_like")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a CKF run folder (its best/ is used) or checkpoint folder")
    parser.add_argument("--users", type=int, default=100, help="number of test users (default 100)")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample (default 0)")
    parser.add_argument("--compare", action="store_true", help="also time one user at a time and compare the rows")
    parser.add_argument("--output", default=RESULT, help=f"result file (default {os.path.relpath(RESULT)})")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            parser.error(f"unrecognized argument {arg!r} (config overrides are --key=value)")
        key, value = arg[2:].split("=", 1)
        overrides[key] = value
    return args, overrides


class StageTimer:
    """Wall seconds spent in the Recommender's stage methods (wrapped on the instance)."""

    def __init__(self, rec):
        self.seconds = {name: 0.0 for name in STAGES.values()}
        for method, name in STAGES.items():
            setattr(rec, method, self._wrap(getattr(rec, method), name))

    def _wrap(self, fn, name):
        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed

    def reset(self):
        for name in self.seconds:
            self.seconds[name] = 0.0


def timed_run(rec, timer, users, topk, batched):
    timer.reset()
    start = time.perf_counter()
    rows = rec.recommend(users, topk, batched=batched)
    seconds = time.perf_counter() - start
    return rows, {"seconds": round(seconds, 2), "seconds_per_user": round(seconds / len(users), 3),
                  "users_per_second": round(len(users) / seconds, 3),
                  "stages_s": {k: round(v, 2) for k, v in timer.seconds.items()}}


def compare_rows(a, b):
    same = [(r["user"], r["rank"], r["item"]) for r in a] == [(r["user"], r["rank"], r["item"]) for r in b]
    diff = {}
    for key in SCORES:
        d = [abs(x[key] - y[key]) for x, y in zip(a, b) if x[key] is not None and y[key] is not None]
        diff[key] = max(d) if d else None
    return {"same_ranking": same, "same_explanations": [r["explanation"] for r in a] == [r["explanation"] for r in b],
            "max_abs_diff": diff}


def main(argv=None):
    args, overrides = parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv
    import torch

    from recbole_ckf.recommend import Recommender

    info = machine_info()
    start = time.perf_counter()
    rec = Recommender(args.checkpoint, config_dict={"show_progress": False, "state": "WARNING", **overrides})
    load_s = time.perf_counter() - start
    tokens = rec.dataset.field2id_token[rec.dataset.uid_field]
    order = np.random.default_rng(args.seed).permutation(len(rec.test_users))
    users = [str(tokens[rec.test_users[k]]) for k in order[: args.users]]
    timer = StageTimer(rec)
    start = time.perf_counter()
    rec.recommend(users[:1], args.topk)  # warm-up, not timed
    warmup_s = time.perf_counter() - start
    rows, batched = timed_run(rec, timer, users, args.topk, batched=True)
    result = {"what": "recbole_ckf.recommend: load, then N test users, batched vs one user at a time",
              "checkpoint": rec.path, "dataset": rec.config["dataset"], "llm": rec.meta.get("llm"),
              "users": len(users), "user_seed": args.seed, "topk": args.topk,
              "retrieve": rec.last_settings["retrieve"], "rerank": rec.last_settings["rerank"],
              "sequential_answer": rec.config["sequential_answer"], "eval_batch_size": rec.batch_size,
              "explanation_max_tokens": rec.config["explanation_max_tokens"], "device": str(rec.config["device"]),
              "torch_threads": torch.get_num_threads(), "overrides": overrides,
              "load_s": round(load_s, 2), "warmup_1_user_s": round(warmup_s, 2), "batched": batched}
    if args.compare:
        single_rows, single = timed_run(rec, timer, users, args.topk, batched=False)
        result["one_user_at_a_time"] = single
        result["speedup"] = round(single["seconds"] / batched["seconds"], 2)
        result["agreement"] = compare_rows(rows, single_rows)
    result.update(commit=info["commit"], machine=info)
    atomic_write_json(args.output, result)
    print(f"{result['llm']} on {result['dataset']}: load {load_s:.1f} s; {len(users)} users (topk {args.topk}, "
          f"retrieve {result['retrieve']}, batch {rec.batch_size}):")
    print(f"  batched            {batched['seconds']:8.1f} s  ({batched['seconds_per_user']:.2f} s/user)  "
          f"stages {batched['stages_s']}")
    if args.compare:
        print(f"  one user at a time {single['seconds']:8.1f} s  ({single['seconds_per_user']:.2f} s/user)  "
              f"stages {single['stages_s']}")
        print(f"  speed-up {result['speedup']}x; agreement {result['agreement']}")
    print(f"written to {args.output}")
    return result


if __name__ == "__main__":
    main()
