"""Sequential task: scoring the candidate list of a sample.

Pointwise (``sequential_answer: pointwise``, the default; :func:`score_listwise` too): one packed row per sample,
``[prefix, block 1, ..., block K]``, where block k asks "Will the user choose <candidate k> next? Answer:" and
sees the shared prefix (user, history) and its own tokens only (:func:`~recbole_ckf.model.packing.block_masks`);
candidate k's score is logit(Yes) - logit(No) after its block (the model's
:meth:`~recbole_ckf.model.ckf.CKF.block_scores`), the same number as the prompt prefix + block k alone. The item
slot and the item's rating count sit right before the answer: the answer position reads them in a few layers,
where a listed candidate's letter or text must be found among ten.

Listwise (``sequential_answer: label``, :func:`score_listwise`): the logits of the candidate letters at the
answer position, one pass per sample (the model's :meth:`~recbole_ckf.model.ckf.CKF.answer_logits`, as the
pointwise tasks). By title (``sequential_answer: title``, :func:`score_candidates`): each candidate by its
likelihood as the answer, as follows.

Candidate c's answer is what the model is trained to write for it (see
:meth:`~recbole_ckf.data.collate.Encoder.encode`): the tokens of ``renderer.answer`` (the item text), then
eos. Its score is the **mean** log-probability of those tokens (log-softmax over the full vocabulary) given the
prompt. Mean, not sum: the item texts differ in length (up to ``item_text_words`` words plus eos), and a sum
penalises every extra token, so the shortest texts would win whatever the user; the mean ranks by how well the
text fits (``reduction="sum"``, i.e. log P(answer), is available; config key ``sequential_score``). All
candidates share ONE prompt: a sample's prompt is encoded once, its history truncated (if ``max_length``
requires it) so that the *longest* candidate answer fits, the way training truncates prompt + answer; so the
prompt never depends on which candidate is the true one.

The batched scorer (:func:`score_candidates`) packs each sample into one row
``[prompt, candidate 1, ..., candidate K]`` and has the model score a batch of rows in one forward pass
(:meth:`~recbole_ckf.model.ckf.CKF.packed_logprobs`, masks from :mod:`recbole_ckf.model.packing`), with a block
attention mask: prompt tokens are
causal among themselves, candidate k's tokens see the whole prompt and their own earlier tokens, never another
candidate. Positions restart after the prompt for every candidate (``prompt_len + j``), so each candidate sees
exactly the positions it would see alone. Sliding-window layers (Gemma-3: 5 of 6) get their own mask, where
the window is measured in those positions (``pos_q - pos_kv < sliding_window``), not in packed indices; the
mask of every layer type is passed to the decoder (a dict keyed by ``config.layer_types``), so transformers'
own index-based window is never applied to the packed row. A candidate's last token (eos) predicts nothing and
is not fed; identical candidate texts of one sample are run once and get identical scores. This is the same
computation as one forward pass of ``prompt + candidate`` per candidate (:func:`score_candidates_naive`, which
uses the training forward, ``model.hidden_states``), to float rounding, at the cost of one prompt instead of K.
(The alternative, a KV cache of the prompt repeated for the K candidates, gives the same numbers; the packed
row needs no cache bookkeeping and its sliding window is exact by construction.)

Ties. Candidates with equal scores are ranked in the order they appear in the prompt (a stable sort). That
order is a seeded permutation of RecBole's list that does not depend on the label (``TaskBuilder``), so ties are
broken at random but reproducibly. RecBole's ``Collector`` then gets the rank-derived scores ``K - rank``
(no ties left for its ``torch.topk``) and builds ``rec.topk`` itself.
"""

import dataclasses

import torch

from recbole_ckf.data.collate import collate, packed_layout
from recbole_ckf.evaluator.common import batches, eval_mode, llm_device, n_batches, progress, prompt_only, \
    to_device
from recbole_ckf.evaluator.pointwise import predict_answer_logits

def encode_candidates(encoder, samples, slotted):
    """``[(prompt, answers), ...]`` per sample: the shared prompt (an ``Encoded`` without answer tokens) and the
    answer token ids of each candidate in prompt order (item text + eos, tokenized by the encoder exactly as
    training answers are). Each prompt is truncated so that its longest candidate answer fits."""
    out, probes = [], []
    for sample in samples:
        texts = [encoder.renderer.item_text(c, sample.user) for c in sample.candidates]
        answers = encoder._answers([dataclasses.replace(sample, answer=t) for t in texts], True)
        longest = max(range(len(texts)), key=lambda k: len(answers[k])) if texts else None
        probes.append(dataclasses.replace(sample, answer=texts[longest] if texts else ""))
        out.append(answers)
    prompts = [prompt_only(e) for e in encoder.encode_all(probes, slotted)]
    return list(zip(prompts, out))


