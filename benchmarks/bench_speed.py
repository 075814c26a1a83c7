"""Training and evaluation speed of CKF, and its peak memory, against the best plain recipe on this machine.

(a) **Training tokens/s**, interleaved on the same token batches (real CKF training prompts of
    amazon-instruments, slotted, ``--batch-size`` samples each, the tasks in turn, length-bucketed as the
    trainer batches them): a full CKF training step (bridge + slot injection + shared & task LoRA, restricted
    answer logits; backward; AdamW) against a **plain single-LoRA peft fine-tune** of the same LM with the
    same frozen-weight precision, the same LoRA targets and rank, and logits only at the answer positions
    (the strong reference: what a careful plain fine-tune costs). Both in bf16 and in fp32 frozen weights;
    and CKF with the two settings it does not use by default (LoRA on all linear layers; LoRA dropout 0.05).
    Step k of every variant runs before step k+1 of any (orders rotated), so load changes hit all alike; the
    first batch of every task runs once per variant as a warm-up, not timed.
(b) **Evaluation users/s per task** of CKF (default settings: bf16 where native, listwise sequential scoring,
    batched greedy explanations) on ``--eval-users`` test users.
(c) **Peak resident memory per phase** of a CKF process (load, training steps, evaluation), in a fresh process.

    python benchmarks/bench_speed.py                  # Gemma-3-270M, ~4 min on 2 cores
    python benchmarks/bench_speed.py --llm tiny       # pipeline check only (a random test model)

Writes ``benchmarks/results/speed.json`` (with the commit, command, torch threads and machine) and prints a table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import RESULTS, machine_info  # noqa: E402  (puts the repository on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import recbole_ckf  # noqa: E402,F401
from recbole_ckf.trainer.trainer import peak_rss_gib  # noqa: E402
from recbole_ckf.utils import atomic_write_json  # noqa: E402

RESULT = os.path.join(RESULTS, "speed.json")
DATASET = "amazon-instruments"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _config(llm, **overrides):
    from recbole_ckf.config import Config

    sys.argv = sys.argv[:1]
    return Config("CKF", DATASET, config_dict={"llm": llm, "show_progress": False, "state": "WARNING", **overrides})


def _data(config):
    from recbole.utils import init_seed

    from recbole_ckf.data import load_data

    init_seed(config["seed"], True)
    return load_data(config)


def _ckf(config, train_data, dataset):
    model = config.model_class(config, train_data.dataset)
    gen = torch.Generator().manual_seed(0)  # random CF tables: speed does not depend on the backbone
    model.set_cf_tables(torch.randn(dataset.user_num, 64, generator=gen), torch.randn(dataset.item_num, 64, generator=gen))
    return model


def _batches(config, dataset, train_data, model, n, batch_size, seed=0):
    """``n`` slotted training batches, tasks in turn, each of ``batch_size`` samples of similar length (as the
    trainer's length buckets give them)."""
    from recbole_ckf.data.collate import Encoder, collate
    from recbole_ckf.data.tasks import TaskBuilder

    samples = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts).train_samples()
    encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        task = model.tasks[k % len(model.tasks)]
        pool = encoder.encode_all([samples[task][i] for i in rng.permutation(len(samples[task]))[:8 * batch_size]], True)
        pool.sort(key=lambda e: len(e.input_ids))
        start = int(rng.integers(0, len(pool) - batch_size + 1))
        out.append(collate(pool[start:start + batch_size], model.tokenizer.pad_token_id))
    return out


