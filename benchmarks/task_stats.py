"""Task-sample statistics of both shipped data sets, and Gemma-3-270M's first and cached load times.

For amazon-instruments and ml-100k with the default CKF config (``Config("CKF", dataset)``; only logging is
quietened) this builds RecBole's split (``load_data``) and CKF's task samples exactly as the trainer does:
``TaskBuilder(...).train_samples()`` for train, ``eval_samples`` for valid and test with ALL users and RecBole's
``uni9`` candidate lists (``candidate_lists(valid_data / test_data, seed)``). Reported per task and split:

* the number of samples;
* token lengths under the Gemma-3-270M tokenizer (the cached folder's tokenizer plus CKF's two slot tokens; the
  1 GB model is not loaded for this part) of the SLOTTED prompts and of the answers, encoded by the package's
  own ``PromptRenderer`` / ``Encoder`` with the training-split item texts of ``build_item_texts``, the way each
  path encodes them: training samples and valid/test ctr/rating samples with their answer
  (``Encoder.encode_all``), valid/test sequential prompts so that the longest candidate answer fits
  (``sequential.encode_candidates``), valid/test explanation prompts without an answer (as greedy decoding
  sees them). Prompt lengths count ``<bos>``; answer lengths count the ``<eos>`` that sequential and
  explanation answers end with. Lengths are those after any truncation;
* how many samples hit ``max_length`` and lost history (oldest items dropped by the ``Encoder``), how many
  history items were dropped, and how many are still too long with no history left;
* for valid/test sequential: the length of the packed scoring row (prompt + every distinct candidate's answer
  without its final eos), which is what one forward pass of the batched scorer sees per sample.

Load times of Gemma-3-270M (each in a fresh Python process, so peak memory is that of the load alone):
the cached load (``load_llm("gemma-3-270m")`` from the default cache) and the first load (the GGUF ->
float32 conversion, ``load_llm("gemma-3-270m", cache_dir=<tmp>)``; the temporary folder is deleted after).

    python benchmarks/task_stats.py                       # everything (~5-10 minutes on 2 CPU cores)
    python benchmarks/task_stats.py --skip-first-load     # no conversion run

Writes ``benchmarks/results/task_stats.json`` and ``benchmarks/results/task_stats.md``.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import common  # noqa: E402  (puts the repository on sys.path, offline hub)
from common import REPO, RESULTS  # noqa: E402

JSON_PATH = os.path.join(RESULTS, "task_stats.json")
MD_PATH = os.path.join(RESULTS, "task_stats.md")
DATASETS = ("amazon-instruments", "ml-100k")
SPLITS = ("train", "valid", "test")
PROBE = "User <|ckf_user|> rated: <|ckf_item|> Great strings / nice (5 stars). Answer:\n"  # tokenizer check
CHUNK = 2000  # samples encoded per tokenizer call (keeps memory flat on ml-100k's ~300k training samples)


# ---------------------------------------------------------------------------------------------------------
# helpers

def dist(values):
    """min, p50, p90, p99, max (nearest-rank: every figure is the length of an actual sample) and mean."""
    import numpy as np

    if not len(values):
        return None
    a = np.asarray(values)
    out = {"min": int(a.min())}
    for q in (50, 90, 99):
        out[f"p{q}"] = int(np.percentile(a, q, method="nearest"))
    out["max"] = int(a.max())
    out["mean"] = round(float(a.mean()), 1)
    return out


def gemma_tokenizer(folder):
    """The cached Gemma tokenizer with CKF's slot tokens added as special tokens, as ``load_llm`` adds them."""
    import transformers
    from tokenizers import AddedToken

    from recbole_ckf.model.llm import ITEM_TOKEN, USER_TOKEN

    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tok.padding_side = "right"
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in (USER_TOKEN, ITEM_TOKEN)],
                   special_tokens=True)
    for t in (USER_TOKEN, ITEM_TOKEN):  # each slot must be one token, also inside text
        ids = tok(f"a {t} b", add_special_tokens=False)["input_ids"]
        if tok.convert_tokens_to_ids(t) not in ids:
            raise RuntimeError(f"slot token {t} is not kept whole by the tokenizer")
    return tok


# ---------------------------------------------------------------------------------------------------------
# task statistics of one data set