def _reduce(logprobs, reduction):
    if reduction == "mean":
        return logprobs.mean()
    if reduction == "sum":
        return logprobs.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _packed_scores(model, prompts, answers, slotted, reduction, device):
    """Scores of one batch: ``prompts`` (Encoded, prompt only) and ``answers`` (per sample, per candidate ids)."""
    pad_id = model.tokenizer.pad_token_id
    prompt_batch = collate(prompts, pad_id)
    rows_ids, rows_seg, rows_pos = [], [], []
    owners = []  # per sample: for each candidate, its unique block number
    blocks = []  # per sample: list of (start index, answer ids) of unique answers
    for enc, cands in zip(prompts, answers):
        ids, seen, owner, blk = list(enc.input_ids), {}, [], []
        for ans in cands:  # each distinct answer text once, as one block
            key = tuple(ans)
            if key not in seen:
                seen[key] = len(blk)
                blk.append((len(ids), ans))
                ids += ans[:-1]  # the last answer token predicts nothing
            owner.append(seen[key])
        seg, pos = packed_layout(enc.prompt_len, [len(ans) - 1 for _, ans in blk])
        rows_ids.append(ids), rows_seg.append(seg), rows_pos.append(pos)
        owners.append(owner), blocks.append(blk)
    T = max(len(r) for r in rows_ids)
    B = len(prompts)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    for b in range(B):
        n = len(rows_ids[b])
        input_ids[b, :n] = torch.tensor(rows_ids[b])
        seg[b, :n] = torch.tensor(rows_seg[b])
        pos[b, :n] = torch.tensor(rows_pos[b])
    batch = dict(prompt_batch, input_ids=input_ids)
    batch = to_device(batch, device)
    seg, pos = seg.to(device), pos.to(device)

    # rows of the packed hidden states (flattened B*T) that predict each answer token
    rows, targets, owner_of = [], [], []
    n_blocks = 0
    for b, enc in enumerate(prompts):
        for start, ans in blocks[b]:
            for j, tok in enumerate(ans):
                rows.append(b * T + (enc.prompt_len - 1 if j == 0 else start + j - 1))
                targets.append(tok)
                owner_of.append(n_blocks)
            n_blocks += 1
    logp = model.packed_logprobs(batch, slotted, seg, pos, rows, targets)
    owner_of = torch.tensor(owner_of, device=logp.device)
    block_scores = [_reduce(logp[owner_of == k], reduction) for k in range(n_blocks)]
    out, k0 = [], 0
    for b in range(B):
        out.append(torch.stack([block_scores[k0 + o] for o in owners[b]]).cpu())
        k0 += len(blocks[b])
    return out


def score_listwise(model, encoder, samples, slotted=True, batch_size=16, autocast=False, show_progress=False):
    """Listwise sequential scores (``sequential_answer: label``): per sample, a float32 CPU tensor
    ``[len(sample.candidates)]`` of its candidate letters' logits at the answer position, in prompt order."""
    logits = predict_answer_logits(model, encoder, samples, slotted, batch_size, autocast, show_progress)
    return [row[: len(s.candidates)] for row, s in zip(logits, samples)]


def score_candidates(model, encoder, samples, slotted=True, batch_size=16, reduction="mean", autocast=False,
                     show_progress=False):
    """Score every candidate of every sequential sample in one batched pass per ``batch_size`` samples.

    Returns a list (one entry per sample) of float32 CPU tensors ``[len(sample.candidates)]``: the mean (or sum,
    ``reduction="sum"``) log-probability of each candidate's answer tokens, in prompt order.
    """
    model.check_packed_attention()
    device = llm_device(model)
    scores = []
    with eval_mode(model, autocast):
        encoded = encode_candidates(encoder, samples, slotted)
        for chunk in progress(batches(encoded, batch_size), show_progress, n_batches(len(encoded), batch_size),
                              "sequential"):
            prompts = [p for p, _ in chunk]
            answers = [a for _, a in chunk]
            scores += _packed_scores(model, prompts, answers, slotted, reduction, device)
    return scores


def score_candidates_naive(model, encoder, samples, slotted=True, reduction="mean", autocast=False):
    """The reference scorer: one forward pass of ``prompt + candidate answer`` per candidate, through the
    training forward (``model.hidden_states``, right padding, the model's own causal masks). Same output as
    :func:`score_candidates`; K times the prompt work."""
    device = llm_device(model)
    scores = []
    with eval_mode(model, autocast):
        for prompt, answers in encode_candidates(encoder, samples, slotted):
            row = []
            for ans in answers:
                enc = dataclasses.replace(prompt, input_ids=prompt.input_ids + ans,
                                          labels=[-100] * prompt.prompt_len + ans)
                batch = to_device(collate([enc], model.tokenizer.pad_token_id), device)
                hidden = model.hidden_states(batch, slotted)[0]
                at = list(range(prompt.prompt_len - 1, prompt.prompt_len - 1 + len(ans)))
                logp = model.logits(hidden[at]).log_softmax(-1)
                row.append(_reduce(logp[torch.arange(len(ans)), torch.tensor(ans, device=logp.device)], reduction))
            scores.append(torch.stack(row).cpu())
    return scores


def rank_candidates(scores):
    """Candidate indices from best to worst: by score, ties in prompt order (a stable sort); NaN ranks last."""
    s = torch.nan_to_num(scores.double(), nan=float("-inf"))
    return sorted(range(len(s)), key=lambda k: (-s[k].item(), k))


def ranking_scores(scores_list, width=None):
    """``[N, width]`` scores for RecBole's Collector without ties: ``K - rank`` per candidate, ``-inf`` padding."""
    width = width or max(len(s) for s in scores_list)
    out = torch.full((len(scores_list), width), float("-inf"))
    for b, scores in enumerate(scores_list):
        for rank, k in enumerate(rank_candidates(scores)):
            out[b, k] = float(len(scores) - rank)
    return out
