"""The multi-task trainer of CKF, driven by Hugging Face Accelerate.

``fit`` (1) trains the CF backbone with RecBole's own trainer on the training split (or loads it), (2) builds
the four task data sets from RecBole's split, (3) tunes the LoRA adapters and the bridge on batches of one
task at a time, interleaved (ctr batches class-balanced; batches of similar lengths), with a curriculum from
text-only to slotted prompts, AdamW with warmup and cosine decay for the adapters and warmup then a constant
rate for the bridge (it learns only from slotted prompts, which come late), gradient clipping and
accumulation, and early stopping on a validation metric. ``evaluate`` fits the calibration (and the optional
backbone fusion) on the validation scores of the tested model, then scores the test split deterministically
through RecBole's evaluator.

``fit`` runs in named steps (``_start_or_resume``, ``_build_samples``, ``_optimizer``/``_restore``, then per
epoch ``_train_epoch``, ``_validate_epoch``, ``_save_last``: also every ``checkpoint_steps`` batches within an
epoch, so that ``--resume`` continues an interrupted epoch mid-way); the epoch's samples and batches and the curriculum
and learning-rate schedules are in :mod:`recbole_ckf.trainer.schedule`, precision and CPU settings in
:mod:`recbole_ckf.trainer.runtime`; the validation and test samples come from :mod:`recbole_ckf.data.tasks`.

Accelerate owns devices and processes: ``accelerate launch run_recbole_ckf.py ...`` runs the same code on
several processes (each takes its share of every batch; all take the same task at the same step).
"""

import contextlib
import dataclasses
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
from recbole_ckf.data.collate import Encoder, cache_key, cached
from recbole_ckf.data.tasks import (CODE_VERSION, TaskBuilder, split_fingerprint, test_split_samples,
                                   validation_split_samples)
from recbole_ckf.errors import CKFError
from recbole_ckf.model.backbone import load_backbone_checkpoint, train_backbone
from recbole_ckf.trainer.checkpoint import load_checkpoint, record_adjustments, save_checkpoint
from recbole_ckf.trainer.runtime import peak_rss_gib, release_memory, resolve_mixed_precision, use_cpu  # noqa: F401
from recbole_ckf.trainer.schedule import curriculum_weight, epoch_plan, epoch_selection, lr_lambdas, training_passes
from recbole_ckf.utils import stable_hash