def _encode_chunk(encoder, task, split, chunk):
    """``[(prompt_len, answer_len, shown_history, packed_len or None), ...]`` for one chunk of samples."""
    from recbole_ckf.evaluator.sequential import encode_candidates

    if split != "train" and task == "sequential":
        out = []
        for sample, (prompt, answers) in zip(chunk, encode_candidates(encoder, chunk, slotted=True)):
            unique = {tuple(a) for a in answers}
            packed = prompt.prompt_len + sum(len(a) - 1 for a in unique)
            out.append((prompt.prompt_len, len(answers[int(sample.label)]), len(prompt.history), packed))
        return out
    if split != "train" and task == "explanation":
        answers = encoder._answers(chunk, True)
        encoded = encoder.encode_all(chunk, slotted=True, with_answer=False)
        return [(e.prompt_len, len(a), len(e.history), None) for e, a in zip(encoded, answers)]
    encoded = encoder.encode_all(chunk, slotted=True)
    return [(e.prompt_len, len(e.input_ids) - e.prompt_len, len(e.history), None) for e in encoded]


def task_split_stats(encoder, task, split, samples, max_length, tokenizer):
    prompt, answer, packed, history_in = [], [], [], []
    truncated, dropped, still_long, untruncated_max = 0, 0, 0, 0
    for start in range(0, len(samples), CHUNK):
        chunk = samples[start:start + CHUNK]
        for sample, (p, a, shown, pk) in zip(chunk, _encode_chunk(encoder, task, split, chunk)):
            prompt.append(p)
            answer.append(a)
            history_in.append(len(sample.history))
            if pk is not None:
                packed.append(pk)
            # what counted against max_length on this path (see _encode_chunk)
            budget = p if (split != "train" and task == "explanation") else p + a
            if shown < len(sample.history):
                truncated += 1
                dropped += len(sample.history) - shown
                full, _ = encoder.renderer.render(sample, True)
                untruncated_max = max(untruncated_max, len(tokenizer(full)["input_ids"]))
            if budget > max_length:
                still_long += 1
    out = {
        "samples": len(samples),
        "prompt_tokens": dist(prompt),
        "answer_tokens": dist(answer),
        "history_items": dist(history_in),
        "truncated": truncated,
        "history_items_dropped": dropped,
        "over_max_length_without_history": still_long,
    }
    if task == "ctr":
        out["labels"] = {"yes_share": round(sum(x.label for x in samples) / max(1, len(samples)), 3)}
    elif task == "rating":
        values = [int(round(x.label)) for x in samples]
        out["labels"] = {str(v): values.count(v) for v in sorted(set(values))}
    if truncated:
        out["longest_untruncated_prompt"] = untruncated_max
    if packed:
        out["packed_scoring_row_tokens"] = dist(packed)
    return out


def dataset_stats(name, tokenizer):
    import numpy as np
    from recbole.utils import init_seed

    from recbole_ckf.config import Config
    from recbole_ckf.data.collate import Encoder
    from recbole_ckf.data.fields import available_tasks
    from recbole_ckf.data.item_text import build_item_texts
    from recbole_ckf.data.tasks import TaskBuilder, candidate_lists
    from recbole_ckf.data.templates import PromptRenderer
    from recbole_ckf.model.llm import ITEM_TOKEN, USER_TOKEN
    from recbole_ckf.data import load_data

    t0 = time.perf_counter()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    config = Config("CKF", name, config_dict={"show_progress": False, "state": "WARNING"})
    init_seed(config["seed"], config["reproducibility"])
    dataset, train_data, valid_data, test_data = load_data(config)
    tasks, unavailable = available_tasks(config)
    train_dataset = train_data.dataset
    # as CKF.__init__ (item texts from the training split), CKFTrainer.setup and data.tasks.evaluation_samples
    item_texts, note = build_item_texts(config, train_dataset, train_dataset)
    renderer = PromptRenderer(config["prompt_templates"], item_texts, USER_TOKEN, ITEM_TOKEN)
    encoder = Encoder(tokenizer, renderer, config["max_length"])
    builder = TaskBuilder(config, train_dataset, train_dataset, tasks, item_texts)
    samples = {"train": builder.train_samples()}
    lists = {}
    for split, data in (("valid", valid_data), ("test", test_data)):
        lists[split] = candidate_lists(data, config["seed"])
        samples[split] = builder.eval_samples(data.dataset, lists[split], users=None)  # all users
    build_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    stats = {}
    for task in tasks:
        stats[task] = {split: task_split_stats(encoder, task, split, samples[split][task], config["max_length"],
                                               tokenizer) for split in SPLITS}
    encode_s = time.perf_counter() - t1
    sizes = {split: sorted({len(v) for v in lists[split].values()}) for split in lists}
    feat = train_dataset.inter_feat
    pairs = np.stack([feat[train_dataset.uid_field].numpy().astype(np.float64),
                      feat[train_dataset.time_field].numpy().astype(np.float64)], axis=1)
    _, inverse, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    ties = int((counts[inverse.ravel()] > 1).sum())
    return {
        "dataset": name,
        "interactions": {"all": int(dataset.inter_num), "train": len(train_dataset.inter_feat),
                         "valid": len(valid_data.dataset.inter_feat), "test": len(test_data.dataset.inter_feat)},
        "users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
        "eval_users": {split: len(lists[split]) for split in lists},
        "candidate_list_sizes": sizes,
        "train_rows_sharing_user_timestamp": ties,
        "timestamp_dtype": str(feat[train_dataset.time_field].dtype),
        "tasks": tasks,
        "unavailable_tasks": unavailable,
        "item_text": note,
        "config": {k: config[k] for k in ("max_length", "max_history", "n_candidates", "ctr_threshold",
                                          "item_text_words", "item_text_reviews", "seed")}
                  | {"split": config["eval_args"]["split"], "order": config["eval_args"]["order"],
                     "valid_mode": config["eval_args"]["mode"]["valid"],
                     "test_mode": config["eval_args"]["mode"]["test"]},
        "stats": stats,
        "seconds": {"split_and_samples": round(build_s, 1), "tokenize": round(encode_s, 1)},
    }


