"""Training speed and memory of CKF against a plain LoRA fine-tune of the same language model.

Measured for each LM (``tiny`` and Gemma-3-270M), in one run, on the same token batches (CKF training prompts
of amazon-instruments, slotted, ``--batch-size`` samples each, tasks in turn), in float32 (the trainer's
``mixed_precision: auto`` picks float32 on a CPU: bf16 autocast is far slower there):

(a) **training tokens/s**: a full CKF training step (``model(batch, slotted=True)`` = ``calculate_loss``: bridge
    + slot injection + shared & task LoRA, logits at answer positions only; backward; AdamW step) against a plain
    single-LoRA fine-tune of the same LM (``peft.get_peft_model`` with ONE ``LoraConfig`` of rank
    ``lora_r_shared`` on the same target modules, the standard Hugging Face causal-LM loss over full logits with
    the same answer-only labels; backward; AdamW step). Ratio = CKF / plain (target >= 0.9).
(b) **answer-position logits vs full logits**: forward + backward of CKF's ``calculate_loss`` against the same
    loss computed from ``lm_head`` over every position (same value, same gradients).
(c) **peak resident memory** of a Gemma CKF training step, in a fresh process (``resource.getrusage`` maxrss
    and psutil RSS): after loading, and after the warm-up and timed steps.

The variants run interleaved (step k of every variant, then step k+1, ...) so that a change of load on a shared
machine hits all of them alike; the first step of each variant (Gemma: ~25 s of one-time setup) is a warm-up
and is not timed. Per-step times are reported with their median; tokens/s = tokens (attention mask) / time.

    python benchmarks/bench_speed.py                              # tiny and gemma-3-270m (~5-10 min on 2 cores)
    python benchmarks/bench_speed.py --models tiny --batches 4

Writes ``benchmarks/results/speed.json`` and prints a table. The tiny LM is a random test model: its figures
show the overhead structure only; Gemma-3-270M's are the real ones.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import recbole_ckf  # noqa: E402,F401
from recbole_ckf.utils import atomic_write_json  # noqa: E402

RESULT = os.path.join(REPO, "benchmarks", "results", "speed.json")
DATASET = "amazon-instruments"


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mib():
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


# ---------------------------------------------------------------------------------------------------------
# setup
def build(llm, n_batches, batch_size, seed=0, target_tokens=150):
    """CKF (random CF tables: speed does not depend on training), its config and ``n_batches`` slotted training
    batches; samples are picked with prompt + answer lengths near ``target_tokens``."""
    from recbole.utils import init_seed

    from recbole_ckf.config import Config
    from recbole_ckf.data.collate import Encoder, collate
    from recbole_ckf.data.tasks import TaskBuilder
    from recbole_ckf.quick_start import load_data

    sys.argv = sys.argv[:1]
    config = Config("CKF", DATASET, config_dict={"llm": llm, "show_progress": False, "state": "WARNING"})
    init_seed(config["seed"], True)
    dataset, train_data, _, _ = load_data(config)
    start = time.perf_counter()
    model = config.model_class(config, train_data.dataset)
    load_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(0)
    model.set_cf_tables(torch.randn(dataset.user_num, 64, generator=gen), torch.randn(dataset.item_num, 64, generator=gen))
    builder = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts)
    samples = builder.train_samples()
    encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
    rng = np.random.default_rng(seed)
    batches = []
    for k in range(n_batches):
        task = model.tasks[k % len(model.tasks)]
        pool = [samples[task][i] for i in rng.permutation(len(samples[task]))[:64]]
        enc = encoder.encode_all(pool, slotted=True)
        enc.sort(key=lambda e: abs(len(e.input_ids) - target_tokens))  # near the target length
        batches.append(collate(enc[:batch_size], model.tokenizer.pad_token_id, config["max_history"]))
    return config, dataset, train_data, model, batches, load_s


def plain_lora(config, train_dataset, ckf_model):
    """The same LM, loaded the same way (same tokenizer and weights, slot tokens included), with one peft LoRA."""
    import inspect

    from peft import LoraConfig, get_peft_model

    from recbole_ckf.model.llm import load_llm

    corpus = type(ckf_model)._corpus
    args = (config, train_dataset, ckf_model.item_texts)[:len(inspect.signature(corpus).parameters)]
    llm = load_llm(config["llm"], config["llm_cache_dir"], texts=corpus(*args), seed=config["seed"])
    if len(llm.tokenizer) != len(ckf_model.tokenizer):
        raise RuntimeError("the plain LoRA model's tokenizer differs from CKF's: not the same token batches")
    lora = LoraConfig(r=config["lora_r_shared"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
                      target_modules=list(config["lora_target_modules"]), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(llm.model, lora)


def full_logits_loss(model, batch, slotted=True):
    """CKF's loss, but with ``lm_head`` applied to every position (what a standard causal-LM loss computes)."""
    hidden = model.hidden_states(batch, slotted)
    logits = model._logits(hidden[:, :-1])
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


