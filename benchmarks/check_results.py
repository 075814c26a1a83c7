"""Does this checkout reproduce the stored results? Re-runs the CKF main job with the tiny test LM (a minute on
2 cores) and compares its test metrics with ``benchmarks/results/check_<dataset>_tiny.json`` to the metrics'
stored decimals.

    python benchmarks/check_results.py                       # amazon-instruments; exit 1 on any difference
    python benchmarks/check_results.py --update              # store this checkout's numbers as the reference

The tiny LM is a random model: its numbers mean nothing as results, but they run through every step the Gemma
numbers run through (data, split, backbone, task samples, training, calibration, fusion, evaluation), so a
difference here says the pipeline changed. Numbers depend on the torch thread count (float rounding of
parallel reductions) and can depend on the CPU's vector instructions: the check runs with the stored
``torch_threads`` and fp32 weights, and the reference records the CPU it was stored on.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

from common import RESULTS, machine_info  # noqa: E402  (puts the repository on sys.path)

import torch  # noqa: E402

from recbole_ckf.utils import atomic_write_json  # noqa: E402


def run(dataset, threads):
    from recbole_ckf.quick_start import run_recbole_ckf

    torch.set_num_threads(threads)
    sys.argv = sys.argv[:1]
    here, work = os.getcwd(), tempfile.mkdtemp(prefix="recbole_ckf_check_")
    os.chdir(work)
    try:
        # precision pinned: `auto` picks bf16 frozen weights on CPUs with AVX512-BF16 and fp32 elsewhere
        result = run_recbole_ckf("CKF", dataset, config_dict={"llm": "tiny", "show_progress": False,
                                                              "state": "WARNING", "llm_cache_dir": work,
                                                              "precision": "fp32"})
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)
    return {k: float(v) for k, v in result["test_result"].items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="amazon-instruments")
    p.add_argument("--update", action="store_true", help="store this checkout's numbers as the reference")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the stored ones, else 1)")
    args = p.parse_args(argv)
    path = os.path.join(RESULTS, f"check_{args.dataset}_tiny.json")
    stored = json.load(open(path)) if os.path.isfile(path) else None
    threads = args.threads or (stored or {}).get("machine", {}).get("torch_threads") or 1
    result = run(args.dataset, threads)
    if args.update or stored is None:
        info = machine_info()
        info["torch_threads"] = threads
        atomic_write_json(path, {"machine": info, "llm": "tiny (random, test only)", "dataset": args.dataset,
                                 "test_result": result})
        print(f"written {os.path.relpath(path)} ({len(result)} metrics)")
        return 0
    diffs = {k: (v, result.get(k)) for k, v in stored["test_result"].items() if result.get(k) != v}
    diffs.update({k: (None, v) for k, v in result.items() if k not in stored["test_result"]})
    if diffs:
        for k, (want, got) in sorted(diffs.items()):
            print(f"differs: {k}: stored {want}, now {got}")
        print(f"{len(diffs)} of {len(stored['test_result'])} metrics differ from {os.path.relpath(path)} "
              f"(stored at commit {stored['machine'].get('commit')})")
        return 1
    print(f"ok: all {len(result)} test metrics equal {os.path.relpath(path)} (stored at commit "
          f"{stored['machine'].get('commit')}, {threads} torch threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
