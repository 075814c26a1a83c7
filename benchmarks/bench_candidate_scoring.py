"""Throughput of sequential candidate scoring: the batched scorer against one forward pass per candidate.

Both scorers rank the same RecBole ``uni9`` lists (10 candidates per test user of amazon-instruments) with the
same CKF model (random CF tables: speed does not depend on training), measured in the same run, on the same
machine, one after the other. Reported: candidates scored per second for each, the speed-up ratio (target
>= 3x), and the largest score difference between the two (they compute the same numbers).

    python benchmarks/bench_candidate_scoring.py                      # tiny and gemma-3-270m
    python benchmarks/bench_candidate_scoring.py --models tiny --samples 8

Writes ``benchmarks/results/candidate_scoring.json`` and prints a table. The tiny LM is a random test model:
its figures show the overhead structure only; Gemma-3-270M is the real one (skipped with a note if it cannot
be loaded).
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

from common import RESULTS, machine_info  # noqa: E402  (puts the repository on sys.path, offline hub)

import torch  # noqa: E402

import recbole_ckf  # noqa: E402,F401
from recbole_ckf.utils import atomic_write_json  # noqa: E402

RESULT = os.path.join(RESULTS, "candidate_scoring.json")
DEFAULT_SAMPLES = {"tiny": 16, "gemma-3-270m": 4}
DEFAULT_REPEATS = {"tiny": 3, "gemma-3-270m": 1}  # timed runs of the batched scorer; the fastest counts


def _load(dataset):
    from recbole.utils import init_seed

    from recbole_ckf.config import Config
    from recbole_ckf.data import load_data

    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    config = Config("CKF", dataset, config_dict={"llm": "tiny", "show_progress": False, "state": "WARNING"})
    init_seed(config["seed"], True)
    dataset, train_data, _, test_data = load_data(config)
    return config, dataset, train_data, test_data


def _model(config, dataset, train_data, llm):
    from recbole.utils import init_seed

    config["llm"] = llm
    init_seed(config["seed"], True)
    start = time.perf_counter()
    model = config.model_class(config, train_data.dataset)
    gen = torch.Generator().manual_seed(0)
    model.set_cf_tables(torch.randn(dataset.user_num, 64, generator=gen),
                        torch.randn(dataset.item_num, 64, generator=gen))
    return model, time.perf_counter() - start


def _samples(config, dataset, train_data, test_data, model, n):
    from recbole_ckf.data.tasks import TaskBuilder, candidate_lists

    lists = candidate_lists(test_data, config["seed"])
    users = sorted(lists)[:n]
    builder = TaskBuilder(config, dataset, train_data.dataset, ["sequential"], model.item_texts)
    return builder.eval_samples(test_data.dataset, lists, users)["sequential"]


def bench_model(config, dataset, train_data, test_data, llm, n_samples, batch_size, repeats):
    from recbole_ckf.data.collate import Encoder
    from recbole_ckf.evaluator.sequential import encode_candidates, score_candidates, score_candidates_naive

    model, load_s = _model(config, dataset, train_data, llm)
    encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
    samples = _samples(config, dataset, train_data, test_data, model, n_samples)
    n_cands = sum(len(s.candidates) for s in samples)
    enc = encode_candidates(encoder, samples, True)
    prompt_tokens = statistics.mean(p.prompt_len for p, _ in enc)
    answer_tokens = statistics.mean(len(a) for _, answers in enc for a in answers)

    # warm-up (first-call allocations, lazy initialisation) on one sample, not timed
    score_candidates(model, encoder, samples[:1], batch_size=1)
    score_candidates_naive(model, encoder, [dataclasses.replace(samples[0], candidates=samples[0].candidates[:1])])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        batched = score_candidates(model, encoder, samples, batch_size=batch_size)
        times.append(time.perf_counter() - start)
    batched_s = min(times)
    start = time.perf_counter()
    naive = score_candidates_naive(model, encoder, samples)
    naive_s = time.perf_counter() - start
    diff = max(float((b - n).abs().max()) for b, n in zip(batched, naive))
    return {
        "model": model.llm_name,
        "llm": llm,
        "load_seconds": round(load_s, 1),
        "samples": len(samples),
        "candidates": n_cands,
        "candidates_per_sample": n_cands / len(samples),
        "mean_prompt_tokens": round(prompt_tokens, 1),
        "mean_answer_tokens": round(answer_tokens, 1),
        "batch_size": batch_size,
        "batched_seconds": round(batched_s, 3),
        "batched_seconds_all_repeats": [round(t, 3) for t in times],
        "naive_seconds": round(naive_s, 3),
        "batched_candidates_per_s": round(n_cands / batched_s, 2),
        "naive_candidates_per_s": round(n_cands / naive_s, 2),
        "speedup": round(naive_s / batched_s, 2),
        "max_abs_score_diff": diff,
    }


def table(rows, info):
    lines = [
        f"machine: {info['cpu_count']} CPUs ({info.get('cpu') or info.get('processor')}), torch {info['torch']} "
        f"({info['torch_threads']} threads), transformers {info['transformers']}, "
        f"1-min load at start {info['load_average_1m_at_start']}",
        f"{'model':<26} {'samples':>7} {'cands':>6} {'prompt tok':>10} {'batched c/s':>12} {'naive c/s':>10} "
        f"{'speed-up':>8} {'max |diff|':>10}",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['llm']:<26} skipped: {r['error']}")
            continue
        lines.append(f"{r['model']:<26} {r['samples']:>7} {r['candidates']:>6} {r['mean_prompt_tokens']:>10} "
                     f"{r['batched_candidates_per_s']:>12} {r['naive_candidates_per_s']:>10} "
                     f"{r['speedup']:>7}x {r['max_abs_score_diff']:>10.1e}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,gemma-3-270m")
    parser.add_argument("--dataset", default="amazon-instruments")
    parser.add_argument("--samples", type=int, default=None, help="test users per model (default: tiny 16, gemma 4)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs of the batched scorer, the fastest counts (default: tiny 3, gemma 1)")
    parser.add_argument("--output", default=RESULT)
    args = parser.parse_args(argv)

    info = machine_info()
    config, dataset, train_data, test_data = _load(args.dataset)
    rows = []
    for llm in [m.strip() for m in args.models.split(",") if m.strip()]:
        n = args.samples or DEFAULT_SAMPLES.get(llm, 4)
        try:
            repeats = args.repeats or DEFAULT_REPEATS.get(llm, 1)
            row = bench_model(config, dataset, train_data, test_data, llm, n, args.batch_size, repeats)
        except Exception as err:  # e.g. Gemma's weights package missing: report, keep the other rows
            row = {"llm": llm, "error": f"{type(err).__name__}: {err}"}
        rows.append(row)
        print(table([row], info).splitlines()[-1], flush=True)
    report = {"benchmark": "sequential candidate scoring: batched (shared prompt, block mask) vs one pass per "
                           "candidate", "dataset": args.dataset, "machine": info, "results": rows,
              "target_speedup": 3.0, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(args.output, report)
    print(table(rows, info))
    print(f"written to {args.output}")
    return report


if __name__ == "__main__":
    main()