# ---------------------------------------------------------------------------------------------------------
def bench(llm, n_batches, batch_size, threads):
    if threads:
        torch.set_num_threads(threads)
    config, dataset, train_data, model, batches, load_s = build(llm, n_batches + 1, batch_size)
    plain = plain_lora(config, train_data.dataset, model)
    lora, bridge = model.trainable_parameters()
    opt_ckf = torch.optim.AdamW([{"params": lora, "lr": 1e-4}, {"params": bridge, "lr": 1e-4}])
    opt_plain = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    plain.train()

    def ckf_step(batch):
        loss = model(batch, slotted=True)
        loss.backward()
        opt_ckf.step()
        opt_ckf.zero_grad(set_to_none=True)
        return float(loss)

    def plain_step(batch):
        out = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        opt_plain.step()
        opt_plain.zero_grad(set_to_none=True)
        return float(out.loss)

    def answer_only_fb(batch):
        loss = model.calculate_loss(batch, slotted=True)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    def full_logits_fb(batch):
        loss = full_logits_loss(model, batch, slotted=True)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    variants = {"ckf_step": ckf_step, "plain_lora_step": plain_step, "answer_logits_fwd_bwd": answer_only_fb,
                "full_logits_fwd_bwd": full_logits_fb}
    warm = {}
    for name, fn in variants.items():  # warm-up on the first batch, not timed
        t = time.perf_counter()
        fn(batches[0])
        warm[name] = round(time.perf_counter() - t, 2)
    # same loss value (b): both losses on one batch, in eval mode (no LoRA dropout)
    model.eval()
    with torch.no_grad():
        a, b = float(model.calculate_loss(batches[1])), float(full_logits_loss(model, batches[1]))
    model.train()
    times = {n: [] for n in variants}
    tokens = []
    for k, batch in enumerate(batches[1:]):
        tokens.append(int(batch["attention_mask"].sum()))
        names = list(variants)
        names = names[k % len(names):] + names[:k % len(names)]  # rotate the order per batch
        for name in names:
            t = time.perf_counter()
            variants[name](batch)
            times[name].append(time.perf_counter() - t)
    total_tokens = sum(tokens)
    tok_s = {n: total_tokens / sum(ts) for n, ts in times.items()}
    answer_positions = [int((b["labels"][:, 1:] != -100).sum()) for b in batches[1:]]
    return {
        "llm": llm,
        "model": model.llm_name,
        "vocab_size": int(model.llm.get_base_model().lm_head.weight.shape[0]),
        "load_seconds": round(load_s, 1),
        "threads": torch.get_num_threads(),
        "batches": len(batches) - 1,
        "batch_size": batch_size,
        "tasks": [b["task"] for b in batches[1:]],
        "tokens_per_batch": tokens,
        "answer_positions_per_batch": answer_positions,
        "warmup_seconds": warm,
        "step_seconds": {n: [round(t, 3) for t in ts] for n, ts in times.items()},
        "median_step_seconds": {n: round(statistics.median(ts), 3) for n, ts in times.items()},
        "tokens_per_s": {n: round(v, 1) for n, v in tok_s.items()},
        "ratio_ckf_vs_plain_lora": round(tok_s["ckf_step"] / tok_s["plain_lora_step"], 3),
        "speedup_answer_vs_full_logits": round(tok_s["answer_logits_fwd_bwd"] / tok_s["full_logits_fwd_bwd"], 3),
        "loss_answer_logits": a,
        "loss_full_logits": b,
        "plain_lora": {"r": config["lora_r_shared"], "alpha": config["lora_alpha"],
                       "dropout": config["lora_dropout"], "targets": list(config["lora_target_modules"]),
                       "trainable_parameters": sum(p.numel() for p in plain.parameters() if p.requires_grad)},
        "ckf": {"lora_r_shared": config["lora_r_shared"], "lora_r_task": config["lora_r_task"],
                "trainable_lora_parameters": sum(p.numel() for p in lora),
                "bridge_parameters": sum(p.numel() for p in bridge)},
    }


