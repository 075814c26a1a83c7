"""What every task's evaluation shares: eval mode and precision, length-sorted batching, progress bars,
prompts without their answer, and the one-position scores of the tasks with a fixed answer set
(:func:`predict_answer_logits`, :func:`predict_points`).

ctr scores P(Yes) against P(No) at the answer position, rating the expectation over the five digit tokens, the
listwise sequential task the logits of the candidate letters: one forward pass per sample, logits of one
position only, over the answer set only.
"""

import contextlib
import dataclasses

import torch

from recbole_ckf.data.collate import collate


def config_value(config, key, default):
    """``config[key]``, or ``default`` where the key is absent or None (a Config, a MetricConfig or a dict)."""
    try:
        value = config[key]
    except KeyError:
        value = None
    return default if value is None else value


def prompt_only(enc):
    """An ``Encoded`` sample cut to its prompt (its answer tokens dropped)."""
    return dataclasses.replace(enc, input_ids=enc.input_ids[: enc.prompt_len], labels=enc.labels[: enc.prompt_len])


def llm_device(model):
    """Where the model's batches go (``model.lm_device``)."""
    return model.lm_device


def to_device(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@contextlib.contextmanager
def eval_mode(model, autocast):
    was_training = model.training
    model.eval()
    device = llm_device(model)
    # autocast=False leaves the caller's autocast state alone (e.g. the trainer's accelerator.autocast())
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    try:
        with torch.no_grad(), amp:
            yield
    finally:
        model.train(was_training)


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def length_sorted(encoded):
    """Indices of ``encoded`` by prompt length (stable): batches of similar lengths need little padding.
    Scores do not depend on the batch a sample lands in (padding is masked), so the order changes no number
    beyond float rounding of the batched matmuls."""
    return sorted(range(len(encoded)), key=lambda k: len(encoded[k].input_ids))


def progress(iterable, show, total, desc):
    if not show:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, ncols=100)


def n_batches(n, size):
    return (n + size - 1) // size


def predict_answer_logits(model, encoder, samples, slotted=True, batch_size=16, autocast=False,
                          show_progress=False):
    """``[len(samples), C]`` logits of the task's answer set (``model.answer_logits``); one task per call."""
    tasks = {s.task for s in samples}
    if not tasks:
        return torch.zeros(0, 0)
    if len(tasks) != 1 or not tasks <= set(model.answer_ids):
        raise ValueError(f"predict_answer_logits scores samples of one task with a fixed answer set "
                         f"({sorted(model.answer_ids)}), got {sorted(tasks)}")
    task = tasks.pop()
    device = llm_device(model)
    out = [None] * len(samples)
    with eval_mode(model, autocast):
        # encoded with the answer (one token whatever the label), then cut to the prompt: the prompt is
        # truncated exactly as in training and never depends on the label
        encoded = [prompt_only(e) for e in encoder.encode_all(samples, slotted)]
        order = length_sorted(encoded)
        for idx in progress(batches(order, batch_size), show_progress, n_batches(len(order), batch_size), task):
            batch = to_device(collate([encoded[k] for k in idx], model.tokenizer.pad_token_id), device)
            for k, row in zip(idx, model.answer_logits(batch, slotted).float().cpu()):
                out[k] = row
    return torch.stack(out)


def predict_points(model, encoder, samples, slotted=True, batch_size=16, autocast=False, show_progress=False):
    """The model's score of each ctr sample (P(Yes) against P(No)) or rating sample (expected stars), as a float
    tensor ``[len(samples)]``. All samples must be of one task, ``ctr`` or ``rating``."""
    tasks = {s.task for s in samples}
    if not tasks:
        return torch.zeros(0)
    if len(tasks) != 1 or not tasks <= {"ctr", "rating"}:
        raise ValueError(f"predict_points scores ctr or rating samples of one task, got {sorted(tasks)}")
    probs = predict_answer_logits(model, encoder, samples, slotted, batch_size, autocast, show_progress).softmax(-1)
    if tasks == {"ctr"}:
        return probs[:, 0]
    return probs @ torch.arange(1, 6, dtype=probs.dtype)
