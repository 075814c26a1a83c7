"""What every task's evaluation shares: eval mode and precision, batching, progress bars, prompts without their
answer, and the pointwise scores of the ctr and rating tasks (:func:`predict_points`).

ctr scores P(Yes) against P(No) at the answer position (``model.predict_ctr``), rating the expectation over the
five digit tokens (``model.predict_rating``); both read the logits of one position only.
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
    return next(model.llm.parameters()).device


def to_device(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def max_history(model):
    return int(config_value(model.config, "max_history", 5))


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


def progress(iterable, show, total, desc):
    if not show:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, ncols=100)


def n_batches(n, size):
    return (n + size - 1) // size


def predict_points(model, encoder, samples, slotted=True, batch_size=16, autocast=False, show_progress=False):
    """The model's score of each ctr sample (P(Yes) against P(No)) or rating sample (expected stars), as a float
    tensor ``[len(samples)]``. All samples must be of one task, ``ctr`` or ``rating``."""
    tasks = {s.task for s in samples}
    if not tasks:
        return torch.zeros(0)
    if len(tasks) != 1 or not tasks <= {"ctr", "rating"}:
        raise ValueError(f"predict_points scores ctr or rating samples of one task, got {sorted(tasks)}")
    task = tasks.pop()
    predict = model.predict_ctr if task == "ctr" else model.predict_rating
    device = llm_device(model)
    out = []
    with eval_mode(model, autocast):
        # encoded with the answer (one token whatever the label), then cut to the prompt: the prompt is
        # truncated exactly as in training and never depends on the label
        encoded = [prompt_only(e) for e in encoder.encode_all(samples, slotted)]
        for chunk in progress(batches(encoded, batch_size), show_progress, n_batches(len(encoded), batch_size),
                              task):
            batch = to_device(collate(chunk, model.tokenizer.pad_token_id, max_history(model)), device)
            out.append(predict(batch, slotted).float().cpu())
    return torch.cat(out)
