"""The multi-task trainer of CKF, driven by Hugging Face Accelerate.

``fit`` (1) trains the CF backbone with RecBole's own trainer on the training split (or loads it), (2) builds
the four task data sets from RecBole's split, (3) tunes the LoRA adapters and the bridge on batches of one
task at a time, interleaved, with a curriculum from text-only to slotted prompts, AdamW with warmup and
cosine decay, gradient clipping and accumulation, mixed precision, and early stopping on a validation
metric. ``evaluate`` scores the test split deterministically through RecBole's evaluator.

Accelerate owns devices and processes: ``accelerate launch run_recbole_ckf.py ...`` runs the same code on
several processes (each takes its share of every batch; all take the same task at the same step).
"""

import math
import os
import random
import time
from datetime import timedelta
from logging import getLogger

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, broadcast_object_list
from recbole.evaluator.register import smaller_metrics
from recbole.trainer import AbstractTrainer
from recbole.utils import get_local_time, set_color
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from recbole_ckf.data.collate import Encoder, cache_key, cached, collate
from recbole_ckf.data.tasks import TaskBuilder, candidate_lists
from recbole_ckf.errors import CKFError
from recbole_ckf.model.backbone import load_backbone_checkpoint, train_backbone
from recbole_ckf.trainer.checkpoint import load_checkpoint, save_checkpoint


def curriculum_weight(progress, steepness):
    """Weight of the slotted-prompt loss: a sigmoid ramp from ~0 (text only) to ~1 (slotted) over training."""
    return 1.0 / (1.0 + math.exp(-steepness * (progress - 0.5)))