# ---------------------------------------------------------------------------------------------------------
# Gemma load times (child processes)

def _proc_mib(key):
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in MiB. Not ``ru_maxrss``: on Linux that keeps the
    parent's peak across fork + exec, so a child started by a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) if key == "VmHWM" else None


def _child_load(kind, cache_dir):
    """Run in a fresh process: time ``load_llm`` and report the process's peak memory."""
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from recbole_ckf.model.llm import load_llm

    import_s = time.perf_counter() - t0
    rss_before = _proc_mib("VmRSS")
    t1 = time.perf_counter()
    llm = load_llm("gemma-3-270m", cache_dir=cache_dir) if kind == "first" else load_llm("gemma-3-270m")
    wall = time.perf_counter() - t1
    n_params = sum(p.numel() for p in llm.model.parameters())
    probe = llm.tokenizer(PROBE)["input_ids"]
    print(json.dumps({
        "kind": kind, "load_llm_seconds": round(wall, 2), "reported_load_seconds": round(llm.load_seconds, 2),
        "import_seconds": round(import_s, 2), "peak_rss_mib": _proc_mib("VmHWM"), "rss_after_imports_mib": rss_before,
        "parameters": n_params, "torch_threads": torch.get_num_threads(), "probe_ids": probe,
    }))


def measure_load(kind, cache_dir=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", kind] + (["--_cache", cache_dir] if cache_dir else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"kind": kind, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(wall, 2)
    return result


def gemma_loads(skip_first, reuse_first):
    out = {"cached": measure_load("cached")}
    out["cached"]["measured_at"] = _now()
    if reuse_first:  # the conversion takes minutes and GBs: keep the previous run's measurement, dated
        try:
            with open(JSON_PATH, encoding="utf-8") as f:
                old = json.load(f)
            first = dict(old["gemma_load"]["first"])
            if first.get("skipped") or first.get("error"):
                raise KeyError("no measurement")
        except (OSError, KeyError, ValueError):
            raise SystemExit(f"--reuse-first-load: {JSON_PATH} holds no first-load measurement; run without it")
        first.setdefault("measured_at", old.get("date"))
        first.pop("tokenizer_matches_load_llm", None)
        first["reused"] = True
        out["first"] = first
        return out
    if skip_first:
        out["first"] = {"kind": "first", "skipped": True}
        return out
    tmp = tempfile.mkdtemp(prefix="ckf-gemma-first-load-")
    try:
        out["first"] = measure_load("first", tmp)
        folder = os.path.join(tmp, "gemma-3-270m")
        if os.path.isdir(folder):
            out["first"]["cache_folder_mib"] = round(sum(
                os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2 ** 20)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["first"]["tmp_dir_deleted"] = not os.path.exists(tmp)
    out["first"]["measured_at"] = _now()
    return out


def _now():
    return datetime.datetime.now().isoformat(timespec="seconds")


def git_state():
    """HEAD and the uncommitted changes of the files that shape the samples (results follow the working tree)."""
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.rstrip("\n") if r.returncode == 0 else None

    dirty = git("status", "--porcelain", "--", "recbole_ckf", "dataset")
    return {"head": (git("rev-parse", "--short", "HEAD") or "").strip() or None,
            "uncommitted": [line[3:] for line in (dirty or "").splitlines()]}


# ---------------------------------------------------------------------------------------------------------
# report

def _row(d, keys=("min", "p50", "p90", "p99", "max")):
    return " | ".join(str(d[k]) for k in keys) if d else " | ".join("-" for _ in keys)


def markdown(result):
    m = result["machine"]
    lines = [
        "# Task samples, prompt lengths and Gemma-3-270M load times",
        "",
        f"Generated by `benchmarks/task_stats.py` on {result['date']}. Machine: {m['cpu_count']} CPU cores "
        f"({m['processor'] or m['machine']}), {m['memory_gib']} GiB RAM, {m['platform']}, Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}. **The machine is shared with other jobs**: load "
        f"average at start {m['loadavg_start'][0]:.2f} / {m['loadavg_start'][1]:.2f} / "
        f"{m['loadavg_start'][2]:.2f} (1/5/15 min), at the end {m['loadavg_end'][0]:.2f} / "
        f"{m['loadavg_end'][1]:.2f} / {m['loadavg_end'][2]:.2f}; times are indicative.",
        "",
        f"Code: HEAD {result['git']['head']}"
        + (f" plus uncommitted changes in {', '.join(result['git']['uncommitted'])}" if result["git"]["uncommitted"]
           else "") + ".",
        "",
        "Default CKF config (`Config(\"CKF\", dataset)`), RecBole's leave-one-out split by time; valid/test samples "
        "for ALL users with RecBole's `uni9` lists. Token counts under the Gemma-3-270M tokenizer (+ the two slot "
        "tokens), slotted prompts, after truncation; prompt counts include `<bos>`, answers include the `<eos>` "
        "of sequential/explanation answers. Percentiles are nearest-rank. Valid/test sequential prompts are "
        "truncated so that the longest candidate fits (as the scorer does); valid/test explanation prompts are "
        "encoded without their answer (as greedy decoding sees them).",
        "",
    ]
    for ds in result["datasets"]:
        cfg = ds["config"]
        lines += [
            f"## {ds['dataset']}",
            "",
            f"{ds['users']} users, {ds['items']} items; interactions: train {ds['interactions']['train']}, "
            f"valid {ds['interactions']['valid']}, test {ds['interactions']['test']}. Eval users with a candidate "
            f"list: valid {ds['eval_users']['valid']}, test {ds['eval_users']['test']} (list sizes "
            f"{ds['candidate_list_sizes']['valid']} / {ds['candidate_list_sizes']['test']}). Tasks: "
            f"{', '.join(ds['tasks'])}"
            + (f"; unavailable: {', '.join(f'{t} ({r})' for t, r in ds['unavailable_tasks'].items())}"
               if ds["unavailable_tasks"] else "")
            + f". Item text: {ds['item_text']}. max_length {cfg['max_length']}, max_history {cfg['max_history']}, "
            f"item_text_words {cfg['item_text_words']}. Training rows that share their user's timestamp with "
            f"another training row of that user (RecBole keeps timestamps as {ds['timestamp_dtype']}; ties keep "
            f"the atomic file's row order): {ds['train_rows_sharing_user_timestamp']}.",
            "",
            "| task | split | samples | prompt min | p50 | p90 | p99 | max | answer min | p50 | p90 | p99 | max "
            "| lost history (samples / items) | too long without history |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for task in ds["tasks"]:
            for split in SPLITS:
                s = ds["stats"][task][split]
                lines.append(f"| {task} | {split} | {s['samples']} | {_row(s['prompt_tokens'])} | "
                             f"{_row(s['answer_tokens'])} | {s['truncated']} / {s['history_items_dropped']} | "
                             f"{s['over_max_length_without_history']} |")
        labels = []
        if "ctr" in ds["stats"]:
            labels.append(f"ctr share of \"Yes\" (rating >= {cfg['ctr_threshold']}): " + ", ".join(
                f"{split} {ds['stats']['ctr'][split]['labels']['yes_share']}" for split in SPLITS))
        if "rating" in ds["stats"]:
            labels.append("rating samples per star: " + "; ".join(
                f"{split} " + " ".join(f"{k}:{v}" for k, v in ds["stats"]["rating"][split]["labels"].items())
                for split in SPLITS))
        if labels:
            lines += ["", "Labels: " + ". ".join(labels) + "."]
        packed = [(split, ds["stats"]["sequential"][split].get("packed_scoring_row_tokens"))
                  for split in ("valid", "test") if "sequential" in ds["stats"]]
        if packed:
            lines += ["", "Packed sequential scoring row (prompt + each distinct candidate's answer without its "
                      "final eos; one row per sample): " + "; ".join(
                          f"{split} {_row(d)} (min/p50/p90/p99/max)" for split, d in packed if d) + "."]
        lines += ["", f"Building split + samples took {ds['seconds']['split_and_samples']} s, tokenising "
                  f"{ds['seconds']['tokenize']} s (one tokenizer thread).", ""]
    g = result["gemma_load"]
    lines += ["## Gemma-3-270M load times", "",
              "Each load runs in a fresh Python process (`load_llm` only; imports timed apart). Peak RSS is the "
              "process's maximum resident memory (`VmHWM`, imports included).", "",
              "| load | load_llm (s) | imports (s) | whole process (s) | peak RSS (MiB) | RSS after imports (MiB) | torch threads |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, label in (("cached", "cached (`load_llm(\"gemma-3-270m\")`)"),
                        ("first", "first (GGUF -> float32 conversion into a temporary cache dir)")):
        r = g.get(kind, {})
        if r.get("skipped") or r.get("error"):
            lines.append(f"| {label} | {'skipped' if r.get('skipped') else 'error: ' + r['error']} | | | | | |")
        else:
            if r.get("reused"):
                label += f" (measured {r.get('measured_at')}, kept by --reuse-first-load)"
            lines.append(f"| {label} | {r['load_llm_seconds']} | {r['import_seconds']} | {r['process_seconds']} | "
                         f"{r['peak_rss_mib']} | {r['rss_after_imports_mib']} | {r['torch_threads']} |")
    match = g.get("cached", {}).get("tokenizer_matches_load_llm")
    if match is not None:
        lines += ["", "The tokenizer used for the token counts above tokenizes a slotted probe prompt "
                  + ("exactly like" if match else "DIFFERENTLY from") + " the one `load_llm` returns."]
    first = g.get("first", {})
    if "cache_folder_mib" in first:
        lines += ["", f"The converted cache folder holds {first['cache_folder_mib']} MiB; the temporary folder was "
                  f"{'deleted' if first.get('tmp_dir_deleted') else 'NOT deleted'} afterwards."]
    return "\n".join(lines) + "\n"


def machine_info(loadavg_start):
    """:func:`common.machine_info` plus this script's load averages (1/5/15 min)."""
    info = common.machine_info()
    info.update(processor=info["cpu"], machine=platform.machine(),
                loadavg_start=[round(x, 2) for x in loadavg_start], shared=True)
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--skip-first-load", action="store_true", help="do not run the GGUF conversion")
    parser.add_argument("--skip-loads", action="store_true", help="no Gemma load timings at all")
    parser.add_argument("--reuse-first-load", action="store_true",
                        help="keep the first-load measurement of the existing task_stats.json (dated) instead of "
                             "converting again")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        return _child_load(args._child, args._cache)

    loadavg_start = os.getloadavg()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one tokenizer thread: the machine is shared
    import torch

    torch.set_num_threads(1)
    from recbole_ckf.utils import atomic_write_json, atomic_write_text

    import recbole_ckf  # noqa: F401  (compatibility fixes for RecBole)
    from recbole_ckf.model.llm import GEMMA_NAME, default_cache_dir

    result = {"date": _now(), "machine": machine_info(loadavg_start), "git": git_state()}
    folder = os.path.join(default_cache_dir(), GEMMA_NAME)
    tokenizer = gemma_tokenizer(folder)
    result["tokenizer"] = {"folder": folder.replace(os.path.expanduser("~"), "~"), "vocab": len(tokenizer)}
    result["datasets"] = []
    for name in args.datasets:
        print(f"[task_stats] {name} ...", flush=True)
        result["datasets"].append(dataset_stats(name, tokenizer))
    if args.skip_loads:
        result["gemma_load"] = {"cached": {"skipped": True}, "first": {"skipped": True}}
    else:
        print("[task_stats] Gemma load times ...", flush=True)
        result["gemma_load"] = gemma_loads(args.skip_first_load, args.reuse_first_load)
        # the tokenizer used above must tokenize exactly like the one load_llm returns
        ids = tokenizer(PROBE)["input_ids"]
        for r in result["gemma_load"].values():
            if "probe_ids" in r:
                r["tokenizer_matches_load_llm"] = r.pop("probe_ids") == ids
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(RESULTS, exist_ok=True)
    atomic_write_json(JSON_PATH, result)
    text = markdown(result)
    atomic_write_text(MD_PATH, text)
    print(text)
    print(f"written {JSON_PATH} and {MD_PATH}")


if __name__ == "__main__":
    main()