def plain_lora(config, model, dataset):
    """The same LM (same weights, precision and tokenizer, slot tokens as plain tokens) with ONE peft LoRA on
    the same targets and rank as CKF's shared adapter, float32 adapter weights (as CKF's)."""
    from peft import LoraConfig, get_peft_model

    from recbole_ckf.model.llm import load_llm, resolve_precision

    dtype = torch.bfloat16 if resolve_precision(config["precision"], "cpu") == "bf16" else torch.float32
    llm = load_llm(config["llm"], config["llm_cache_dir"], texts=model._corpus(config, dataset, model.item_texts)
                   if config["llm"] == "tiny" else None, seed=config["seed"], dtype=dtype)
    lora = LoraConfig(r=config["lora_r_shared"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
                      target_modules=list(config["lora_target_modules"]), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(llm.model, lora)
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def plain_loss(peft_model, batch, yes_no):
    """A plain causal-LM loss with logits only at the answer positions (full vocabulary there). Pointwise
    sequential rows (``block_ends``): the same tokens with a plain causal mask, Yes (true candidate) or No at the
    end of every candidate block."""
    base = peft_model.get_base_model()
    hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    if "block_ends" in batch:
        owner = batch["block_owner"]
        column = torch.arange(owner.numel()) - torch.searchsorted(owner, owner)
        targets = torch.where(column == batch["label"].long()[owner], yes_no[0], yes_no[1])
        logits = (hidden.reshape(-1, hidden.shape[-1])[batch["block_ends"]] @ base.lm_head.weight.T).float()
        return F.cross_entropy(logits, targets)
    targets = batch["labels"][:, 1:]
    where = targets != -100
    logits = (hidden[:, :-1][where] @ base.lm_head.weight.T).float()
    return F.cross_entropy(logits, targets[where])


def _step(loss_fn, params, opt):
    def run(batch):
        loss = loss_fn(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def train_speed(llm, n_steps, batch_size):
    base = _config(llm)
    dataset, train_data, _, _ = _data(base)
    variants, meta = {}, {}
    settings = {
        "ckf_bf16": dict(precision="bf16"),
        "plain_bf16": dict(precision="bf16"),
        "ckf_fp32": dict(precision="fp32"),
        "plain_fp32": dict(precision="fp32"),
        "ckf_bf16_all_linear": dict(precision="bf16", lora_target_modules=ALL_LINEAR),
        "ckf_bf16_dropout_0.05": dict(precision="bf16", lora_dropout=0.05),
    }
    batches, n_warmup = None, None
    for name, overrides in settings.items():
        config = _config(llm, **overrides)
        if name.startswith("ckf"):
            model = _ckf(config, train_data, dataset)
            model.train()
            lora, bridge, _ = model.trainable_parameters()
            params = lora + bridge
            for p in params:
                p.requires_grad_(True)
            if batches is None:
                n_warmup = len(model.tasks)
                batches = _batches(config, dataset, train_data, model, n_steps + n_warmup, batch_size)
                ckf_for_plain = model
            variants[name] = _step(lambda b, m=model: m.calculate_loss(b, True), params,
                                   torch.optim.AdamW(params, lr=1e-4))
            meta[name] = {"trainable_parameters": sum(p.numel() for p in params)}
        else:
            plain = plain_lora(config, ckf_for_plain, train_data.dataset)
            plain.train()
            params = [p for p in plain.parameters() if p.requires_grad]
            yes_no = ckf_for_plain.answer_ids["ctr"]
            variants[name] = _step(lambda b, m=plain: plain_loss(m, b, yes_no), params,
                                   torch.optim.AdamW(params, lr=1e-4))
            meta[name] = {"trainable_parameters": sum(p.numel() for p in params)}
        meta[name]["settings"] = {k: config[k] for k in ("precision", "lora_target_modules", "lora_dropout",
                                                         "lora_r_shared", "lora_r_task")}
    for name, run in variants.items():  # warm-up, not timed: one batch of every task (first-use costs of each
        for batch in batches[:n_warmup]:  # task's code path, e.g. packed rows' block masks)
            run(batch)
    timed = batches[n_warmup:]
    times = {n: [] for n in variants}
    tokens = [int(b["attention_mask"].sum()) for b in timed]
    for k, batch in enumerate(timed):
        names = list(variants)
        for name in names[k % len(names):] + names[:k % len(names)]:
            t = time.perf_counter()
            variants[name](batch)
            times[name].append(time.perf_counter() - t)
    tok_s = {n: sum(tokens) / sum(ts) for n, ts in times.items()}
    return {
        "llm": llm, "batches": len(timed), "warmup_batches": n_warmup, "batch_size": batch_size,
        "tasks": [b["task"] for b in timed],
        "tokens_per_batch": tokens, "variants": meta,
        "step_seconds": {n: [round(t, 3) for t in ts] for n, ts in times.items()},
        "median_step_seconds": {n: round(statistics.median(ts), 3) for n, ts in times.items()},
        "tokens_per_s": {n: round(v, 1) for n, v in tok_s.items()},
        "ratio_ckf_vs_plain_bf16": round(tok_s["ckf_bf16"] / tok_s["plain_bf16"], 3),
        "ratio_ckf_vs_plain_fp32": round(tok_s["ckf_fp32"] / tok_s["plain_fp32"], 3),
        "ratio_ckf_bf16_vs_fp32": round(tok_s["ckf_bf16"] / tok_s["ckf_fp32"], 3),
        "ratio_attention_only_vs_all_linear": round(tok_s["ckf_bf16"] / tok_s["ckf_bf16_all_linear"], 3),
        "ratio_dropout_0_vs_0.05": round(tok_s["ckf_bf16"] / tok_s["ckf_bf16_dropout_0.05"], 3),
    }


def eval_speed(llm, n_users):
    """Users/s of each task's scoring pass (test split, ``n_users`` seeded users), CKF defaults."""
    from recbole_ckf.data.collate import Encoder
    from recbole_ckf.data.tasks import TaskBuilder, candidate_lists, sample_users
    from recbole_ckf.evaluator.task_eval import score_tasks

    config = _config(llm)
    dataset, train_data, valid_data, test_data = _data(config)
    model = _ckf(config, train_data, dataset)
    builder = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts)
    users = sample_users(test_data.dataset.inter_feat[dataset.uid_field].numpy(), n_users, config["seed"])
    samples = builder.eval_samples(test_data.dataset, candidate_lists(test_data, config["seed"]), users,
                                   earlier=(valid_data.dataset,))
    encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
    config["explanation_max_tokens"] = config["explanation_max_tokens"] or 24
    out = {}
    for task, rows in samples.items():
        t = time.perf_counter()
        score_tasks(model, {task: rows}, encoder, config)
        out[task] = {"users": len(rows), "seconds": round(time.perf_counter() - t, 2),
                     "users_per_s": round(len(rows) / (time.perf_counter() - t), 2)}
    return {"precision": model.precision, "sequential_answer": model.sequential_answer,
            "eval_batch_size": config["eval_batch_size"], "explanation_max_tokens": config["explanation_max_tokens"],
            "tasks": out}


def memory_probe(llm, n_steps, batch_size, n_users):
    """In a fresh process: peak RSS after loading CKF, after training steps, after evaluating ``n_users``."""
    from recbole_ckf.data.collate import Encoder
    from recbole_ckf.data.tasks import TaskBuilder, candidate_lists, sample_users
    from recbole_ckf.evaluator.task_eval import score_tasks

    phases = {"python_and_imports": peak_rss_gib()}
    config = _config(llm)
    dataset, train_data, valid_data, test_data = _data(config)
    model = _ckf(config, train_data, dataset)
    phases["load"] = peak_rss_gib()
    batches = _batches(config, dataset, train_data, model, n_steps, batch_size)
    lora, bridge, _ = model.trainable_parameters()
    opt = torch.optim.AdamW(lora + bridge, lr=1e-4)
    model.train()
    for batch in batches:
        _step(lambda b: model.calculate_loss(b, True), lora + bridge, opt)(batch)
    phases["training_steps"] = peak_rss_gib()
    builder = TaskBuilder(config, dataset, train_data.dataset, model.tasks, model.item_texts)
    users = sample_users(test_data.dataset.inter_feat[dataset.uid_field].numpy(), n_users, config["seed"])
    samples = builder.eval_samples(test_data.dataset, candidate_lists(test_data, config["seed"]), users)
    config["explanation_max_tokens"] = 24
    score_tasks(model, samples, Encoder(model.tokenizer, model.renderer, config["max_length"]), config)
    phases["evaluation"] = peak_rss_gib()
    return {"llm": llm, "precision": model.precision, "steps": n_steps, "batch_size": batch_size,
            "eval_users": n_users, "peak_rss_gib_after": {k: round(v, 2) for k, v in phases.items()}}


def table(train, evaluation, memory):
    t = train["tokens_per_s"]
    lines = [f"training tokens/s ({train['llm']}, {train['batches']} batches of {train['batch_size']}, "
             f"{statistics.mean(train['tokens_per_batch']):.0f} tokens per batch):"]
    lines += [f"  {name:<24} {v:>8.1f}" for name, v in t.items()]
    lines.append(f"  CKF / plain: bf16 {train['ratio_ckf_vs_plain_bf16']:.2f}x, fp32 {train['ratio_ckf_vs_plain_fp32']:.2f}x;"
                 f" CKF bf16 / fp32 {train['ratio_ckf_bf16_vs_fp32']:.2f}x; attention-only / all-linear "
                 f"{train['ratio_attention_only_vs_all_linear']:.2f}x; dropout 0 / 0.05 {train['ratio_dropout_0_vs_0.05']:.2f}x")
    lines.append(f"evaluation users/s ({evaluation['precision']}, sequential {evaluation['sequential_answer']}):")
    lines += [f"  {task:<12} {v['users_per_s']:>7.2f} users/s ({v['users']} users, {v['seconds']} s)"
              for task, v in evaluation["tasks"].items()]
    if "error" in memory:
        lines.append(f"memory: {memory['error']}")
    else:
        lines.append("peak RSS (GiB) after " + ", ".join(f"{k}: {v}" for k, v in memory["peak_rss_gib_after"].items()))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--llm", default="gemma-3-270m")
    p.add_argument("--steps", type=int, default=8,
                   help="timed training steps per variant (after one warm-up batch per task)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-users", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.llm, args.steps, args.batch_size, args.eval_users)))
        return
    info = machine_info()
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", "--llm", args.llm, "--steps", "3",
           "--batch-size", str(args.batch_size), "--eval-users", str(args.eval_users)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    memory = json.loads(lines[-1]) if lines else {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    train = train_speed(args.llm, args.steps, args.batch_size)
    evaluation = eval_speed(args.llm, args.eval_users)
    result = {"machine": info, "training": train, "evaluation": evaluation, "memory": memory,
              "note": "tiny is a random test model: its figures show overhead structure only" if args.llm == "tiny" else ""}
    if args.llm != "tiny":
        atomic_write_json(RESULT, result)
        print(f"written {os.path.relpath(RESULT)}")
    print(table(train, evaluation, memory))


if __name__ == "__main__":
    main()