@dataclasses.dataclass
class _Progress:
    """Where training stands: the first epoch to run, the best validation score and result so far, the
    evaluations without improvement, the micro-steps taken, and (``checkpoint_steps``) how far into the first
    epoch a resumed run already is: its batches done and running totals."""

    start: int = 0
    best: float = None
    best_result: dict = dataclasses.field(default_factory=dict)
    patience: int = 0
    step: int = 0
    partial: dict = None


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
        self.builder = self.encoder = self.valid_data = None
        self.valid_scores = None  # raw validation scores of the best model (for calibration and fusion)

    def log_memory(self, phase):
        self.logger.info(f"memory: peak RSS {peak_rss_gib():.2f} GiB after {phase}")

    # ---- data --------------------------------------------------------------------------------------
    def setup(self, train_data, valid_data=None):
        """Task builder, encoder and training-interaction counts (needed by fit and by evaluate); the validation
        split (test histories continue through it; calibration is fitted on it)."""
        model, config = self.model, self.config
        train_dataset = train_data.dataset
        self.builder = TaskBuilder(config, train_dataset, train_dataset, model.tasks, model.item_texts)
        self.encoder = Encoder(model.tokenizer, model.renderer, config["max_length"])
        self.valid_data = valid_data
        users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
        self.train_counts = np.bincount(users, minlength=model.n_users)
        self.logger.info(f"CKF language model: {model.llm_name} (weights {model.precision}); item text: "
                         f"{model.item_text_note}")
        for task, reason in model.unavailable_tasks.items():
            self.logger.warning(f"task '{task}' unavailable: {reason}")

    def _cache_dir(self):
        base = self.config["llm_cache_dir"] or os.environ.get("RECBOLE_CKF_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "recbole_ckf")
        return os.path.join(base, "tasks")

    def _encoded_train(self):
        """Training samples of every epoch's selection, tokenised once (slotted and text-only) and cached on disk
        under a hash of what they are made of: the training split itself, the item texts, the prompt settings,
        the tokenizer and the code version (so that no other split's samples are ever reused).

        Only the samples the selections draw are encoded (``train_samples_per_task`` bounds an epoch on CPU)."""
        config, model = self.config, self.model
        keys = ("max_history", "pool_history", "ctr_threshold", "n_candidates", "item_text_words",
                "item_text_reviews", "prompt_templates", "max_length", "seed", "epochs", "train_samples_per_task",
                "balance_ctr", "sequential_answer", "prompt_stats", "exclude_own_review")
        key = cache_key("train", CODE_VERSION, split_fingerprint(config, self.builder.dataset),
                        stable_hash([str(t) for t in model.item_texts]), {k: config[k] for k in keys}, model.tasks,
                        model.llm_name, len(model.tokenizer), model.tokenizer.name_or_path)

        def build():
            samples = self.builder.train_samples()
            sizes = {t: len(v) for t, v in samples.items()}
            labels = {t: np.array([s.label for s in v]) for t, v in samples.items()}
            needed = {t: set() for t in samples}
            for epoch in range(config["epochs"]):
                for task, idx in epoch_selection(config, model.tasks, sizes, labels, epoch).items():
                    needed[task].update(int(i) for i in idx)
            encoded = {"sizes": sizes, "labels": labels,
                       "answer_tokens": [len(model.tokenizer(s.answer, add_special_tokens=False)["input_ids"])
                                         for s in samples.get("explanation", [])]}
            for mode in ("slot", "text"):
                encoded[mode] = {}
                for task, idx in needed.items():
                    idx = sorted(idx)
                    enc = self.encoder.encode_all([samples[task][i] for i in idx], slotted=(mode == "slot"))
                    encoded[mode][task] = dict(zip(idx, enc))
            return encoded
        return cached(self._cache_dir(), key, build)

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
        """Train CKF: the backbone's tables (or a resumed run's state), the task samples, then the epochs, each
        followed by a validation (every ``eval_step`` epochs and after the last) and a ``last`` checkpoint."""
        if self.builder is None:
            self.setup(train_data, valid_data)
        self.valid_data = valid_data
        state = self._start_or_resume(train_data, valid_data)
        encoded, valid = self._build_samples(valid_data)
        optimizer, scheduler, params, micro_steps = self._optimizer(encoded)
        wrapped, optimizer, scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        progress = _Progress() if state is None else self._restore(state, optimizer, scheduler)
        for epoch in range(progress.start, self.config["epochs"]):
            self._train_epoch(epoch, encoded, wrapped, optimizer, scheduler, params, progress, micro_steps,
                              show_progress, saved)
            self.log_memory(f"training epoch {epoch}")
            stop = self._validate_epoch(epoch, valid, progress, saved, show_progress)
            if saved and self.accelerator.is_main_process:
                self._save_last(epoch, progress, optimizer, scheduler)
            if stop:
                self.logger.info(f"early stopping after epoch {epoch}: no improvement for {progress.patience} "
                                 f"evaluations")
                break
        if saved and valid is None and self.accelerator.is_main_process:
            save_checkpoint(self.model, self.best_path)
        self.best_valid_score = progress.best if progress.best is not None else -1
        self.best_valid_result = progress.best_result
        return self.best_valid_score, self.best_valid_result

    def _start_or_resume(self, train_data, valid_data):
        """A resumed run's trainer state (its ``last`` checkpoint loaded into the model), or None after the CF
        backbone's tables are set (trained here, or loaded from ``backbone_checkpoint``)."""
        model = self.model
        self.logger.info(f"run folder: {self.run_dir} (an interrupted run continues with --resume={self.run_dir})")
        state = None
        if self.config["resume"]:  # checked by quick_start.check_run_inputs: the run folder has a complete last/
            state = load_checkpoint(model, self.last_path)
            within = state.get("partial")
            self.logger.info(f"resuming from {self.last_path} (epoch {state['epoch'] + 1}"
                             + (f", after batch {within['batch']} of {within['batches']})" if within else ")"))
        else:
            tables = self._cf_tables(train_data, valid_data)
            model.set_cf_tables(tables.user_emb, tables.item_emb)
            self.logger.info(f"backbone {tables.model_name}: tables {tuple(tables.user_emb.shape)}, "
                             f"{tuple(tables.item_emb.shape)}")
            self.log_memory("the backbone")
        model.to(self.device)
        return state

    def _build_samples(self, valid_data):
        """The encoded training samples (cached) and the validation samples (None without a validation split)."""
        encoded = self._encoded_train()
        self._set_explanation_tokens(encoded)
        valid = validation_split_samples(self.config, self.builder, valid_data) if valid_data is not None else None
        self.log_memory("building the task samples")
        return encoded, valid

    def _validate_epoch(self, epoch, valid, progress, saved, show_progress):
        """Validate after ``epoch`` when due (every ``eval_step`` epochs and after the last one: its training is
        never thrown away); an improvement is saved as ``best``. Returns whether to stop early."""
        config = self.config
        if valid is None or not ((epoch + 1) % config["eval_step"] == 0 or epoch + 1 == config["epochs"]):
            return False
        score, result, scores = self._validate(valid, show_progress)
        if progress.best is None or (score > progress.best if self._bigger else score < progress.best):
            progress.best, progress.best_result, progress.patience, self.valid_scores = score, result, 0, scores
            if saved and self.accelerator.is_main_process:
                save_checkpoint(self.model, self.best_path, extra={"epoch": epoch, "valid": dict(result)})
        else:
            progress.patience += 1
        return progress.patience >= config["stopping_step"]

    def _save_last(self, epoch, progress, optimizer, scheduler, partial=None):
        """The ``last`` checkpoint: the model and everything ``--resume`` needs to replay the run exactly. ``epoch``
        is the last epoch completed; ``partial``: the next epoch's batches done and running totals (a checkpoint
        within an epoch, ``checkpoint_steps``)."""
        extra = {"epoch": epoch, **({"batch": partial["batch"]} if partial else {})}
        save_checkpoint(self.model, self.last_path, extra=extra, trainer_state={
            "epoch": epoch, "partial": partial, "step": progress.step, "best": progress.best,
            "best_result": progress.best_result, "patience": progress.patience, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None})

    def _set_explanation_tokens(self, encoded):
        """``explanation_max_tokens: ~``: the 99th percentile of the training headlines' token counts, + 1."""
        lengths = encoded.get("answer_tokens") or []
        if self.config["explanation_max_tokens"] is None and lengths:
            self.config["explanation_max_tokens"] = int(np.percentile(lengths, 99)) + 1
            self.logger.info(f"explanation: decoding at most {self.config['explanation_max_tokens']} tokens "
                             f"(99th percentile of the training headlines + 1)")

    def _optimizer(self, encoded):
        config, model, acc = self.config, self.model, self.accelerator
        lora, bridge, head = model.trainable_parameters()
        groups = [{"params": lora, "lr": config["learning_rate"], "weight_decay": config["weight_decay"]}]
        if bridge:
            groups.append({"params": bridge, "lr": config["bridge_learning_rate"], "weight_decay": config["weight_decay"]})
        if head:  # the answer-head rows follow the adapters' schedule
            groups.append({"params": head, "lr": config["answer_head_learning_rate"], "weight_decay": config["weight_decay"]})
        optimizer = torch.optim.AdamW(groups)
        # DDP registers (for its gradient all-reduce) only the parameters that require grad when it wraps the
        # model: all of them must, although activate() leaves only the batch's adapters requiring grad per step
        for p in lora + bridge + head:
            p.requires_grad_(True)
        micro_steps = max(1, len(epoch_plan(config, model.tasks, encoded, 0, acc.num_processes)) * config["epochs"])  # batches over the run
        # Accelerate's scheduler wrapper steps the schedule once per process at every optimizer step: count the
        # schedule in those units (warmup rounded in optimizer steps first), so that N processes follow the very
        # LR curve of one
        steps = max(1, math.ceil(micro_steps / acc.gradient_accumulation_steps))
        total, warmup = steps * acc.num_processes, int(config["warmup_ratio"] * steps) * acc.num_processes
        adapters_lr, bridge_lr = lr_lambdas(warmup, total, config["bridge_schedule"] or "constant")
        lambdas = [adapters_lr] + ([bridge_lr] if bridge else []) + ([adapters_lr] if head else [])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        # clipped group by group (see _train_epoch), so the groups are returned apart
        return optimizer, scheduler, [g for g in (lora, bridge, head) if g], micro_steps

    def _restore(self, state, optimizer, scheduler):
        config, acc = self.config, self.accelerator
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        acc.step = state["step"]  # gradient accumulation counts micro-steps over the whole run
        start = state["epoch"] + 1
        if state["patience"] >= config["stopping_step"]:  # the run had stopped early: nothing left to train
            start = config["epochs"]
        return _Progress(start, state["best"], state["best_result"], state["patience"], state["step"],
                         state.get("partial"))

    def _train_epoch(self, epoch, encoded, wrapped, optimizer, scheduler, params, progress, micro_steps, show_progress,
                     saved):
        config, model, acc = self.config, self.model, self.accelerator
        model.train()
        plan = epoch_plan(config, model.tasks, encoded, epoch, acc.num_processes)
        # a run resumed within this epoch skips the batches it had done (the plan is seeded) and keeps their totals
        done = progress.partial or {"batch": 0, "seconds": 0.0, "tokens": 0, "losses": []}
        progress.partial = None
        t0, tokens, losses, w, per_task = time.time() - done["seconds"], done["tokens"], list(done["losses"]), 0.0, {}
        for (task, _), loss in zip(plan, losses):  # the done batches' losses, in plan order
            per_task.setdefault(task, []).append(loss)
        every, step = config["checkpoint_steps"], progress.step
        if done["batch"] and done["batches"] != len(plan):
            raise CKFError(f"resume: epoch {epoch} of the run had {done['batches']} batches, this config gives "
                           f"{len(plan)}: resume with the run's own settings")
        bar = tqdm(total=len(plan), initial=done["batch"], desc=set_color(f"Train {epoch:>3}", "pink"),
                   disable=not (show_progress and acc.is_main_process))
        for n, (task, idx) in enumerate(plan[done["batch"]:], start=done["batch"] + 1):  # n: batches done
            mine = idx[acc.process_index::acc.num_processes]
            if len(mine) == 0:
                mine = idx[:1]
            w = curriculum_weight(step / micro_steps, config["curriculum_steepness"], config["curriculum_midpoint"],
                                  config["curriculum_floor"]) if model.use_cf else 0.0
            # The curriculum's loss w * L_slotted + (1 - w) * L_text is estimated by drawing the prompt form
            # with probability w: the same expected loss and gradient at one forward pass per step.
            slotted = bool(np.random.default_rng([self.seed, 7, step]).random() < w)
            mode = "slot" if slotted else "text"
            # a batch longer than max_tokens_per_pass (packed sequential rows) runs as several passes, each loss
            # weighted by its share of the batch's loss: the batch's gradient, with a fraction of the activations
            passes = training_passes(model, [encoded[mode][task][int(i)] for i in mine], config["max_tokens_per_pass"])
            tokens += sum(int(b["attention_mask"].sum()) for b, _ in passes)
            with acc.accumulate(wrapped):
                loss = 0.0
                for k, (batch, weight) in enumerate(passes):
                    with acc.no_sync(wrapped) if k < len(passes) - 1 else contextlib.nullcontext():
                        part = wrapped(self._to_device(batch), slotted=slotted) * weight
                        acc.backward(part)
                    loss = loss + part.detach()
                    del part, batch
                if acc.sync_gradients and config["clip_grad_norm"]:
                    # each group to its own norm: the answer head's gradient (p - y) h has norm ~|h| (~90 in
                    # Gemma), and one global norm would shrink the adapters' and bridge's steps ~50x exactly
                    # where the answers are wrong
                    acc.unscale_gradients()  # once (fp16's grad scaler), then torch's clip per group
                    for group in params:
                        torch.nn.utils.clip_grad_norm_(group, config["clip_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)  # never zeros: inactive adapters must stay untouched
            step += 1
            losses.append(float(loss))
            del loss, passes
            release_memory()  # this step's activations, before the next step allocates its own
            per_task.setdefault(task, []).append(losses[-1])
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", tok_s=f"{tokens / (time.time() - t0):.0f}", w=f"{w:.2f}")
            if every and saved and n % every == 0 and n < len(plan) and acc.sync_gradients:
                progress.step = step
                if acc.is_main_process:
                    self._save_last(epoch - 1, progress, optimizer, scheduler, partial={
                        "batch": n, "batches": len(plan), "seconds": time.time() - t0, "tokens": tokens,
                        "losses": losses})
        bar.close()
        progress.step = step
        self.logger.info(set_color(f"epoch {epoch} training", "green") + f" [time: {time.time() - t0:.2f}s, "
                         f"train loss: {np.mean(losses) if losses else float('nan'):.4f}, tokens/s: "
                         f"{tokens / (time.time() - t0):.0f}, slotted weight: {w:.2f}; loss per task: "
                         + ", ".join(f"{t} {np.mean(v):.3f}" for t, v in per_task.items()) + "]")

    @property
    def _bigger(self):
        return str(self.config["valid_metric"]).lower().split("@")[0] not in smaller_metrics

    def _validate(self, valid, show_progress):
        from recbole_ckf.evaluator.task_eval import task_metrics

        t1 = time.time()
        scores = self._score_samples(valid, show_progress)
        result = task_metrics(scores, self.config, self.train_counts)
        key, _ = self._valid_key(result)
        score = result[key]
        self.logger.info(set_color("validation", "green") + f" [time: {time.time() - t1:.2f}s, valid_score: "
                         f"{score:.4f} ({key})]")
        self.logger.info(set_color("valid result", "blue") + ": \n" + _format(result))
        return score, result, scores

    def _to_device(self, batch):
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    # ---- evaluation ----------------------------------------------------------------------------------
    def _score_samples(self, samples, show_progress):
        from recbole_ckf.evaluator.task_eval import score_tasks

        self.model.eval()
        with self.accelerator.autocast():
            return score_tasks(self.model, samples, self.encoder, self.config, slotted=self.model.use_cf,
                               show_progress=show_progress)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """Test results per task (``task:metric``, plus ``[warm]``/``[cold]`` groups, ``[uncalibrated]``,
        ``[backbone]`` and, with ``score_fusion: backbone``, ``[fusion]``) as RecBole's result dict.

        The calibration (and fusion) is fitted on the validation scores of the very model tested: those kept
        from its validation in ``fit``, or computed here (``--eval_only``, or a model loaded from a file)."""
        from recbole_ckf.evaluator.task_eval import fit_adjustments, task_metrics

        path = model_file or (self.best_path if load_best_model else None)
        self.accelerator.wait_for_everyone()  # only the main process writes checkpoints: let it finish
        if model_file or (path and os.path.isdir(path)):
            load_checkpoint(self.model, path)
            self.logger.info(f"loaded CKF checkpoint {path}")
            if model_file:
                self.valid_scores = None
        self.model.to(self.device)
        valid_scores = self.valid_scores
        if valid_scores is None and self.valid_data is not None:
            valid_scores = self._score_samples(validation_split_samples(self.config, self.builder, self.valid_data),
                                               show_progress)
        fusion = self.config["score_fusion"] == "backbone"
        adjust = fit_adjustments(valid_scores, fusion=fusion) if valid_scores else None
        if adjust:
            self.logger.info(f"calibration{' and fusion' if fusion else ''} fitted on validation: {adjust}")
            if path and os.path.isdir(path) and self.accelerator.is_main_process:
                try:
                    record_adjustments(path, adjust)
                except OSError as err:  # a read-only checkpoint folder: the evaluation does not need it
                    self.logger.warning(f"could not record the calibration in {path}: {err}")
        # test prompts continue the history through the validation interaction (test_history: train_valid)
        samples = test_split_samples(self.config, self.builder, eval_data, self.valid_data)
        t0 = time.time()
        result = task_metrics(self._score_samples(samples, show_progress), self.config, self.train_counts, adjust)
        self.logger.info(f"test: {sum(len(v) for v in samples.values())} samples of "
                         f"{len({s.user for v in samples.values() for s in v})} users in {time.time() - t0:.1f}s")
        self.log_memory("the test evaluation")
        return result


def _format(result):
    return "    ".join(f"{k} : {v}" for k, v in result.items())
