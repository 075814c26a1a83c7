"""ctr and rating (pointwise tasks): the score of one answer token at the answer position.

ctr scores P(Yes) against P(No), rating the expectation over the five digit tokens: one forward pass per sample,
logits of one position only, over the task's answer set only (the model's
:meth:`~recbole_ckf.model.ckf.CKF.answer_logits`). :func:`predict_answer_logits` also serves the listwise
sequential task (the candidate letters, or the pointwise Yes-against-No score of each candidate's block of a packed
row: :func:`~recbole_ckf.evaluator.sequential.score_listwise`).
"""

import torch

from recbole_ckf.data.collate import collate
from recbole_ckf.evaluator.common import batches, eval_mode, length_sorted, llm_device, n_batches, progress, \
    prompt_only, to_device
from recbole_ckf.trainer.runtime import release_memory


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
            del batch
            release_memory()  # packed rows of many lengths fragment the heap: hand freed pages back per pass
    width = max(len(row) for row in out)  # pointwise sequential rows: as wide as their batch's longest list
    return torch.stack([torch.cat([row, row.new_full((width - len(row),), float("-inf"))]) for row in out])


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