def memory_probe(llm, n_steps, batch_size, threads):
    """Runs in its own process: peak RSS after loading CKF, then after ``n_steps`` + 1 training steps."""
    if threads:
        torch.set_num_threads(threads)
    base = _maxrss_mib()
    config, dataset, train_data, model, batches, _ = build(llm, n_steps + 1, batch_size)
    after_load = _maxrss_mib()
    rss_load = _rss_mib()
    lora, bridge = model.trainable_parameters()
    opt = torch.optim.AdamW([{"params": lora}, {"params": bridge}], lr=1e-4)
    model.train()
    per_step = []
    for batch in batches:
        loss = model(batch, slotted=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        per_step.append({"maxrss_mib": round(_maxrss_mib(), 1), "rss_mib": round(_rss_mib(), 1)})
    return {"llm": llm, "model": model.llm_name, "batch_size": batch_size, "steps": len(batches),
            "after_each_step": per_step,
            "tokens_per_batch": [int(b["attention_mask"].sum()) for b in batches],
            "maxrss_mib_python_and_imports": round(base, 1),
            "maxrss_mib_after_load": round(after_load, 1), "rss_mib_after_load": round(rss_load, 1),
            "maxrss_mib_after_training_steps": round(_maxrss_mib(), 1), "rss_mib_after_training_steps": round(_rss_mib(), 1),
            "training_step_peak_over_loaded_mib": round(_maxrss_mib() - after_load, 1)}


def run_memory_probe(llm, n_steps, batch_size, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", llm, "--batches", str(n_steps),
           "--batch-size", str(batch_size)] + (["--threads", str(threads)] if threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"llm": llm, "error": (out.stderr or out.stdout).strip().splitlines()[-1:]}


def machine_info():
    import peft
    import psutil
    import transformers

    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "cuda": torch.cuda.is_available(),
            "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1), "dtype": "float32",
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def table(rows, memory, info):
    lines = [f"machine: {info['cpu_count']} CPUs, torch {info['torch']}, transformers {info['transformers']}, "
             f"peft {info['peft']}, float32, 1-min load at start {info['load_average_1m_at_start']}",
             f"{'model':<26} {'tok/batch':>9} {'CKF tok/s':>9} {'plain tok/s':>11} {'ratio':>6} "
             f"{'answer-logits f+b':>17} {'full-logits f+b':>15} {'speed-up':>8}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['llm']:<26} skipped: {r['error']}")
            continue
        t = r["tokens_per_s"]
        lines.append(f"{r['model']:<26} {statistics.mean(r['tokens_per_batch']):>9.0f} {t['ckf_step']:>9.1f} "
                     f"{t['plain_lora_step']:>11.1f} {r['ratio_ckf_vs_plain_lora']:>6.2f} "
                     f"{t['answer_logits_fwd_bwd']:>13.1f} t/s {t['full_logits_fwd_bwd']:>11.1f} t/s "
                     f"{r['speedup_answer_vs_full_logits']:>7.2f}x")
    for m in memory:
        if "error" in m:
            lines.append(f"memory {m['llm']}: skipped: {m['error']}")
        else:
            lines.append(f"memory {m['model']}: peak RSS {m['maxrss_mib_after_load']:.0f} MiB after load, "
                         f"{m['maxrss_mib_after_training_steps']:.0f} MiB after {m['steps']} training steps of "
                         f"{m['batch_size']} samples (+{m['training_step_peak_over_loaded_mib']:.0f} MiB)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "gemma-3-270m"])
    p.add_argument("--batches", type=int, default=3, help="timed batches per variant (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-memory", action="store_true", help="skip (c)")
    args = p.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.batches, args.batch_size, args.threads)))
        return
    info = machine_info()
    memory = []
    if not args.no_memory and "gemma-3-270m" in args.models:
        print("(c) peak memory of a Gemma CKF training step, in a fresh process ...", flush=True)
        memory.append(run_memory_probe("gemma-3-270m", 2, args.batch_size, args.threads))
    rows = []
    for llm in args.models:
        print(f"(a)+(b) {llm} ...", flush=True)
        try:
            rows.append(bench(llm, args.batches, args.batch_size, args.threads))
        except Exception as err:  # a missing Gemma cache should not cost the tiny numbers
            rows.append({"llm": llm, "error": f"{type(err).__name__}: {err}"})
    result = {"machine": info, "note": "tiny is a random test model: its figures show overhead structure only",
              "results": rows, "memory": memory}
    atomic_write_json(RESULT, result)
    print(table(rows, memory, info))
    print(f"written {os.path.relpath(RESULT, REPO)}")


if __name__ == "__main__":
    main()
