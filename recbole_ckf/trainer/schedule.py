"""What CKF trains on and how fast: the curriculum's slotted-prompt weight, the learning-rate factors,
each epoch's sample selection and batch plan (seeded per epoch, so a resumed run replays them exactly), and the
passes a long batch runs as (``max_tokens_per_pass``)."""

import math

import numpy as np

from recbole_ckf.data.collate import collate


def curriculum_weight(progress, steepness, midpoint=0.5, floor=0.0):
    """Weight of the slotted-prompt loss: a sigmoid ramp from text-only to slotted prompts over training,
    ``floor + (1 - floor) * sigmoid(steepness * (progress - midpoint))``."""
    return floor + (1.0 - floor) / (1.0 + math.exp(-steepness * (progress - midpoint)))


def lr_lambdas(warmup, total, bridge_schedule="constant"):
    """Learning-rate factors per optimizer step: adapters warm up then decay on a cosine; the bridge warms up
    then keeps its rate (it learns only from slotted prompts, most of which come after the curriculum's
    midpoint: a cosine would leave it a small rate just when its batches come)."""
    def cosine(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))))

    def constant(step):
        return min(1.0, step / max(1, warmup))
    return cosine, (constant if bridge_schedule == "constant" else cosine)


def epoch_selection(config, tasks, sizes, labels, epoch):
    """``{task: sample indices}`` drawn for one epoch (seeded per epoch: a resumed run sees exactly the
    samples of an uninterrupted one). ctr draws both classes equally (``balance_ctr``): with 85% "Yes",
    a plain draw gives a handful of "No" per epoch; calibration on validation restores the base rate."""
    rng = np.random.default_rng([config["seed"], epoch])
    per_task = config["train_samples_per_task"]
    out = {}
    for task in tasks:
        n = sizes[task]
        k = n if per_task is None else min(n, per_task)
        if task == "ctr" and config["balance_ctr"] and n:
            classes = [np.flatnonzero(labels[task] == c) for c in (1.0, 0.0)]
            want = [k - k // 2, k // 2]
            if min(len(c) for c in classes) < k // 2:  # a rare class: all of it, the rest from the other
                small = int(np.argmin([len(c) for c in classes]))
                want[small], want[1 - small] = len(classes[small]), k - len(classes[small])
            out[task] = np.concatenate([rng.permutation(c)[:w] for c, w in zip(classes, want)])
        else:
            out[task] = rng.permutation(n)[:k]
    return out


def epoch_plan(config, tasks, encoded, epoch, num_processes):
    """This epoch's batches: (task, sample indices), one task per batch, tasks interleaved. Within windows
    of ``length_bucket_batches`` batches, samples are sorted by length, so a batch pads little."""
    rng = np.random.default_rng([config["seed"], epoch, 1])
    size = config["train_batch_size"] * num_processes
    window = size * max(1, config["length_bucket_batches"] or 1)
    plan = []
    for task, idx in epoch_selection(config, tasks, encoded["sizes"], encoded["labels"], epoch).items():
        idx = rng.permutation(idx)
        lengths = encoded["slot"][task]
        for w in range(0, len(idx), window):
            chunk = sorted(idx[w:w + window], key=lambda i: len(lengths[int(i)].input_ids))
            plan += [(task, np.array(chunk[i:i + size])) for i in range(0, len(chunk), size)]
    rng.shuffle(plan)
    return plan


def token_chunks(rows, budget):
    """``rows`` (encoded samples, in batch order) cut into consecutive groups of at most ``budget`` padded tokens
    (rows x longest row) each; a row longer than ``budget`` is a group of its own. ``budget`` None: one group."""
    if not budget:
        return [rows]
    chunks, chunk, longest = [], [], 0
    for row in rows:
        longest = max(longest, len(row.input_ids))
        if chunk and (len(chunk) + 1) * longest > budget:
            chunks.append(chunk)
            chunk, longest = [], len(row.input_ids)
        chunk.append(row)
    return chunks + [chunk]


def training_passes(model, rows, budget):
    """The passes one training batch of ``rows`` runs as: ``[(collated batch, weight)]``, at most ``budget``
    padded tokens each (:func:`token_chunks`), each weighted by its share of what ``model.calculate_loss``
    averages over (``model.loss_units``), so that the weighted losses' gradients sum to the whole batch's."""
    passes = [collate(chunk, model.tokenizer.pad_token_id) for chunk in token_chunks(rows, budget)]
    units = [model.loss_units(b) for b in passes]
    return [(b, n / max(sum(units), 1)) for b, n in zip(passes, units)]
