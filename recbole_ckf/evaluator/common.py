"""What every task's scorer shares: eval mode and precision, the model's device, length-sorted batching, progress
bars, prompts without their answer, config values with defaults. The scorers, one module per task:
:mod:`~recbole_ckf.evaluator.pointwise` (ctr and rating), :mod:`~recbole_ckf.evaluator.sequential` (the
candidate lists), :mod:`~recbole_ckf.evaluator.explanation` (headline generation).
"""

import contextlib
import dataclasses

import torch


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