def resolve_mixed_precision(setting, cuda=None):
    """``auto``: bf16 on a GPU that supports it, none elsewhere. On the CPUs we measured (2 cores, no
    AVX512-BF16), bf16 autocast made a Gemma-3-270M step 5x (forward) to 60x (backward) slower than float32.
    ``cuda``: whether the run uses the GPU (default: whether there is one)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if setting in (None, "auto"):
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting not in ("no", "bf16", "fp16"):
        raise CKFError(f"mixed_precision: expected auto, no, bf16 or fp16, got '{setting}'")
    return setting


def use_cpu(config):
    """Accelerate's ``cpu`` flag. Accelerate forms a multi-process CPU group (gloo) only when told ``cpu=True``:
    without it, on a machine without a GPU, ``accelerate launch --multi_gpu --num_processes N`` would run N
    independent copies of the whole run, each unaware of the others."""
    if not config["use_gpu"]:
        return True
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator


def sample_users(users, limit, seed):
    """A deterministic subset of ``limit`` users (all when ``limit`` is None)."""
    users = np.unique(np.asarray(users))
    if limit is None or limit >= len(users):
        return users
    return np.sort(np.random.default_rng(seed).choice(users, size=limit, replace=False))


class CKFTrainer(AbstractTrainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.logger = getLogger()
        # inactive task adapters get no grad; the frozen CF tables (buffers) are equal on every process
        kwargs = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
        # the other processes wait (in a collective) while the main one trains the backbone: allow hours
        group = InitProcessGroupKwargs(timeout=timedelta(hours=12))
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(config["mixed_precision"], cuda=config["device"].type == "cuda"),
            gradient_accumulation_steps=config["gradient_accumulation_steps"] or 1,
            cpu=use_cpu(config), kwargs_handlers=[kwargs, group])
        self.device = self.accelerator.device
        self.seed = config["seed"]
        run = f"CKF-{config['dataset']}-{get_local_time()}"
        if self.accelerator.num_processes > 1:  # one run folder: the main process's clock names it
            run = broadcast_object_list([run])[0]
        self.run_dir = config["resume"] or os.path.join(config["checkpoint_dir"], run)
        self.best_path = os.path.join(self.run_dir, "best")
        self.last_path = os.path.join(self.run_dir, "last")
        self.saved_model_file = self.best_path  # RecBole's name for it
        self.builder = self.encoder = None

    # ---- data --------------------------------------------------------------------------------------
    def setup(self, train_data):
        """Task builder, encoder and training-interaction counts (needed by fit and by evaluate)."""
        model, config = self.model, self.config
        train_dataset = train_data.dataset
        self.builder = TaskBuilder(config, train_dataset, train_dataset, model.tasks, model.item_texts)
        self.encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
        users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
        self.train_counts = np.bincount(users, minlength=model.n_users)
        self.logger.info(f"CKF language model: {model.llm_name}; item text: {model.item_text_note}")
        for task, reason in model.unavailable_tasks.items():
            self.logger.warning(f"task '{task}' unavailable: {reason}")

    def _cache_dir(self):
        base = self.config["llm_cache_dir"] or os.environ.get("RECBOLE_CKF_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "recbole_ckf")
        return os.path.join(base, "tasks")

    def _encoded_train(self):
        """Training samples of every epoch's plan, tokenised once (slotted and text-only) and cached on disk.

        Only the samples the plans draw are encoded (``train_samples_per_task`` bounds an epoch on CPU)."""
        config, model = self.config, self.model
        inter = os.path.join(config["data_path"], f"{config['dataset']}.inter")
        keys = ("max_history", "ctr_threshold", "n_candidates", "item_text_words", "item_text_reviews",
                "prompt_templates", "max_length", "seed", "eval_args", "epochs", "train_samples_per_task",
                "train_batch_size", "load_col", "text_fields")
        key = cache_key("train", config["dataset"], os.path.getmtime(inter), os.path.getsize(inter),
                        {k: config[k] for k in keys}, model.tasks, model.llm_name, len(model.tokenizer),
                        model.tokenizer.name_or_path, self.accelerator.num_processes)

        def build():
            samples = self.builder.train_samples()
            sizes = {t: len(v) for t, v in samples.items()}
            needed = {t: set() for t in samples}
            for epoch in range(config["epochs"]):
                for task, idx in self._plan(sizes, epoch):
                    needed[task].update(int(i) for i in idx)
            encoded = {"sizes": sizes}
            for mode in ("slot", "text"):
                encoded[mode] = {}
                for task, idx in needed.items():
                    idx = sorted(idx)
                    enc = self.encoder.encode_all([samples[task][i] for i in idx], slotted=(mode == "slot"))
                    encoded[mode][task] = dict(zip(idx, enc))
            return encoded
        return cached(self._cache_dir(), key, build)

    def eval_samples(self, eval_data, limit):
        lists = candidate_lists(eval_data, self.seed)
        users = sample_users(eval_data.dataset.inter_feat[eval_data.dataset.uid_field].numpy(), limit, self.seed)
        return self.builder.eval_samples(eval_data.dataset, lists, users)

    def _plan(self, sizes, epoch):
        """This epoch's batches: (task, sample indices), one task per batch, tasks interleaved; seeded per
        epoch so that a resumed run sees exactly the batches of an uninterrupted one."""
        rng = np.random.default_rng([self.seed, epoch])
        per_task = self.config["train_samples_per_task"]
        size = self.config["train_batch_size"] * self.accelerator.num_processes
        plan = []
        for task in self.model.tasks:
            n = sizes[task]
            order = rng.permutation(n)[: (n if per_task is None else min(n, per_task))]
            plan += [(task, order[i:i + size]) for i in range(0, len(order), size)]
        rng.shuffle(plan)
        return plan

    # ---- training ------------------------------------------------------------------------------------
    def _cf_tables(self, train_data, valid_data):
        config, acc = self.config, self.accelerator
        if config["backbone_checkpoint"]:
            return load_backbone_checkpoint(config, config["backbone_checkpoint"], train_data.dataset)
        # One process trains the backbone (RecBole's trainer, log and checkpoint file); the others get its
        # tables, so every process fuses the very same e_u / e_v.
        tables = train_backbone(config, train_data, valid_data) if acc.is_main_process else None
        if acc.num_processes > 1:
            tables = broadcast_object_list([tables])[0]
        return tables

    def _valid_key(self, result):
        name = str(self.config["valid_metric"]).lower()
        keys = [k for k in result if "[" not in k and (k == name or k.split(":", 1)[1] == name)]
        if not keys:
            raise CKFError(f"valid_metric '{self.config['valid_metric']}' is not among the validation metrics "
                           f"({', '.join(k for k in result if '[' not in k)})")
        metric = keys[0].split(":", 1)[1].split("@")[0]
        return keys[0], metric not in smaller_metrics

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        config, model, acc = self.config, self.model, self.accelerator
        if self.builder is None:
            self.setup(train_data)
        state = None
        self.logger.info(f"run folder: {self.run_dir} (an interrupted run continues with --resume={self.run_dir})")
        if config["resume"]:  # checked by quick_start.check_run_inputs: the run folder has a complete last/
            state = load_checkpoint(model, self.last_path)
            self.logger.info(f"resuming from {self.last_path} (epoch {state['epoch'] + 1})")
        else:
            tables = self._cf_tables(train_data, valid_data)
            model.set_cf_tables(tables.user_emb, tables.item_emb)
            self.logger.info(f"backbone {tables.model_name}: tables {tuple(tables.user_emb.shape)}, {tuple(tables.item_emb.shape)}")
        model.to(self.device)
        encoded = self._encoded_train()
        valid = self.eval_samples(valid_data, config["valid_users"]) if valid_data is not None else None

        lora, bridge = model.trainable_parameters()
        groups = [{"params": lora, "lr": config["learning_rate"], "weight_decay": config["weight_decay"]}]
        if bridge:
            groups.append({"params": bridge, "lr": config["bridge_learning_rate"], "weight_decay": config["weight_decay"]})
        optimizer = torch.optim.AdamW(groups)
        # DDP registers (for its gradient all-reduce) only the parameters that require grad when it wraps the
        # model: all of them must, although activate() leaves only the batch's adapters requiring grad per step
        for p in lora + bridge:
            p.requires_grad_(True)
        micro_steps = max(1, len(self._plan(encoded["sizes"], 0)) * config["epochs"])  # batches over the run
        total = max(1, math.ceil(micro_steps / acc.gradient_accumulation_steps))  # optimizer steps
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(config["warmup_ratio"] * total), total)
        wrapped, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
        params = lora + bridge

        start, best, best_result, patience, step = 0, None, {}, 0, 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, best, best_result, patience, step = (state["epoch"] + 1, state["best"], state["best_result"],
                                                        state["patience"], state["step"])
            torch.set_rng_state(state["torch_rng"])
            np.random.set_state(state["numpy_rng"])
            random.setstate(state["python_rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            acc.step = step  # gradient accumulation counts micro-steps over the whole run
            if patience >= config["stopping_step"]:  # the run had stopped early: nothing left to train
                start = config["epochs"]

        for epoch in range(start, config["epochs"]):
            model.train()
            t0, tokens, losses = time.time(), 0, []
            plan = self._plan(encoded["sizes"], epoch)
            bar = tqdm(plan, desc=set_color(f"Train {epoch:>3}", "pink"), disable=not (show_progress and acc.is_main_process))
            for task, idx in bar:
                mine = idx[acc.process_index::acc.num_processes]
                if len(mine) == 0:
                    mine = idx[:1]
                w = curriculum_weight(step / micro_steps, config["curriculum_steepness"]) if model.use_cf else 0.0
                # The curriculum's loss w * L_slotted + (1 - w) * L_text is estimated by drawing the prompt form
                # with probability w: the same expected loss and gradient at one forward pass per step.
                slotted = bool(np.random.default_rng([self.seed, 7, step]).random() < w)
                mode = "slot" if slotted else "text"
                batch = self._to_device(collate([encoded[mode][task][int(i)] for i in mine],
                                                model.tokenizer.pad_token_id, config["max_history"]))
                tokens += int(batch["attention_mask"].sum())
                with acc.accumulate(wrapped):
                    loss = wrapped(batch, slotted=slotted)
                    acc.backward(loss)
                    if acc.sync_gradients and config["clip_grad_norm"]:
                        acc.clip_grad_norm_(params, config["clip_grad_norm"])
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)  # never zeros: inactive adapters must stay untouched
                step += 1
                losses.append(loss.detach().item())
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", tok_s=f"{tokens / (time.time() - t0):.0f}", w=f"{w:.2f}")
            self.logger.info(set_color(f"epoch {epoch} training", "green") + f" [time: {time.time() - t0:.2f}s, "
                             f"train loss: {np.mean(losses):.4f}, tokens/s: {tokens / (time.time() - t0):.0f}, "
                             f"slotted weight: {w:.2f}]")

            stop = False
            if valid is not None and (epoch + 1) % config["eval_step"] == 0:
                t1 = time.time()
                result = self._evaluate_samples(valid, show_progress)
                key, bigger = self._valid_key(result)
                score = result[key]
                improved = best is None or (score > best if bigger else score < best)
                if improved:
                    best, best_result, patience = score, result, 0
                    if saved and acc.is_main_process:
                        save_checkpoint(model, self.best_path, extra={"epoch": epoch, "valid": dict(result)})
                else:
                    patience += 1
                self.logger.info(set_color(f"epoch {epoch} evaluating", "green") +
                                 f" [time: {time.time() - t1:.2f}s, valid_score: {score:.4f} ({key})]")
                self.logger.info(set_color("valid result", "blue") + ": \n" + _format(result))
                stop = patience >= config["stopping_step"]
            if saved and acc.is_main_process:
                save_checkpoint(model, self.last_path, extra={"epoch": epoch}, trainer_state={
                    "epoch": epoch, "step": step, "best": best, "best_result": best_result, "patience": patience,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None})
            if stop:
                self.logger.info(f"early stopping after epoch {epoch}: no improvement for {patience} evaluations")
                break
        if saved and valid is None and acc.is_main_process:
            save_checkpoint(model, self.best_path)
        self.best_valid_score, self.best_valid_result = best if best is not None else -1, best_result
        return self.best_valid_score, self.best_valid_result

    def _to_device(self, batch):
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    # ---- evaluation ----------------------------------------------------------------------------------
    def _evaluate_samples(self, samples, show_progress):
        from recbole_ckf.evaluator.task_eval import evaluate_tasks

        self.model.eval()
        with self.accelerator.autocast():
            return evaluate_tasks(self.model, samples, self.encoder, self.config, self.train_counts,
                                  slotted=self.model.use_cf, show_progress=show_progress)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """Test results per task (``task:metric``, plus ``[warm]``/``[cold]`` groups) as RecBole's result dict."""
        path = model_file or (self.best_path if load_best_model else None)
        self.accelerator.wait_for_everyone()  # only the main process writes checkpoints: let it finish
        if model_file or (path and os.path.isdir(path)):
            load_checkpoint(self.model, path)
            self.logger.info(f"loaded CKF checkpoint {path}")
        self.model.to(self.device)
        return self._evaluate_samples(self.eval_samples(eval_data, self.config["eval_users"]), show_progress)


def _format(result):
    return "    ".join(f"{k} : {v}" for k, v in result.items())
